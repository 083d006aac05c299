"""The ``data`` stage's manifest: what each split is (file, image root, format, count, sha256, size).

Later stages read ``data.json`` instead of the recipe; :func:`mcmdpo.handoff.split_source` resolves its
paths. ``files`` splits are checked in full here (syntax, fields, ids, image paths) before anything is
trained.
"""

from __future__ import annotations

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


def files_manifest(spec: Any, policy: str) -> dict[str, Any]:
    """Check every split fully (syntax, fields, ids, image paths) before anything is trained."""
    splits = {}
    for split in ("train", "test"):
        name, images = getattr(spec, f"{split}_file"), getattr(spec, f"{split}_images")
        if not name:
            continue
        file, root = Path(name).absolute(), Path(images).absolute()
        bad = check_split(file, root, split)
        if bad and policy == "fail":
            shown = "; ".join(str(b) for b in bad[:3])
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise InputError(f"{len(bad)} bad record(s): {shown}{more}", field=f"data.{split}_file")
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
