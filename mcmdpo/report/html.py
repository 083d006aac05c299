"""``index.html``: the report as one static page (tables with intervals, figures, human evaluation, cases).

Written by :func:`write_html` next to ``table.md``; pictures live in the report folder
(``figures/*.png``, ``cases/<benchmark>/<hash>.jpg`` thumbnails), so the folder can be copied or
opened from ``file://``. The tables, figures and human evaluation are static markup (escaped with
:func:`~mcmdpo.report.pages.esc`); the cases view (one row per test item: image, post, reference, each
model's output and per-item score; sort by a model's score or by the difference of two models; filter
by text; the item id opens the raw prediction records) is built by ``web/report.js`` from the page's
JSON data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import write_text_atomic
from mcmdpo.report.pages import esc, page

if TYPE_CHECKING:
    from mcmdpo.report.cases import CaseItem, CaseSet
    from mcmdpo.report.humaneval_results import StudySummary
    from mcmdpo.report.tables import ResultTable

INDEX = "index.html"
CASES = "cases"
THUMBNAIL_PX = 160


def write_html(
    out_dir: Path,
    table: ResultTable,
    figures: Sequence[Path],
    studies: Sequence[tuple[StudySummary, Path]] = (),
    runs: Sequence[str] = (),
) -> list[Path]:
    """Write ``index.html`` and the case thumbnails into ``out_dir``; return the files written.

    ``figures``: PNGs inside ``out_dir``; ``studies``: human-evaluation summaries with their figure
    (inside ``out_dir``).
    """
    from mcmdpo.report.cases import case_sets, thumbnails

    files, cases = [], []
    for case in case_sets(table):
        folder = out_dir / CASES / case.benchmark
        images = {
            k: f"{CASES}/{case.benchmark}/{v}" for k, v in thumbnails(case, folder, THUMBNAIL_PX).items()
        }
        files += [out_dir / rel for rel in images.values()]
        cases.append(cases_data(case, images, table))
    title = "mcmdpo report: " + ", ".join(runs) if runs else "mcmdpo report"
    body = report_body(title, table, figures, studies, out_dir, bool(cases))
    write_text_atomic(out_dir / INDEX, page(title, body, {"cases": cases}, ("report.css",), ("report.js",)))
    return [*files, out_dir / INDEX]


def report_body(
    title: str,
    table: ResultTable,
    figures: Sequence[Path],
    studies: Sequence[tuple[StudySummary, Path]],
    out_dir: Path,
    has_cases: bool,
) -> str:
    """The static part of the page: header, navigation, tables, figures, human evaluation, cases shell."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [("tables", "Tables"), ("figures", "Figures")]
    sections += [("humaneval", "Human evaluation")] if studies else []
    sections += [("cases", "Cases")] if has_cases else []
    nav = " ".join(f'<a href="#{key}">{name}</a>' for key, name in sections)
    parts = [
        f'<header><h1>{esc(title)}</h1><p class="meta">written {esc(when)}</p><nav>{nav}</nav></header>',
        f'<section id="tables"><h2>Tables</h2>{table_html(table)}</section>',
        f'<section id="figures"><h2>Figures</h2>{figures_html(figures, out_dir)}</section>',
    ]
    if studies:
        inner = "".join(study_html(summary, figure, out_dir) for summary, figure in studies)
        parts.append(f'<section id="humaneval"><h2>Human evaluation</h2>{inner}</section>')
    if has_cases:
        parts.append(CASES_SHELL)
    return "<main>\n" + "\n".join(parts) + "\n</main>"


CASES_SHELL = """<section id="cases"><h2>Cases</h2>
<p class="hint">One row per test item. Sort by a model's per-item score or by the difference of two
models; the filter matches the item id, post, reference and outputs; click an item id for its raw
prediction records.</p>
<div class="controls">
<label>benchmark <select id="cases-benchmark"></select></label>
<label>per-item score <select id="cases-metric"></select></label>
<label>sort by <select id="cases-sort"></select></label>
<span id="cases-pair"><label>A <select id="cases-a"></select></label>
<label>B <select id="cases-b"></select></label></span>
<label>order <select id="cases-order"><option value="desc">highest first</option>
<option value="asc">lowest first</option></select></label>
<label>filter <input id="cases-filter" type="search" placeholder="text in post, reference, outputs"></label>
<span id="cases-count" class="meta"></span>
</div>
<p id="cases-notes" class="meta"></p>
<table id="cases-table" class="cases"><thead></thead><tbody></tbody></table>
<p><button id="cases-more" type="button" hidden></button></p>
</section>"""


def table_html(table: ResultTable) -> str:
    """The results table: value (± std over seeds) with its bootstrap interval below, best in bold."""
    head1 = ['<th rowspan="2" scope="col">Model</th>']
    head1 += [f'<th colspan="{len(g.columns)}" scope="colgroup">{esc(g.title)}</th>' for g in table.groups]
    head2 = [f'<th scope="col">{esc(c.header)}</th>' for c in table.columns]
    rows = []
    for row in table.rows:
        cells = []
        for column in table.columns:
            cell = row.cells.get(column.key)
            if cell is None:
                cells.append("<td>–</td>")
                continue
            text = f"{cell.mean:+.2f}" if row.kind == "delta" else cell.text()
            best = ' class="best"' if column.key in row.best else ""
            ci = f'<span class="ci">{esc(cell.ci_text())}</span>' if cell.ci else ""
            cells.append(f'<td{best}><span class="v">{esc(text)}</span>{ci}</td>')
        rows.append(
            f'<tr class="kind-{esc(row.kind)}"><th scope="row">{esc(row.label)}</th>{"".join(cells)}</tr>'
        )
    notes = "".join(f"<li>{esc(n)}</li>" for n in table.notes)
    return (
        f'<table class="results"><thead><tr>{"".join(head1)}</tr><tr>{"".join(head2)}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><p class="meta">Small numbers: the percentile bootstrap '
        f'interval over test items.</p><ul class="notes">{notes}</ul>'
    )


def figures_html(figures: Sequence[Path], out_dir: Path) -> str:
    if not figures:
        return '<p class="meta">No figures ([report] figures = false).</p>'
    items = []
    for path in figures:
        rel = esc(path.relative_to(out_dir).as_posix())
        items.append(
            f'<figure><a href="{rel}"><img src="{rel}" alt="{esc(path.stem)}" loading="lazy"></a>'
            f"<figcaption>{esc(path.stem)}</figcaption></figure>"
        )
    return f'<div class="figures">{"".join(items)}</div>'


def study_html(summary: StudySummary, figure: Path, out_dir: Path) -> str:
    """One human-evaluation study: its table (shares with intervals, agreement) and its bar chart."""
    from mcmdpo.report.humaneval_results import summary_table_rows

    header, rows = summary_table_rows(summary)
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    notes = "".join(f"<li>{esc(n)}</li>" for n in summary.notes)
    chart = ""
    if figure.is_file():  # a study collected before its figure could be written has none
        rel = esc(figure.relative_to(out_dir).as_posix())
        chart = f'<figure><img src="{rel}" alt="human evaluation: win, tie and lose per pair"></figure>'
    return (
        f'<h3>{esc(summary.title)}</h3><table class="results"><thead><tr>{head}</tr></thead><tbody>{body}'
        f'</tbody></table><ul class="notes">{notes}</ul>{chart}'
    )


def default_metric(case: CaseSet, table: ResultTable, metrics: Sequence[str]) -> str:
    """The per-item score shown first: the first table column of this benchmark that has one."""
    for column in table.columns:
        if column.benchmark == case.benchmark:
            name = (
                f"{column.metric.protocol}.{column.metric.name}"
                if column.metric.protocol
                else column.metric.name
            )
            if name in metrics:
                return name
    return metrics[0] if metrics else ""


def common_fields(records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Fields with one value in every record of a file (model, paths, settings): kept once, not per item."""
    values = list(records.values())
    if len(values) < 2:
        return {}
    first = values[0]
    return {
        k: v
        for k, v in first.items()
        if k not in ("id", "response") and all(k in r and r[k] == v for r in values[1:])
    }


def item_fields(outputs: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Fields with one value in every model's record of an item (question, reference, image path)."""
    records = [r for r in outputs if r is not None]
    if len(records) < 2:
        return {}
    first = records[0]
    return {
        k: v for k, v in first.items() if k != "response" and all(k in r and r[k] == v for r in records[1:])
    }


def cases_data(case: CaseSet, images: Mapping[str, str], table: ResultTable) -> dict[str, Any]:
    """The JSON the cases view renders: models, per-item score names, and one entry per item.

    A raw record is stored in three parts, merged back for display: fields shared by every record of
    a model's file (``models[m].common``), fields shared by every model's record of the item
    (``items[i].shared``), and the rest (``items[i].outputs[m].record``); this keeps the page about
    a third of the size of the records it shows.
    """
    from mcmdpo.report.layouts import BENCHMARK_TITLES

    metrics = list(dict.fromkeys(k for per_model in case.scores for row in per_model.values() for k in row))
    commons = [common_fields(records) for records in case.records]
    models = [
        {
            "label": m.label,
            "key": m.key,
            "run": m.file.run,
            "source": str(m.file.predictions_path),
            "common": c,
            "fields": list(next(iter(records.values()), {})),  # the file's field order, for display
        }
        for m, c, records in zip(case.models, commons, case.records, strict=True)
    ]
    return {
        "benchmark": case.benchmark,
        "title": BENCHMARK_TITLES.get(case.benchmark, case.benchmark),
        "kind": case.kind,
        "models": models,
        "items": [item_data(case, item, commons, images) for item in case.items],
        "metrics": metrics,
        "metric": default_metric(case, table, metrics),
        "notes": case.notes,
    }


def item_data(
    case: CaseSet, item: CaseItem, commons: Sequence[Mapping[str, Any]], images: Mapping[str, str]
) -> dict[str, Any]:
    """One row of the cases view: the item, and per model its output, scores and record fields."""
    from mcmdpo.report.cases import id_text

    key = id_text(item.id)
    own = [
        None if (r := records.get(key)) is None else {k: v for k, v in r.items() if k not in common}
        for records, common in zip(case.records, commons, strict=True)
    ]
    shared = item_fields(own)
    outputs = [
        None
        if record is None
        else {
            "text": str(record.get("response", "")),
            "scores": scores.get(key, {}),
            "record": {k: v for k, v in record.items() if k not in shared},
        }
        for record, scores in zip(own, case.scores, strict=True)
    ]
    return {
        "id": key,
        "image": images.get(key),
        "context": item.context,
        "question": item.question,
        "reference": item.reference,
        "shared": shared,
        "outputs": outputs,
    }
