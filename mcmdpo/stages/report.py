"""Stage ``report``: the paper-style tables and figures of what the score tasks it consumes wrote.

Runs wherever the recipe lists ``[score]`` (``implied_by``) or ``[report]``; one CPU task after the
score tasks of its sweep point. It reads the metrics files of ``ctx.inputs["score"]`` and the
``metrics.jsonl`` of the training tasks upstream of them (for the training curves), and writes into
its task folder (see :mod:`mcmdpo.report.outputs`): ``results.csv``, ``table.md``, ``table.tex``,
``figures/*.png``. Each sweep point therefore gets its own report; ``mcmdpo report RUN_DIR`` puts
every point (and several runs) into one table.
"""

from __future__ import annotations

from mcmdpo.report.spec import ReportSpec
from mcmdpo.stage import Stage, TaskContext, register

VERSION = 1


def run_report(ctx: TaskContext) -> list[str]:
    """Write the report of the consumed score tasks into the task folder."""
    from mcmdpo.report.outputs import write_report

    tasks = [t.task_id for t in ctx.inputs.get("score", [])]
    if not tasks:
        raise ValueError("report: no finished score task among this task's inputs")
    written = write_report([ctx.run_dir], ctx.out_dir, ctx.spec, score_tasks=tasks)
    ctx.summary.update(values=len(written.results), rows=sum(r.kind == "result" for r in written.table.rows))
    ctx.log.info("report: %d values\n%s", len(written.results), written.markdown)
    return written.relative()


STAGE = register(
    Stage(
        name="report",
        spec=ReportSpec,
        run=run_report,
        after=("score",),
        kind="cpu",
        version=VERSION,
        implied_by=("score",),
    )
)
