"""The paper-style results table: rows = models / sweep points, column groups = benchmarks.

:func:`build_table` turns :class:`~mcmdpo.report.results.Result` s into a :class:`ResultTable`:
rows whose recipes differ only in seeds merge into one ``mean ± std`` cell (sample std, ddof 1), the
best value per column is marked (higher or lower is better per metric; values equal at the printed
precision tie and are all marked; reference rows never count), and the notes collect the deviations,
the judge model, evaluation limits and intervals that could not be computed. Renderers:
:func:`render_markdown`, :func:`render_latex` (booktabs, compiles standalone), :func:`render_rich`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcmdpo.report.collect import MODEL_STAGES, MetricsFile
from mcmdpo.report.labels import BASELINE, model_label, row_key, row_label
from mcmdpo.report.layouts import Column, ColumnGroup, select_columns
from mcmdpo.report.results import BootstrapConfig, Result

if TYPE_CHECKING:
    from rich.table import Table

DIGITS = 2
ColumnKey = tuple[str, str, str]


@dataclass(frozen=True)
class Cell:
    """The values of one row in one column: one per seed; ``ci`` when there is a single value."""

    values: tuple[float, ...]
    ci: tuple[float, float] | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, digits: int = DIGITS, pm: str = "±") -> str:
        std = self.std
        return f"{self.mean:.{digits}f}" + (f" {pm} {std:.{digits}f}" if std is not None else "")

    def ci_text(self, digits: int = DIGITS) -> str:
        return f"{self.ci[0]:.{digits}f}–{self.ci[1]:.{digits}f}" if self.ci else ""


@dataclass
class TableRow:
    """One table row: ``kind`` is ``result`` (ours), ``paper`` (published numbers) or ``delta``."""

    label: str
    key: str
    kind: str
    cells: dict[ColumnKey, Cell]
    files: list[MetricsFile] = field(default_factory=list)
    model: str = ""
    """The model's label alone (stage + loss kind), for figure legends."""
    best: set[ColumnKey] = field(default_factory=set)

    @property
    def seeds(self) -> list[int]:
        return sorted({f.seed for f in self.files})


@dataclass
class ResultTable:
    groups: list[ColumnGroup]
    rows: list[TableRow]
    notes: list[str]
    paper: Any = None
    """The :class:`~mcmdpo.report.paper.PaperComparison` of the rows (``--paper``), else None."""

    @property
    def columns(self) -> list[Column]:
        return [c for g in self.groups for c in g.columns]


def build_table(
    results: Sequence[Result],
    layout: str = "auto",
    labels: Mapping[str, str] | None = None,
    config: BootstrapConfig = BootstrapConfig(),
    paper: Any = None,
    paper_table: str | None = None,
) -> ResultTable:
    """The table of ``results`` in ``layout``; ``paper``: a :class:`~mcmdpo.report.paper.PaperResults`
    whose rows are matched with ours (``paper_table``: the published table the run reproduces)."""
    labels = dict(labels or {})
    altext = list(dict.fromkeys(r.file.benchmark for r in results if r.file.kind == "altext"))
    groups = select_columns(
        layout, altext, {(r.file.benchmark, r.metric.protocol, r.metric.name) for r in results}
    )
    if not groups:
        found = sorted({r.file.benchmark for r in results}) or ["none"]
        raise ValueError(f"layout {layout!r}: no column has a value (benchmarks found: {', '.join(found)})")
    rows = _result_rows(results, labels)
    columns = [c for g in groups for c in g.columns]
    mark_best(rows, columns)
    comparison = paper.compare(rows, columns, paper_table) if paper is not None else None
    notes = table_notes(rows, results, config, comparison)
    if comparison is not None:
        rows = comparison.interleave(rows)
    return ResultTable(groups, rows, notes, comparison)


def row_order(file: MetricsFile) -> tuple[Any, ...]:
    """Baselines first (Table 2's layout, in recipe order: the sort is stable), then by stage, loss
    kind and sweep values."""
    stages = list(MODEL_STAGES.values())
    stage = stages.index(file.model_stage) if file.model_stage in stages else len(stages)
    if file.model_stage == BASELINE:
        stage = -1
    kind = str(((file.doc.get("model_spec") or {}).get("loss") or {}).get("kind", ""))
    kinds = ("", "dpo", "mdpo", "mcmdpo")
    points = tuple((k, _sortable(v)) for k, v in sorted(file.point.items()))
    return (stage, kinds.index(kind) if kind in kinds else len(kinds), points)


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) and not isinstance(value, bool) else (1, str(value))


def _result_rows(results: Sequence[Result], labels: Mapping[str, str]) -> list[TableRow]:
    by_group: dict[str, list[Result]] = {}  # rows of seeds share a group
    runs = list(dict.fromkeys(r.file.run for r in results))
    for r in results:
        by_group.setdefault(r.file.group, []).append(r)
    rows = [_row(group) for group in by_group.values()]
    rows.sort(key=lambda row: (runs.index(row.files[0].run), row_order(row.files[0])))
    for row in rows:
        row.label = labels.get(row.key, row_label(row.files[0], labels))
        row.model = model_label(row.files[0], labels)
    _disambiguate(rows)
    return rows


def _row(results: list[Result]) -> TableRow:
    files = list({id(r.file): r.file for r in results}.values())
    cells: dict[ColumnKey, list[Result]] = {}
    for r in results:
        cells.setdefault((r.file.benchmark, r.metric.protocol, r.metric.name), []).append(r)
    out = {}
    for key, rs in cells.items():
        ci = (rs[0].ci_low, rs[0].ci_high) if len(rs) == 1 and rs[0].has_interval else None
        out[key] = Cell(tuple(r.value for r in rs), ci)
    return TableRow("", row_key(files[0]), "result", out, files)


def _disambiguate(rows: list[TableRow]) -> None:
    """Rows of different runs (or recipes) with the same label get the run name appended."""
    for label in {r.label for r in rows}:
        same = [r for r in rows if r.label == label]
        if len(same) > 1:
            for r in same:
                r.label = f"{label} [{', '.join(dict.fromkeys(f.run for f in r.files))}]"
    seen: dict[str, int] = {}
    for r in rows:  # still equal (same run, recipes differing outside the sweep): number them
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"


def mark_best(rows: Sequence[TableRow], columns: Sequence[Column], digits: int = DIGITS) -> None:
    """Mark, per column, every ``result`` row whose printed mean equals the best printed mean."""
    for column in columns:
        shown = {
            id(r): round(r.cells[column.key].mean, digits)
            for r in rows
            if r.kind == "result" and column.key in r.cells and math.isfinite(r.cells[column.key].mean)
        }
        if not shown:
            continue
        best = max(shown.values()) if column.metric.higher_is_better else min(shown.values())
        for r in rows:
            if shown.get(id(r)) == best:
                r.best.add(column.key)


def table_notes(
    rows: Sequence[TableRow], results: Sequence[Result], config: BootstrapConfig, paper: Any
) -> list[str]:
    """Notes under the table: marking rule, seeds, intervals, deviations, judge, limits, and with
    ``paper`` (a :class:`~mcmdpo.report.paper.PaperComparison`) the compared tables and missing rows."""
    notes = ["Bold: best per column (higher is better, except rates/CHAIR/Hal/Cog: lower); ties all bold."]
    multi = [r for r in rows if r.kind == "result" and any(len(c.values) > 1 for c in r.cells.values())]
    if multi:
        notes.append(
            "mean ± std (sample std) over seeds: " + "; ".join(f"{r.label}: seeds {r.seeds}" for r in multi)
        )
    if config.resamples:
        notes.append(
            f"{config.confidence:.0%} bootstrap intervals over test items ({config.resamples} resamples, "
            f"seed {config.seed}) are in results.csv (ci_low, ci_high)."
        )
    notes += sorted(
        {
            f"No interval for {r.file.model}/{r.file.benchmark} {r.metric.name}: {r.note}"
            for r in results
            if r.note and config.resamples
        }
    )
    notes += _file_notes({id(r.file): r.file for r in results}.values())
    if paper is not None:
        notes += paper.notes(rows)
    return notes


def _file_notes(files: Iterable[MetricsFile]) -> list[str]:
    deviations: dict[str, None] = {}
    judges: dict[str, None] = {}
    limits: dict[str, None] = {}
    for f in files:
        deviations.update(dict.fromkeys(f.doc.get("deviations") or []))
        judge = (f.doc.get("metrics") or {}).get("judge") if f.kind == "mmhal" else None
        if judge:
            returned = ", ".join(judge.get("returned_models") or []) or "not reported"
            judges[f"MMHal judge: {judge.get('model')} (endpoint returned: {returned})"] = None
        if f.doc.get("limit") is not None:
            limits[f"Evaluated on the first {f.doc['limit']} items of each benchmark (eval.limit)."] = None
    return [*(f"Deviation: {d}" for d in deviations), *judges, *limits]


# ---------------------------------------------------------------- renderers


def _headers(table: ResultTable) -> list[str]:
    return [f"{g.title} {c.header}" for g in table.groups for c in g.columns]


def _cell_text(row: TableRow, column: Column, bold: tuple[str, str], pm: str = "±") -> str:
    cell = row.cells.get(column.key)
    if cell is None:
        return "–"
    if row.kind == "delta":
        return f"{cell.mean:+.{DIGITS}f}"
    text = cell.text(pm=pm)
    return f"{bold[0]}{text}{bold[1]}" if column.key in row.best else text


def render_markdown(table: ResultTable) -> str:
    """A Markdown table (best values in ``**bold**``), a table of the intervals, then the notes."""
    header = ["Model", *_headers(table)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|"]
    for row in table.rows:
        label = f"*{row.label}*" if row.kind != "result" else row.label
        lines.append(
            "| " + " | ".join([label, *(_cell_text(row, c, ("**", "**")) for c in table.columns)]) + " |"
        )
    ci_rows = [r for r in table.rows if r.kind == "result" and any(c.ci for c in r.cells.values())]
    if ci_rows:
        lines += ["", "95% bootstrap intervals (percentile, over test items):", "", *lines[:2]]
        for row in ci_rows:
            cells = [row.cells[c.key].ci_text() if c.key in row.cells else "–" for c in table.columns]
            lines.append("| " + " | ".join([row.label, *(c or "–" for c in cells)]) + " |")
    lines += ["", *(f"- {note}" for note in table.notes)]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                 "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$", "≥": r"$\geq$", "≤": r"$\leq$"}  # fmt: skip


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and map ±, –, Δ) in plain text."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: ResultTable) -> str:
    """A standalone LaTeX document: one booktabs table with spanning benchmark headers, then the notes."""
    spec = "l" + "".join("c" * len(g.columns) for g in table.groups)
    spans, rules, start = [""], [], 2
    for g in table.groups:
        end = start + len(g.columns) - 1
        spans.append(rf"\multicolumn{{{len(g.columns)}}}{{c}}{{{latex_escape(g.title)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{end}}}")
        start = end + 1
    body = [" & ".join(spans) + r" \\", "".join(rules)]
    body.append(" & ".join(["Model", *(latex_escape(c.header) for c in table.columns)]) + r" \\")
    body.append(r"\midrule")
    for row in table.rows:
        cells = [latex_escape(_cell_text(row, c, ("", ""))) for c in table.columns]
        cells = [
            rf"\textbf{{{t}}}" if c.key in row.best else t for c, t in zip(table.columns, cells, strict=True)
        ]
        label = latex_escape(row.label)
        body.append(" & ".join([label if row.kind == "result" else rf"\textit{{{label}}}", *cells]) + r" \\")
    notes = "\n".join(rf"\item {latex_escape(n)}" for n in table.notes)
    width = _page_width(table)
    return LATEX_TEMPLATE % {
        "spec": spec,
        "body": "\n".join(body),
        "notes": notes or r"\item (none)",
        "width": width,
    }


def _page_width(table: ResultTable, cm_per_char: float = 0.23) -> float:
    """A page as wide as the table (never shrunk): widest text per column x ~0.23 cm, plus padding."""
    label = max([len("Model"), *(len(r.label) for r in table.rows)])
    widths = [
        max([len(c.header), *(len(_cell_text(r, c, ("", ""))) for r in table.rows)]) for c in table.columns
    ]
    return max(21.0, 3.5 + cm_per_char * (label + sum(widths)) + 0.5 * (len(widths) + 1))


LATEX_TEMPLATE = r"""\documentclass[10pt]{article}
\usepackage{booktabs}
\usepackage[paperwidth=%(width).1fcm,paperheight=29.7cm,margin=1.5cm]{geometry}
\pagestyle{empty}
\begin{document}
\begin{table}[ht]
\centering
\begin{tabular}{%(spec)s}
\toprule
%(body)s
\bottomrule
\end{tabular}
\end{table}
\begin{itemize}\footnotesize
%(notes)s
\end{itemize}
\end{document}
"""


def render_rich(table: ResultTable, title: str = "results") -> Table:
    """A rich ``Table`` for the terminal (best values bold; rich wraps it to the terminal width)."""
    from rich.table import Table

    out = Table(title=title, caption="bold: best per column; intervals and notes: mcmdpo report RUN_DIR")
    out.add_column("model", no_wrap=True)
    for g in table.groups:
        for c in g.columns:
            header = f"{g.title}\n{c.header}"
            words = max(len(w) for w in header.split())  # never cut a word ("ROUG…"): wrap between words
            out.add_column(header, justify="right", min_width=words, overflow="fold")
    for row in table.rows:
        cells = [_cell_text(row, c, ("[bold]", "[/bold]")) for c in table.columns]
        out.add_row(row.label if row.kind == "result" else f"[italic]{row.label}[/italic]", *cells)
    return out
