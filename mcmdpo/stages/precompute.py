"""Stage ``precompute``: preference records -> training-ready HDF5 shards, one shard per array task.

The work is :mod:`mcmdpo.data.build` (records -> samples -> one shard, written under a hidden name and
renamed when complete, with its ``.report.json``) and :mod:`mcmdpo.data.shards` (the layout). Inputs:
the ``data`` manifest (or ``data_file`` + ``image_root``) and the image processor of the ``model``
stage (or ``processor_path``, or the built-in LLaVA-1.6 config). Training opens the finished tasks with
``PreferenceShards.from_inputs(ctx.inputs["precompute"])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mcmdpo import handoff
from mcmdpo.artifacts import atomic_path, read_json, write_json_atomic
from mcmdpo.errors import ConfigError
from mcmdpo.resumable import mark_complete, remove_stale_temps, reusable
from mcmdpo.spec import EnvStr
from mcmdpo.stage import Stage, StageSpec, TaskContext, register


class PrecomputeSpec(StageSpec):
    """``[precompute]``: how preference records become HDF5 shards."""

    split: Literal["train", "test"] = Field(
        "train", description="which split of the data stage; test records have no rejected text"
    )
    strategy: Literal["diffusion", "black", "crop", "rotate", "random"] = Field(
        "diffusion", description="how the rejected image m_l is made (paper Table 5; see mcmdpo.noise)"
    )
    diffusion_step: int = Field(
        700, ge=0, le=1000, description="diffusion: step t (0-999 as upstream; 1000 = the last step, 999)"
    )
    schedule: Literal["upstream_sigmoid", "linear_ddpm"] = Field(
        "upstream_sigmoid", description="diffusion: beta schedule (upstream sigmoid, or standard linear DDPM)"
    )
    mode: Literal["pad", "anyres"] = Field(
        "pad", description="pad: expand to square + one SxS tensor (upstream); anyres: LLaVA-NeXT tiling"
    )
    num_shards: int | None = Field(None, ge=1, description="number of shards = array tasks (default 1)")
    samples_per_shard: int | None = Field(
        None, ge=1, description="instead of num_shards: records per shard (count known at planning)"
    )
    dtype: Literal["float16", "float32"] = Field("float16", description="storage dtype of pixel tensors")
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop at the first bad record; skip: leave it out and list it in the report"
    )
    non_rgb: Literal["convert", "bad"] = Field(
        "convert", description="non-RGB images (L, P, CMYK, RGBA, ...): convert('RGB') as upstream, or bad"
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="decompression-bomb limit: larger images are bad records"
    )
    seed_offset: int = Field(0, ge=0, description="added to run.seed for the rejected-image draws")
    processor_path: EnvStr | None = Field(
        None, description="image processor folder when the recipe has no [model] stage (else built-in)"
    )
    data_file: EnvStr | None = Field(None, description="source file when the recipe has no [data] stage")
    image_root: EnvStr | None = Field(None, description="image folder of data_file (no [data] stage)")

    @model_validator(mode="after")
    def _check(self) -> PrecomputeSpec:
        if self.num_shards is not None and self.samples_per_shard is not None:
            raise ValueError("set num_shards or samples_per_shard, not both")
        if self.data_file and not self.image_root:
            raise ValueError("data_file needs image_root")
        return self


def precompute_tasks(spec: PrecomputeSpec, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One task per shard: ``{"shard": k, "num_shards": N}``."""
    model = doc.get("model")
    if isinstance(model, dict) and model.get("mode", spec.mode) != spec.mode:
        raise ConfigError(
            f"{spec.mode!r} but model.mode = {model['mode']!r}: set both alike", field="precompute.mode"
        )
    return handoff.precompute_shard_params(doc, spec.model_dump())


def run_precompute(ctx: TaskContext) -> list[str]:
    """Build (or reuse) this task's shard and its report; return both file names."""
    from mcmdpo.data.build import ShardBuilder, build_shard, provenance
    from mcmdpo.data.images import load_processor, processor_config
    from mcmdpo.data.shards import shard_name, shard_range
    from mcmdpo.noise import RejectedImages

    spec: PrecomputeSpec = ctx.spec
    shard, num_shards = int(ctx.params["shard"]), int(ctx.params["num_shards"])
    name = shard_name(shard, num_shards)
    final, report_path = ctx.out_dir / f"{name}.h5", ctx.out_dir / f"{name}.report.json"
    source = resolve_source(ctx, spec)
    processor = load_processor(resolve_processor_dir(ctx, spec))
    rejected = RejectedImages.from_spec(spec, int(ctx.seed) + spec.seed_offset)
    attrs = provenance(spec, ctx.params, ctx.recipe, source, processor_config(processor), rejected)
    if reusable(ctx.work_dir, ctx.out_dir, attrs["fingerprint"]):
        ctx.log.info("%s is already complete; reusing it", final.name)
        report = read_json(report_path)
    else:
        builder = ShardBuilder(spec, source, processor, rejected)
        positions = shard_range(len(builder.records), shard, num_shards)
        attrs.update(num_source_records=len(builder.records), position_start=positions.start)
        attrs["position_stop"] = positions.stop
        remove_stale_temps(final)
        with atomic_path(final) as tmp:
            report = build_shard(builder, positions, tmp, attrs, ctx)
            report = {"shard": shard, "num_shards": num_shards, "fingerprint": attrs["fingerprint"], **report}
            write_json_atomic(report_path, report)
        mark_complete(ctx.work_dir, attrs["fingerprint"], [final.name, report_path.name])
    ctx.summary.update(num_samples=report["num_samples"], num_skipped=report["num_skipped"])
    return [final.name, report_path.name]


def resolve_source(ctx: TaskContext, spec: PrecomputeSpec) -> Any:
    """The split's file and image root, from the data stage (or the spec's own fields)."""
    from mcmdpo.data.build import Source

    if ctx.inputs.get("data"):
        return Source.from_split(handoff.split_source(ctx.inputs["data"][0], spec.split))
    if not spec.data_file:
        raise ConfigError("precompute needs a [data] stage in the recipe, or data_file + image_root")
    return Source.from_file(spec.data_file, spec.image_root)


def resolve_processor_dir(ctx: TaskContext, spec: PrecomputeSpec) -> Path | None:
    """The model stage's HF folder, else ``processor_path``, else None (the built-in processor).

    A model stage that declares a different image ``mode`` gets a warning (the weights work in both
    modes, but the training stages should use the mode the shards were made in).
    """
    tasks = ctx.inputs.get("model")
    if not tasks:
        return Path(spec.processor_path) if spec.processor_path else None
    mode = handoff.declared_mode(ctx)
    if mode is not None and mode != spec.mode:
        ctx.log.warning("precompute.mode = %r but the model stage declares mode %r", spec.mode, mode)
    return handoff.model_dir(tasks[0])


STAGE = register(
    Stage(
        name="precompute",
        spec=PrecomputeSpec,
        run=run_precompute,
        after=("data", "model"),
        tasks=precompute_tasks,
    )
)
