"""Stage ``curate``: names, grammar, rejected alt-texts + swapped verification; one task per shard.

``[curate]`` is this stage's section (:class:`mcmdpo.curate.spec.CurateSpec`); its presence brings
``curate_scan``, ``curate_dedupe`` and ``curate_split`` along. Each task takes the records of its
scan shard that de-duplication kept and runs :class:`mcmdpo.curate.pipeline.Curator` on them through
the LLM of ``[curate.llm]`` (reply cache: ``llm.cache_dir`` or ``<run_dir>/llm-cache``). Finished
records go to an fsynced ledger in ``.work/``; a requeued or killed task resumes after them. Outputs:
``curated.jsonl`` (every record, kept or dropped, with its attempts) and ``curate.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.stage import Stage, TaskContext, TaskInput, register
from mcmdpo.curate.spec import CurateSpec, shard_tasks
from mcmdpo.handoff import CURATE_REPORT as REPORT
from mcmdpo.handoff import CURATED


def curate_tasks(spec: CurateSpec, recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per shard (the same shards as ``curate_scan``)."""
    return shard_tasks(spec)


def run_curate(ctx: TaskContext) -> list[str]:
    """The LLM steps for one shard; resumable per record."""
    from mcmdpo.batch.artifacts import write_json_atomic
    from mcmdpo.curate.names import NameReplacer, resolve_method
    from mcmdpo.curate.pipeline import Curator, curate_items
    from mcmdpo.evaluation.metrics.predictions import write_predictions
    from mcmdpo.llm import LLMClient

    spec: CurateSpec = ctx.spec
    items = shard_items(ctx, spec)
    cache = spec.llm.cache_dir or ctx.run_dir / "llm-cache"
    client = LLMClient(spec.llm, cache_dir=cache, where="curate.llm")
    method, nlp = resolve_method(spec.names)
    curator = Curator(spec, client, NameReplacer(spec.names, method, nlp, client))
    records, resumed = curate_items(curator, items, ctx.work_dir / CURATED, ctx.should_checkpoint)
    if len(records) < len(items):
        raise ctx.interrupted()  # asked to stop: the ledger holds what finished
    write_predictions(ctx.out_dir / CURATED, records)
    report = {
        "llm": spec.llm.public(),
        "served_models": client.served_models(),
        "requests": client.stats,
        "names_method": method,
        "items": len(items),
        "resumed_items": resumed,
    }
    write_json_atomic(ctx.out_dir / REPORT, report)
    kept = sum(r["status"] == "kept" for r in records)
    ctx.summary.update(items=len(items), kept=kept, requests=client.stats["requests"])
    return [CURATED, REPORT]


def shard_items(ctx: TaskContext, spec: CurateSpec) -> list[dict[str, Any]]:
    """The scanned records of this task's shard that de-duplication kept, with absolute image paths."""
    from mcmdpo.batch.artifacts import read_json
    from mcmdpo.curate.scan import RECORDS
    from mcmdpo.evaluation.metrics.predictions import read_predictions
    from mcmdpo.handoff import CURATE_DEDUPE as DEDUPE

    scan = _scan_task(ctx.inputs.get("curate_scan", []), ctx.params["shard"])
    dropped = set(read_json(ctx.inputs["curate_dedupe"][0].dir / DEDUPE)["dropped"])
    root = Path(os.path.realpath(spec.images)) if spec.images else None
    items = []
    for record in read_predictions(scan.dir / RECORDS):
        if record["id"] in dropped:
            continue
        image = record["image"]
        base = scan.dir if image["root"] == "scan" else root
        items.append({**record, "source": str(Path(base or "") / image["path"])})
    return items


def _scan_task(tasks: list[TaskInput], shard: int) -> TaskInput:
    found = [t for t in tasks if t.params.get("shard") == shard]
    if len(found) != 1:
        raise ValueError(f"curate shard {shard}: expected one curate_scan task for it, found {len(found)}")
    return found[0]


STAGE = register(
    Stage(
        name="curate",
        spec=CurateSpec,
        run=run_curate,
        after=("curate_scan", "curate_dedupe"),
        tasks=curate_tasks,
        checkpointable=True,
        version=2,  # 2: the grammar prompt is appendix B verbatim, its reply format parsed
    )
)
