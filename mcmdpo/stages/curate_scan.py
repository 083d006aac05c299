"""Stage ``curate_scan``: filters and de-duplication signatures, one array task per raw-file shard.

Implied by ``[curate]`` (whose settings it reads). Each task reads only its contiguous range of the
raw file (:mod:`mcmdpo.curate.raw`), applies the filters (:mod:`mcmdpo.curate.scan`) and writes
``records.jsonl``, ``signatures.npz``, ``scan.json`` (+ ``images/`` for images given as bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register


class CurateScanSpec(StageSpec):
    """``[curate_scan]`` (optional: implied by ``[curate]``, whose section holds the settings)."""


def scan_tasks(spec: CurateScanSpec, recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per shard of ``curate.raw_file``."""
    from mcmdpo.curate.spec import curate_spec, shard_tasks

    return shard_tasks(curate_spec(dict(recipe)))


def run_curate_scan(ctx: TaskContext) -> list[str]:
    """Filter one shard and compute its signatures."""
    from mcmdpo.curate.raw import count_raw, shard_range
    from mcmdpo.curate.scan import Scanner, write_scan
    from mcmdpo.curate.spec import curate_spec

    spec = curate_spec(dict(ctx.recipe))
    file = Path(spec.raw_file)
    if not file.is_file():
        raise FileNotFoundError(f"curate.raw_file: no such file {file.absolute()}")
    if spec.images is not None and not Path(spec.images).is_dir():
        raise FileNotFoundError(f"curate.images: no such folder {Path(spec.images).absolute()}")
    positions = shard_range(count_raw(file), ctx.params["shard"], ctx.params["num_shards"])
    result = Scanner(spec, ctx.out_dir).scan(positions)
    outputs = write_scan(result, ctx.out_dir, positions)
    ctx.summary.update(input=len(positions), kept=len(result.records), **result.dropped)
    return outputs


STAGE = register(
    Stage(
        name="curate_scan",
        spec=CurateScanSpec,
        run=run_curate_scan,
        reads=("curate",),
        tasks=scan_tasks,
        implied_by=("curate",),
        version=2,  # 2: signatures.npz has the alt-text's MinHash (minhash_alt)
    )
)
