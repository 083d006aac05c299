"""Stage ``precompute``: preference records -> training-ready HDF5 shards, one shard per array task.

The work is :mod:`mcmdpo.method.data.build` (records -> samples -> one shard, written under a hidden name and
renamed when complete, with its ``.report.json``) and :mod:`mcmdpo.method.data.shards` (the layout). Inputs:
the ``data`` manifest (or ``data_file`` + ``image_root``) and the image processor of the ``model``
stage (or ``processor_path``, or the built-in LLaVA-1.6 config). Training opens the finished tasks with
``PreferenceShards.from_inputs(ctx.inputs["precompute"])``. The fields are :class:`PrecomputeSpec`
(:mod:`mcmdpo.method.data.spec`); ``strategy = "auto"`` is resolved from the recipe when it is validated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcmdpo import handoff
from mcmdpo.batch.artifacts import atomic_path, read_json, write_json_atomic
from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.resumable import mark_complete, remove_stale_temps, reusable
from mcmdpo.batch.stage import Stage, TaskContext, register
from mcmdpo.method.data.spec import PrecomputeSpec, resolve_precompute

if TYPE_CHECKING:
    from mcmdpo.method.data.build import Source
from mcmdpo.method.model import folders

__all__ = ["PrecomputeSpec", "precompute_tasks", "run_precompute"]


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
    from mcmdpo.method.data.audit import load_auditor, summary
    from mcmdpo.method.data.build import ShardBuilder, build_shard, provenance
    from mcmdpo.method.data.images import load_processor, processor_config
    from mcmdpo.method.data.shards import shard_name, shard_range
    from mcmdpo.method.noise import RejectedImages

    spec = resolve_precompute(ctx.spec, ctx.recipe)  # resolved at validation; "auto" in library use
    shard, num_shards = int(ctx.params["shard"]), int(ctx.params["num_shards"])
    name = shard_name(shard, num_shards)
    final, report_path = ctx.out_dir / f"{name}.h5", ctx.out_dir / f"{name}.report.json"
    source = resolve_source(ctx, spec)
    folder = folders.processor_dir(ctx, spec.mode, spec.processor_path)
    processor = load_processor(folder)
    rejected = RejectedImages.from_spec(spec, int(ctx.seed) + spec.seed_offset)
    attrs = provenance(spec, ctx.params, ctx.recipe, source, processor_config(processor), rejected)
    if reusable(ctx.work_dir, ctx.out_dir, attrs["fingerprint"]):
        ctx.log.info("%s is already complete; reusing it", final.name)
        report = read_json(report_path)
    else:
        builder = ShardBuilder(spec, source, processor, rejected, load_auditor(folder, spec.mode, ctx.recipe))
        positions = shard_range(len(builder.records), shard, num_shards)
        attrs.update(num_source_records=len(builder.records), position_start=positions.start)
        attrs["position_stop"] = positions.stop
        remove_stale_temps(final)
        with atomic_path(final) as tmp:
            report = build_shard(builder, positions, tmp, attrs, ctx)
            report = {"shard": shard, "num_shards": num_shards, "fingerprint": attrs["fingerprint"], **report}
            write_json_atomic(report_path, report)
        mark_complete(ctx.work_dir, attrs["fingerprint"], [final.name, report_path.name])
    ctx.summary.update({k: report.get(k, 0) for k in ("num_samples", "num_skipped", "text_disagreements")})
    if report.get("lengths", {}).get("sequence"):
        ctx.summary.update(summary(report["lengths"]))
    return [final.name, report_path.name]


def resolve_source(ctx: TaskContext, spec: PrecomputeSpec) -> Source:
    """The split's file and image root, from the data stage (or the spec's own fields)."""
    from mcmdpo.method.data.build import Source

    if ctx.inputs.get("data"):
        return Source.from_split(handoff.split_source(ctx.inputs["data"][0], spec.split))
    if not spec.data_file:
        raise ConfigError("precompute needs a [data] stage in the recipe, or data_file + image_root")
    return Source.from_file(spec.data_file, spec.image_root)


STAGE = register(
    Stage(
        name="precompute",
        spec=PrecomputeSpec,
        run=run_precompute,
        after=("data", "model"),
        tasks=precompute_tasks,
        resolve=resolve_precompute,
    )
)
