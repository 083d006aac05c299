"""Bootstrap over test items: resample counts, percentile intervals, paired p-values (numpy, vectorised).

Every statistic the report resamples is a function of **sums of per-item columns** (a mean is
``sum(x) / sum(1)``, a pooled rate ``sum(hits) / sum(mentions)``, corpus BLEU a function of summed
n-gram counts). A bootstrap resample of n items is a row of multinomial counts ``w`` (how often each
item was drawn, summing to n), so the sums of all resamples are one matrix product
``W [B, n] @ columns [n, k]``: nothing is re-tokenised or re-scored per resample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

Reducer = Callable[[np.ndarray], np.ndarray]
"""Maps summed columns ``[..., k]`` to statistic values ``[...]``."""


@functools.lru_cache(maxsize=4)
def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` draw counts of a seeded bootstrap (each row sums to ``n``), read-only.

    The same (n, resamples, seed) gives the same matrix, so two files scored on the same items are
    resampled identically (what a paired comparison needs).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, n, resamples]))
    if n == 0 or resamples == 0:
        return np.zeros((resamples, n))
    draws = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    counts = np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)
    counts.setflags(write=False)
    return counts


def point_value(columns: np.ndarray, reduce: Reducer) -> float:
    """The statistic on every item once."""
    return float(reduce(columns.sum(axis=0)[None, :])[0])


def resampled_values(columns: np.ndarray, reduce: Reducer, resamples: int, seed: int) -> np.ndarray:
    """The statistic on each of ``resamples`` bootstrap resamples, ``[resamples]``."""
    counts = resample_counts(columns.shape[0], resamples, seed)
    return reduce(counts @ columns)


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of resampled values (resamples where the statistic is undefined are dropped)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


def bootstrap_interval(
    columns: np.ndarray, reduce: Reducer, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of ``reduce(sum of columns)`` over items (rows)."""
    if columns.shape[0] == 0 or resamples == 0:
        return (float("nan"), float("nan"))
    return percentile_interval(resampled_values(columns, reduce, resamples, seed), confidence)


def bootstrap_intervals(
    columns: Sequence[np.ndarray],
    reducers: Sequence[Reducer],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[tuple[float, float]]:
    """:func:`bootstrap_interval` of several statistics on the same items with one matrix product
    (the draw counts are read once for all of them, not once per statistic)."""
    if not columns:
        return []
    n = columns[0].shape[0]
    if n == 0 or resamples == 0:
        return [(float("nan"), float("nan"))] * len(columns)
    sums = resample_counts(n, resamples, seed) @ np.concatenate(columns, axis=1)
    bounds = np.cumsum([0, *(c.shape[1] for c in columns)])
    return [
        percentile_interval(reduce(sums[:, lo:hi]), confidence)
        for reduce, lo, hi in zip(reducers, bounds[:-1], bounds[1:], strict=True)
    ]


def paired_p_value(
    columns_a: np.ndarray, columns_b: np.ndarray, reduce: Reducer, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Two-sided paired bootstrap test of ``stat(A) - stat(B)`` on the same items (rows aligned).

    Both systems are resampled with the same item draws. With d the observed difference and d_b its
    value on resample b, the resampled differences are centred on d, so the null "no difference" is
    tested by how often they land at least |d| away from d: ``p = (1 + #{|d_b - d| >= |d|}) / (B + 1)``.
    Identical systems give d = 0 and p = 1. Returns ``(d, p)``.
    """
    if columns_a.shape != columns_b.shape:
        raise ValueError(f"paired bootstrap: column shapes differ ({columns_a.shape} vs {columns_b.shape})")
    observed = point_value(columns_a, reduce) - point_value(columns_b, reduce)
    counts = resample_counts(columns_a.shape[0], resamples, seed)
    diffs = reduce(counts @ columns_a) - reduce(counts @ columns_b)
    diffs = diffs[np.isfinite(diffs)]
    extreme = np.count_nonzero(np.abs(diffs - observed) >= abs(observed) - 1e-12 * max(1.0, abs(observed)))
    return observed, float((1 + extreme) / (1 + diffs.size))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) of ``counts[item, category]`` = raters who put the item in the category.

    Every item needs the same number of raters n >= 2. With N items, P_i = (sum_j n_ij^2 - n) / (n (n - 1))
    the agreement on item i, p_j = sum_i n_ij / (N n) the share of category j:
    kappa = (mean P_i - sum_j p_j^2) / (1 - sum_j p_j^2). NaN when every rating is one category.
    """
    counts = np.asarray(counts, dtype=np.float64)
    raters = counts.sum(axis=1)
    if counts.size == 0 or not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of raters for every item")
    n = raters[0]
    agreement = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares**2).sum())
    if chance >= 1.0:
        return float("nan")
    return float((agreement.mean() - chance) / (1 - chance))
