"""SFT shards: encoded images (or their paths) + conversations, one HDF5 file per array task.

At the paper's SFT scale (202K samples) preprocessed pixels are too big to store (3x336x336 fp16 =
677 KB a sample, 137 GB in all, five times that in anyres), so an SFT shard keeps what the source
has: the encoded image bytes (``store = "bytes"``: self-contained, one sequential file per shard
instead of 202K small files) or the absolute image path (``store = "paths"``: a few bytes a
sample, the images stay where they are). Decoding and preprocessing happen when training reads a
sample, in DataLoader worker processes (:class:`mcmdpo.method.samples.ConversationSource`).

=================  ==============  =========================================================
dataset            shape / dtype   content
=================  ==============  =========================================================
ids                [N] str         ``<source>:<record id>``
sources            [N] str         the source's name (``[[sft.files]] name``)
conversations      [N] str         JSON list of [question, answer] turns (image token removed)
image_paths        [N] str         absolute image path ("" when the bytes are stored)
image_sizes        [N, 2] int32    original (height, width)
image_offsets      [N + 1] int64   sample i's bytes are image_bytes[offsets[i]:offsets[i+1]]
image_bytes        [total] uint8   the encoded images, back to back (empty with ``paths``)
=================  ==============  =========================================================

Global order over several sources: source 0's records, then source 1's, ...; shard k of N takes the
contiguous positions ``[k*n//N, (k+1)*n//N)`` of that order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mcmdpo.method.data.hdf5 import write_attrs
from mcmdpo.method.data.records import BadRecord, UnsafePath, resolve_image
from mcmdpo.method.data.sft_records import SftRecord, load_sft_records
from mcmdpo.method.data.shards import PreferenceShards, ShardReader, ShardWriter, shard_range

FORMAT = "mcmdpo-sft-shard/1"
TEXT_COLUMNS = ("ids", "sources", "conversations", "image_paths")
BYTES_CHUNK = 1 << 20


@dataclass(frozen=True)
class SftSource:
    """One SFT file: its name in summaries, the file, its image root (None: bytes only), a limit."""

    name: str
    file: Path
    images: Path | None = None
    limit: int | None = None


@dataclass
class SftSample:
    """One checked sample, as the writer takes it."""

    sample_id: str
    source: str
    turns: Sequence[Sequence[str]]
    size: tuple[int, int]
    image_path: str = ""
    image_bytes: bytes = b""


# ---------------------------------------------------------------- writing


class SftShardWriter:
    """Appends samples to one shard file; :meth:`close` writes the columns (write to a temp path)."""

    def __init__(self, path: Path, attrs: Mapping[str, Any] | None = None):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "w", libver=("v110", "v110"))
        self._bytes = self._file.create_dataset(
            "image_bytes", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(BYTES_CHUNK,)
        )
        self._columns: dict[str, list[str]] = {k: [] for k in TEXT_COLUMNS}
        self._sizes: list[tuple[int, int]] = []
        self._offsets = [0]
        write_attrs(self._file, attrs or {})

    def add(self, sample: SftSample) -> None:
        data = np.frombuffer(sample.image_bytes, dtype=np.uint8)
        start = self._offsets[-1]
        if len(data):
            self._bytes.resize(start + len(data), axis=0)
            self._bytes[start : start + len(data)] = data
        self._offsets.append(start + len(data))
        self._columns["ids"].append(sample.sample_id)
        self._columns["sources"].append(sample.source)
        self._columns["conversations"].append(json.dumps([list(t) for t in sample.turns], ensure_ascii=False))
        self._columns["image_paths"].append(sample.image_path)
        self._sizes.append(tuple(sample.size))

    def close(self, attrs: Mapping[str, Any] | None = None) -> int:
        import h5py

        f, n = self._file, len(self._sizes)
        text = h5py.string_dtype("utf-8")
        for key, values in self._columns.items():
            f.create_dataset(key, data=np.array(values, dtype=object), dtype=text)
        f.create_dataset("image_sizes", data=np.array(self._sizes, dtype=np.int32).reshape(n, 2))
        f.create_dataset("image_offsets", data=np.array(self._offsets, dtype=np.int64))
        write_attrs(f, {"format": FORMAT, "num_samples": n, **(attrs or {})})
        f.close()
        return n

    abort = ShardWriter.abort


# ---------------------------------------------------------------- reading


class SftShardReader(ShardReader):
    """Random access to one SFT shard (lazy, fork-safe handles as :class:`ShardReader`)."""

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            f = self.file
            meta: dict[str, Any] = {k: f[k].asstr()[:] for k in TEXT_COLUMNS}
            meta["image_sizes"] = f["image_sizes"][:]
            meta["image_offsets"] = f["image_offsets"][:]
            self._meta = meta
        return self._meta

    def image(self, i: int) -> bytes | Path:
        """The encoded image of sample ``i`` (bytes), or its path when only the path is stored."""
        start, stop = (int(x) for x in self.meta["image_offsets"][i : i + 2])
        if stop > start:
            return self.file["image_bytes"][start:stop].tobytes()
        return Path(self.meta["image_paths"][i])

    def turns(self, i: int) -> list[tuple[str, str]]:
        return [(q, a) for q, a in json.loads(self.meta["conversations"][i])]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {self.path} ({len(self)} samples)")
        m = self.meta
        size = (int(m["image_sizes"][i][0]), int(m["image_sizes"][i][1]))
        return {"id": m["ids"][i], "source": m["sources"][i], "turns": self.turns(i),
                "image": self.image(i), "image_size": size}  # fmt: skip


class SftShards(PreferenceShards):
    """Every shard of an ``sft_data`` stage as one dataset (global index in O(1))."""

    reader_class = SftShardReader
    readers: Sequence[SftShardReader]


# ---------------------------------------------------------------- building one shard


@dataclass
class SftReport:
    """Kept and skipped records of one shard, per source."""

    kept: Counter[str] = field(default_factory=Counter)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, sources: Sequence[str], records: Mapping[str, int]) -> dict[str, Any]:
        per_source = {
            s: {"records": records.get(s, 0), "kept": self.kept[s],
                "skipped": sum(1 for k in self.skipped if k["source"] == s)}
            for s in sources
        }  # fmt: skip
        return {
            "num_samples": sum(self.kept.values()),
            "num_skipped": len(self.skipped),
            "skipped_by_reason": dict(Counter(k["reason"] for k in self.skipped)),
            "sources": per_source,
            "skipped": self.skipped,
        }


def read_sources(sources: Sequence[SftSource]) -> list[tuple[SftSource, SftRecord]]:
    """Every record of every source, in the global order (texts only; no image is opened)."""
    return [(src, rec) for src in sources for rec in load_sft_records(src.file, src.limit)]


def check_sample(source: SftSource, record: SftRecord, store: str, max_pixels: int) -> SftSample:
    """Open and fully decode the record's image (bad images are bad records); keep it encoded."""
    from mcmdpo.method.data.images import ImageError, load_image

    if record.problem is not None:
        raise BadRecord(source.file, record.position, record.id, *record.problem)
    image: Path | bytes
    try:
        image = record.image_bytes if record.image_bytes is not None else _image_path(source, record)
        decoded, _ = load_image(image, max_pixels)
    except UnsafePath as exc:
        raise BadRecord(source.file, record.position, record.id, "unsafe_path", str(exc)) from None
    except ImageError as exc:
        raise BadRecord(source.file, record.position, record.id, exc.code, str(exc)) from None
    size = (decoded.height, decoded.width)
    sample_id = f"{source.name}:{record.id}"
    if store == "paths" and isinstance(image, Path):
        return SftSample(sample_id, source.name, record.turns, size, image_path=str(image))
    data = image if isinstance(image, bytes) else image.read_bytes()
    return SftSample(sample_id, source.name, record.turns, size, image_bytes=data)


def _image_path(source: SftSource, record: SftRecord) -> Path:
    if source.images is None:
        raise UnsafePath(f"the record names an image file ({record.image!r}) but {source.name} has no images")
    return resolve_image(source.images, record.image or "")


def build_sft_shard(
    sources: Sequence[SftSource],
    shard: int,
    num_shards: int,
    writer: SftShardWriter,
    *,
    store: str = "bytes",
    on_bad_record: str = "fail",
    max_pixels: int = 89_478_485,
    after_sample: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Write shard ``shard`` of ``num_shards`` of the sources' records; return its report."""
    everything = read_sources(sources)
    positions = shard_range(len(everything), shard, num_shards)
    report, records = SftReport(), Counter(everything[p][0].name for p in positions)
    for position in positions:
        source, record = everything[position]
        try:
            writer.add(check_sample(source, record, store, max_pixels))
            report.kept[source.name] += 1
        except BadRecord as exc:
            if on_bad_record == "fail":
                raise
            report.skipped.append({**exc.as_dict(), "source": source.name})
        if after_sample is not None:
            after_sample()
    out = report.as_dict([s.name for s in sources], records)
    out.update(positions=[positions.start, positions.stop], num_source_records=len(everything))
    return out
