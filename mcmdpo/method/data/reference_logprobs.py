"""Reference log-prob files (``logprobs.h5``, one per precompute shard): writer, reader, checks.

Layout::

    ids           [N] str       record ids, as in the precompute shard
    positions     [N] int64     source-file positions, as in the precompute shard
    <condition>   [N] float64   one dataset per scored condition (mw_cw_yw, ..., ml_cl_yl):
                                sum of log p(answer token | ...) over the answer tokens (EOS included)

File attributes (:mod:`mcmdpo.method.data.hdf5` codec): ``format``, ``conditions``, ``reference_model`` and
``reference_fingerprint``, ``engine``, ``mode``, ``batch_size``, ``dtype``, ``device``,
``shard``/``num_shards``/``num_samples``, ``precompute_shard`` (path), ``precompute_shard_sha256``,
``precompute_fingerprint`` and ``key`` (hash of everything that determines the values). Row ``i`` of
shard ``k`` belongs to sample ``i`` of precompute shard ``k``: :class:`ReferenceLogprobs` opens all
shards in shard order, so its global indices are those of
:class:`mcmdpo.method.data.shards.PreferenceShards`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmdpo.batch.artifacts import atomic_path, content_hash
from mcmdpo.batch.errors import ConfigError, InputError, StateError
from mcmdpo.method.data.hdf5 import read_attrs, write_attrs

if TYPE_CHECKING:
    import torch

    from mcmdpo.batch.stage import TaskInput
    from mcmdpo.method.data.shards import PreferenceShards

FORMAT = "mcmdpo-reference-logprobs/1"
OUTPUT = "logprobs.h5"


def reference_attrs(content: Mapping[str, Any], **facts: Any) -> dict[str, Any]:
    """The file attributes: ``content`` (what decides the values), its ``key``, and other ``facts``."""
    content = {"format": FORMAT, **content}
    return {**content, "key": content_hash(content, length=64), **facts}


def write_logprobs(
    final: Path,
    values: Mapping[str, np.ndarray],
    ids: Sequence[str],
    positions: Sequence[int] | np.ndarray,
    attrs: Mapping,
) -> None:
    """Write ``logprobs.h5`` under a temporary name and rename it into place."""
    import h5py

    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("positions", data=np.asarray(positions, dtype=np.int64))
        for name, column in values.items():
            f.create_dataset(name, data=np.asarray(column, dtype=np.float64))
        write_attrs(f, attrs)


class ReferenceLogprobs:
    """The ``logprobs.h5`` files of a reference stage as one table, indexed like ``PreferenceShards``.

    ``paths`` must be in shard order (``from_inputs`` sorts them). All values are loaded once (eight
    float64 per sample), so :meth:`lookup` is a plain array index.
    """

    def __init__(self, paths: Sequence[Path | str]):
        import h5py

        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise StateError("ReferenceLogprobs needs at least one logprobs.h5")
        columns: dict[str, list[np.ndarray]] = {}
        ids, counts, self.attrs = [], [], []
        for path in self.paths:
            with h5py.File(path, "r") as f:
                attrs = read_attrs(f)
                if attrs.get("format") != FORMAT:
                    raise InputError(f"not a {FORMAT} file", file=path)
                conditions = tuple(attrs["conditions"])
                if columns and tuple(columns) != conditions:
                    raise InputError(f"conditions {conditions} differ from {tuple(columns)}", file=path)
                for name in conditions:
                    columns.setdefault(name, []).append(f[name][:])
                ids.append(f["ids"].asstr()[:])
                counts.append(len(ids[-1]))
                self.attrs.append(attrs)
        self.conditions: tuple[str, ...] = tuple(columns)
        self.values = {name: np.concatenate(parts) for name, parts in columns.items()}
        self.ids = np.concatenate(ids)
        self.counts = counts

    @classmethod
    def from_inputs(cls, inputs: Iterable[TaskInput]) -> ReferenceLogprobs:
        """Open the finished reference tasks (``ctx.inputs["reference"]``) in shard order.

        Refuses an incomplete set (missing shards, or tasks from different shard counts).
        """
        from mcmdpo.method.data.shards import ordered_shard_outputs

        return cls(ordered_shard_outputs(inputs, "reference"))

    def __len__(self) -> int:
        return int(len(self.ids))

    def lookup(self, indices: int | Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """``{condition: float64 tensor}`` for global sample index(es); an int gives 0-d tensors."""
        import torch

        index = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices, dtype=np.int64)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"index out of range ({len(self)} samples)")
        return {name: torch.from_numpy(np.array(col[index])) for name, col in self.values.items()}

    def as_tensors(self) -> dict[str, torch.Tensor]:
        """Every sample: ``{condition: float64 tensor [N]}``."""
        import torch

        return {name: torch.from_numpy(col.copy()) for name, col in self.values.items()}

    def check_aligned(self, shards: PreferenceShards) -> None:
        """Raise unless these log-probs belong, row by row, to ``shards`` (counts and record ids)."""
        if list(shards.counts) != self.counts:
            raise StateError(
                f"reference rows per shard {self.counts} != preference shards {list(shards.counts)}"
            )
        offsets = np.concatenate([[0], np.cumsum(self.counts)])
        for k, reader in enumerate(shards.readers):
            if not np.array_equal(reader.meta["ids"], self.ids[offsets[k] : offsets[k + 1]]):
                raise StateError(f"{self.paths[k]}: record ids differ from {reader.path}")
            expected = self.attrs[k].get("precompute_fingerprint")
            actual = reader.attrs.get("fingerprint")
            if expected and actual and expected != actual:
                raise StateError(f"{self.paths[k]} was computed from another version of {reader.path}")

    def check_serves(
        self, shards: PreferenceShards, fingerprint: str, mode: str, conditions: Sequence[str], init: Path
    ) -> None:
        """Same samples, the conditions a loss needs, the same starting model (fingerprint) and mode."""
        self.check_aligned(shards)
        missing = [c for c in conditions if c not in self.conditions]
        if missing:
            raise ConfigError(
                f"the [reference] stage scored {', '.join(self.conditions)}; the loss also needs "
                f"{', '.join(missing)} (add them to reference.conditions)"
            )
        for attrs, path in zip(self.attrs, self.paths, strict=True):
            if attrs.get("reference_fingerprint") != fingerprint or attrs.get("mode") != mode:
                raise StateError(
                    f"{path} was computed with another model or image mode than the policy starts from "
                    f"({init}, mode {mode}); re-run the reference stage"
                )
