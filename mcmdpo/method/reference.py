"""Scoring a precompute shard with the frozen reference model, batch by batch, resumably.

The token sequences come from :class:`mcmdpo.method.samples.SampleSource` (the same path the policy uses);
finished batches go to a :class:`mcmdpo.batch.resumable.BatchLedger` under the task's ``.work/``, so a
requeued or killed task continues after its last finished batch with the same fixed batches and
computes exactly what an uninterrupted one does. ``spec`` is a ``[reference]`` spec (``batch_size``,
``engine``, ``conditions``, ``dtype``, ``device``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.method.model.images import check_geometry

if TYPE_CHECKING:
    from mcmdpo.batch.stage import TaskContext
    from mcmdpo.method.data.shards import PreferenceShards


def score_shard(
    ctx: TaskContext, spec: Any, shards: PreferenceShards, model_path: Path, attrs: dict
) -> tuple[dict, int]:
    """Run the batches not yet in the ledger; return ``{condition: float64 [N]}`` in row order and the
    number of rows an earlier attempt had scored."""
    import numpy as np

    from mcmdpo.batch.resumable import BatchLedger

    ledger = BatchLedger.keyed(ctx.work_dir, "logprobs", attrs["key"])
    rows = {int(r["id"]): r for r in ledger.resume()}
    resumed, n = len(rows), len(shards)
    batches = [range(s, min(s + spec.batch_size, n)) for s in range(0, n, spec.batch_size)]
    todo = [b for b in batches if any(i not in rows for i in b)]
    if rows and todo:
        ctx.log.info("resuming at sample %d/%d", todo[0].start, n)
    if todo:
        done = n - sum(len(b) for b in todo)
        ledger.run(ctx, todo, scorer(spec, shards, model_path, attrs["mode"]), done=done, total=n)
        rows = {int(r["id"]): r for r in ledger.resume()}
    return {c: np.array([rows[i][c] for i in range(n)], dtype=np.float64) for c in spec.conditions}, resumed


def scorer(
    spec: Any, shards: PreferenceShards, model_path: Path, mode: str
) -> Callable[[range], list[dict[str, Any]]]:
    """``batch rows -> ledger records`` with the frozen model (loaded here, once)."""
    import torch

    from mcmdpo.method.logprobs import sequence_logprobs
    from mcmdpo.method.model.load import load_frozen
    from mcmdpo.method.samples import SampleSource

    model, processor = load_frozen(model_path, mode, spec.dtype, spec.device)  # type: ignore[arg-type]
    check_geometry(
        processor, shards.readers[0].attrs.get("patch_shape"), shards.paths[0], "the reference model"
    )
    source = SampleSource(shards, processor, mode)

    def compute(rows: range) -> list[dict[str, Any]]:
        batch = [source.preference_tokens(i) for i in rows]
        with torch.no_grad():
            out = sequence_logprobs(model, batch, engine=spec.engine, mode=mode, conditions=spec.conditions)
        values = {c: v.detach().cpu().tolist() for c, v in out.items()}
        return [{"id": i, **{c: values[c][k] for c in values}} for k, i in enumerate(rows)]

    return compute
