"""Which samples every optimizer step uses, and loading them ahead of the step that needs them.

Order (``data_order``) of epoch ``e``:

- ``random`` (default): ``numpy.random.default_rng([seed, e]).permutation(n)``;
- ``length_grouped``: upstream LLaVA's ``group_by_modality_length`` sampler (``llava/train/
  llava_trainer.py``: ``LengthGroupedSampler`` -> ``get_modality_length_grouped_indices`` ->
  ``get_length_grouped_indices``, with ``batch_size`` = micro-batch and ``world_size`` = world size x
  accumulation): a ``torch.randperm`` cut into megabatches of one global batch, each sorted by length
  (longest first) and dealt into ``world x accum`` micro-batches of similar total length
  (``split_to_even_chunks``). Micro-batch ``c`` of a megabatch goes where upstream's data loader puts
  it (rank ``c mod world``, accumulation step ``c // world``). Lengths are upstream's
  ``modality_lengths``: words of the longer answer (preference) or of ``"<image>\\n" + question``
  plus the answer (SFT); every sample has an image, so the modality split never applies. Upstream
  draws from torch's global generator (its state depends on everything before); here the generator
  is seeded from (seed, epoch) only.

Optimizer step ``k`` of the epoch takes the global batch ``order[k*G:(k+1)*G]`` (``G`` =
global_batch_size); the last ``n mod G`` samples of each epoch's order are not used (upstream's
Trainer runs them as a smaller last step). Rank ``r`` takes the slice ``[r*m*a, (r+1)*m*a)`` of it
and splits it into ``a`` micro-batches of ``m`` samples (``m`` = micro_batch_size, ``a`` =
accumulation). The order depends only on (seed, epoch, step), so a resumed run reads exactly the
batches an uninterrupted one does.

Loading: :class:`Prefetcher` builds step ``k+1``'s micro-batches on one background thread (the
precompute shards hold ready tensors); :class:`WorkerLoader` builds them in torch DataLoader worker
processes (SFT shards hold encoded images: decoding and preprocessing are the expensive part).
:func:`step_loader` picks one. Either way a micro-batch depends only on its indices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmdpo.method.train.spec import BatchLayout

if TYPE_CHECKING:
    import torch


class DataOrder:
    """Deterministic sample indices per (epoch, step) and rank.

    ``lengths`` (one per sample) switch to the ``length_grouped`` order; without them it is ``random``.
    """

    def __init__(
        self, num_samples: int, layout: BatchLayout, seed: int, lengths: Sequence[int] | None = None
    ):
        if num_samples < layout.global_batch:
            raise ValueError(
                f"{num_samples} training samples are fewer than one global batch ({layout.global_batch}); "
                "lower global_batch_size or add data"
            )
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.num_samples, self.layout, self.seed = num_samples, layout, seed
        self.lengths = None if lengths is None else [int(x) for x in lengths]
        self.steps_per_epoch = num_samples // layout.global_batch
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order of every sample (its last ``n mod G`` entries are not used)."""
        if epoch not in self._cache:
            if self.lengths is None:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                order = length_grouped_order(self.lengths, self.layout, epoch_generator(self.seed, epoch))
            self._cache = {epoch: order}
        return self._cache[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of global optimizer step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def global_batch(self, step: int) -> np.ndarray:
        epoch, k = self.position(step)
        size = self.layout.global_batch
        return self.permutation(epoch)[k * size : (k + 1) * size]

    def micro_batches(self, step: int, rank: int) -> list[np.ndarray]:
        """This rank's ``accum`` micro-batches of step ``step``."""
        m, a = self.layout.micro, self.layout.accum
        mine = self.global_batch(step)[rank * m * a : (rank + 1) * m * a]
        return [mine[j * m : (j + 1) * m] for j in range(a)]

    def fingerprint(self, epoch: int) -> str:
        """Short hash of an epoch's order (recorded in checkpoints, checked on resume)."""
        return hashlib.sha256(self.permutation(epoch).astype(np.int64).tobytes()).hexdigest()[:16]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from (seed, epoch) alone (upstream: torch's global generator)."""
    import torch

    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def length_grouped_order(
    lengths: Sequence[int], layout: BatchLayout, generator: torch.Generator
) -> np.ndarray:
    """Upstream's length-grouped order, each megabatch's micro-batches laid out rank-major (ours)."""
    chunks = layout.world * layout.accum
    flat = length_grouped_indices(lengths, layout.micro, chunks, generator)
    g, m = layout.global_batch, layout.micro
    out = list(flat)
    for start in range(0, len(flat) - g + 1, g):  # full megabatches; the partial last one is never used
        upstream = [flat[start + c * m : start + (c + 1) * m] for c in range(chunks)]
        # position r*accum + j (rank r, accumulation step j) holds upstream chunk j*world + r
        mine = [upstream[j * layout.world + r] for r in range(layout.world) for j in range(layout.accum)]
        out[start : start + g] = [i for chunk in mine for i in chunk]
    return np.asarray(out, dtype=np.int64)


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """Upstream ``get_length_grouped_indices`` (LLaVA ``llava_trainer.py``), same draws for the same
    generator: ``randperm``, megabatches of ``world_size * batch_size`` sorted longest first, each split
    into ``world_size`` chunks by :func:`split_to_even_chunks`."""
    import torch

    indices = torch.randperm(len(lengths), generator=generator)
    size = world_size * batch_size
    megabatches = [indices[i : i + size].tolist() for i in range(0, len(lengths), size)]
    megabatches = [sorted(mb, key=lambda i: lengths[i], reverse=True) for mb in megabatches]
    return [i for mb in megabatches for chunk in split_to_even_chunks(mb, lengths, world_size) for i in chunk]


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Upstream ``split_to_even_chunks``: each index goes to the chunk with the smallest total length
    that is not full (round robin when the chunks cannot be equal in size)."""
    if len(indices) % num_chunks != 0:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals: list[float] = [0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def sample_lengths(texts: Callable[[str], Sequence[str]], n: int, stage: str) -> list[int]:
    """Upstream ``modality_lengths`` of the first ``n`` samples; ``texts(field)`` gives a text column.

    Preference (``DPODataset``): ``max(len(chosen.split()), len(rejected.split()))``; SFT
    (``LazySupervisedDataset``): the words of every turn, ``"<image>\\n" + question`` and the answer.
    """
    chosen = texts("chosen")[:n]
    if stage == "sft":
        questions = texts("question")[:n]
        return [len(f"<image>\n{q}".split()) + len(c.split()) for q, c in zip(questions, chosen, strict=True)]
    rejected = texts("rejected")[:n]
    return [max(len(c.split()), len(r.split())) for c, r in zip(chosen, rejected, strict=True)]


def conversation_lengths(conversations: Sequence[str]) -> list[int]:
    """Upstream ``LazySupervisedDataset.modality_lengths`` of SFT shard samples (``conversations``:
    the shards' JSON ``[[question, answer], ...]`` column, ``<image>`` removed from the questions):
    the words of every turn's value, ``"<image>\\n"`` of the first human turn counted as one."""
    return [1 + sum(len(q.split()) + len(a.split()) for q, a in json.loads(c)) for c in conversations]


class Prefetcher:
    """Loads step ``k+1``'s micro-batches on one background thread while step ``k`` computes.

    ``load(step)`` must depend on ``step`` only (no RNG), which keeps prefetching deterministic.
    """

    def __init__(self, load: Callable[[int], Any], last_step: int):
        self._load, self._last = load, last_step
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._pending: dict[int, Future[Any]] = {}

    def get(self, step: int) -> Any:
        future = self._pending.pop(step, None) or self._pool.submit(self._load, step)
        self._pending.clear()
        if step + 1 < self._last:
            self._pending[step + 1] = self._pool.submit(self._load, step + 1)
        return future.result()

    def close(self) -> None:
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class WorkerLoader:
    """The micro-batches of steps ``first_step .. last_step - 1`` from a torch DataLoader.

    ``item(index)`` (decode, preprocess, tokenise) runs in ``workers`` processes; ``collate`` pads a
    micro-batch. The batch sampler is the data order from ``first_step`` on, so a resumed run starts
    exactly where the checkpoint left off, and DataLoader keeps the sampler's order whatever the
    number of workers.
    """

    def __init__(
        self,
        item: Callable[[int], Any],
        collate: Callable[[list[Any]], Any],
        order: DataOrder,
        rank: int,
        first_step: int,
        last_step: int,
        workers: int,
    ):
        from torch.utils.data import DataLoader

        batches = [b.tolist() for s in range(first_step, last_step) for b in order.micro_batches(s, rank)]
        self.accum, self.next_step = order.layout.accum, first_step
        loader = DataLoader(
            _Items(item), batch_sampler=batches, collate_fn=collate, num_workers=workers, prefetch_factor=2
        )
        self._iter: Any = iter(loader)

    def get(self, step: int) -> list[Any]:
        if step != self.next_step:
            raise RuntimeError(f"WorkerLoader: step {step} asked, {self.next_step} is next")
        self.next_step += 1
        return [next(self._iter) for _ in range(self.accum)]

    def close(self) -> None:
        self._iter = None  # the iterator's workers shut down when it is collected


class _Items:
    """A map-style dataset over ``item(index)`` (what DataLoader workers call)."""

    def __init__(self, item: Callable[[int], Any]):
        self.item = item

    def __getitem__(self, index: int) -> Any:
        return self.item(int(index))


def step_loader(
    objective: Any, order: DataOrder, rank: int, first_step: int, last_step: int
) -> WorkerLoader | Prefetcher:
    """A :class:`WorkerLoader` when the objective loads per item with workers, else a
    :class:`Prefetcher` over ``objective.load`` (one background thread)."""
    workers = int(getattr(objective, "workers", 0))
    if workers > 0 and hasattr(objective, "item"):
        return WorkerLoader(objective.item, objective.collate, order, rank, first_step, last_step, workers)

    def load(step: int) -> list[Any]:
        return [objective.load(b) for b in order.micro_batches(step, rank)]

    return Prefetcher(load, last_step)
