"""The ``data`` stage's manifest: what each split is (file, image root, format, count, sha256, size).

Later stages read ``data.json`` instead of the recipe; :func:`mcmdpo.handoff.split_source` resolves its
paths. ``files`` splits are checked in full here (syntax, fields, ids, image paths) before anything is
trained.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import file_hash
from mcmdpo.batch.errors import InputError
from mcmdpo.method.data.records import check_split, count_records, detect_format


def demo_manifest(spec: Any, folder: Path, rel: str) -> dict[str, Any]:
    """Generate the demo dataset into ``folder`` (``rel`` below the task folder) and describe it."""
    from mcmdpo.method.data.demo import make_demo_dataset

    made = make_demo_dataset(
        folder, spec.num_train, spec.num_test, spec.seed, spec.min_image_size, spec.max_image_size
    )
    splits = {}
    for split in ("train", "test"):
        if made[split]["num_records"] == 0:
            continue
        file = folder / made[split]["file"]
        splits[split] = {
            "file": f"{rel}/{made[split]['file']}",
            "images": f"{rel}/{made[split]['images']}",
            **describe(file, made[split]["num_records"]),
        }
    return {"source": "demo", "splits": splits}


def check_files(spec: Any, policy: str) -> dict[str, list[Any]]:
    """Every split's bad records (syntax, fields, ids, image paths, image headers); with ``policy``
    fail, the first ones as one :class:`InputError`. The data stage calls this when the recipe is
    validated, so a bad file fails the submit before anything is queued (and again in its task)."""
    found = {}
    for split in ("train", "test"):
        name, images = getattr(spec, f"{split}_file"), getattr(spec, f"{split}_images")
        if not name:
            continue
        file, root = Path(name).absolute(), Path(images).absolute()
        st = file.stat()
        bad = _checked(str(file), str(root), split, st.st_size, st.st_mtime_ns)
        if bad and policy == "fail":
            shown = "; ".join(str(b) for b in bad[:3])
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise InputError(f"{len(bad)} bad record(s): {shown}{more}", field=f"data.{split}_file")
        found[split] = bad
    return found


@functools.lru_cache(maxsize=16)
def _checked(file: str, root: str, split: str, size: int, mtime_ns: int) -> list[Any]:
    """:func:`check_split` once per file version and process (a sweep validates every point)."""
    return check_split(Path(file), Path(root), split)  # type: ignore[arg-type]


def files_manifest(spec: Any, policy: str) -> dict[str, Any]:
    """Check every split fully (syntax, fields, ids, image paths) before anything is trained."""
    splits = {}
    for split, bad in check_files(spec, policy).items():
        name, images = getattr(spec, f"{split}_file"), getattr(spec, f"{split}_images")
        file, root = Path(name).absolute(), Path(images).absolute()
        splits[split] = {
            "file": str(file),
            "images": str(root),
            "format": detect_format(file),
            **describe(file, count_records(file)),
            "bad_records": len(bad),
        }
    return {"source": "files", "splits": splits}


def bad_record_policy(recipe: Mapping[str, Any]) -> str:
    """``fail`` unless the recipe's precompute skips bad records (then they are counted here)."""
    precompute = recipe.get("precompute") if isinstance(recipe, dict) else None
    return "skip" if isinstance(precompute, dict) and precompute.get("on_bad_record") == "skip" else "fail"


def curated_manifest(files: Mapping[str, Path]) -> dict[str, Any]:
    """The splits of a finished ``curate_split`` task: ``files`` (``preference``, ``test``,
    ``images``: :func:`mcmdpo.handoff.curated_files`) as train and test."""
    splits = {
        s: {"file": str(f), "images": str(files["images"]), **describe(f, count_records(f))}
        for s, f in (("train", files["preference"]), ("test", files["test"]))
    }
    return {"source": "curate", "splits": splits}


def describe(file: Path, num_records: int) -> dict[str, Any]:
    """Format, record count, sha256 and size of a split file."""
    size = file.stat().st_size
    return {
        "format": detect_format(file),
        "num_records": num_records,
        "sha256": file_hash(file),
        "size": size,
    }


def changed_split(task_dir: Path, manifest_name: str) -> str | None:
    """A ``files`` split edited since the data task recorded it (size, or the sha256 of a file
    modified after the record was written), as one message; None when every split is as recorded.
    Cheap on an unchanged run: one ``stat`` per split file."""
    record = Path(task_dir) / manifest_name
    try:
        doc, written = json.loads(record.read_bytes()), record.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("source") != "files":
        return None
    for split, info in doc.get("splits", {}).items():
        file = Path(info["file"])
        try:
            st = file.stat()
        except OSError:
            return f"{file}: gone since the data stage recorded it ({split} split)"
        change = f"{info['size']} -> {st.st_size} bytes" if st.st_size != info["size"] else ""
        if not change and st.st_mtime_ns > written and file_hash(file) != info["sha256"]:
            change = "same size, different sha256"
        if change:
            return (
                f"{file}: changed since the data stage recorded it ({change}); to use the new version: "
                "mcmdpo submit <recipe> --rerun data (or restore the file)"
            )
    return None
