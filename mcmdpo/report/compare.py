"""Paired bootstrap comparison of two table rows on the same test items (``mcmdpo report --compare A B``).

A and B name rows by label (``+MCM-DPO``), row key (``preference@preference.loss.gamma=0.2``) or
``<run>:<label or key>``; each must be one run's row (a row averaged over seeds has no single set of
predictions: name one run). For every benchmark both rows were scored on, their per-item columns are
aligned by item id (the item sets must be equal) and resampled with the same draws; the p-value of
:func:`mcmdpo.report.stats.paired_p_value` is reported per metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcmdpo.report.collect import MetricsFile
from mcmdpo.report.estimators import metric_defs, protocols
from mcmdpo.report.results import BootstrapConfig
from mcmdpo.report.tables import TableRow

COMPARE_COLUMNS = (
    "benchmark",
    "protocol",
    "metric",
    "a",
    "b",
    "a_value",
    "b_value",
    "difference",
    "p_value",
    "n",
)


@dataclass(frozen=True)
class Comparison:
    """One metric of one benchmark: A's and B's values, A - B and the paired-bootstrap p-value."""

    benchmark: str
    protocol: str
    metric: str
    a_value: float
    b_value: float
    difference: float
    p_value: float
    n: int

    def record(self, a: str, b: str) -> dict[str, Any]:
        values = (
            self.benchmark,
            self.protocol,
            self.metric,
            a,
            b,
            self.a_value,
            self.b_value,
            self.difference,
            self.p_value,
            self.n,
        )
        return dict(zip(COMPARE_COLUMNS, values, strict=True))


def find_row(rows: Sequence[TableRow], name: str) -> tuple[TableRow, str]:
    """The single ``result`` row named ``name`` (label, row key, or ``run:label`` / ``run:key``) and the
    run it names (``""`` when none)."""
    runs = {f.run for r in rows for f in r.files}
    run, _, rest = name.partition(":")
    if run not in runs:
        run, rest = "", name
    matches = [
        r
        for r in rows
        if r.kind == "result"
        and rest in (r.label, r.key, r.label.split(" [", 1)[0])
        and (not run or any(f.run == run for f in r.files))
    ]
    if len(matches) != 1:
        known = ", ".join(repr(r.label) for r in rows if r.kind == "result")
        what = "no row" if not matches else f"{len(matches)} rows"
        raise ValueError(f"--compare {name!r}: {what} with that label or key (rows: {known})")
    return matches[0], run


def _single_run_files(rows: Sequence[TableRow], name: str) -> list[MetricsFile]:
    row, run = find_row(rows, name)
    files = [f for f in row.files if not run or f.run == run]
    if len({f.run for f in files}) > 1:
        runs = sorted({f.run for f in files})
        raise ValueError(f"--compare {name!r}: the row averages runs {runs}; name one as <run>:{name}")
    return files


def compare_rows(
    rows: Sequence[TableRow], a: str, b: str, config: BootstrapConfig = BootstrapConfig()
) -> list[Comparison]:
    """Paired-bootstrap comparisons of rows ``a`` and ``b`` on every benchmark they share."""
    files_a, files_b = _single_run_files(rows, a), _single_run_files(rows, b)
    by_benchmark = {f.benchmark: f for f in files_b}
    out = []
    for fa in files_a:
        fb = by_benchmark.get(fa.benchmark)
        if fb is not None:
            out += compare_files(fa, fb, config)
    if not out:
        raise ValueError(f"--compare: {a!r} and {b!r} share no benchmark with per-item scores")
    return out


def aligned_samples(
    fa: MetricsFile, fb: MetricsFile
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Both files' per-item rows in A's item order; the item ids must be the same set."""
    sa, sb = fa.samples(), fb.samples()
    ids_a, by_id = [s.get("id") for s in sa], {s.get("id"): s for s in sb}
    if not sa or set(ids_a) != set(by_id) or len(ids_a) != len(sb):
        missing = sorted(map(str, set(ids_a) ^ set(by_id)))[:5]
        detail = f"first differing ids: {missing}" if missing else "duplicate ids or no per-item scores"
        raise ValueError(
            f"--compare {fa.benchmark}: {fa.path} and {fb.path} are not scored on the same items ({detail})"
        )
    return sa, [by_id[i] for i in ids_a]


def compare_files(fa: MetricsFile, fb: MetricsFile, config: BootstrapConfig) -> list[Comparison]:
    """Every shared metric of two metrics files of one benchmark, paired over items."""
    from mcmdpo.report.stats import paired_p_value, point_value

    sa, sb = aligned_samples(fa, fb)
    out = []
    for protocol in [p for p in protocols(fa.doc) if p in protocols(fb.doc)]:
        for metric in metric_defs(fa.kind, protocol):
            try:
                ca, cb = metric.columns(sa, fa.doc), metric.columns(sb, fb.doc)
            except (KeyError, TypeError, ValueError):
                continue  # per-item scores lack this statistic's fields (see results.csv notes)
            diff, p = paired_p_value(
                np.asarray(ca), np.asarray(cb), metric.reduce, config.resamples, config.seed
            )
            va, vb = point_value(ca, metric.reduce), point_value(cb, metric.reduce)
            out.append(Comparison(fa.benchmark, protocol, metric.name, va, vb, diff, p, len(sa)))
    return out
