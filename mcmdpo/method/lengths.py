"""Token lengths of a preference sample per condition, and their distribution (the length audit).

A condition ``m?_c?_y?`` is the sequence ``prefix, image m, context c, answer y`` (image placeholders
included: what ``max_length`` bounds). The shared engine lays a sample's conditions out as one
prefix-tree row (:func:`SampleLengths.tree`). The precompute stage records these for every sample
(:func:`audit_samples`) and the rehearsal picks its longest and median samples with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcmdpo.method.conditions import CONDITIONS


@dataclass(frozen=True)
class SampleLengths:
    """Token counts of a sample's pieces: ``images``, ``contexts``, ``answers`` as (w, l)."""

    prefix: int
    images: tuple[int, int]
    contexts: tuple[int, int]
    answers: tuple[int, int]

    def condition(self, name: str) -> int:
        m, c, y = ("wl".index(part[1]) for part in name.split("_"))
        return self.prefix + self.images[m] + self.contexts[c] + self.answers[y]

    def conditions(self, names: Iterable[str] = CONDITIONS) -> dict[str, int]:
        return {name: self.condition(name) for name in names}

    @property
    def longest(self) -> int:
        return max(self.conditions().values())

    def tree(self, names: Sequence[str] = CONDITIONS) -> int:
        """Width of the shared engine's prefix-tree row of ``names``."""
        parts = [name.split("_") for name in names]
        images = {m for m, _, _ in parts}
        contexts = {(m, c) for m, c, _ in parts}
        width = self.prefix + sum(self.images["wl".index(m[1])] for m in images)
        width += sum(self.contexts["wl".index(c[1])] for _, c in contexts)
        return width + sum(self.answers["wl".index(y[1])] for _, _, y in parts)


def sample_lengths(
    tokenizer: Any, prefix: int, texts: Mapping[str, str], image_tokens: tuple[int, int]
) -> SampleLengths:
    """Lengths from the four texts (``question``, ``rejected_question``, ``chosen``, ``rejected``) as the
    training template tokenises them (questions stripped, answers + EOS)."""
    from mcmdpo.method.model.template import encode_answer, encode_training_context

    contexts = tuple(
        len(encode_training_context(tokenizer, texts[k])) for k in ("question", "rejected_question")
    )
    answers = tuple(len(encode_answer(tokenizer, texts[k])) for k in ("chosen", "rejected"))
    return SampleLengths(prefix, image_tokens, contexts, answers)  # type: ignore[arg-type]


def distribution(values: Sequence[int]) -> dict[str, int]:
    """n, min, median, p90, p99, max of ``values`` (nearest rank; empty: n = 0)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "min": ordered[0], "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99),
            "max": ordered[-1]}  # fmt: skip


def histogram(values: Iterable[int], width: int = 128) -> dict[str, int]:
    """Counts per ``width``-token bin, keyed by the bin's upper edge (``"256"``: 129-256 tokens)."""
    counts: dict[int, int] = {}
    for value in values:
        edge = max(1, -(-int(value) // width)) * width
        counts[edge] = counts.get(edge, 0) + 1
    return {str(k): counts[k] for k in sorted(counts)}


def audit_samples(
    lengths: Sequence[SampleLengths], conditions: Sequence[str], max_length: int | None
) -> dict[str, Any]:
    """The length audit of a shard: per-condition distributions, the tree-row distribution, and the
    samples (their positions in ``lengths``) with a condition longer than ``max_length``."""
    per_condition = {c: distribution([s.condition(c) for s in lengths]) for c in conditions}
    longest = [max(s.condition(c) for c in conditions) for s in lengths]
    too_long = [i for i, n in enumerate(longest) if max_length is not None and n > max_length]
    return {
        "max_length": max_length,
        "conditions": list(conditions),
        "sequence": distribution(longest),
        "tree_row": distribution([s.tree(conditions) for s in lengths]),
        "by_condition": per_condition,
        "histogram": histogram(longest),
        "too_long": too_long,
    }
