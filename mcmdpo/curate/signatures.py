"""Signatures for de-duplication: 64-bit perceptual hashes of images, MinHash of texts.

- :func:`phash`: the DCT hash of ``imagehash.phash`` (grey, 32x32 Lanczos, 2-D DCT-II, the 8x8
  lowest frequencies compared with their median), as one ``uint64`` (first coefficient = top bit).
- :func:`minhash`: ``NUM_PERM`` min-hashes of a text's character 5-grams (lowercased, whitespace
  collapsed); the share of equal entries of two signatures estimates their Jaccard similarity.
  Shingles are hashed with a vectorised polynomial hash, permutations are multiply-shift hashes.

Both depend only on the record, never on the shard it is in, so clustering them in one task is
exact whatever the number of shards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

HASH_SIZE = 8
IMG_SIZE = 32
NUM_PERM = 128
SHINGLE = 5


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_matrix(IMG_SIZE)[:HASH_SIZE]  # only the rows of the kept low frequencies
_BITS = (np.uint64(1) << np.arange(HASH_SIZE * HASH_SIZE - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)


def phash_pixels(image: Image.Image) -> np.ndarray:
    """The 32x32 grey Lanczos thumbnail that the hash is computed from (float64)."""
    from PIL import Image as PILImage

    small = image.convert("L").resize((IMG_SIZE, IMG_SIZE), PILImage.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float64)


def phash_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """Hashes of a ``[n, 32, 32]`` stack of thumbnails (``uint64[n]``), vectorised."""
    low = np.einsum("ki,nij,lj->nkl", _DCT, pixels, _DCT).reshape(len(pixels), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return (bits.astype(np.uint64) * _BITS).sum(axis=1, dtype=np.uint64)


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of one image."""
    return int(phash_from_pixels(phash_pixels(image)[None])[0])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of ``uint64`` arrays."""
    return np.bitwise_count(np.bitwise_xor(a, b))


# ---------------------------------------------------------------- MinHash

_RNG = np.random.default_rng(0x5EED)
_MUL = (_RNG.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1))[:, None]
_ADD = _RNG.integers(0, 2**63, NUM_PERM, dtype=np.uint64)[:, None]
_POW = np.uint64(1099511628211) ** np.arange(SHINGLE - 1, -1, -1, dtype=np.uint64)


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


def shingle_hashes(text: str) -> np.ndarray:
    """Distinct 64-bit hashes of the character 5-grams of the normalised text (the whole text if shorter)."""
    data = np.frombuffer(normalize_text(text).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if len(data) < SHINGLE:
        data = np.concatenate([data, np.zeros(SHINGLE - len(data), dtype=np.uint64)])
    windows = np.lib.stride_tricks.sliding_window_view(data, SHINGLE)
    return np.unique((windows * _POW).sum(axis=1, dtype=np.uint64))


def minhash(text: str) -> np.ndarray:
    """``uint32[NUM_PERM]`` signature of ``text``."""
    hashed = (_MUL * shingle_hashes(text)[None, :] + _ADD) >> np.uint64(32)
    return hashed.min(axis=1).astype(np.uint32)
