"""Near-duplicate clustering without an all-pairs loop: bucket on exact band values, verify, connect.

- Images: 64-bit pHashes within Hamming distance ``t``. Multi-index hashing: split the 64 bits into
  ``t + 1`` blocks; two hashes within distance ``t`` agree exactly on at least one block
  (pigeonhole), so only pairs sharing a block value are candidates; each is verified with a popcount.
  Identical hashes are collapsed first, so repeated images (memes, logos) cost nothing.
- Texts: MinHash signatures with LSH banding (``BANDS`` bands of ``ROWS`` rows); pairs sharing a band
  are verified by their estimated Jaccard similarity (share of equal min-hashes) >= the threshold, in
  every signature set given (alt-text and post text: both must be near-identical).

Verified pairs are edges; connected components are clusters; the member with the smallest input
index (the first record in file order) is kept. Everything is vectorised numpy and runs in one task
over the signatures of every shard, so results do not depend on how the file was sharded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mcmdpo.curate.signatures import NUM_PERM, hamming

BANDS = 32
ROWS = NUM_PERM // BANDS
Verify = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Clusters:
    """``label[i]`` = index of the kept (first) member of item ``i``'s cluster (``i`` itself if kept)."""

    label: np.ndarray

    @property
    def duplicates(self) -> np.ndarray:
        """Indices of the items dropped as duplicates."""
        return np.nonzero(self.label != np.arange(len(self.label)))[0]

    def groups(self) -> list[tuple[int, list[int]]]:
        """(kept index, [dropped indices]) per cluster with more than one member, by kept index."""
        dup = self.duplicates
        out: dict[int, list[int]] = {}
        for i, root in zip(dup.tolist(), self.label[dup].tolist(), strict=True):
            out.setdefault(root, []).append(i)
        return sorted(out.items())


def near_pairs(keys: np.ndarray, verify: Verify) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)`` that agree on at least one column of ``keys`` ``[n, b]`` and pass ``verify``.

    Candidates are verified column by column, so only the (few) verified pairs are kept in memory; a
    pair found in several columns appears several times (harmless for :func:`connect`).
    """
    firsts, seconds = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for column in keys.T:
        i, j = _equal_pairs(column)
        ok = verify(i, j)
        firsts.append(i[ok])
        seconds.append(j[ok])
    return np.concatenate(firsts), np.concatenate(seconds)


def _equal_pairs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of positions with equal ``values``: sort, then pair elements ``d`` apart in a run."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    size = np.repeat(sizes, sizes)
    rank = np.arange(len(values)) - np.repeat(starts, sizes)
    firsts, seconds = [], []
    active = np.flatnonzero(size > 1)
    d = 1
    while len(active):
        active = active[rank[active] + d < size[active]]  # members with a partner d further in the run
        firsts.append(order[active])
        seconds.append(order[active + d])
        d += 1
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)


def connect(n: int, first: np.ndarray, second: np.ndarray) -> Clusters:
    """Connected components of the edges; each labelled by its smallest member."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[first], label[second])
        before = label.copy()
        np.minimum.at(label, first, low)
        np.minimum.at(label, second, low)
        while not np.array_equal(label, label[label]):  # pointer jumping: follow labels to the root
            label = label[label]
        if np.array_equal(before, label):
            return Clusters(label)


def block_keys(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """``[n, threshold + 1]`` block values of 64-bit hashes (each block tagged with its index)."""
    blocks = threshold + 1
    edges = np.linspace(0, 64, blocks + 1).astype(np.uint64)
    keys = np.empty((len(hashes), blocks), dtype=np.uint64)
    for b in range(blocks):
        mask = np.uint64(2 ** int(edges[b + 1] - edges[b]) - 1)
        keys[:, b] = ((hashes >> edges[b]) & mask) | (np.uint64(b) << np.uint64(58))
    return keys


def cluster_hashes(hashes: np.ndarray, threshold: int) -> Clusters:
    """Clusters of 64-bit hashes within Hamming distance ``threshold`` (items in input order)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    unique, first_of, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    i, j = near_pairs(block_keys(unique, threshold), lambda i, j: hamming(unique[i], unique[j]) <= threshold)
    # edges between the first occurrences of near hashes, and from every repeat to its first occurrence
    a = np.concatenate([first_of[i], np.arange(len(hashes))])
    b = np.concatenate([first_of[j], first_of[inverse.ravel()]])
    return connect(len(hashes), a, b)


def band_keys(signatures: np.ndarray) -> np.ndarray:
    """``[n, BANDS]`` hashes of the MinHash bands (``ROWS`` values each)."""
    sig = np.asarray(signatures, dtype=np.uint64).reshape(len(signatures), BANDS, ROWS)
    keys = np.zeros(sig.shape[:2], dtype=np.uint64)
    for r in range(ROWS):
        keys = (keys * np.uint64(0x100000001B3)) ^ sig[:, :, r]
    return keys ^ (np.arange(BANDS, dtype=np.uint64) << np.uint64(58))


def cluster_minhashes(signatures: np.ndarray, threshold: float, *also: np.ndarray) -> Clusters:
    """Clusters of texts whose estimated Jaccard similarity is >= ``threshold``; with ``also`` (more
    signature sets of the same items, e.g. another field), a pair must pass in every set."""
    sets = [np.asarray(s, dtype=np.uint32).reshape(-1, NUM_PERM) for s in (signatures, *also)]

    def similar(i: np.ndarray, j: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        ok = np.ones(len(i), dtype=bool)
        for start in range(0, len(i), chunk):
            part = slice(start, start + chunk)
            for sig in sets:
                ok[part] &= (sig[i[part]] == sig[j[part]]).mean(axis=1) >= threshold
        return ok

    i, j = near_pairs(band_keys(sets[0]), similar)
    return connect(len(sets[0]), i, j)


def cluster_all_pairs(hashes: np.ndarray, threshold: int, chunk: int = 512) -> Clusters:
    """The same clusters by comparing every pair (reference for tests and the benchmark)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    firsts, seconds = [], []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk, None]
        i, j = np.nonzero(hamming(block, hashes[None, :]) <= threshold)
        i = i + start
        firsts.append(i[i < j])
        seconds.append(j[i < j])
    return connect(len(hashes), np.concatenate(firsts), np.concatenate(seconds))
