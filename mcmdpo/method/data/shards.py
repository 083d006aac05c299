"""HDF5 preference shards: the writer, a per-shard reader, and one dataset over all shards.

Layout of one shard (N kept samples, P = 1 in pad mode or the largest tile count in anyres,
S x S the processor's crop size):

=============================  ==================  ========================================================
dataset                        shape / dtype       content
=============================  ==================  ========================================================
chosen_pixels                  [N,P,3,S,S] f16|f32  m_w, preprocessed; patches past ``chosen_num_patches``
                                                    are never written (zeros, no disk space)
rejected_pixels                [N,P,3,S,S] f16|f32  m_l for the recipe's strategy
chosen_num_patches             [N] int16            tensors used per sample (pad: 1)
rejected_num_patches           [N] int16
chosen_image_sizes             [N,2] int32          original (height, width) of m_w (LLaVA-NeXT image_sizes)
rejected_image_sizes           [N,2] int32          (height, width) of the image m_l was made from
ids                            [N] str              the record's ``idx`` as text
positions                      [N] int64            the record's position in the source file
rejected_context_positions     [N] int64            the position whose question is c_l
rejected_image_positions       [N] int64            the ``random`` strategy's source position, else -1
image_paths                    [N] str              image path relative to the image root
question, rejected_question,   [N] str (utf-8)      c (with instruction), c_l, y_w, y_l
chosen, rejected
=============================  ==================  ========================================================

Pixel datasets are chunked one chunk per sample and patch (``[1,1,3,S,S]``, so exactly one chunk per
sample in pad mode), uncompressed: writes and reads go straight to the chunk (``write_direct_chunk`` /
``read_direct_chunk``), which is what makes random access cheap. File attributes carry the
provenance (see :mod:`mcmdpo.method.data.build`). :class:`PreferenceShards` opens a list of shards (or
an index JSON) as one dataset with O(1) random access by global index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmdpo.batch.errors import StateError
from mcmdpo.batch.stage import TaskContext, TaskInput
from mcmdpo.method.data.hdf5 import decode_attr, encode_attr, read_attrs

if TYPE_CHECKING:
    import h5py
    from typing_extensions import Self

FORMAT = "mcmdpo-preference-shard/1"
INDEX_FORMAT = "mcmdpo-preference-index/1"
TEXT_FIELDS = ("question", "rejected_question", "chosen", "rejected")
INT_FIELDS = ("positions", "rejected_context_positions", "rejected_image_positions")


def shard_name(shard: int, num_shards: int) -> str:
    """``shard-KKKKK-of-NNNNN`` (the stem of a shard file and of its report)."""
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def shard_range(num_records: int, shard: int, num_shards: int) -> range:
    """Contiguous record positions of ``shard``: [k*n//N, (k+1)*n//N)."""
    return range(shard * num_records // num_shards, (shard + 1) * num_records // num_shards)


@dataclass
class Sample:
    """One finished sample, as the writer takes it."""

    sample_id: str
    position: int
    image_path: str
    question: str
    rejected_question: str
    chosen: str
    rejected: str
    rejected_context_position: int
    chosen_pixels: np.ndarray
    rejected_pixels: np.ndarray
    chosen_size: tuple[int, int]
    rejected_size: tuple[int, int]
    rejected_image_position: int = -1


@dataclass
class _Columns:
    """Per-sample metadata buffered in memory and written in one go at the end."""

    ids: list[str] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)
    texts: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in TEXT_FIELDS})
    ints: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in INT_FIELDS})
    patches: dict[str, list[int]] = field(default_factory=lambda: {"chosen": [], "rejected": []})
    sizes: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: {"chosen": [], "rejected": []})


class ShardWriter:
    """Writes one shard file sample by sample; :meth:`close` finalises it.

    Write to a temporary path (``artifacts.atomic_path``) and rename only after ``close()``: a
    killed writer then leaves no visible shard.
    """

    def __init__(
        self,
        path: Path,
        *,
        capacity: int,
        max_patches: int,
        patch_shape: tuple[int, int, int],
        dtype: str = "float16",
        attrs: Mapping[str, Any] | None = None,
    ):
        import h5py

        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.max_patches, self.patch_shape = max_patches, tuple(patch_shape)
        self.count = 0
        self._cols = _Columns()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # v110 bounds: extensible-array chunk index, still readable by HDF5 >= 1.10 (not only 2.x)
        self._file = h5py.File(self.path, "w", libver=("v110", "v110"))
        shape = (max(capacity, 1), max_patches, *self.patch_shape)
        chunks = (1, 1, *self.patch_shape)
        self._pixels = {
            side: self._file.create_dataset(
                f"{side}_pixels", shape=shape, maxshape=(None, *shape[1:]), dtype=self.dtype, chunks=chunks
            )
            for side in ("chosen", "rejected")
        }
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = encode_attr(value)

    def add(self, sample: Sample) -> None:
        i = self.count
        if i >= self._pixels["chosen"].shape[0]:
            for ds in self._pixels.values():
                ds.resize(i * 2 + 1, axis=0)
        for side, values in (("chosen", sample.chosen_pixels), ("rejected", sample.rejected_pixels)):
            self._write_pixels(side, i, values)
            self._cols.patches[side].append(len(values))
        self._cols.sizes["chosen"].append(tuple(sample.chosen_size))
        self._cols.sizes["rejected"].append(tuple(sample.rejected_size))
        self._cols.ids.append(str(sample.sample_id))
        self._cols.image_paths.append(sample.image_path)
        for key in TEXT_FIELDS:
            self._cols.texts[key].append(getattr(sample, key))
        self._cols.ints["positions"].append(sample.position)
        self._cols.ints["rejected_context_positions"].append(sample.rejected_context_position)
        self._cols.ints["rejected_image_positions"].append(sample.rejected_image_position)
        self.count += 1

    def _write_pixels(self, side: str, i: int, values: np.ndarray) -> None:
        if values.ndim != 4 or tuple(values.shape[1:]) != self.patch_shape or len(values) > self.max_patches:
            want = f"[<= {self.max_patches}, {', '.join(map(str, self.patch_shape))}]"
            raise ValueError(f"{side} pixels have shape {values.shape}; expected {want}")
        data = cast(values, self.dtype)
        ds = self._pixels[side]
        for p in range(len(data)):
            ds.id.write_direct_chunk((i, p, 0, 0, 0), data[p].tobytes())

    def close(self, attrs: Mapping[str, Any] | None = None) -> int:
        """Write the metadata columns and final attributes; return the sample count."""
        import h5py

        n, f, cols = self.count, self._file, self._cols
        for ds in self._pixels.values():
            ds.resize(n, axis=0)
        text = h5py.string_dtype("utf-8")
        f.create_dataset("ids", data=np.array(cols.ids, dtype=object), dtype=text)
        f.create_dataset("image_paths", data=np.array(cols.image_paths, dtype=object), dtype=text)
        for key in TEXT_FIELDS:
            f.create_dataset(key, data=np.array(cols.texts[key], dtype=object), dtype=text)
        for key in INT_FIELDS:
            f.create_dataset(key, data=np.array(cols.ints[key], dtype=np.int64))
        for side in ("chosen", "rejected"):
            f.create_dataset(f"{side}_num_patches", data=np.array(cols.patches[side], dtype=np.int16))
            sizes = np.array(cols.sizes[side], dtype=np.int32).reshape(n, 2)
            f.create_dataset(f"{side}_image_sizes", data=sizes)
        f.attrs["format"] = FORMAT
        f.attrs["num_samples"] = n
        f.attrs["dtype"] = self.dtype.name
        f.attrs["max_patches"] = self.max_patches
        f.attrs["patch_shape"] = np.array(self.patch_shape, dtype=np.int64)
        for key, value in (attrs or {}).items():
            f.attrs[key] = encode_attr(value)
        f.close()
        return n

    def abort(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous copy in ``dtype``; float32 -> float16 through torch when it is installed.

    Both round to nearest even (identical bits); numpy's cast is ~8x slower on CPU, which made it
    the largest cost of writing a sample after the noise itself.
    """
    if dtype == np.float16 and values.dtype == np.float32:
        try:
            import torch
        except ImportError:
            pass
        else:
            return torch.from_numpy(np.ascontiguousarray(values)).to(torch.float16).numpy()
    return np.ascontiguousarray(values, dtype=dtype)


# ---------------------------------------------------------------- reading


class ShardReader:
    """Random access to one shard; metadata columns are loaded once, pixels read per chunk.

    Opens its file lazily and again after a fork (h5py handles must not cross processes), so it
    can live in a torch DataLoader with workers.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._file: Any = None
        self._pid = -1
        self._meta: dict[str, Any] | None = None
        self._pixels: dict[str, Any] | None = None
        self._pixels_pid = -1
        self._len: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "_file": None,
            "_pid": -1,
            "_meta": None,
            "_pixels": None,
            "_pixels_pid": -1,
            "_len": self._len,
        }

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    @property
    def attrs(self) -> dict[str, Any]:
        return read_attrs(self.file)

    def __len__(self) -> int:
        if self._len is None:  # shards are immutable once renamed into place
            self._len = int(self.file.attrs["num_samples"])
        return self._len

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            f = self.file
            meta = {k: f[k].asstr()[:] for k in ("ids", "image_paths", *TEXT_FIELDS)}
            names = (*INT_FIELDS, "chosen_num_patches", "rejected_num_patches")
            meta.update({k: f[k][:] for k in (*names, "chosen_image_sizes", "rejected_image_sizes")})
            self._meta = meta
        return self._meta

    def _layout(self, side: str) -> tuple[h5py.Dataset, tuple[int, ...], np.dtype, bool]:
        """(dataset, per-patch shape, dtype, direct chunk reads possible), looked up once."""
        if self._pixels is None or self._pixels_pid != os.getpid():
            self._pixels, self._pixels_pid = {}, os.getpid()
        if side not in self._pixels:
            ds = self.file[f"{side}_pixels"]
            inner = tuple(ds.shape[2:])
            direct = ds.compression is None and not ds.scaleoffset and ds.chunks == (1, 1, *inner)
            self._pixels[side] = (ds, inner, ds.dtype, direct)
        return self._pixels[side]

    def pixels(self, side: str, i: int) -> np.ndarray:
        """``[n, 3, S, S]`` tensors of sample ``i`` (``side`` = chosen | rejected), stored dtype."""
        ds, inner, dtype, direct = self._layout(side)
        n = int(self.meta[f"{side}_num_patches"][i])
        if not direct:
            return ds[i, :n]
        out = np.empty((n, *inner), dtype=dtype)
        for p in range(n):
            ds.id.read_direct_chunk((i, p, 0, 0, 0), out=out[p].reshape(-1).view(np.uint8))
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {self.path} ({len(self)} samples)")
        m = self.meta
        item: dict[str, Any] = {"id": m["ids"][i], "image_path": m["image_paths"][i]}
        item.update({k: m[k][i] for k in TEXT_FIELDS})
        item.update({k: int(m[k][i]) for k in INT_FIELDS})
        for side in ("chosen", "rejected"):
            item[f"{side}_pixels"] = self.pixels(side, i)
            item[f"{side}_image_size"] = m[f"{side}_image_sizes"][i].copy()
        return item

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pixels = None, None


class PreferenceShards:
    """All shards of a precompute stage as one map-style dataset with O(1) random access.

    ``ds[i]`` returns a dict of numpy arrays and strings (see :meth:`ShardReader.__getitem__`).
    The global order is shard 0's samples, then shard 1's, ...; a lookup table maps a global
    index to (shard, local index) in constant time.
    """

    reader_class: type[ShardReader] = ShardReader
    """The per-shard reader (:class:`mcmdpo.method.data.sft_shards.SftShards` reads SFT shards)."""

    def __init__(self, paths: Sequence[Path | str], counts: Sequence[int] | None = None):
        self.readers: Sequence[ShardReader] = [self.reader_class(p) for p in paths]
        counts = [len(r) for r in self.readers] if counts is None else list(counts)
        if len(counts) != len(self.readers):
            raise ValueError("one count per shard")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self._shard = np.repeat(np.arange(len(counts), dtype=np.int32), self.counts)
        self._local = np.arange(int(self.offsets[-1]), dtype=np.int64) - self.offsets[self._shard]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, index inside the shard) of global index ``i``."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range ({n} samples)")
        return int(self._shard[i]), int(self._local[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, local = self.locate(i)
        return self.readers[shard][local]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.readers]

    def text_column(self, name: str) -> list[str]:
        """One text column (``question``, ``chosen``, ...) of every sample, in global order."""
        return [str(t) for r in self.readers for t in r.meta[name]]

    @classmethod
    def from_index(cls, index_path: Path | str) -> Self:
        """Open the shards listed in an index JSON (paths relative to the index's folder)."""
        index_path = Path(index_path)
        index = json.loads(index_path.read_text())
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"{index_path}: not a {INDEX_FORMAT} index")
        paths = [index_path.parent / s["path"] for s in index["shards"]]
        return cls(paths, [s["num_samples"] for s in index["shards"]])

    @classmethod
    def from_inputs(cls, inputs: Iterable[TaskInput]) -> Self:
        """Open the finished precompute tasks (``ctx.inputs["precompute"]``), in shard order.

        Refuses an incomplete set (missing shards, or tasks from different shard counts).
        """
        return cls(ordered_shard_outputs(inputs, "shard"))

    def close(self) -> None:
        for r in self.readers:
            r.close()


def ordered_shard_outputs(inputs: Iterable[TaskInput], kind: str) -> list[Path]:
    """The ``.h5`` outputs of finished shard tasks, in shard order.

    Refuses an incomplete set (missing shards, or tasks from different shard counts).
    """
    by_shard: dict[int, Path] = {}
    totals = set()
    for task in inputs:
        totals.add(int(task.params["num_shards"]))
        by_shard[int(task.params["shard"])] = task_h5_output(task)
    if len(totals) != 1 or sorted(by_shard) != list(range(next(iter(totals)))):
        raise StateError(
            f"incomplete {kind} set: have shards {sorted(by_shard)} of num_shards {sorted(totals)}"
        )
    return [by_shard[k] for k in sorted(by_shard)]


def write_index(shard_paths: Sequence[Path], index_path: Path) -> dict[str, Any]:
    """Write the small JSON manifest that :meth:`PreferenceShards.from_index` opens."""
    from mcmdpo.batch.artifacts import write_json_atomic

    index_path = Path(index_path)
    shards = []
    for path in shard_paths:
        reader = ShardReader(path)
        rel = os.path.relpath(Path(path).resolve(), index_path.parent.resolve())
        shards.append({"path": rel, "num_samples": len(reader)})
        reader.close()
    index = {"format": INDEX_FORMAT, "num_samples": sum(s["num_samples"] for s in shards), "shards": shards}
    write_json_atomic(index_path, index)
    return index


def shard_content_hash(path: Path | str) -> str:
    """sha256 over every dataset (name, dtype, shape, values) and attribute, in sorted order.

    Independent of HDF5 byte layout, so it compares shards written by different runs.
    """
    import h5py

    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for key in sorted(f.attrs):
            h.update(f"attr {key}={decode_attr(f.attrs[key])!r}\n".encode())
        for name in sorted(f):
            ds = f[name]
            h.update(f"ds {name} {ds.dtype} {ds.shape}\n".encode())
            if ds.dtype.kind == "O":
                for s in ds.asstr()[:]:
                    h.update(s.encode() + b"\x00")
            else:
                for start in range(0, max(ds.shape[0], 1), 64):
                    h.update(np.ascontiguousarray(ds[start : start + 64]).tobytes())
    return h.hexdigest()


def task_h5_output(task: TaskInput) -> Path:
    """The one ``.h5`` output of a finished shard task (precompute or reference)."""
    h5 = [Path(p) for p in task.outputs if str(p).endswith(".h5")]
    if len(h5) != 1:
        raise StateError(f"{task.stage} task {task.task_id}: expected one .h5 output, got {h5}")
    return h5[0] if h5[0].is_absolute() else Path(task.dir) / h5[0]


def shard_input(ctx: TaskContext, stage: str = "precompute") -> Path:
    """The ``.h5`` of the ``stage`` task with this task's ``shard`` / ``num_shards``."""
    want = (int(ctx.params["shard"]), int(ctx.params["num_shards"]))
    for task in ctx.inputs.get(stage, []):
        if (int(task.params["shard"]), int(task.params["num_shards"])) == want:
            return task_h5_output(task)
    raise StateError(f"{ctx.stage}: no finished {stage} task for shard {want[0]} of {want[1]}")
