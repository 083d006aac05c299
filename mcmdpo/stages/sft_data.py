"""Stage ``sft_data``: the SFT set as shards of encoded images + conversations, one per array task.

Runs when ``[sft] data`` is ``files`` (its ``[[sft.files]]``, e.g. TAlt + PAlt = 202K samples) or
``curate`` (the ``curate_split`` stage's ``sft.json`` + ``images/``). Task k of N reads the texts of
every source (source 0's records, then source 1's, ...), checks and decodes the images of positions
``[k*n//N, (k+1)*n//N)`` once (bad images are bad records), and stores them still encoded (or their
paths): :mod:`mcmdpo.method.data.sft_shards`. The ``sft`` stage decodes and preprocesses them in DataLoader
workers. A task's id hashes ``[sft_data]`` and the data fields of ``[sft]`` only (a learning-rate
change does not rebuild the shards). Output: ``shard-KKKKK-of-NNNNN.h5`` + ``.report.json`` (kept and
skipped records per source, skipped records with their reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from mcmdpo import handoff
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register

VERSION = 1


class SftDataSpec(StageSpec):
    """``[sft_data]``: sharding and storage of the ``[sft]`` files (needed with data = files / curate)."""

    num_shards: int = Field(1, ge=1, description="shards = array tasks (CPU)")
    store: Literal["bytes", "paths"] = Field(
        "bytes", description="bytes: the encoded images in the shard; paths: absolute image paths only"
    )
    on_bad_record: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop at the first bad record; skip: leave it out, list it in the report"
    )
    max_image_pixels: int = Field(89_478_485, ge=1, description="larger images are bad records (huge_image)")


def sft_data_tasks(spec: SftDataSpec, doc: Mapping[str, Any]) -> list[dict[str, int]]:
    """One task per shard; none when ``[sft]`` trains on the preference shards (or is absent)."""
    sft = doc.get("sft") or {}
    if sft.get("data", "preference") == "preference":
        return []
    return [{"shard": k, "num_shards": spec.num_shards} for k in range(spec.num_shards)]


def sft_data_uses(spec: SftDataSpec, doc: Mapping[str, Any]) -> tuple[str, ...]:
    return ("curate_split",) if (doc.get("sft") or {}).get("data") == "curate" else ()


def sft_data_key(spec: SftDataSpec, params: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a shard: this section and the data fields of ``[sft]``."""
    sft = doc.get("sft") or {}
    return {"spec": doc["sft_data"], "data": sft.get("data"), "files": sft.get("files", [])}


def run_sft_data(ctx: TaskContext) -> list[str]:
    """Build (or reuse) this task's shard and its report."""
    from mcmdpo.batch.artifacts import atomic_path, content_hash, read_json, write_json_atomic
    from mcmdpo.batch.resumable import mark_complete, pause_for_tests, remove_stale_temps, reusable
    from mcmdpo.method.data.sft_shards import SftShardWriter, build_sft_shard
    from mcmdpo.method.data.shards import shard_name

    spec: SftDataSpec = ctx.spec
    shard, num_shards = int(ctx.params["shard"]), int(ctx.params["num_shards"])
    sources = handoff.sft_sources(ctx, ctx.recipe["sft"])
    files = [{"file": str(s.file), "size": s.file.stat().st_size, "limit": s.limit} for s in sources]
    key = content_hash({"task": ctx.task_id, "sources": files, "version": VERSION})
    name = shard_name(shard, num_shards)
    final, report_path = ctx.out_dir / f"{name}.h5", ctx.out_dir / f"{name}.report.json"
    if reusable(ctx.work_dir, ctx.out_dir, key) is None:
        remove_stale_temps(final)
        with atomic_path(final) as tmp:
            writer = SftShardWriter(tmp, {"shard": shard, "num_shards": num_shards, "key": key})
            try:
                report = build_sft_shard(
                    sources, shard, num_shards, writer, store=spec.store, on_bad_record=spec.on_bad_record,
                    max_pixels=spec.max_image_pixels, after_sample=lambda: pause_for_tests(ctx),
                )  # fmt: skip
                writer.close({"sources": report["sources"]})
            finally:
                writer.abort()
            write_json_atomic(report_path, {"shard": shard, "num_shards": num_shards, **report})
        mark_complete(ctx.work_dir, key, [final.name, report_path.name])
    report = read_json(report_path)
    ctx.summary.update(num_samples=report["num_samples"], num_skipped=report["num_skipped"])
    ctx.summary.update({f"kept_{s}": c["kept"] for s, c in report["sources"].items()})
    return [final.name, report_path.name]


STAGE = register(
    Stage(
        name="sft_data",
        spec=SftDataSpec,
        run=run_sft_data,
        after=("curate_split",),
        reads=("sft",),
        tasks=sft_data_tasks,
        version=VERSION,
        uses=sft_data_uses,
        key=sft_data_key,
    )
)
