"""The paper's published numbers (``paper_results.toml``, package data) as reference rows and deltas.

With ``--paper`` every table row whose label equals a published row's label (``+SFT``, ``+DPO``,
``+mDPO``, ``+MCM-DPO``, ...) is followed by the published row (``<label> (paper)``) and a delta row
(``Δ vs paper`` = ours - published, on the printed mean); published rows without a match are listed
after the table's own rows. Only columns of the current layout are shown, so a demo table (benchmark
``test``) gets no reference rows. ``paper_comparison.csv`` lists every compared value.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mcmdpo.report.layouts import Column
from mcmdpo.report.tables import Cell, ColumnKey, TableRow

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
)


@dataclass(frozen=True)
class PaperRow:
    table: str
    label: str
    values: Mapping[ColumnKey, float]


@dataclass(frozen=True)
class PaperResults:
    """Published rows of every table in the data file; ``sources``: table id -> (title, source)."""

    rows: tuple[PaperRow, ...]
    sources: Mapping[str, tuple[str, str]]

    def lookup(self, label: str) -> dict[ColumnKey, tuple[float, str]]:
        """Published values (and their table) of ``label`` across tables (first table wins)."""
        out: dict[ColumnKey, tuple[float, str]] = {}
        for row in self.rows:
            if row.label == label:
                for key, value in row.values.items():
                    out.setdefault(key, (value, row.table))
        return out

    def interleave(self, rows: Sequence[TableRow], columns: Sequence[Column]) -> list[TableRow]:
        """``rows`` with each matched row followed by its published row and delta row."""
        keys = {c.key for c in columns}
        out, used = [], set()
        for row in rows:
            out.append(row)
            published = {k: v for k, (v, _) in self.lookup(_base_label(row.label)).items() if k in keys}
            if row.kind != "result" or not published:
                continue
            used.add(_base_label(row.label))
            out.append(TableRow(f"{row.label} (paper)", row.key, "paper", _cells(published)))
            deltas = {k: row.cells[k].mean - v for k, v in published.items() if k in row.cells}
            out.append(TableRow("Δ vs paper", row.key, "delta", _cells(deltas)))
        for label in dict.fromkeys(r.label for r in self.rows if r.label not in used):
            published = {k: v for k, (v, _) in self.lookup(label).items() if k in keys}
            if published:
                out.append(TableRow(f"{label} (paper)", label, "paper", _cells(published)))
        return out

    def notes(self) -> list[str]:
        return [
            f"Reference rows (paper): {title}; source: {source}." for title, source in self.sources.values()
        ]

    def comparisons(self, rows: Sequence[TableRow]) -> list[dict[str, Any]]:
        """One record per (our row, published value of its label): value, paper value, delta."""
        out = []
        for row in (r for r in rows if r.kind == "result"):
            for (benchmark, protocol, metric), (value, table) in self.lookup(_base_label(row.label)).items():
                cell = row.cells.get((benchmark, protocol, metric))
                if cell is not None:
                    runs = ";".join(dict.fromkeys(f.run for f in row.files))
                    values = (
                        runs,
                        row.label,
                        benchmark,
                        protocol,
                        metric,
                        cell.mean,
                        value,
                        cell.mean - value,
                    )
                    out.append(dict(zip(COMPARISON_COLUMNS, (*values, table), strict=True)))
        return out


def _base_label(label: str) -> str:
    """The label without the ``[run]`` suffix added to tell runs apart."""
    return label.split(" [", 1)[0]


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
    rows, sources = [], {}
    for number, table in enumerate(_toml(text).get("tables", []), 1):
        tid = table.get("id", f"table #{number}")
        sources[tid] = (table.get("title", tid), table.get("source", "unknown"))
        keys = [_column_key(c, table.get("protocol", ""), where, tid) for c in table.get("columns", [])]
        for row in table.get("rows", []):
            if len(row.get("values", [])) != len(keys):
                raise ValueError(
                    f"{where}: {tid} row {row.get('label')!r}: {len(keys)} columns, "
                    f"{len(row.get('values', []))} values"
                )
            rows.append(PaperRow(tid, row["label"], dict(zip(keys, map(float, row["values"]), strict=True))))
    return PaperResults(tuple(rows), sources)


def _column_key(column: str, protocol: str, where: str, table: str) -> ColumnKey:
    benchmark, _, metric = column.partition(".")
    if not metric:
        raise ValueError(f"{where}: {table}: column {column!r} must read '<benchmark>.<metric>'")
    return (benchmark, protocol, metric)
