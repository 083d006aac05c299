"""Stage ``reference``: log-probs of the frozen reference model, once, for every preference sample.

One array task per precompute shard. A task loads the reference model (the ``sft`` output when the
recipe has an ``[sft]`` stage, else the ``[model]`` checkpoint), scores the shard's samples in fixed
batches under ``torch.no_grad`` (fp32 by default; sums in float64) from the same token sequences the
policy uses (:class:`mcmdpo.method.samples.SampleSource`), and writes ``logprobs.h5`` atomically (layout:
:mod:`mcmdpo.method.data.reference_logprobs`). Finished batches go to a ledger under ``.work/``; a requeued
or killed task continues after the last one, with the same fixed batches, so it computes exactly
what an uninterrupted one does. With ``[preference] reference = "online"`` this stage has no tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from mcmdpo import handoff
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.method.conditions import CONDITIONS, Condition
from mcmdpo.method.memory_plan import memory_hook
from mcmdpo.method.model import folders

if TYPE_CHECKING:
    from mcmdpo.method.data.shards import PreferenceShards


class ReferenceSpec(StageSpec):
    """``[reference]``: how the frozen reference model scores the precomputed preference samples."""

    batch_size: int = Field(4, ge=1, description="samples per forward pass")
    engine: Literal["shared", "naive"] = Field(
        "shared",
        description="shared: vision once + prefix tree per sample; naive: one sequence per condition",
    )
    conditions: tuple[Condition, ...] = Field(
        CONDITIONS, min_length=1, description="conditions to score (default: all eight)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="model dtype (sums are always accumulated in float64)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")

    @field_validator("conditions")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"repeated conditions {', '.join(repeated)}")
        return value


def reference_tasks(spec: ReferenceSpec, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per precompute shard; none when the preference stage scores online."""
    preference = doc.get("preference")
    if isinstance(preference, Mapping) and preference.get("reference") == "online":
        return []
    return handoff.precompute_shard_params(doc)


def run_reference(ctx: TaskContext) -> list[str]:
    """Score this task's precompute shard with the reference model; write ``logprobs.h5``."""
    from mcmdpo.batch.resumable import BatchLedger, mark_complete, reusable
    from mcmdpo.method.data.reference_logprobs import OUTPUT
    from mcmdpo.method.data.shards import PreferenceShards, shard_input

    spec: ReferenceSpec = ctx.spec
    shards = PreferenceShards([shard_input(ctx)])
    model_path = folders.upstream_model(ctx, prefer=("sft", "model"))
    attrs = file_attrs(ctx, spec, shards, model_path)
    if not reusable(ctx.work_dir, ctx.out_dir, attrs["key"]):
        from mcmdpo.method.reference import score_shard

        values, ctx.summary["resumed_from"] = score_shard(ctx, spec, shards, model_path, attrs)
        meta = shards.readers[0].meta
        from mcmdpo.method.data.reference_logprobs import write_logprobs

        write_logprobs(ctx.out_dir / OUTPUT, values, meta["ids"], meta["positions"], attrs)
        mark_complete(ctx.work_dir, attrs["key"], [OUTPUT])
        BatchLedger.keyed(ctx.work_dir, "logprobs", attrs["key"]).remove()  # its rows are in the file now
    shards.close()
    ctx.summary["num_samples"] = len(shards)
    return [OUTPUT]


def file_attrs(
    ctx: TaskContext, spec: ReferenceSpec, shards: PreferenceShards, model_path: Path
) -> dict[str, Any]:
    """What decides the values (hashed into ``key``) and provenance facts."""
    from mcmdpo.batch.artifacts import file_hash
    from mcmdpo.method.data.reference_logprobs import reference_attrs
    from mcmdpo.method.model.load import resolve_device

    reader = shards.readers[0]
    mode = str(reader.attrs.get("mode", "pad"))
    declared = folders.declared_mode(ctx)
    if declared and declared != mode:
        ctx.log.warning(
            "[model] mode is %r but the precompute shard is %r: scoring in %r", declared, mode, mode
        )
    content = {
        "conditions": list(spec.conditions),
        "reference_fingerprint": folders.model_fingerprint(model_path),
        **spec.model_dump(include={"engine", "batch_size", "dtype"}),
        "mode": mode,
        "device": resolve_device(spec.device).split(":")[0],
        "precompute_shard_sha256": file_hash(reader.path),
    }
    facts = {
        "reference_model": str(model_path),
        "num_samples": len(reader),
        "precompute_shard": str(reader.path),
    }
    facts.update(shard=int(ctx.params["shard"]), num_shards=int(ctx.params["num_shards"]))
    facts["precompute_fingerprint"] = str(reader.attrs.get("fingerprint", ""))
    return reference_attrs(content, **facts)


STAGE = register(
    Stage(
        name="reference",
        spec=ReferenceSpec,
        run=run_reference,
        after=("precompute", "sft", "model"),
        tasks=reference_tasks,
        checkpointable=True,
        kind="gpu",
        memory=memory_hook("reference"),
    )
)
