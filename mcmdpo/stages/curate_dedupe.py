"""Stage ``curate_dedupe``: one task clusters the signatures of every scanned shard.

Implied by ``[curate]``. Writes ``dedupe.json`` (:mod:`mcmdpo.curate.duplicates`): the positions
dropped as duplicate ids, near-duplicate images (pHash) and near-duplicate texts (MinHash of the
alt-text and the post text, ``[curate.dedupe] text_on``), with every cluster listed (the first record
in file order is kept).
"""

from __future__ import annotations

from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.handoff import CURATE_DEDUPE as DEDUPE


class CurateDedupeSpec(StageSpec):
    """``[curate_dedupe]`` (optional: implied by ``[curate]``, whose section holds the settings)."""


def run_curate_dedupe(ctx: TaskContext) -> list[str]:
    """Cluster the signatures of every ``curate_scan`` task."""
    from mcmdpo.batch.artifacts import write_json_atomic
    from mcmdpo.curate.duplicates import find_duplicates
    from mcmdpo.curate.spec import curate_spec

    spec = curate_spec(dict(ctx.recipe))
    result = find_duplicates(ctx.input_dirs("curate_scan"), spec)
    write_json_atomic(ctx.out_dir / DEDUPE, result)
    ctx.summary.update(kept=result["kept"], **result["counts"])
    return [DEDUPE]


STAGE = register(
    Stage(
        name="curate_dedupe",
        spec=CurateDedupeSpec,
        run=run_curate_dedupe,
        after=("curate_scan",),
        reads=("curate",),
        implied_by=("curate",),
        version=2,  # 2: text duplicates compare the alt-text and the post text (text_on)
    )
)
