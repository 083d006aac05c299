"""The baselines' prompt: the question plus ``few_shot`` example alt-texts, and the settings of a run.

Examples (the paper: "two example alt-texts in the inference prompt"): ``few_shot`` alt-texts (the
``chosen`` text of records of the benchmark's training file, image-free) drawn once per (file, seed)
with ``random.Random(seed).sample`` from the usable records in file order (no problem, non-empty,
whitespace collapsed to single spaces, duplicates dropped): the same examples in every prompt of
the benchmark, the same again on a re-run with the same seed. They are shown numbered, one a line::

    {question}
    Examples of alt-text written for other images:
    1. {example 1}
    2. {example 2}
    Alt-text for this image:

(``prompt`` changes the wording; ``{examples}`` is the numbered lines). Benchmarks that are not
alt-text benchmarks, and ``few_shot = 0``, get the question alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mcmdpo.batch.errors import InputError


def usable_alt_texts(file: Path) -> list[str]:
    """The distinct, non-empty ``chosen`` texts of a training file's usable records, in file order."""
    from mcmdpo.method.data.records import load_records

    seen: dict[str, None] = {}
    for record in load_records(Path(file), "train"):
        text = " ".join(record.chosen.split())
        if record.problem is None and text:
            seen.setdefault(text, None)
    return list(seen)


def pick_examples(file: Path, k: int, seed: int) -> tuple[str, ...]:
    """``k`` example alt-texts from ``file``, deterministic per ``seed`` (see the module docstring)."""
    if k == 0:
        return ()
    texts = usable_alt_texts(file)
    if len(texts) < k:
        raise InputError(f"few_shot = {k} needs {k} usable alt-texts, the file has {len(texts)}", file=file)
    return tuple(random.Random(seed).sample(texts, k))


def render_prompt(template: str, question: str, examples: Sequence[str]) -> str:
    """The user text: ``template`` with the question and numbered examples, or the question alone."""
    if not examples:
        return question
    lines = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, 1))
    return template.format(question=question, examples=lines)


@dataclass(frozen=True)
class BaselineRun:
    """Everything that decides one baseline's responses on one benchmark (written into each record)."""

    name: str
    kind: str
    model: str
    revision: str | None
    dtype: str
    max_new_tokens: int
    batch_size: int
    prompt: str
    system: str | None
    examples: tuple[str, ...]
    trust_remote_code: bool = False
    api: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        """The settings for records and ``generation.json`` (greedy; the endpoint without its key)."""
        out = asdict(self)
        out.update(do_sample=False, num_beams=1, temperature=0.0, examples=list(self.examples))
        if self.api is not None:
            out["api"] = {k: v for k, v in self.api.items() if k != "cache_dir"}
        return out

    def user_text(self, question: str) -> str:
        return render_prompt(self.prompt, question, self.examples)
