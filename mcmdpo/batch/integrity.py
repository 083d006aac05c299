"""What a finished task's outputs were, and whether they still are: sizes and sha256 in ``DONE``.

When a task finishes, the runtime records every output file (folders expanded, hidden files skipped)
with its size and sha256 in the ``DONE`` manifest (``files``). Later:

- a re-submit compares sizes only (cheap) and re-runs a task whose output went missing or changed
  size (a truncated HDF5 shard is never fed to training);
- ``mcmdpo verify RUN_DIR`` compares sizes and sha256 of every DONE task.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import file_hash


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


def check_outputs(folder: Path, manifest: Mapping[str, Any], hashes: bool = False) -> list[str]:
    """What no longer matches the ``files`` a DONE manifest recorded (empty: intact).

    ``hashes=False`` compares existence and sizes only. Manifests written before sizes were
    recorded have no ``files`` and pass.
    """
    problems = []
    for rel, recorded in sorted(manifest.get("files", {}).items()):
        path = Path(folder) / rel
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != recorded["size"]:
            problems.append(f"{path}: size {size} bytes, recorded {recorded['size']}")
        elif hashes and file_hash(path) != recorded["sha256"]:
            problems.append(f"{path}: content changed (sha256 differs from the DONE manifest)")
    return problems
