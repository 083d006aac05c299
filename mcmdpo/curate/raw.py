"""Raw curation input: (id, image, context, alt_text) triples as JSONL, a JSON list, or parquet.

- ``id``: int or string (unique); ``context``: the post text; ``alt_text``: the user's alt-text.
- ``image``: a path relative to ``[curate] images``, raw bytes (parquet), or a ``{"bytes", "path"}``
  struct (the parquet layout of ``datasets.Image``).

Shards are contiguous position ranges (``[k*n//N, (k+1)*n//N)``) so that each array task parses only
its own records (parquet: only the row groups that overlap its range). Record problems use the bad-record
codes of :data:`mcmdpo.method.data.records.PROBLEMS`; they are attached, not raised, so the caller applies
the ``on_bad_record`` policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcmdpo.method.data.records import BadRecord, detect_format, read_raw

TEXTS = ("context", "alt_text")


@dataclass(frozen=True)
class RawRecord:
    """One raw triple; ``problem`` is ``(code, message)`` when it is bad before any image is opened."""

    position: int
    id: int | str
    context: str = ""
    alt_text: str = ""
    image: str | None = None
    image_bytes: bytes | None = None
    problem: tuple[str, str] | None = None

    def bad(self, file: Path | str, code: str, detail: str) -> BadRecord:
        return BadRecord(file, self.position, self.id, code, detail)


def shard_range(num_records: int, shard: int, num_shards: int) -> range:
    """Positions of ``shard``: ``[k*n//N, (k+1)*n//N)``."""
    return range(shard * num_records // num_shards, (shard + 1) * num_records // num_shards)


def count_raw(path: Path) -> int:
    """Number of records (good or bad) of ``path``."""
    fmt = detect_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    return len(read_raw(path, fmt))


def read_shard(path: Path, positions: range) -> list[RawRecord]:
    """The records at ``positions`` of ``path``, parsed (problems attached)."""
    return [parse_raw(raw, position) for position, raw in _iter_raw(Path(path), positions)]


def _iter_raw(path: Path, positions: range) -> Iterator[tuple[int, Any]]:
    fmt = detect_format(path)
    if fmt == "parquet":
        yield from _iter_parquet(path, positions)
    elif fmt == "jsonl":
        yield from _iter_jsonl(path, positions)
    else:
        rows = read_raw(path, fmt)
        yield from ((p, rows[p]) for p in positions)


def _iter_jsonl(path: Path, positions: range) -> Iterator[tuple[int, Any]]:
    position = -1
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            position += 1
            if position >= positions.stop:
                return
            if position >= positions.start:
                try:
                    yield position, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield position, _Malformed(f"line {lineno}: {exc}")


def _iter_parquet(path: Path, positions: range) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(path)
    first = 0
    for group in range(reader.num_row_groups):
        rows = reader.metadata.row_group(group).num_rows
        lo, hi = max(first, positions.start), min(first + rows, positions.stop)
        if lo < hi:
            table = reader.read_row_group(group).slice(lo - first, hi - lo)
            yield from zip(range(lo, hi), table.to_pylist(), strict=True)
        first += rows


@dataclass(frozen=True)
class _Malformed:
    error: str


def parse_raw(raw: Any, position: int) -> RawRecord:
    """Normalise one raw record; problems are recorded, not raised."""
    if isinstance(raw, _Malformed):
        return RawRecord(position, position, problem=("malformed_json", raw.error))
    if not isinstance(raw, Mapping):
        return RawRecord(position, position, problem=("not_a_record", f"got {type(raw).__name__}"))
    record_id = raw.get("id")
    if isinstance(record_id, float) and record_id.is_integer():
        record_id = int(record_id)
    if isinstance(record_id, bool) or not isinstance(record_id, int | str) or record_id == "":
        return RawRecord(position, position, problem=("missing_field", "missing or invalid id"))
    image, data = _image(raw.get("image"))
    texts = {k: raw.get(k) for k in TEXTS}
    record = RawRecord(position, record_id, image=image, image_bytes=data)
    return RawRecord(**{**record.__dict__, **_texts(texts, image, data)})


def _image(value: Any) -> tuple[str | None, bytes | None]:
    if isinstance(value, Mapping):
        path, data = value.get("path"), value.get("bytes")
        if isinstance(data, bytes | bytearray) and data:
            return None, bytes(data)
        return (path if isinstance(path, str) and path else None), None
    if isinstance(value, bytes | bytearray) and value:
        return None, bytes(value)
    return (value if isinstance(value, str) and value else None), None


def _texts(texts: Mapping[str, Any], image: str | None, data: bytes | None) -> dict[str, Any]:
    missing = [k for k in TEXTS if not isinstance(texts[k], str)]
    if image is None and data is None:
        missing.insert(0, "image")
    if missing:
        return {"problem": ("missing_field", f"missing or non-string {', '.join(missing)}")}
    empty = [k for k in TEXTS if not texts[k].strip()]
    if empty:
        return {"problem": ("empty_text", f"empty {', '.join(empty)}")}
    return {"context": texts["context"], "alt_text": texts["alt_text"]}
