"""What a finished task's outputs were, and whether they still are: sizes and sha256 in ``DONE``.

When a task finishes, the runtime records every output file (folders expanded, hidden files skipped)
with its size and sha256 in the ``DONE`` manifest (``files``). Later:

- a re-submit re-runs a task whose output went missing, changed size, or changed content: it
  re-hashes only the files whose size or modification time differ from the stamp of their last check
  (``.work/verified.json``: size, mtime, sha256 per file), so an intact run costs one ``stat`` per
  file, and a same-size overwrite inside a shard or ``model.safetensors`` is found and repaired;
- ``mcmdpo verify RUN_DIR`` hashes every file of every DONE task (and refreshes the stamps).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import file_hash, write_json_atomic


def output_files(out_dir: Path, outputs: Iterable[str]) -> list[Path]:
    """Every file of ``outputs`` (relative to ``out_dir``; folders expanded, hidden names skipped)."""
    files: list[Path] = []
    for rel in outputs:
        path = Path(out_dir) / rel
        if path.is_dir():
            for root, dirs, names in os.walk(path, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
        elif path.exists():
            files.append(path)
    return files


def describe_outputs(out_dir: Path, outputs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every output file (symbolic links resolved)."""
    out_dir = Path(out_dir)
    described = {}
    for file in output_files(out_dir, outputs):
        rel = os.path.relpath(file, out_dir)
        described[rel] = {"size": file.stat().st_size, "sha256": file_hash(file)}
    return described


STAMPS = Path(".work") / "verified.json"
"""``{relative path: [size, mtime_ns, sha256]}`` of a task's outputs when last found intact."""


def _stamps(folder: Path) -> dict[str, list[Any]]:
    try:
        doc = json.loads((Path(folder) / STAMPS).read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_stamps(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Stamp the outputs a DONE manifest just recorded (their size, mtime and recorded sha256)."""
    stamps = {}
    for rel, recorded in manifest.get("files", {}).items():
        with contextlib.suppress(OSError):
            st = (Path(folder) / rel).stat()
            stamps[rel] = [st.st_size, st.st_mtime_ns, recorded["sha256"]]
    with contextlib.suppress(OSError):
        write_json_atomic(Path(folder) / STAMPS, stamps)


def check_outputs(folder: Path, manifest: Mapping[str, Any], hashes: bool | str = "changed") -> list[str]:
    """What no longer matches the ``files`` a DONE manifest recorded (empty: intact).

    ``hashes``: ``False`` existence and sizes only; ``"changed"`` also the content of files whose
    size or mtime differ from their stamp (or that have none); ``True`` the content of every file.
    Files found intact are stamped again. Manifests written before sizes were recorded pass.
    """
    problems, stamps = [], _stamps(folder)
    fresh = dict(stamps)
    for rel, recorded in sorted(manifest.get("files", {}).items()):
        path = Path(folder) / rel
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if st.st_size != recorded["size"]:
            problems.append(f"{path}: size {st.st_size} bytes, recorded {recorded['size']}")
            continue
        stamp = [st.st_size, st.st_mtime_ns, recorded["sha256"]]
        if hashes is False or (hashes == "changed" and stamps.get(rel) == stamp):
            continue
        if file_hash(path) != recorded["sha256"]:
            problems.append(f"{path}: content changed (sha256 differs from the DONE manifest)")
        else:
            fresh[rel] = stamp
    if fresh != stamps:
        with contextlib.suppress(OSError):
            write_json_atomic(Path(folder) / STAMPS, fresh)
    return problems
