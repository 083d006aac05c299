"""Preference/test records in the upstream formats, image-path safety, the rejected-context draw.

Formats (see ``docs/method.md``):

- a JSON list of records with ``idx``, ``image.path`` (or ``image_path``), and top-level
  ``question``/``chosen``/``rejected`` and/or a ``text`` field holding those keys as a JSON string.
  As upstream's ``DPODataset`` (``text = json.loads(sample['text'])``), ``text`` is read whenever it
  is present; top-level fields are used only without it. Where both exist and differ, the record's
  ``text_disagrees`` names the fields (counted in the precompute report);
- JSONL, one record per line (the upstream test files, which are named ``*.json`` too);
- parquet (or ``.arrow``) through ``datasets``; an ``image`` column with embedded bytes works too.

Every record becomes a :class:`Record`; problems that need no image decoding (malformed JSON line,
missing or empty text, duplicate id, unsafe image path) are attached as ``record.problem`` instead of
raising, so that one pass classifies the whole file the same way in every array task.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mcmdpo.batch.errors import InputError, McmdpoError, record_ref

Split = Literal["train", "test"]

REQUIRED_TEXTS: dict[str, tuple[str, ...]] = {
    "train": ("question", "chosen", "rejected"),
    "test": ("question", "chosen"),
}

PROBLEMS: dict[str, str] = {
    "malformed_json": "the line or `text` field is not valid JSON",
    "not_a_record": "the record is not a JSON object",
    "missing_field": "a required field is missing",
    "empty_text": "question, chosen or rejected is empty",
    "duplicate_id": "the id was already used by an earlier record",
    "unsafe_path": "the image path leaves the image root",
    "missing_image": "the image file does not exist",
    "unreadable_image": "the image cannot be decoded",
    "truncated_image": "the image file is truncated",
    "non_rgb": "the image is not RGB (only with non_rgb = 'bad')",
    "huge_image": "the image has more pixels than max_image_pixels",
    "no_random_image": "no other sample with a usable image for the 'random' strategy",
}
"""Bad-record reasons: code -> meaning (the codes appear in shard reports and errors)."""


@dataclass(frozen=True)
class Record:
    """One sample of a source file, normalised across formats.

    position: 0-based index in the file (JSONL: the line's index among non-blank lines); the
              rejected-context draw and the shard ranges use it.
    id:       ``idx`` (or ``id``) of the record; the position when the record has none.
    problem:  ``(code, message)`` when the record is bad before any image is opened.
    text_disagrees: the fields whose top-level value differs from the ``text`` one (``text`` wins).
    """

    position: int
    id: int | str
    image: str | None = None
    image_bytes: bytes | None = None
    question: str = ""
    chosen: str = ""
    rejected: str = ""
    problem: tuple[str, str] | None = None
    text_disagrees: tuple[str, ...] = ()


class BadRecord(McmdpoError, ValueError):
    """A record that cannot be used; the message names the file, the record (1-based) and the cause."""

    def __init__(self, file: str | Path, position: int, record_id: Any, code: str, message: str):
        self.position, self.record_id = position, record_id
        self.code, self.detail = code, message
        where = f"{record_ref(position)} (id={record_id!r})"
        super().__init__(f"{code}: {message}", file=str(file), record=where)

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "id": self.record_id, "reason": self.code, "detail": self.detail}


# ---------------------------------------------------------------- reading


def detect_format(path: Path) -> str:
    """'json' (a list), 'jsonl', or 'parquet'/'arrow' by suffix; JSON vs JSONL by the first byte."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".arrow"):
        return suffix[1:]
    if suffix == ".jsonl":
        return "jsonl"
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def read_raw(path: Path, fmt: str | None = None) -> list[Any]:
    """The raw records of ``path``; a malformed JSONL line becomes a :class:`_Malformed` marker."""
    fmt = fmt or detect_format(path)
    if fmt == "json":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise read_error(path, exc) from None
        if not isinstance(data, list):
            raise InputError(f"expected a JSON list of records (got {type(data).__name__})", file=path)
        return data
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt in ("parquet", "arrow"):
        return _read_with_datasets(path, fmt)
    raise ValueError(f"{path}: unknown format {fmt!r}")


@dataclass(frozen=True)
class _Malformed:
    error: str


def _read_jsonl(path: Path) -> list[Any]:
    out: list[Any] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                out.append(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                out.append(_Malformed(f"line {lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x})"))
            except json.JSONDecodeError as exc:
                out.append(_Malformed(f"line {lineno}: {exc}"))
    return out


def _read_with_datasets(path: Path, fmt: str) -> list[Any]:
    import datasets
    import pyarrow
    import pyarrow.parquet

    if fmt == "parquet":
        try:
            if pyarrow.parquet.ParquetFile(path).metadata.num_rows == 0:
                return []  # datasets cannot build a dataset from no rows
        except pyarrow.ArrowException as exc:
            raise InputError(f"not a readable parquet file ({exc})", file=path) from None
    if fmt == "arrow":
        ds = datasets.Dataset.from_file(str(path))
    else:
        # keep_in_memory: no cache files next to the source or in ~/.cache on the compute node
        ds = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    if "image" in ds.features and isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return list(ds)


def parse_record(raw: Any, position: int, split: Split = "train") -> Record:
    """Normalise one raw record; problems are recorded, not raised."""
    if isinstance(raw, _Malformed):
        return Record(position, position, problem=("malformed_json", raw.error))
    if not isinstance(raw, Mapping):
        return Record(position, position, problem=("not_a_record", f"got {type(raw).__name__}"))
    record_id = _record_id(raw, position)
    texts, problem = _texts(raw)
    image, image_bytes = _image_ref(raw)
    problem = problem or _check_fields(texts, image, image_bytes, split)
    differ = _disagreements(raw, texts) if problem is None else ()
    return Record(position, record_id, image, image_bytes, **texts, problem=problem, text_disagrees=differ)


def _record_id(raw: Mapping[str, Any], position: int) -> int | str:
    for key in ("idx", "id"):
        value = raw.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, str)):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    return position


def _texts(raw: Mapping[str, Any]) -> tuple[dict[str, str], tuple[str, str] | None]:
    """question/chosen/rejected from the JSON string in ``text`` when present (upstream
    ``llava/train/train.py`` ``DPODataset.__getitem__``: ``text = json.loads(sample['text'])``), else
    from the top level."""
    source: Mapping[str, Any] = raw
    if raw.get("text") is not None:
        text = raw["text"]
        if isinstance(text, str):
            try:
                source = json.loads(text)
            except json.JSONDecodeError as exc:
                return {}, ("malformed_json", f"`text` field: {exc}")
        else:
            source = text
        if not isinstance(source, Mapping):
            return {}, ("malformed_json", "`text` field is not a JSON object")
    out = {k: source[k] for k in ("question", "chosen", "rejected") if isinstance(source.get(k), str)}
    bad = [k for k in ("question", "chosen", "rejected") if k in source and not isinstance(source[k], str)]
    if bad:
        return out, ("missing_field", f"{', '.join(bad)} must be strings")
    return out, None


def _disagreements(raw: Mapping[str, Any], texts: Mapping[str, str]) -> tuple[str, ...]:
    """Fields present both at the top level and in ``text`` with different values."""
    if raw.get("text") is None:
        return ()
    return tuple(k for k in ("question", "chosen", "rejected") if k in raw and raw[k] != texts.get(k))


def _image_ref(raw: Mapping[str, Any]) -> tuple[str | None, bytes | None]:
    image = raw.get("image")
    if isinstance(image, Mapping):
        data = image.get("bytes")
        path = image.get("path")
        return (path if isinstance(path, str) else None), (data if isinstance(data, bytes) else None)
    if isinstance(image, str):
        return image, None
    path = raw.get("image_path")
    return (path if isinstance(path, str) else None), None


def _check_fields(
    texts: Mapping[str, str], image: str | None, image_bytes: bytes | None, split: Split
) -> tuple[str, str] | None:
    missing = [k for k in REQUIRED_TEXTS[split] if k not in texts]
    if image is None and image_bytes is None:
        missing.insert(0, "image.path")
    if missing:
        return ("missing_field", f"missing {', '.join(missing)}")
    empty = [k for k in REQUIRED_TEXTS[split] if not texts[k].strip()]
    if empty:
        return ("empty_text", f"empty {', '.join(empty)}")
    return None


def load_records(path: Path, split: Split = "train", fmt: str | None = None) -> list[Record]:
    """Read and classify every record of ``path`` (record-level problems only; no images opened)."""
    raws = read_raw(Path(path), fmt)
    return mark_duplicates(parse_record(raw, i, split) for i, raw in enumerate(raws))


def mark_duplicates(records: Iterable[Record]) -> list[Record]:
    """The second and later records with an id already seen are bad (``duplicate_id``)."""
    seen: dict[Any, int] = {}
    out = []
    for record in records:
        key = (type(record.id).__name__, record.id)
        if record.problem is None and key in seen:
            record = replace(
                record, problem=("duplicate_id", f"id {record.id!r} first used by {record_ref(seen[key])}")
            )
        elif record.problem is None:
            seen[key] = record.position
        out.append(record)
    return out


def count_records(path: Path) -> int:
    """Number of records (good or bad) in ``path``: what shard ranges are cut from.

    Cached per (path, size, modification time): planning asks more than once.
    """
    stat = Path(path).stat()
    return _count(str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _count(path: str, size: int, mtime_ns: int) -> int:
    return len(read_raw(Path(path)))


# ---------------------------------------------------------------- paths


class UnsafePath(ValueError):
    pass


def resolve_image(root: Path, relative: str, real_root: Path | None = None) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symlinks that leave ``root``.

    ``real_root`` is ``os.path.realpath(root)`` when the caller has it already (saves syscalls).
    """
    if not relative or "\x00" in relative:
        raise UnsafePath(f"invalid image path {relative!r}")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePath(f"absolute image path {relative!r}")
    if ".." in rel.parts or ".." in relative.replace("\\", "/").split("/"):
        raise UnsafePath(f"image path {relative!r} contains '..'")
    base = real_root or Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / rel))
    if target != base and base not in target.parents:
        raise UnsafePath(f"image path {relative!r} resolves outside the image root (to {target})")
    return target


# ---------------------------------------------------------------- rejected context


def rejected_context_position(position: int, n: int, usable: Sequence[bool] | None = None) -> int:
    """The position whose ``question`` is the rejected context c_l of the record at ``position``.

    Upstream (``llava/train/train.py`` ``DPODataset.__getitem__``, lines 900-904)::

        random.seed(i)
        while True:
            random_idx = random.choice(range(len(self.list_data_dict)))
            if random_idx != i:
                break

    reproduced draw for draw with ``random.Random(i)`` (same draws as ``random.seed(i)`` + the module
    functions, without touching the global state). Deviation: records with no usable question
    (``usable[j]`` false; upstream has none) are skipped the same way, by drawing again. The caller
    guarantees that some other position is usable (:func:`check_context_pool`).
    """
    return next(context_draws(position, n, usable))


def context_draws(position: int, n: int, usable: Sequence[bool] | None = None) -> Iterator[int]:
    """Upstream's draws for ``position`` that are not ``position`` and have a usable question, in order.

    The first is c_l (:func:`rejected_context_position`); the ``random`` strategy, coupled to c_l,
    takes the next ones when that record's image cannot be used (upstream would crash there).
    """
    if n < 2:
        raise ValueError("the rejected context needs at least two records")
    return _draws(position, n, usable)


def _draws(position: int, n: int, usable: Sequence[bool] | None) -> Iterator[int]:
    rng = random.Random(position)
    while True:
        j = rng.choice(range(n))
        if j != position and (usable is None or usable[j]):
            yield j


def check_context_pool(usable: Sequence[bool]) -> None:
    """Raise unless at least two records have a usable question (else c_l cannot be drawn)."""
    if sum(1 for u in usable if u) < 2:
        raise ValueError("the rejected context needs at least two records with a usable question")


# ---------------------------------------------------------------- checking a whole split


def check_split(file: Path, images: Path, split: Split, fmt: str | None = None) -> list[BadRecord]:
    """Every bad record of a split, found without decoding images: malformed JSON, missing or
    empty fields, duplicate ids, unsafe image paths, image files that do not exist or do not start
    like an image."""
    file, real_root = Path(file), Path(os.path.realpath(images))
    bad = []
    for record in load_records(file, split, fmt):
        problem = record.problem or _image_problem(record, Path(images), real_root)
        if problem is not None:
            bad.append(BadRecord(file, record.position, record.id, *problem))
    return bad


def _image_problem(record: Record, root: Path, real_root: Path) -> tuple[str, str] | None:
    if record.image_bytes is not None:
        return None
    try:
        path = resolve_image(root, record.image or "", real_root)
    except UnsafePath as exc:
        return ("unsafe_path", str(exc))
    if not path.is_file():
        return ("missing_image", f"no file {path}")
    if _looks_like_image(path):
        return None
    return ("unreadable_image", f"{path} is not an image Pillow can open")


def _looks_like_image(path: Path) -> bool:
    """Pillow recognises the file's header (nothing is decoded: precompute decodes later)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def read_error(path: Path, exc: Exception) -> InputError:
    """A file that cannot be read as records, named with the line where it breaks."""
    if isinstance(exc, UnicodeDecodeError):
        line = Path(path).read_bytes()[: exc.start].count(b"\n") + 1
        return InputError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x})", file=path, line=line)
    if isinstance(exc, json.JSONDecodeError):
        return InputError(f"malformed JSON ({exc.msg}, column {exc.colno})", file=path, line=exc.lineno)
    return InputError(str(exc), file=path)
