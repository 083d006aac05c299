"""Which samples every optimizer step uses, and loading them ahead of the step that needs them.

Order: epoch ``e`` visits the samples in ``numpy.random.default_rng([seed, e]).permutation(n)``;
optimizer step ``k`` of the epoch takes the global batch ``perm[k*G:(k+1)*G]`` (``G`` =
global_batch_size; the last ``n mod G`` samples of each epoch's order are not used). Rank ``r`` takes
the slice ``[r*m*a, (r+1)*m*a)`` of it and splits it into ``a`` micro-batches of ``m`` samples
(``m`` = micro_batch_size, ``a`` = accumulation). The order depends only on (seed, epoch, step), so a
resumed run reads exactly the batches an uninterrupted one does.

Loading: :class:`Prefetcher` builds step ``k+1``'s micro-batches on one background thread (the
precompute shards hold ready tensors); :class:`WorkerLoader` builds them in torch DataLoader worker
processes (SFT shards hold encoded images: decoding and preprocessing are the expensive part).
:func:`step_loader` picks one. Either way a micro-batch depends only on its indices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from mcmdpo.train.spec import BatchLayout


class DataOrder:
    """Deterministic sample indices per (epoch, step) and rank."""

    def __init__(self, num_samples: int, layout: BatchLayout, seed: int):
        if num_samples < layout.global_batch:
            raise ValueError(
                f"{num_samples} training samples are fewer than one global batch ({layout.global_batch}); "
                "lower global_batch_size or add data"
            )
        self.num_samples, self.layout, self.seed = num_samples, layout, seed
        self.steps_per_epoch = num_samples // layout.global_batch
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)}
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


def step_loader(objective: Any, order: DataOrder, rank: int, first_step: int, last_step: int) -> Any:
    """A :class:`WorkerLoader` when the objective loads per item with workers, else a
    :class:`Prefetcher` over ``objective.load`` (one background thread)."""
    workers = int(getattr(objective, "workers", 0))
    if workers > 0 and hasattr(objective, "item"):
        return WorkerLoader(objective.item, objective.collate, order, rank, first_step, last_step, workers)

    def load(step: int) -> list[Any]:
        return [objective.load(b) for b in order.micro_batches(step, rank)]

    return Prefetcher(load, last_step)
