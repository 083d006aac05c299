"""Atomic writes, DONE markers with manifests, task events and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON: the input of every content hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path next to ``final``; rename it to ``final`` only if the block succeeds.

    The temp name starts with '.' and ends with '.tmp' so nothing lists it as an output; a crash
    leaves only the hidden temp file, which the next attempt overwrites.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, final)
    except OSError as exc:
        if exc.filename is None and exc.strerror:  # a failed write names no file: name the output
            raise OSError(exc.errno, exc.strerror, str(final)) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path | str) -> None:
    """Give ``path`` (and everything below it) the modes plain ``open``/``mkdir`` would: 0666/0777
    minus the umask. Some writers (``tempfile.mkstemp``, safetensors) create files 0600, which other
    members of a group on a shared cluster could not read."""
    mask = current_umask()
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 files
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_done(path: Path, manifest: Mapping[str, Any]) -> None:
    """Write the DONE marker last, atomically: its presence means every listed output is complete."""
    write_json_atomic(path, dict(manifest))


class DamagedDone(ValueError):
    """A DONE marker that is not a JSON object (edited, or damaged on disk); one line."""


def read_done(path: Path) -> dict[str, Any] | None:
    """A task's DONE manifest; None when absent; :class:`DamagedDone` when it cannot be read."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DamagedDone(f"{path}: unreadable DONE marker ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise DamagedDone(f"{path}: the DONE marker is not a JSON object")
    return doc


def done_or_damaged(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") or (None, why it is damaged) or (None, "") when absent."""
    try:
        return read_done(path), ""
    except DamagedDone as exc:
        return None, str(exc)


def append_event(path: Path, event: str, **fields: Any) -> None:
    """Append one JSON line to a task's event log (start, interrupted, failed, done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = canonical_json({"event": event, "time": time.time(), **fields}) + "\n"
    with open(path, "a") as f:
        f.write(line)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events of a task; a torn line (killed mid-write) or a damaged one (bytes that are not UTF-8
    JSON objects) is ignored."""
    try:
        raw = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return []
    events = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line.decode())
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                events.append(event)
    return events


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the distributions ``names`` (missing ones left out)."""
    out = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out
