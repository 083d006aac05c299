"""The curation funnel in the report: ``funnel.md``, ``funnel.csv`` and ``figures/funnel_<run>.png``.

Reads the ``funnel.json`` of every finished ``curate_split`` task (:func:`mcmdpo.curate.outputs.
build_funnel`: ``steps`` [{step, dropped, remaining}], ``splits``, ``names``, ``grammar``,
``rejected``). The figure has three panels: the records left after every step (a centred funnel, each
bar labelled with what remains and what the step dropped), the records of each output split, and the
LLM work (names replaced, texts corrected, rejected texts generated, verification attempts, records
dropped after the last attempt). A run with curation but no scores yet gets a funnel-only report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.curate.outputs import Funnel

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FUNNEL_MD, FUNNEL_CSV = "funnel.md", "funnel.csv"
STEP_LABELS = {
    "input": "raw records",
    "bad_record": "bad records",
    "hashtag": "hashtag in text",
    "min_words": "too few words",
    "language": "not English",
    "bad_image": "unreadable image",
    "non_static": "animated image",
    "duplicate_id": "duplicate id",
    "duplicate_image": "near-duplicate image",
    "duplicate_text": "near-duplicate text",
    "dropped_after_max_attempts": "no verified rejected text",
}
CSV_COLUMNS = ("run", "task_id", "section", "step", "label", "dropped", "remaining")


def funnel_title(funnel: Funnel, funnels: Sequence[Funnel]) -> str:
    same_run = [f for f in funnels if f.run == funnel.run]
    return funnel.run if len(same_run) == 1 else f"{funnel.run} ({funnel.task_id[:8]})"


def funnel_records(funnels: Sequence[Funnel]) -> list[dict[str, Any]]:
    """One CSV row per step, split and LLM-work counter of every funnel."""
    rows = []
    for f in funnels:
        base = {"run": f.run, "task_id": f.task_id}
        for s in f.steps:
            label = STEP_LABELS.get(s["step"], s["step"])
            dropped = s.get("dropped", "")
            rows.append({**base, "section": "step", "step": s["step"], "label": label, "dropped": dropped,
                         "remaining": s["remaining"]})  # fmt: skip
        counters = [("split", f.splits()), ("llm", f.work())]
        for section, counts in counters:
            for name, count in counts.items():
                rows.append({**base, "section": section, "step": name, "label": name, "dropped": "",
                             "remaining": count})  # fmt: skip
    return rows


def funnel_markdown(funnels: Sequence[Funnel]) -> str:
    """Per funnel: the steps (dropped, remaining, share of the input), the splits, the LLM work."""
    parts = []
    for f in funnels:
        total = max(int(f.steps[0]["remaining"]), 1)
        lines = [f"## Curation funnel: {funnel_title(f, funnels)}", "",
                 "| step | dropped | remaining | share of input |", "|---|---:|---:|---:|"]  # fmt: skip
        for s in f.steps:
            dropped = "" if "dropped" not in s else str(s["dropped"])
            label = STEP_LABELS.get(s["step"], s["step"])
            lines.append(f"| {label} | {dropped} | {s['remaining']} | {100 * s['remaining'] / total:.1f}% |")
        splits = ", ".join(f"{k} {v}" for k, v in f.splits().items())
        work = ", ".join(f"{k} {v}" for k, v in f.work().items())
        parts.append("\n".join([*lines, "", f"Output splits: {splits}.", "", f"LLM work: {work}.", ""]))
    return "\n".join(parts)


def funnel_figure(funnel: Funnel, title: str, path: Path) -> Path:
    """Three panels: the funnel of remaining records, the output splits, the LLM work."""
    from mcmdpo.report.figures import new_figure, save

    fig, axes = new_figure(3, width=4.2, height=0.34 * len(funnel.steps) + 1.6)
    _funnel_panel(axes[0][0], funnel.steps)
    splits = funnel.splits()
    _count_panel(axes[0][1], list(splits), list(splits.values()), "output splits", "records")
    work = funnel.work()
    _count_panel(axes[0][2], list(work), list(work.values()), "LLM work", "count")
    fig.suptitle(f"curation funnel: {title}")
    return save(fig, path)


def _funnel_panel(ax: Axes, steps: Sequence[Mapping[str, Any]]) -> None:
    total = max(int(steps[0]["remaining"]), 1)
    ys = list(range(len(steps)))[::-1]
    widths = [int(s["remaining"]) for s in steps]
    ax.barh(ys, widths, left=[(total - w) / 2 for w in widths], color="#4C72B0", height=0.7)
    for y, s, w in zip(ys, steps, widths, strict=True):
        note = f"{w}" if "dropped" not in s else f"{w}  (−{s['dropped']})"
        ax.text(total / 2, y, note, ha="center", va="center", fontsize=8,
                color="white" if w > 0.3 * total else "black")  # fmt: skip
    ax.set_yticks(ys, [STEP_LABELS.get(s["step"], s["step"]) for s in steps], fontsize=8)
    ax.set_xlim(0, total)
    ax.set_xticks([0, total / 2, total], ["", f"{total / 2:g}", f"{total}"])
    ax.set_title("records left after each step")
    ax.set_xlabel("records (bar width; −dropped by the step)")


def _count_panel(ax: Axes, names: list[str], counts: list[int], title: str, xlabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ys = list(range(len(names)))[::-1]
    ax.barh(ys, counts, color="#55A868", height=0.6)
    for y, count in zip(ys, counts, strict=True):
        ax.text(count, y, f" {count}", va="center", fontsize=8)
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlim(0, max([*counts, 1]) * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def write_funnels(funnels: Sequence[Funnel], out: Path, figures: Path | None) -> list[Path]:
    """``funnel.md`` and ``funnel.csv`` in ``out``; one PNG per funnel in ``figures`` (None: none)."""
    from mcmdpo.batch.artifacts import write_text_atomic
    from mcmdpo.report.figures import slug
    from mcmdpo.report.results import records_csv

    if not funnels:
        return []
    paths = [out / FUNNEL_MD, out / FUNNEL_CSV]
    write_text_atomic(paths[0], funnel_markdown(funnels))
    write_text_atomic(paths[1], records_csv(funnel_records(funnels), CSV_COLUMNS))
    if figures is not None:
        for f in funnels:
            title = funnel_title(f, funnels)
            paths.append(funnel_figure(f, title, figures / f"funnel_{slug(title)}.png"))
    return paths
