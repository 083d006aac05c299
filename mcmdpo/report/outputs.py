"""Write a report folder (``write_report``) or a terminal table (``results_table``) from run dirs.

``<out>/results.csv``, ``table.md``, ``table.tex``, ``figures/*.png``, and with ``--paper``
``paper_comparison.csv``, with ``--compare A B`` ``compare.csv``, with ``represent`` tasks (paper Fig. 7)
``representations.csv`` and ``figures/representations.png``; runs with curation add ``funnel.md``,
``funnel.csv`` and ``figures/funnel_<run>.png`` (:mod:`mcmdpo.report.funnel`), alone when nothing is
scored yet. With ``[report] html`` (the default) ``index.html`` and its case thumbnails ``cases/``
(:mod:`mcmdpo.report.html`); a run dir with a collected human evaluation (``<run>/humaneval/``,
:mod:`mcmdpo.report.humaneval_results`) adds ``humaneval.csv``, ``humaneval.md`` and
``figures/humaneval.png``. Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mcmdpo.batch.artifacts import atomic_path, write_text_atomic
from mcmdpo.report.spec import ReportSpec

if TYPE_CHECKING:
    from rich.table import Table

    from mcmdpo.report.collect import Collection
    from mcmdpo.report.compare import Comparison
    from mcmdpo.report.humaneval_results import StudySummary
    from mcmdpo.report.paper import PaperResults
    from mcmdpo.report.results import BootstrapConfig, Result
    from mcmdpo.report.tables import ResultTable

RESULTS_CSV = "results.csv"
TABLE_MD = "table.md"
TABLE_TEX = "table.tex"
FIGURES = "figures"
PAPER_CSV = "paper_comparison.csv"
COMPARE_CSV = "compare.csv"
HUMANEVAL_CSV = "humaneval.csv"
HUMANEVAL_MD = "humaneval.md"


class NoResults(ValueError):
    """The run dirs hold no finished score task with metrics yet."""


@dataclass
class ReportOutputs:
    """What :func:`write_report` wrote, and the table and comparisons it computed."""

    out_dir: Path
    files: list[Path]
    markdown: str
    table: ResultTable | None
    results: list[Result]
    comparisons: list[Comparison] = field(default_factory=list)

    def relative(self) -> list[str]:
        return [str(p.relative_to(self.out_dir)) for p in self.files]


@dataclass(frozen=True)
class Built:
    """What :func:`build` computed: the collected files, their intervals, the table, the paper's rows."""

    collection: Collection
    results: list[Result]
    table: ResultTable
    paper: PaperResults | None


def _bootstrap(spec: ReportSpec) -> BootstrapConfig:
    from mcmdpo.report.results import BootstrapConfig

    return BootstrapConfig(spec.resamples, spec.seed, spec.confidence)


def build(
    run_dirs: Sequence[Path | str], spec: ReportSpec, score_tasks: Sequence[str] | None = None
) -> Built:
    """Collect, compute intervals and build the table."""
    from mcmdpo.report.collect import collect

    return build_from(collect(run_dirs, score_tasks), spec)


def build_from(collection: Collection, spec: ReportSpec) -> Built:
    """:func:`build` on an existing collection."""
    from mcmdpo.report.paper import load_paper_results
    from mcmdpo.report.results import compute_results
    from mcmdpo.report.tables import build_table

    if not collection.files:
        where = ", ".join(str(d) for d in collection.run_dirs)
        raise NoResults(f"{where}: no finished score task with metrics yet (run `mcmdpo status` to see why)")
    config = _bootstrap(spec)
    results = compute_results(collection, config)
    paper = load_paper_results() if spec.paper else None
    table = build_table(results, spec.layout, spec.labels, config, paper, spec.paper_table)
    return Built(collection, results, table, paper)


def write_report(
    run_dirs: Sequence[Path | str],
    out_dir: Path | str,
    spec: ReportSpec | None = None,
    compare: tuple[str, str] | None = None,
    score_tasks: Sequence[str] | None = None,
) -> ReportOutputs:
    """Write the report of ``run_dirs`` into ``out_dir``.

    ``compare``: two row names (``--compare``); ``score_tasks``: restrict to these task ids (score
    and represent tasks, and the training tasks upstream of them), as the report stage does.
    """
    from mcmdpo.report.collect import collect
    from mcmdpo.report.compare import compare_rows
    from mcmdpo.report.funnel import funnel_markdown, write_funnels
    from mcmdpo.report.representations import write_representations
    from mcmdpo.report.tables import render_markdown

    spec, out = spec or ReportSpec(), Path(out_dir)
    collection = collect(run_dirs, score_tasks)
    funnel_files = write_funnels(collection.funnels, out, out / FIGURES if spec.figures else None)
    if not collection.files and collection.funnels:  # curation only (or no scores yet)
        return ReportOutputs(out, funnel_files, funnel_markdown(collection.funnels), None, [])
    built = build_from(collection, spec)
    comparisons = compare_rows(built.table.rows, *compare, _bootstrap(spec)) if compare else []
    figures = out / FIGURES if spec.figures else None
    represented, rep_markdown = write_representations(collection.representations, spec.labels, out, figures)
    files = [*write_tables(built, out, comparisons, compare, rep_markdown), *represented]
    if spec.figures:
        from mcmdpo.report.figures import write_figures

        files += write_figures(built.table, collection.training, out / FIGURES)
    studies, study_files, study_markdown = include_studies(collection.run_dirs, out)
    files += study_files
    if spec.html:
        from mcmdpo.report.html import write_html

        shown_apart = {figure for _, figure in studies}  # in the human-evaluation section
        pngs = [f for f in [*files, *funnel_files] if f.suffix == ".png" and f not in shown_apart]
        files += write_html(out, built.table, pngs, studies, collection.runs)
    markdown = render_markdown(built.table) + (f"\n{rep_markdown}" if rep_markdown else "") + study_markdown
    if collection.funnels:
        markdown += "\n" + funnel_markdown(collection.funnels)
    return ReportOutputs(out, files + funnel_files, markdown, built.table, built.results, comparisons)


def write_tables(
    built: Built,
    out: Path,
    comparisons: Sequence[Comparison],
    compare: tuple[str, str] | None,
    extra_markdown: str = "",
) -> list[Path]:
    """``results.csv``, ``table.md`` (with ``extra_markdown`` after the table), ``table.tex``, and the
    paper and ``--compare`` CSVs when asked."""
    from mcmdpo.report.compare import COMPARE_COLUMNS
    from mcmdpo.report.paper import COMPARISON_COLUMNS
    from mcmdpo.report.results import records_csv, write_csv
    from mcmdpo.report.tables import render_latex, render_markdown

    files = [out / RESULTS_CSV, out / TABLE_MD, out / TABLE_TEX]
    write_csv(built.results, files[0])
    write_text_atomic(
        files[1], render_markdown(built.table) + (f"\n{extra_markdown}" if extra_markdown else "")
    )
    write_text_atomic(files[2], render_latex(built.table))
    paper = built.table.paper
    if paper is not None:
        files.append(out / PAPER_CSV)
        write_text_atomic(files[-1], records_csv(paper.records(built.table.rows), COMPARISON_COLUMNS))
    if comparisons and compare:
        files.append(out / COMPARE_CSV)
        write_text_atomic(files[-1], records_csv([c.record(*compare) for c in comparisons], COMPARE_COLUMNS))
    return files


def include_studies(
    run_dirs: Sequence[Path], out: Path
) -> tuple[list[tuple[StudySummary, Path]], list[Path], str]:
    """The collected human evaluations of the run dirs (``<run>/humaneval/humaneval.json``): their rows
    as ``humaneval.csv`` / ``humaneval.md`` and their figures under ``figures/`` (copied, so that the
    report folder stands alone); returns (summary, figure in ``out``) pairs, the files and the Markdown."""
    from mcmdpo.report.humaneval_results import (
        SUMMARY_COLUMNS,
        run_summary,
        summary_markdown,
        summary_records,
    )
    from mcmdpo.report.results import records_csv

    studies, files = [], []
    for run_dir in run_dirs:
        found = run_summary(run_dir)
        if found is None:
            continue
        summary, figure = found
        copy = out / FIGURES / (f"humaneval_{summary.run}.png" if len(run_dirs) > 1 else "humaneval.png")
        if figure.is_file():
            with atomic_path(copy) as tmp:
                shutil.copyfile(figure, tmp)
            files.append(copy)
        studies.append((summary, copy))
    if not studies:
        return [], [], ""
    markdown = "\n" + "\n".join(summary_markdown(s) for s, _ in studies)
    rows = [r for s, _ in studies for r in summary_records(s)]
    write_text_atomic(out / HUMANEVAL_CSV, records_csv(rows, SUMMARY_COLUMNS))
    write_text_atomic(out / HUMANEVAL_MD, markdown.lstrip("\n"))
    return studies, [*files, out / HUMANEVAL_CSV, out / HUMANEVAL_MD], markdown


def results_table(
    run_dirs: Sequence[Path | str], layout: str = "auto", labels: dict[str, str] | None = None
) -> Table | None:
    """A rich ``Table`` of the scores in ``run_dirs`` (no intervals: fast), or None when none exist yet.

    For the end of ``mcmdpo submit`` and the results section of ``mcmdpo status``:
    ``Console().print(table)`` when it is not None.
    """
    from mcmdpo.report.tables import render_rich

    spec = ReportSpec(layout=layout, labels=labels or {}, resamples=0, figures=False)
    try:
        table = build(run_dirs, spec).table
    except NoResults:
        return None
    return render_rich(table, title="results (" + ", ".join(Path(d).name for d in run_dirs) + ")")


def comparison_table(comparisons: Sequence[Comparison], a: str, b: str) -> Table:
    """A rich ``Table`` of ``--compare`` results: values, A - B, paired-bootstrap p-value."""
    from rich.table import Table

    out = Table(title=f"{a} vs {b} (paired bootstrap over test items)")
    for name in ("benchmark", "metric", a, b, "A - B", "p"):
        out.add_column(name, justify="left" if name in ("benchmark", "metric") else "right")
    for c in comparisons:
        metric = f"{c.metric} ({c.protocol})" if c.protocol else c.metric
        out.add_row(
            c.benchmark,
            metric,
            f"{c.a_value:.2f}",
            f"{c.b_value:.2f}",
            f"{c.difference:+.2f}",
            f"{c.p_value:.3g}",
        )
    return out


def run_spec(run_dir: Path | str) -> ReportSpec:
    """The ``[report]`` section a run was planned with (its plan's recipe), else the defaults."""
    from mcmdpo.batch.artifacts import read_json
    from mcmdpo.batch.paths import RunPaths

    plan = RunPaths(Path(run_dir)).plan
    if plan.is_file():
        for stage in read_json(plan).get("stages", []):
            if stage.get("name") == "report" and stage.get("instances"):
                return ReportSpec.model_validate(stage["instances"][0]["spec"])
    return ReportSpec()


def report_runs(
    run_dirs: Sequence[Path | str],
    out_dir: Path | str | None = None,
    layout: str | None = None,
    paper: bool = False,
    compare: tuple[str, str] | None = None,
    html: bool | None = None,
) -> ReportOutputs:
    """``mcmdpo report``: the first run's ``[report]`` settings (``layout``/``paper``/``html`` override
    them), written to ``out_dir`` (default ``<first run dir>/report``)."""
    if not run_dirs:
        raise ValueError("report: give at least one run directory")
    base = run_spec(run_dirs[0])
    update = {"layout": layout or base.layout, "paper": paper or base.paper}
    if html is not None:
        update["html"] = html
    spec = ReportSpec.model_validate({**base.model_dump(), **update})
    return write_report(run_dirs, out_dir or Path(run_dirs[0]) / "report", spec, compare)
