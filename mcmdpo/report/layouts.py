"""Named table layouts: column groups per benchmark, in the paper's order.

A layout lists :class:`ColumnGroup` s (one per benchmark and protocol), each a list of metrics. Only
groups and columns with at least one value in the collected runs are kept, so one layout serves the
demo (benchmark ``test``) and a full reproduction (``palt``, ``talt``, ...).

- ``altext``: paper Table 2: per alt-text benchmark (PAlt, TAlt, ...), ROUGE-L, BLEU4, METEOR, CIDEr
  under the ``paper`` protocol;
- ``altext-coco``: the same four under the ``coco`` protocol;
- ``hallucination``: Object HalBench response- / mention-level rates, MMHal-Bench score and
  hallucination rate, AMBER CHAIR / Cover / Hal / Cog;
- ``all`` (``auto``, the default): ``altext``, then ``altext-coco``, then ``hallucination``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mcmdpo.report.estimators import MetricDef, find_metric
from mcmdpo.report.spec import LAYOUT_NAMES as LAYOUTS

BENCHMARK_TITLES = {
    "palt": "PAlt",
    "talt": "TAlt",
    "test": "Test",
    "objhal": "Object HalBench",
    "mmhal": "MMHal-Bench",
    "amber": "AMBER",
}
ALTEXT_ORDER = ("palt", "talt", "test")
ALTEXT_METRICS = ("rouge_l", "bleu_4", "meteor", "cider")
HALLUCINATION = (
    ("objhal", ("response_level", "mention_level")),
    ("mmhal", ("score", "hallucination_rate")),
    ("amber", ("chair", "cover", "hal", "cog")),
)


@dataclass(frozen=True)
class Column:
    """One table column: a metric of one benchmark."""

    benchmark: str
    metric: MetricDef

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.benchmark, self.metric.protocol, self.metric.name)

    @property
    def header(self) -> str:
        return self.metric.header


@dataclass(frozen=True)
class ColumnGroup:
    """Columns under one spanning header (a benchmark, with its protocol when not ``paper``)."""

    title: str
    columns: tuple[Column, ...]


def benchmark_title(benchmark: str, protocol: str = "") -> str:
    title = BENCHMARK_TITLES.get(benchmark, benchmark)
    return f"{title} ({protocol})" if protocol and protocol != "paper" else title


def _altext_groups(benchmarks: Sequence[str], protocol: str) -> list[ColumnGroup]:
    ordered = [b for b in ALTEXT_ORDER if b in benchmarks] + [b for b in benchmarks if b not in ALTEXT_ORDER]
    return [
        ColumnGroup(
            benchmark_title(b, protocol),
            tuple(Column(b, find_metric("altext", protocol, m)) for m in ALTEXT_METRICS),
        )
        for b in ordered
    ]


def _hallucination_groups() -> list[ColumnGroup]:
    return [
        ColumnGroup(benchmark_title(b), tuple(Column(b, find_metric(b, "", m)) for m in metrics))
        for b, metrics in HALLUCINATION
    ]


def layout_groups(name: str, altext_benchmarks: Sequence[str]) -> list[ColumnGroup]:
    """The column groups of layout ``name`` (before dropping columns without values)."""
    if name == "altext":
        return _altext_groups(altext_benchmarks, "paper")
    if name == "altext-coco":
        return _altext_groups(altext_benchmarks, "coco")
    if name == "hallucination":
        return _hallucination_groups()
    if name in ("all", "auto"):
        return [
            *layout_groups("altext", altext_benchmarks),
            *layout_groups("altext-coco", altext_benchmarks),
            *_hallucination_groups(),
        ]
    raise ValueError(f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}")


def select_columns(
    name: str, altext_benchmarks: Sequence[str], present: Iterable[tuple[str, str, str]]
) -> list[ColumnGroup]:
    """Layout ``name`` restricted to the columns with a value in ``present`` (column keys)."""
    have = set(present)
    groups = []
    for group in layout_groups(name, altext_benchmarks):
        columns = tuple(c for c in group.columns if c.key in have)
        if columns:
            groups.append(ColumnGroup(group.title, columns))
    return groups
