"""The tidy results table: one row per (metrics file, metric) with its bootstrap interval; ``results.csv``.

``results.csv`` is a contract other tools rely on. Columns, in order:

``run, model, point, benchmark, protocol, metric, value, ci_low, ci_high, n, source``

- ``point``: the sweep values that can change this model, ``key=value;key=value`` (sorted keys; ``""``
  outside a sweep);
- ``protocol``: ``paper`` / ``coco`` for alt-text, ``""`` for the hallucination benchmarks;
- ``value``: exactly the number in the metrics JSON (``source``) at ``metrics[.protocol].metric``;
- ``ci_low``, ``ci_high``: the percentile bootstrap interval over test items (empty when it cannot be
  computed, e.g. per-item scores missing); ``n``: test items.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import write_text_atomic
from mcmdpo.report.collect import Collection, MetricsFile
from mcmdpo.report.estimators import MetricDef, metric_defs, protocols

if TYPE_CHECKING:
    import numpy as np

CSV_COLUMNS = (
    "run",
    "model",
    "point",
    "benchmark",
    "protocol",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "source",
)


@dataclass(frozen=True)
class BootstrapConfig:
    """How intervals are computed (``resamples = 0``: no intervals)."""

    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class Result:
    """One metric of one metrics file, with its interval (NaN when unavailable, ``note`` says why)."""

    file: MetricsFile
    metric: MetricDef
    value: float
    ci_low: float
    ci_high: float
    n: int
    note: str | None = None

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    def csv_row(self) -> dict[str, Any]:
        f = self.file
        return {
            "run": f.run,
            "model": f.model,
            "point": point_text(f.point),
            "benchmark": f.benchmark,
            "protocol": self.metric.protocol,
            "metric": self.metric.name,
            "value": repr(self.value),
            "ci_low": repr(self.ci_low) if self.has_interval else "",
            "ci_high": repr(self.ci_high) if self.has_interval else "",
            "n": self.n,
            "source": str(f.path),
        }


def point_text(point: Mapping[str, Any]) -> str:
    """``key=value;...`` in key order; strings bare, other values as JSON."""
    return ";".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(point.items()))


def compute_results(collection: Collection, config: BootstrapConfig = BootstrapConfig()) -> list[Result]:
    """Every known metric of every collected metrics file, with its bootstrap interval."""
    results = []
    for file in collection.files:
        samples = file.samples() if config.resamples > 0 else []
        for protocol in protocols(file.doc):
            results += file_results(file, metric_defs(file.kind, protocol), samples, config)
    return results


def file_results(
    file: MetricsFile,
    metrics: Sequence[MetricDef],
    samples: Sequence[Mapping[str, Any]],
    config: BootstrapConfig,
) -> list[Result]:
    """The metrics' reported values and intervals (metrics without a value in the file are left out).

    Each statistic must first reproduce the reported value from the per-item rows; the intervals of
    all metrics of the file come from one set of resamples (one matrix product).
    """
    from mcmdpo.report.stats import bootstrap_intervals

    out, todo = [], []
    for metric in metrics:
        value = metric.value(file.doc)
        if value is None or not math.isfinite(value):
            continue
        columns, note = _checked_columns(file, metric, samples, value, config)
        n = len(samples) or _num_samples(file.doc, metric)
        out.append(Result(file, metric, value, math.nan, math.nan, n, note))
        if columns is not None:
            todo.append((len(out) - 1, columns))
    reducers = [out[i].metric.reduce for i, _ in todo]
    bounds = bootstrap_intervals(
        [c for _, c in todo], reducers, config.resamples, config.seed, config.confidence
    )
    for (i, _), (low, high) in zip(todo, bounds, strict=True):
        # the reported value can sit just outside a percentile interval (rounded values, tiny test sets)
        out[i] = replace(out[i], ci_low=min(low, out[i].value), ci_high=max(high, out[i].value))
    return out


def _checked_columns(
    file: MetricsFile,
    metric: MetricDef,
    samples: Sequence[Mapping[str, Any]],
    value: float,
    config: BootstrapConfig,
) -> tuple[np.ndarray | None, str | None]:
    """The metric's per-item columns, or None and why no interval can be computed."""
    from mcmdpo.report.stats import point_value

    if config.resamples == 0:
        return None, "intervals off (resamples = 0)"
    if not samples:
        return None, f"no per-item scores next to {file.path.name}"
    try:
        columns = metric.columns(samples, file.doc)
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"per-item scores lack {exc} (needed for {metric.statistic})"
    full = point_value(columns, metric.reduce)
    expected = metric.unrounded(file.doc)
    expected = value if expected is None else expected
    if not math.isclose(full, expected, rel_tol=1e-6, abs_tol=1e-9 + metric.tolerance):
        return None, f"per-item scores give {full:.6g}, the file says {expected:.6g}"
    return columns, None


def _num_samples(doc: Mapping[str, Any], metric: MetricDef) -> int:
    block = doc.get("metrics", {})
    block = block.get(metric.protocol, {}) if metric.protocol else block
    return int(block.get("num_samples", doc.get("num_predictions", 0)) or 0)


def records_csv(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``records`` (dicts) with a header row of ``columns``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def csv_text(results: Sequence[Result]) -> str:
    return records_csv([r.csv_row() for r in results], CSV_COLUMNS)


def write_csv(results: Sequence[Result], path: Path) -> None:
    """``results.csv`` (atomic)."""
    write_text_atomic(path, csv_text(results))
