"""The precompute stage's length audit: token lengths per sample and condition, and over-long samples.

Every sample of a shard is measured as the training template tokenises it
(:func:`mcmdpo.method.lengths.sample_lengths`: image placeholders from the decoded image's size,
contexts, answers + EOS) with the model's own tokenizer and processor. The limit is the smallest
``max_length`` of the stages that read the shards (``[preference]``; ``[sft]`` with ``data =
"preference"``): a sample with a condition longer than it is a bad record ``too_long`` (preference
training would refuse it; SFT would cut its answer), skipped and counted or an error, per
``on_bad_record``. The distribution (per condition, the tree row, a histogram) goes into the shard's
report and the task summary (``mcmdpo status``). Without a tokenizer (no model folder) nothing is
audited, and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.method.conditions import CONDITIONS
from mcmdpo.method.lengths import SampleLengths, audit_samples, sample_lengths


def length_limit(recipe: Mapping[str, Any]) -> tuple[int | None, tuple[str, ...]]:
    """(the smallest ``max_length`` of the stages reading the shards, the conditions trained)."""
    limits, conditions = [], CONDITIONS
    preference = recipe.get("preference")
    if isinstance(preference, Mapping):
        limits.append(int(preference.get("max_length", 2048)))
        conditions = _conditions(preference.get("loss") or {})
    sft = recipe.get("sft")
    if isinstance(sft, Mapping) and sft.get("data", "preference") == "preference":
        limits.append(int(sft.get("max_length", 2048)))
    return (min(limits) if limits else None), conditions


def _conditions(loss: Mapping[str, Any]) -> tuple[str, ...]:
    from mcmdpo.method.losses import PreferenceLoss
    from mcmdpo.method.train.spec import LossSpec

    return tuple(PreferenceLoss.from_spec(LossSpec.model_validate(dict(loss))).conditions)


class LengthAuditor:
    """Measures samples as the shard builder prepares them; raises for one over the limit."""

    def __init__(self, processor: Any, mode: str, limit: int | None, conditions: tuple[str, ...]):
        from mcmdpo.method.model.template import encode_prefix

        self.processor, self.mode, self.limit, self.conditions = processor, mode, limit, conditions
        self.prefix = len(encode_prefix(processor.tokenizer))
        self.lengths: list[SampleLengths] = []
        self.too_long = 0

    def image_tokens(self, size: tuple[int, int]) -> int:
        from mcmdpo.method.model.images import crop_side, num_image_tokens

        side = crop_side(self.processor)
        model_size = (side, side) if self.mode == "pad" else size
        return num_image_tokens(self.processor, self.mode, model_size)  # type: ignore[arg-type]

    def measure(self, texts: Mapping[str, str], sizes: tuple[tuple[int, int], tuple[int, int]]) -> str | None:
        """Record a sample's lengths; the reason it is too long (or None)."""
        images = (self.image_tokens(sizes[0]), self.image_tokens(sizes[1]))
        lengths = sample_lengths(self.processor.tokenizer, self.prefix, texts, images)
        longest = max(lengths.conditions(self.conditions).items(), key=lambda kv: kv[1])
        if self.limit is not None and longest[1] > self.limit:
            self.too_long += 1
            return f"condition {longest[0]} is {longest[1]} tokens > max_length {self.limit}"
        self.lengths.append(lengths)
        return None

    def report(self) -> dict[str, Any]:
        """The kept samples' distribution and the over-long count."""
        out = audit_samples(self.lengths, self.conditions, self.limit)
        out.pop("too_long")
        return {**out, "too_long": self.too_long}


def load_auditor(folder: Path | None, mode: str, recipe: Mapping[str, Any]) -> LengthAuditor | None:
    """An auditor with the model folder's tokenizer and processor (None without a tokenizer there)."""
    if folder is None or not (Path(folder) / "tokenizer_config.json").is_file():
        return None
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoProcessor

    from mcmdpo.method.model.load import align_processor

    processor = AutoProcessor.from_pretrained(folder)
    align_processor(processor, SimpleNamespace(config=AutoConfig.from_pretrained(folder)))  # type: ignore[arg-type]
    limit, conditions = length_limit(recipe)
    return LengthAuditor(processor, mode, limit, conditions)


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """Task summary facts of an audit (``mcmdpo status`` notes)."""
    sequence = report.get("sequence") or {}
    return {"too_long": int(report.get("too_long", 0)), "tokens_p50": sequence.get("p50"),
            "tokens_max": sequence.get("max")}  # fmt: skip
