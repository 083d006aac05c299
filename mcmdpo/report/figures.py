"""Figures (matplotlib, Agg, PNG): grouped bars per benchmark, metric vs swept value, training curves.

- ``bars_<benchmark>.png`` (paper Fig. 2 style): one panel per metric of the table's column group, one
  bar per model row, error bars = the 95% bootstrap interval (one seed) or ± std (several seeds);
- ``sweep_<key>.png`` (paper Tables 6 and 8 as lines): for every swept key with >= 2 numeric values,
  each table metric against the swept value with its interval band; rows without the key (base, SFT)
  are dashed reference lines;
- ``train_<stage>_<task>.png``: loss and learning rate per optimizer step from the task's
  ``metrics.jsonl``; preference stages add each loss term's reward margin and accuracy (7 terms for
  MCM-DPO), smoothed with an exponential moving average.

Every figure has a title, axis labels with units and a legend outside the plotting area.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import atomic_path
from mcmdpo.report.collect import TrainingLog
from mcmdpo.report.labels import point_label
from mcmdpo.report.layouts import Column, ColumnGroup
from mcmdpo.report.tables import ResultTable, TableRow

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
EMA_SPAN = 10
UNITS = {
    ("altext", "edit_distance"): "tokens",
    ("objhal", "mean_length"): "words",
    ("mmhal", "score"): "judge rating (0–6)",
    ("mmhal", "hallucination_rate"): "share of responses",
}


TITLES = {
    ("objhal", "response_level"): "response-level hallucination",
    ("objhal", "mention_level"): "mention-level hallucination (CHAIR-i)",
    ("objhal", "response_level_all"): "responses with hallucination (CHAIR-s)",
    ("mmhal", "score"): "judge score",
    ("mmhal", "hallucination_rate"): "hallucination rate",
    ("amber", "hal"): "Hal (responses with hallucination)",
    ("amber", "cog"): "Cog (hallucination-prone objects)",
}


def title(column: Column, prefix: str = "", width: int = 32) -> str:
    """A panel title: the metric's table header, spelled out where it abbreviates; wrapped to fit a panel."""
    text = prefix + TITLES.get((column.metric.kind, column.metric.name), column.header)
    return "\n".join(textwrap.wrap(text, width))


def unit(column: Column) -> str:
    """Axis label of a column's values."""
    kind, name = column.metric.kind, column.metric.name
    if (kind, name) in UNITS:
        return UNITS[(kind, name)]
    return "score (×100)" if kind == "altext" else "%"


def new_figure(
    ncols: int, nrows: int = 1, width: float = 3.4, height: float = 3.0
) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG atomically (temp name, then rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _error(row: TableRow, column: Column) -> tuple[float, float]:
    """(below, above) the bar: interval when there is one, else ± std, else none."""
    cell = row.cells[column.key]
    if cell.ci is not None:
        return max(0.0, cell.mean - cell.ci[0]), max(0.0, cell.ci[1] - cell.mean)
    std = cell.std or 0.0
    return std, std


def bar_figure(table: ResultTable, group: ColumnGroup, path: Path) -> Path:
    """One panel per metric of ``group``; bars = the table's model rows, with their intervals."""
    rows = [r for r in table.rows if r.kind == "result"]
    colors = _colors(len(rows))
    fig, axes = new_figure(len(group.columns))
    for ax, column in zip(axes[0], group.columns, strict=True):
        for i, row in enumerate(rows):
            if column.key in row.cells:
                low, high = _error(row, column)
                ax.bar(
                    i,
                    row.cells[column.key].mean,
                    color=colors[i],
                    yerr=[[low], [high]],
                    capsize=3,
                    label=row.label,
                    edgecolor="black",
                    linewidth=0.5,
                )
        better = "higher" if column.metric.higher_is_better else "lower"
        ax.set_title(f"{title(column)}\n({better} is better)", fontsize="medium")
        if all(r.cells[column.key].mean >= 0 for r in rows if column.key in r.cells):
            ax.set_ylim(bottom=0)
        ax.set_ylabel(unit(column))
        ax.set_xticks([])
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="model")
    fig.suptitle(f"{group.title}: metrics per model (error bars: 95% bootstrap interval or ± std over seeds)")
    return save(fig, path)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def sweep_keys(rows: Sequence[TableRow]) -> list[str]:
    """Swept keys with at least two distinct numeric values among the rows."""
    values: dict[str, set[float]] = {}
    for row in rows:
        for key, value in row.files[0].point.items():
            if _numeric(value):
                values.setdefault(key, set()).add(float(value))
    return sorted(k for k, v in values.items() if len(v) >= 2)


def sweep_figure(table: ResultTable, key: str, path: Path) -> Path:
    """Each table metric against the swept ``key``; rows without it are dashed reference lines."""
    rows = [r for r in table.rows if r.kind == "result"]
    swept = sorted(
        (r for r in rows if _numeric(r.files[0].point.get(key))), key=lambda r: r.files[0].point[key]
    )
    series: dict[str, list[TableRow]] = {}
    for row in swept:  # one line per combination of the other swept values
        other = point_label({k: v for k, v in row.files[0].point.items() if k != key})
        series.setdefault(f"{row.model}, {other}" if other else row.model, []).append(row)
    flat = [r for r in rows if key not in r.files[0].point]
    columns = table.columns
    titles = {c.key: title(c, prefix=f"{g.title}: ") for g in table.groups for c in g.columns}
    ncols = min(4, len(columns))
    fig, axes = new_figure(ncols, math.ceil(len(columns) / ncols))
    colors = _colors(len(series) + len(flat))
    for ax, column in zip(axes.flat, columns, strict=False):
        _sweep_panel(ax, column, key, series, flat, colors)
        ax.set_title(titles[column.key])
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    handles, labels = next(iter(axes.flat)).get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="rows")
    fig.suptitle(f"Metrics vs {key} (band: 95% bootstrap interval)")
    return save(fig, path)


def _sweep_panel(
    ax: Axes,
    column: Column,
    key: str,
    series: Mapping[str, list[TableRow]],
    flat: Sequence[TableRow],
    colors: list,
) -> None:
    for i, (name, rows) in enumerate(series.items()):
        rows = [r for r in rows if column.key in r.cells]
        xs = [float(r.files[0].point[key]) for r in rows]
        cells = [r.cells[column.key] for r in rows]
        ax.plot(xs, [c.mean for c in cells], marker="o", color=colors[i], label=name)
        if all(c.ci for c in cells):
            ax.fill_between(
                xs, [c.ci[0] for c in cells], [c.ci[1] for c in cells], color=colors[i], alpha=0.15
            )
    for j, row in enumerate(flat, start=len(series)):
        if column.key in row.cells:
            ax.axhline(row.cells[column.key].mean, color=colors[j], linestyle="--", label=row.label)
    ax.set_xlabel(f"{key.split('.')[-1]} ({key})")
    ax.set_ylabel(unit(column))
    ax.grid(alpha=0.3)


def ema(values: Sequence[float], span: int = EMA_SPAN) -> list[float]:
    """Exponential moving average with ``alpha = 2 / (span + 1)`` (NaNs keep the previous value)."""
    alpha, out, current = 2 / (span + 1), [], math.nan
    for v in values:
        if math.isfinite(v):
            current = v if not math.isfinite(current) else alpha * v + (1 - alpha) * current
        out.append(current)
    return out


TERM_ORDER = ("rpo", "vpo", "cpo", "vrpo", "crpo", "vcpo", "mtppo", "dpo", "image", "anchor", "rewards")
TERM_STYLES = {"vrpo": "--", "crpo": "--", "vcpo": "--", "mtppo": "-.", "rewards": ":"}
"""Line style by term group: single terms solid, pair terms dashed, the multi term dash-dot."""


def term_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Loss terms with per-step ``<term>/margin`` (``rewards`` last), in the losses' canonical order."""
    names = set(k.split("/")[0] for r in records for k in r if k.endswith("/margin"))
    known = [n for n in TERM_ORDER if n in names]
    return known + sorted(names - set(known))


def training_figure(log: TrainingLog, path: Path) -> Path:
    """Loss and learning rate per step; preference stages add per-term reward margins and accuracies."""
    records = log.records()
    steps = [r.get("step", i + 1) for i, r in enumerate(records)]
    terms = term_names(records)
    fig, axes = new_figure(2, 2 if terms else 1, width=4.6, height=3.1)
    loss = [float(r.get("loss", math.nan)) for r in records]
    ax_loss, ax_lr = axes[0]
    ax_loss.plot(steps, loss, color="0.65", linewidth=0.8, label="per step")
    ax_loss.plot(steps, ema(loss), color="C0", label=f"EMA (span {EMA_SPAN})")
    _axes(ax_loss, "training loss", "loss (nats)")
    ax_loss.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax_lr.plot(steps, [float(r.get("lr", math.nan)) for r in records], color="C1")
    _axes(ax_lr, "learning rate (schedule)", "learning rate")
    if terms:
        _term_panels(axes[1], steps, records, terms)
    where = f", {point_label(log.point)}" if log.point else ""
    smooth = f"; term curves: EMA, span {EMA_SPAN}" if terms else ""
    fig.suptitle(f"{log.stage} training: run {log.run}, task {log.task_id}{where}{smooth}")
    return save(fig, path)


def _term_panels(
    axes: Sequence[Axes], steps: list[Any], records: Sequence[Mapping[str, Any]], terms: list[str]
) -> None:
    """Margins and accuracies per term; terms whose curves coincide are drawn once, labelled together
    (``vrpo = crpo``), so no curve hides another without saying so. Both panels have a legend."""
    colors = dict(zip(terms, _colors(len(terms)), strict=True))
    colors["rewards"] = "black"
    for panel, key in ((axes[0], "margin"), (axes[1], "accuracy")):
        series = {n: ema([float(r.get(f"{n}/{key}", math.nan)) for r in records]) for n in terms}
        for group in _coinciding(series, terms):
            name = group[0]
            label = " = ".join("rewards (beta x rpo)" if n == "rewards" else n for n in group)
            style = {"color": colors[name], "linestyle": TERM_STYLES.get(name, "-"), "label": label}
            panel.plot(steps, series[name], **style)
        panel.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="term", fontsize="small")
    axes[0].axhline(0, color="0.4", linewidth=0.6)
    _axes(axes[0], "reward margin per term", "margin h_w - h_l (nats)")
    _axes(axes[1], "reward accuracy per term", "share with margin > 0")
    axes[1].set_ylim(-0.03, 1.03)


def _coinciding(series: Mapping[str, Sequence[float]], order: Sequence[str]) -> list[list[str]]:
    """``order`` grouped by equal curves (NaN equal to NaN), first occurrence first."""
    groups: list[list[str]] = []
    for name in order:
        same = next((g for g in groups if _equal(series[g[0]], series[name])), None)
        if same is None:
            groups.append([name])
        else:
            same.append(name)
    return groups


def _equal(a: Sequence[float], b: Sequence[float]) -> bool:
    if len(a) != len(b):
        return False
    return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def _axes(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def write_figures(table: ResultTable, training: Sequence[TrainingLog], folder: Path) -> list[Path]:
    """Every figure of the report into ``folder``; returns the written paths."""
    rows = [r for r in table.rows if r.kind == "result"]
    paths = [bar_figure(table, g, folder / f"bars_{slug(g.title)}.png") for g in table.groups]
    paths += [sweep_figure(table, key, folder / f"sweep_{slug(key)}.png") for key in sweep_keys(rows)]
    paths += [training_figure(log, folder / f"train_{log.stage}_{log.task_id}.png") for log in training]
    return paths
