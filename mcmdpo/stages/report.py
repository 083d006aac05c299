"""Stage ``report``: the paper-style tables and figures of what the score tasks it consumes wrote.

Runs wherever scoring does (implied by ``[score]``, itself implied by ``[eval]``): one CPU task that
reads every score task of the run, all sweep points together (``gather``), the ``metrics.jsonl`` of
the training tasks upstream of them (for the training curves) and the ``represent`` tasks (paper Fig.
7, with ``representations = true``), and writes into its task folder (see
:mod:`mcmdpo.report.outputs`): ``results.csv``, ``table.md``, ``table.tex``, ``figures/*.png``,
``representations.csv`` and (``html = true``, the default) ``index.html`` with its case thumbnails
``cases/``. ``mcmdpo report RUN_DIR [RUN_DIR ...]`` writes the same for several runs.
"""

from __future__ import annotations

from mcmdpo.batch.errors import StateError
from mcmdpo.batch.stage import Stage, TaskContext, register
from mcmdpo.report.spec import ReportSpec

VERSION = 1


def run_report(ctx: TaskContext) -> list[str]:
    """Write the report of the consumed score tasks into the task folder."""
    from mcmdpo.report.outputs import write_report

    tasks = [t.task_id for t in ctx.inputs.get("score", [])]
    if not tasks:
        raise StateError("report: no finished score task among this task's inputs")
    tasks += [t.task_id for t in ctx.inputs.get("represent", [])]
    written = write_report([ctx.run_dir], ctx.out_dir, ctx.spec, score_tasks=tasks)
    ctx.summary.update(values=len(written.results), rows=sum(r.kind == "result" for r in written.table.rows))
    ctx.log.info("report: %d values\n%s", len(written.results), written.markdown)
    return written.relative()


STAGE = register(
    Stage(
        name="report",
        spec=ReportSpec,
        run=run_report,
        after=("score", "represent"),
        kind="cpu",
        version=VERSION,
        implied_by=("score",),
        gather=True,
    )
)
