"""All scanned shards -> which records are duplicates (ids, images, texts), with the clusters.

Order: duplicate ids (a bad record, ``on_bad_record`` applies), then near-duplicate images among the
rest, then near-duplicate texts among what is left (``[curate.dedupe] text_on``: alt-text and post
text both near-identical by default, see :class:`~mcmdpo.curate.spec.DedupeSpec`); in each cluster the
first record in file order is kept. Result (``dedupe.json``)::

    {"counts": {"duplicate_id": 1, "duplicate_image": 3, "duplicate_text": 2},
     "dropped": [positions...],
     "duplicate_ids": [{"position", "id", "reason", "detail"}],
     "clusters": {"image": [{"kept": {"position", "id"}, "dropped": [{"position", "id"}, ...]}],
                  "text": [...]},
     "settings": {...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mcmdpo.batch.errors import record_ref
from mcmdpo.curate.dedupe import Clusters, cluster_hashes, cluster_minhashes
from mcmdpo.curate.scan import RECORDS, SIGNATURES
from mcmdpo.curate.spec import CurateSpec
from mcmdpo.method.data.records import BadRecord

TEXT_SIGNATURES = {"alt_text": "minhash_alt", "context": "minhash"}
"""Text field -> its MinHash array in ``signatures.npz``."""


def load_scans(scan_dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Records and signatures of every shard, in shard (= file) order."""
    from mcmdpo.evaluation.metrics.predictions import read_predictions

    records = [r for d in scan_dirs for r in read_predictions(Path(d) / RECORDS)]
    parts = [np.load(Path(d) / SIGNATURES) for d in scan_dirs]
    sig = {
        k: np.concatenate([p[k] for p in parts]) for k in ("positions", "phash", *TEXT_SIGNATURES.values())
    }
    if [r["id"] for r in records] != sig["positions"].tolist():
        raise ValueError("scan outputs disagree: records.jsonl and signatures.npz list different records")
    return records, sig


def find_duplicates(scan_dirs: Sequence[Path], spec: CurateSpec) -> dict[str, Any]:
    """The de-duplication result of every scanned shard (see the module docstring)."""
    records, sig = load_scans(scan_dirs)
    alive = np.ones(len(records), dtype=bool)
    bad = _duplicate_ids(records, alive, spec)
    clusters: dict[str, list[dict[str, Any]]] = {}
    counts = {"duplicate_id": len(bad), "duplicate_image": 0, "duplicate_text": 0}
    if spec.dedupe.image_threshold is not None:
        idx = np.flatnonzero(alive)
        found = cluster_hashes(sig["phash"][idx], spec.dedupe.image_threshold)
        clusters["image"], counts["duplicate_image"] = _drop(found, idx, alive, records)
    if spec.dedupe.text_threshold is not None:
        idx = np.flatnonzero(alive)
        sets = [sig[TEXT_SIGNATURES[name]][idx] for name in spec.dedupe.text_on.split("+")]
        found = cluster_minhashes(sets[0], spec.dedupe.text_threshold, *sets[1:])
        clusters["text"], counts["duplicate_text"] = _drop(found, idx, alive, records)
    return {
        "counts": counts,
        "dropped": [r["id"] for r, ok in zip(records, alive.tolist(), strict=True) if not ok],
        "duplicate_ids": bad,
        "clusters": clusters,
        "settings": spec.dedupe.model_dump(mode="json"),
        "kept": int(alive.sum()),
    }


def _duplicate_ids(
    records: list[dict[str, Any]], alive: np.ndarray, spec: CurateSpec
) -> list[dict[str, Any]]:
    from mcmdpo.evaluation.metrics.predictions import id_key

    seen: dict[str, int] = {}
    bad = []
    for k, record in enumerate(records):
        key = id_key(record["raw_id"])
        if key not in seen:
            seen[key] = record["id"]
            continue
        error = BadRecord(
            spec.raw_file,
            record["id"],
            record["raw_id"],
            "duplicate_id",
            f"id first used by {record_ref(seen[key])}",
        )
        if spec.on_bad_record == "fail":
            raise error
        alive[k] = False
        bad.append(error.as_dict())
    return bad


def _drop(
    found: Clusters, idx: np.ndarray, alive: np.ndarray, records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    def ref(k: int) -> dict[str, Any]:
        record = records[int(idx[k])]
        return {"position": record["id"], "id": record["raw_id"]}

    listing = [{"kept": ref(kept), "dropped": [ref(d) for d in dropped]} for kept, dropped in found.groups()]
    alive[idx[found.duplicates]] = False
    return listing, len(found.duplicates)
