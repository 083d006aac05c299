"""The paper's published numbers (``paper_results.toml``, package data) matched to a report's rows.

Every number of the paper's Tables 1-9 is in the data file, each row with the model it is (``base``,
``sft``, ``dpo``, ``mdpo``, ``mcmdpo``; ``zero-shot``: Table 2's other vision-language models) and the
recipe settings it varies (``"preference.loss.gamma" = 0.4``). A row of ours is matched per test set
(``palt``, ``talt``, ``objhal``, ...) with the published row that

1. is the same model (a zero-shot baseline of ours: the ``zero-shot`` row with its label);
2. was trained on the same data: in Tables 2-8 the cells under a data set's columns are the model
   trained on that data set, so ``+DPO (PAlt)`` gets PAlt's ``+DPO`` cells and none on TAlt;
3. has the settings the row states, as the run's recipe has them;
4. explains every value the run sweeps: a swept key is one of the row's settings, or a setting its
   table (``fixed``) or the whole paper (``[paper_setting]``) holds at the same value.

Among the matches the published table the recipe names (``[report] paper_table``) wins, then the row
that states most of the swept keys (``gamma = 0.2`` in a gamma sweep is Table 8's row, not Table 2's),
then the paper's table order. With ``--paper`` every matched row of ours is followed by its published
row (``<label> (paper, Table N)``) and ``Δ vs paper`` (ours - published, on the printed mean); rows of
ours without a counterpart get a note saying why; published rows of the compared tables (of the
named one only, with ``paper_table``) that no row of ours matched are listed after the table's own
rows. ``paper_comparison.csv`` has one line per compared value, naming the table and row it used (or
why there is none).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.report.labels import BASELINE, KIND_KEY, data_label, model_kind, model_label, point_label
from mcmdpo.report.layouts import benchmark_title
from mcmdpo.report.tables import Cell, ColumnKey, TableRow

if TYPE_CHECKING:
    from mcmdpo.report.collect import MetricsFile
    from mcmdpo.report.layouts import Column

DATA_FILE = "paper_results.toml"
COMPARISON_COLUMNS = (
    "run",
    "label",
    "benchmark",
    "protocol",
    "metric",
    "value",
    "paper_value",
    "delta",
    "paper_table",
    "paper_row",
    "note",
)
PREFERENCE_MODELS = ("dpo", "mdpo", "mcmdpo")
UNEXPLAINED = ("data", KIND_KEY)
"""Swept keys the match covers by itself (rule 1: the model, rule 2: the training data)."""


@dataclass(frozen=True)
class PaperRow:
    """One published row: ``values`` per column key, in the toolkit's units."""

    table: str
    label: str
    model: str
    settings: Mapping[str, Any]
    values: Mapping[ColumnKey, float]
    index: int = 0

    def datasets(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k, v in self.values.items() if math.isfinite(v)))


@dataclass(frozen=True)
class PaperTable:
    """One published table of the data file (see its header for the fields)."""

    id: str
    title: str
    rows: tuple[PaperRow, ...]
    kind: str = "results"
    training_data: str = "column"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    duplicate_of: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def comparable(self) -> bool:
        """Rows of ours are matched against it (not Table 1's sizes, not a table printed twice)."""
        return self.kind == "results" and self.duplicate_of is None

    @property
    def number(self) -> str:
        return self.id.removeprefix("table")

    def trained_on(self, dataset: str) -> str:
        """The data set a preference row's cells under ``dataset``'s columns were trained on."""
        return benchmark_title(dataset) if self.training_data == "column" else self.training_data


@dataclass(frozen=True)
class Match:
    """The published row one row of ours is compared with on one test set (or why there is none)."""

    dataset: str
    row: PaperRow | None
    reason: str = ""


@dataclass(frozen=True)
class PaperResults:
    """Every published table; ``setting``: the paper's fixed setting (``[paper_setting]``)."""

    tables: tuple[PaperTable, ...]
    setting: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[PaperRow]:
        """The rows rows of ours are matched against (comparable tables, in the paper's order)."""
        return [r for t in self.tables if t.comparable for r in t.rows]

    def table(self, table_id: str) -> PaperTable:
        found = next((t for t in self.tables if t.id == table_id), None)
        if found is None:
            raise KeyError(f"no published table {table_id!r} (have: {', '.join(t.id for t in self.tables)})")
        return found

    def sizes(self) -> dict[str, dict[str, int]]:
        """Table 1: data set -> {"training", "preference", "test"} record counts."""
        table = self.table("table1")
        return {r.label: {k[2]: int(v) for k, v in r.values.items()} for r in table.rows}

    def match(self, file: MetricsFile, dataset: str, target: str | None = None) -> Match:
        """The published row for a row of ours (``file``: one of its metrics files) on ``dataset``."""
        return best_match(self, file, dataset, target)

    def compare(
        self, rows: Sequence[TableRow], columns: Sequence[Column], target: str | None = None
    ) -> PaperComparison:
        """Match every result row of ours on every test set of ``columns``."""
        keys = [c.key for c in columns]
        datasets = list(dict.fromkeys(k[0] for k in keys))
        covered = {d for r in self.rows for d in r.datasets()}
        matches: dict[int, list[Match]] = {}
        for row in rows:
            if row.kind == "result" and row.files:
                have = {k[0] for k in row.cells}
                found = [self.match(row.files[0], d, target) for d in datasets if d in covered and d in have]
                matches[id(row)] = found
        return PaperComparison(self, keys, matches, target, [d for d in datasets if d not in covered])


@dataclass
class PaperComparison:
    """The matches of one table's rows: reference rows, deltas, notes and CSV records."""

    paper: PaperResults
    columns: list[ColumnKey]
    matches: dict[int, list[Match]]
    target: str | None = None
    uncovered: list[str] = field(default_factory=list)

    def used_tables(self) -> list[PaperTable]:
        """The target table and every table a row was matched with, in the paper's order."""
        used = {m.row.table for ms in self.matches.values() for m in ms if m.row is not None}
        return [t for t in self.paper.tables if t.id in used or t.id == self.target]

    def _published(self, matches: Sequence[Match]) -> dict[ColumnKey, float]:
        out = {}
        for m in matches:
            if m.row is not None:
                out.update({k: v for k, v in m.row.values.items() if k[0] == m.dataset and k in self.columns})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def interleave(self, rows: Sequence[TableRow]) -> list[TableRow]:
        """``rows`` with each matched row followed by its published row and delta row, then the
        published rows of the compared tables (the target table, if named) that no row of ours matched."""
        out = []
        for row in rows:
            out.append(row)
            matches = self.matches.get(id(row), [])
            published = self._published(matches)
            if not published:
                continue
            label = "; ".join(dict.fromkeys(_paper_label(m.row, self.paper) for m in matches if m.row))
            out.append(TableRow(label, row.key, "paper", _cells(published)))
            deltas = {k: row.cells[k].mean - v for k, v in published.items() if k in row.cells}
            out.append(TableRow("Δ vs paper", row.key, "delta", _cells(deltas)))
        return out + self._unmatched_rows()

    def _unmatched_rows(self) -> list[TableRow]:
        used = {(id(m.row), m.dataset) for ms in self.matches.values() for m in ms if m.row is not None}
        out = []
        # the published table the recipe reproduces, when it names one (the base and SFT rows of a
        # Table 7 run match Table 2's, whose other rows are not this run's business); else every one used
        tables = [t for t in self.used_tables() if self.target is None or t.id == self.target]
        for table in tables:
            for prow in table.rows if table.comparable else ():
                cells = {
                    k: v
                    for k, v in prow.values.items()
                    if k in self.columns and (id(prow), k[0]) not in used and math.isfinite(v)
                }
                if cells:
                    label = _paper_label(prow, self.paper)
                    out.append(TableRow(label, f"paper:{table.id}:{prow.index}", "paper", _cells(cells)))
        return out

    def notes(self, rows: Sequence[TableRow]) -> list[str]:
        """Which tables were compared (with the paper's own inconsistencies), and the rows of ours
        without a published counterpart, with the reason."""
        notes = [f"Reference rows (paper): {t.title}; deltas = ours - published." for t in self.used_tables()]
        notes += [n for t in self.used_tables() for n in t.notes]
        for row in rows:
            for m in self.matches.get(id(row), []):
                if m.row is None:
                    notes.append(f"No published counterpart for {row.label} on {benchmark_title(m.dataset)}: "
                                 f"{m.reason}.")  # fmt: skip
        if self.uncovered:
            names = ", ".join(benchmark_title(d) for d in self.uncovered)
            notes.append(f"The paper publishes no results on {names}.")
        return notes

    def records(self, rows: Sequence[TableRow]) -> list[dict[str, Any]]:
        """One record per (row of ours, compared column): value, published value, delta, table, row."""
        out = []
        for row in rows:
            by_dataset = {m.dataset: m for m in self.matches.get(id(row), [])}
            runs = ";".join(dict.fromkeys(f.run for f in row.files))
            for key in self.columns:
                cell, match = row.cells.get(key), by_dataset.get(key[0])
                if cell is None or match is None:
                    continue
                published = match.row.values.get(key, math.nan) if match.row else math.nan
                delta = cell.mean - published if math.isfinite(published) else ""
                paper = (match.row.table, match.row.label) if match.row else ("", "")
                missing = "the paper publishes no value for this metric and protocol"
                note = match.reason if match.row is None else "" if math.isfinite(published) else missing
                values = (runs, row.label, *key, cell.mean, published if delta != "" else "", delta)
                out.append(dict(zip(COMPARISON_COLUMNS, (*values, *paper, note), strict=True)))
        return out


def _paper_label(row: PaperRow, paper: PaperResults) -> str:
    return f"{row.label} (paper, Table {paper.table(row.table).number})"


def _cells(values: Mapping[ColumnKey, float]) -> dict[ColumnKey, Cell]:
    return {k: Cell((v,)) for k, v in values.items() if math.isfinite(v)}


def _toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def load_paper_results(path: Path | None = None) -> PaperResults:
    """Read the published numbers (default: the package's ``paper_results.toml``)."""
    where = str(path) if path else f"mcmdpo/report/{DATA_FILE}"
    text = (
        Path(path).read_text() if path else resources.files("mcmdpo.report").joinpath(DATA_FILE).read_text()
    )
    doc = _toml(text)
    tables = tuple(_table(t, n, where) for n, t in enumerate(doc.get("tables", []), 1))
    return PaperResults(tables, dict(doc.get("paper_setting", {})))


def _table(table: Mapping[str, Any], number: int, where: str) -> PaperTable:
    tid = table.get("id", f"table #{number}")
    protocol, units = table.get("protocol", ""), table.get("units", {})
    columns = table.get("columns", [])
    keys = [_column_key(c, protocol, where, tid) for c in columns]
    rows = []
    for index, row in enumerate(table.get("rows", [])):
        values = row.get("values", [])
        if len(values) != len(keys):
            raise ValueError(
                f"{where}: {tid} row {row.get('label')!r}: {len(keys)} columns, {len(values)} values"
            )
        scaled = [float(v) * float(units.get(c, 1.0)) for c, v in zip(columns, values, strict=True)]
        model = str(row.get("model", "sizes"))
        rows.append(
            PaperRow(
                tid,
                row["label"],
                model,
                dict(row.get("settings", {})),
                dict(zip(keys, scaled, strict=True)),
                index,
            )
        )
    return PaperTable(
        tid,
        table.get("title", tid),
        tuple(rows),
        table.get("kind", "results"),
        table.get("training_data", "column"),
        dict(table.get("fixed", {})),
        table.get("duplicate_of"),
        tuple(table.get("notes", [])),
    )


def _column_key(column: str, protocol: str, where: str, table: str) -> ColumnKey:
    benchmark, _, metric = column.partition(".")
    if table == "table1" or not metric:  # Table 1: record counts, not metrics
        if table != "table1":
            raise ValueError(f"{where}: {table}: column {column!r} must read '<benchmark>.<metric>'")
        return ("sizes", "", column)
    return (benchmark, protocol, metric)


# ---------------------------------------------------------------- matching


@dataclass(frozen=True)
class _Facts:
    """What a row of ours is: model, training data, swept values, and its recipe (for settings)."""

    model: str
    data: str
    point: Mapping[str, Any]
    recipe: Mapping[str, Any]
    label: str
    baseline: str = ""
    """A zero-shot baseline's label (``InstructBLIP (13B)``), matched with the published row's."""


def row_facts(file: MetricsFile) -> _Facts:
    """The facts of the row ``file`` belongs to."""
    recipe = file.recipe or {}
    data = data_label(recipe["data"]) if isinstance(recipe.get("data"), Mapping) else ""
    point = {k: v for k, v in file.point.items() if k not in UNEXPLAINED}
    if file.model_stage == BASELINE:
        return _Facts("zero-shot", data, point, recipe, point_label(point), model_label(file, {}))
    return _Facts(model_kind(file), data, point, recipe, point_label(point))


def best_match(paper: PaperResults, file: MetricsFile, dataset: str, target: str | None = None) -> Match:
    """The published row for the row of ``file`` on ``dataset`` (rules: the module docstring)."""
    facts = row_facts(file)
    rows = [r for r in paper.rows if dataset in r.datasets()]
    same = [r for r in rows if r.model == facts.model and (not facts.baseline or r.label == facts.baseline)]
    if not same:
        return Match(
            dataset, None, f"the paper publishes no {benchmark_title(dataset)} results of this model"
        )
    trained = [r for r in same if _data_ok(paper.table(r.table), r, facts, dataset)]
    if not trained:
        wanted = paper.table(same[0].table).trained_on(dataset)
        title = benchmark_title(dataset)
        trained_on = facts.data or "other data"
        reason = f"trained on {trained_on}; the paper's {title} cells are models trained on {wanted}"
        return Match(dataset, None, reason)
    found = [(r, n) for r in trained if (n := _explains(paper, r, facts)) is not None]
    if not found:
        setting = facts.label or "this recipe's settings"
        return Match(dataset, None, f"the paper publishes no row with {setting}")
    order = [t.id for t in paper.tables]
    found.sort(key=lambda rn: (rn[0].table != target, -rn[1], order.index(rn[0].table), rn[0].index))
    return Match(dataset, found[0][0])


def _data_ok(table: PaperTable, row: PaperRow, facts: _Facts, dataset: str) -> bool:
    """Rule 2: a preference row's cells are the model trained on the table's data for ``dataset``."""
    return row.model not in PREFERENCE_MODELS or facts.data == table.trained_on(dataset)


def _explains(paper: PaperResults, row: PaperRow, facts: _Facts) -> int | None:
    """Rules 3 and 4: None when ``row`` does not fit, else how many swept keys it states itself."""
    for key, wanted in row.settings.items():
        if not _same(recipe_value(facts.recipe, key), wanted):
            return None
    table, stated = paper.table(row.table), 0
    for key, value in facts.point.items():
        if key in row.settings:
            stated += 1
            continue
        expected = table.fixed.get(key, paper.setting.get(key, _MISSING))
        if expected is _MISSING or not _same(value, expected):
            return None
    return stated


_MISSING = object()


def recipe_value(recipe: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a resolved recipe (``lambda`` is stored as ``lambda_``)."""
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return _MISSING
        node = node.get(part, node.get(f"{part}_", _MISSING))
    return node


def _same(value: Any, wanted: Any) -> bool:
    """Equal as recipe values: numbers by value, ablation lists as sets of groups (``pair+cpo`` =
    ``["pair", "cpo"]``), ``{one_of = [...]}`` any of its values."""
    if isinstance(wanted, Mapping) and "one_of" in wanted:
        return any(_same(value, w) for w in wanted["one_of"])
    if value is _MISSING:
        return False
    if isinstance(wanted, list | tuple) or isinstance(value, list | tuple):
        return _groups(value) == _groups(wanted)
    if isinstance(wanted, int | float) and isinstance(value, int | float) and not isinstance(value, bool):
        return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
    return value == wanted


def _groups(value: Any) -> set[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    return {part.strip().lower() for name in names for part in str(name).split("+") if part.strip()}
