"""What each reported metric is, where its value sits in the metrics JSON, and what the bootstrap resamples.

A :class:`MetricDef` names one metric of one benchmark kind (and alt-text protocol): its header and
direction (for bold-best), the path of its value in the metrics JSON written by the ``score`` stage,
and its statistic as ``columns`` (per-item numbers taken from ``<benchmark>.samples.jsonl``) plus a
``reduce`` of their sums (see :mod:`mcmdpo.report.stats`):

- ``paper`` protocol (alt-text): per-item scores, mean x 100 (the upstream per-sample averages); CIDEr
  uses the per-item CIDEr-D scores computed with the document frequencies of the **full** test set
  (their mean is the corpus CIDEr, so resampling them never recomputes document frequencies);
- ``coco`` protocol: corpus BLEU from summed n-gram counts (``bleu_counts``), corpus METEOR 1.5 from
  summed METEOR statistics (``meteor_stats``), ROUGE-L and CIDEr-D as means of per-item scores;
- hallucination rates: per-response indicators (MMHal rating < 3, ObjHal "has a hallucinated object",
  AMBER "no hallucination") and pooled ratios for CHAIR-i style metrics (hallucinated / all mentions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Sample = Mapping[str, Any]
Columns = Callable[[Sequence[Sample], Mapping[str, Any]], np.ndarray]
Reducer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MetricDef:
    """One metric of one benchmark kind (``protocol``: the alt-text protocol, else ``""``)."""

    kind: str
    protocol: str
    name: str
    header: str
    higher_is_better: bool
    statistic: str
    columns: Columns
    reduce: Reducer
    exact: tuple[str, ...] = ()
    """Path of the unrounded value in ``metrics`` (checked against the statistic), if not ``value``."""
    tolerance: float = 0.0
    """Absolute rounding of the reported value when no unrounded value exists."""

    def value(self, doc: Mapping[str, Any]) -> float | None:
        """The value the metrics JSON reports (what ``results.csv`` cites)."""
        return _dig(doc.get("metrics", {}), self._path())

    def unrounded(self, doc: Mapping[str, Any]) -> float | None:
        return _dig(doc.get("metrics", {}), self.exact or self._path())

    def _path(self) -> tuple[str, ...]:
        return (self.protocol, self.name) if self.protocol else (self.name,)


def _dig(obj: Any, path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return float(obj) if isinstance(obj, int | float) and not isinstance(obj, bool) else None


# ---------------------------------------------------------------- reducers


def ratio(scale: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """``scale * sum(col 0) / sum(col 1)``; a mean when column 1 is all ones. NaN when undefined."""

    def reduce(sums: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sums[..., 1] != 0, scale * sums[..., 0] / sums[..., 1], np.nan)

    return reduce


def complement_ratio(scale: float = 100.0) -> Callable[[np.ndarray], np.ndarray]:
    """``scale - scale * sum(col 0) / sum(col 1)`` (AMBER Hal = 100 - non-hallucinated share)."""
    inner = ratio(scale)
    return lambda sums: scale - inner(sums)


def corpus_bleu(order: int, scale: float = 100.0) -> Callable[[np.ndarray], np.ndarray]:
    """pycocoevalcap ``BleuScorer.compute_score`` on summed ``[testlen, reflen, guess1..4, correct1..4]``.

    Quoted from pycocoevalcap/bleu/bleu_scorer.py: ``bleu *= float(totalcomps['correct'][k] + tiny) /
    (totalcomps['guess'][k] + small)``, ``bleus.append(bleu ** (1./(k+1)))``, and for ``ratio < 1``
    ``bleus[k] *= math.exp(1 - 1/ratio)`` with ``ratio = (testlen + tiny) / (reflen + small)``.
    """
    small, tiny = 1e-9, 1e-15

    def reduce(sums: np.ndarray) -> np.ndarray:
        testlen, reflen = sums[..., 0], sums[..., 1]
        guess, correct = sums[..., 2 : 2 + order], sums[..., 6 : 6 + order]
        bleu = np.prod((correct + tiny) / (guess + small), axis=-1) ** (1.0 / order)
        ratio_ = (testlen + tiny) / (reflen + small)
        with np.errstate(divide="ignore", over="ignore"):
            penalty = np.where(ratio_ < 1, np.exp(1 - 1 / ratio_), 1.0)
        return scale * bleu * penalty

    return reduce


# METEOR 1.5, language "en", task "default" (what pycocoevalcap's `-l en -norm` runs): alpha, beta,
# gamma, delta and the weights of the exact / stem / synonym / paraphrase stages.
METEOR_PARAMETERS = (0.85, 0.20, 0.60, 0.75, (1.0, 0.6, 0.8, 0.6))
METEOR_STATS = 23
"""testLen refLen testFunc refFunc, 4 stages x (test content, ref content, test func, ref func), chunks,
testWordMatches refWordMatches: the statistics line of METEOR 1.5's SCORE command."""


def corpus_meteor(scale: float = 100.0) -> Callable[[np.ndarray], np.ndarray]:
    """METEOR 1.5's score of pooled statistics (what its EVAL command prints last).

    Checked against the Java tool in the tests. Pooling: the tool counts a record whose hypothesis
    matches its reference entirely in one chunk with 0 chunks (``meteor_columns`` does that per item).
    """
    alpha, beta, gamma, delta, weights = METEOR_PARAMETERS
    w = np.asarray(weights)

    def reduce(sums: np.ndarray) -> np.ndarray:
        tl, rl, tf, rf = (sums[..., i] for i in range(4))
        stages = sums[..., 4:20].reshape(*sums.shape[:-1], 4, 4)
        tm = (w * (delta * stages[..., 0] + (1 - delta) * stages[..., 2])).sum(-1)
        rm = (w * (delta * stages[..., 1] + (1 - delta) * stages[..., 3])).sum(-1)
        tlen, rlen = delta * (tl - tf) + (1 - delta) * tf, delta * (rl - rf) + (1 - delta) * rf
        chunks, twm, rwm = sums[..., 20], sums[..., 21], sums[..., 22]
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(tlen > 0, tm / tlen, 0.0)
            r = np.where(rlen > 0, rm / rlen, 0.0)
            fmean = np.where((p > 0) & (r > 0), p * r / (alpha * p + (1 - alpha) * r), 0.0)
            perfect = (twm == tl) & (rwm == rl) & (chunks == 1)
            frag = np.where(perfect | (twm + rwm == 0), 0.0, chunks / ((twm + rwm) / 2))
        return scale * fmean * (1 - gamma * frag**beta)

    return reduce


# ---------------------------------------------------------------- columns


def _protocol_rows(samples: Sequence[Sample], protocol: str) -> list[Mapping[str, Any]]:
    return [s[protocol] for s in samples]


def mean_columns(protocol: str, field: str) -> Columns:
    def columns(samples: Sequence[Sample], doc: Mapping[str, Any]) -> np.ndarray:
        rows = _protocol_rows(samples, protocol) if protocol else samples
        values = np.array([float(r[field]) for r in rows], dtype=np.float64)
        return np.stack([values, np.ones_like(values)], axis=1)

    return columns


def bleu_columns(samples: Sequence[Sample], doc: Mapping[str, Any]) -> np.ndarray:
    rows = [r["bleu_counts"] for r in _protocol_rows(samples, "coco")]
    return np.array(
        [[r["testlen"], r["reflen"], *r["guess"], *r["correct"]] for r in rows], dtype=np.float64
    ).reshape(len(rows), 10)


def meteor_columns(samples: Sequence[Sample], doc: Mapping[str, Any]) -> np.ndarray:
    stats = np.array([r["meteor_stats"] for r in _protocol_rows(samples, "coco")], dtype=np.float64).reshape(
        len(samples), METEOR_STATS
    )
    perfect = (stats[:, 21] == stats[:, 0]) & (stats[:, 22] == stats[:, 1]) & (stats[:, 20] == 1)
    stats[perfect, 20] = 0  # METEOR pools a perfect single-chunk match as 0 chunks
    return stats


def objhal_columns(numerator: Callable[[Sample], float], denominator: Callable[[Sample], float]) -> Columns:
    def columns(samples: Sequence[Sample], doc: Mapping[str, Any]) -> np.ndarray:
        return np.array([[numerator(s), denominator(s)] for s in samples], dtype=np.float64).reshape(-1, 2)

    return columns


def amber_columns(numerator: str, denominator: str) -> Columns:
    """Per-item AMBER counters; the initial counters of ``metrics.txt`` (e.g. denominators 0.001)
    are spread as a constant ``offset / n`` per item, so every resample of n items adds them once."""

    def columns(samples: Sequence[Sample], doc: Mapping[str, Any]) -> np.ndarray:
        n = len(samples)
        cols = np.array(
            [[s["counters"][numerator], s["counters"][denominator]] for s in samples], dtype=np.float64
        ).reshape(n, 2)
        totals = doc.get("metrics", {}).get("counters", {})
        if n and numerator in totals and denominator in totals:
            offsets = np.array([totals[numerator], totals[denominator]], dtype=np.float64) - cols.sum(axis=0)
            cols = cols + offsets / n
        return cols

    return columns


def mmhal_columns(indicator: bool) -> Columns:
    def columns(samples: Sequence[Sample], doc: Mapping[str, Any]) -> np.ndarray:
        ratings = np.array([float(s["rating"]) for s in samples], dtype=np.float64)
        values = (ratings < 3).astype(np.float64) if indicator else ratings
        return np.stack([values, np.ones_like(values)], axis=1)

    return columns


# ---------------------------------------------------------------- the catalogue

_MEAN = "mean of per-item scores"
_CIDER = "mean of per-item CIDEr-D computed with the full test set's document frequencies"
_RESPONSE_RATE = "per-response indicators (>= 1 hallucinated object) / responses with a COCO object"


def _paper(name: str, header: str, statistic: str = _MEAN, scale: float = 100.0) -> MetricDef:
    exact = ("paper", "unrounded", name) if scale == 100.0 else ()
    tolerance = 0.0 if exact else 5e-4  # edit distance is reported as round(mean, 3)
    return MetricDef(
        "altext", "paper", name, header, name != "edit_distance", statistic,
        mean_columns("paper", name), ratio(scale), exact, tolerance,
    )  # fmt: skip


def _coco(name: str, header: str, statistic: str, columns: Columns, reduce: Reducer) -> MetricDef:
    return MetricDef("altext", "coco", name, header, True, statistic, columns, reduce)


def _rate(kind: str, name: str, header: str, higher: bool, statistic: str, columns: Columns, reduce: Reducer,
          exact: tuple[str, ...] = ()) -> MetricDef:  # fmt: skip
    return MetricDef(kind, "", name, header, higher, statistic, columns, reduce, exact)


def _altext() -> list[MetricDef]:
    return [
        _paper("rouge_l", "ROUGE-L"),
        _paper("bleu_4", "BLEU4"),
        _paper("meteor", "METEOR"),
        _paper("cider", "CIDEr", _CIDER),
        _paper("bleu_1", "BLEU1"),
        _paper("cumulative_bleu_4", "cBLEU4"),
        _paper("edit_distance", "Edit", scale=1.0),
        _coco("rouge_l", "ROUGE-L", _MEAN, mean_columns("coco", "rouge_l"), ratio(100.0)),
        _coco("bleu_4", "BLEU4", "corpus BLEU-4 of summed n-gram counts", bleu_columns, corpus_bleu(4)),
        _coco("meteor", "METEOR", "corpus METEOR 1.5 of summed statistics", meteor_columns, corpus_meteor()),
        _coco("cider", "CIDEr", _CIDER, mean_columns("coco", "cider"), ratio(100.0)),
        _coco("bleu_1", "BLEU1", "corpus BLEU-1 of summed n-gram counts", bleu_columns, corpus_bleu(1)),
    ]


def _has_hallucination(s: Sample) -> float:
    return float(bool(s["hallucinated"]))


def _objhal() -> list[MetricDef]:
    def cols(num: Callable[[Sample], float], den: Callable[[Sample], float]) -> Columns:
        return objhal_columns(num, den)

    def one(s: Sample) -> float:
        return 1.0

    return [
        _rate("objhal", "response_level", "Resp.", False, _RESPONSE_RATE,
              cols(_has_hallucination, lambda s: float(bool(s["mentions"]))), ratio(100.0)),
        _rate("objhal", "mention_level", "Ment.", False, "pooled: hallucinated mentions / all mentions",
              cols(lambda s: len(s["hallucinated"]), lambda s: len(s["mentions"])), ratio(100.0)),
        _rate("objhal", "response_level_all", "Resp. (all)", False, "mean of per-response indicators",
              cols(_has_hallucination, one), ratio(100.0)),
        _rate("objhal", "recall", "Recall", True, "pooled: correct classes / ground-truth classes",
              cols(lambda s: s["correct_classes"], lambda s: len(s["ground_truth"])), ratio(100.0)),
        _rate("objhal", "mean_length", "Length", True, "mean words per response",
              cols(lambda s: s["words"], one), ratio()),
    ]  # fmt: skip


def _mmhal() -> list[MetricDef]:
    return [
        _rate("mmhal", "score", "Score", True, "mean judge rating (0-6)", mmhal_columns(False), ratio()),
        _rate("mmhal", "hallucination_rate", "Hal. rate", False,
              "mean of per-response indicators (rating < 3)", mmhal_columns(True), ratio()),
    ]  # fmt: skip


def _amber() -> list[MetricDef]:
    def amber(name: str, header: str, higher: bool, statistic: str, num: str, den: str) -> MetricDef:
        reduce = complement_ratio(100.0) if name == "hal" else ratio(100.0)
        return _rate(
            "amber", name, header, higher, statistic, amber_columns(num, den), reduce, ("unrounded", name)
        )

    return [
        amber("chair", "CHAIR", False, "pooled: hallucinated / kept nouns", "chair_score", "chair_num"),
        amber("cover", "Cover", True, "pooled: truth objects mentioned / truth objects",
              "safe_cover_score", "safe_cover_num"),
        amber("hal", "Hal", False, "100 - mean of per-response 'no hallucination' indicators",
              "non_hallu_score", "non_hallu_num"),
        amber("cog", "Cog", False, "pooled: hallucination-prone objects mentioned / listed",
              "hallu_cover_score", "hallu_cover_num"),
    ]  # fmt: skip


METRICS: tuple[MetricDef, ...] = (*_altext(), *_objhal(), *_mmhal(), *_amber())
"""Every metric the report knows, in table order per (kind, protocol)."""


def metric_defs(kind: str, protocol: str | None = None) -> list[MetricDef]:
    """The metrics of a benchmark kind (and alt-text protocol when given)."""
    return [m for m in METRICS if m.kind == kind and (protocol is None or m.protocol == protocol)]


def find_metric(kind: str, protocol: str, name: str) -> MetricDef:
    for m in METRICS:
        if (m.kind, m.protocol, m.name) == (kind, protocol, name):
            return m
    raise KeyError(f"unknown metric {kind}/{protocol or '-'}/{name}")


def protocols(doc: Mapping[str, Any]) -> list[str]:
    """The protocols a metrics JSON holds: alt-text protocol names, else ``[""]``."""
    if doc.get("kind") == "altext":
        return [p for p in ("paper", "coco") if isinstance(doc.get("metrics", {}).get(p), Mapping)]
    return [""]
