"""One shard of the raw file -> surviving records, their de-duplication signatures, a report.

Per record, in funnel order: record problems (``bad_record``), the text filters (``hashtag``,
``min_words``, ``language``), the image (``bad_image``: unsafe path, missing, unreadable, truncated,
huge), ``non_static``. Text filters run before images are decoded (cheap first); a bad record follows
``on_bad_record`` (``fail`` raises :class:`~mcmdpo.method.data.records.BadRecord`, ``skip`` counts it by
reason). Survivors get a pHash of the image and MinHashes of the post text and of the alt-text. Images
given as bytes
are written to ``images/`` of the shard's folder, so later stages never reopen the raw file.

Outputs (in ``out_dir``): ``records.jsonl`` (``id`` = position in the raw file, ``raw_id``,
``context``, ``alt_text``, ``image`` = {"root": "raw" | "scan", "path": ...}), ``signatures.npz``
(``positions``, ``phash``, ``minhash`` of the post text, ``minhash_alt`` of the alt-text) and ``scan.json``
(counts per step, skipped records).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcmdpo.batch.artifacts import atomic_path, write_json_atomic
from mcmdpo.curate.filters import is_non_static, text_filter
from mcmdpo.curate.raw import RawRecord, read_shard
from mcmdpo.curate.signatures import NUM_PERM, minhash, phash
from mcmdpo.curate.spec import CurateSpec
from mcmdpo.method.data.records import BadRecord

if TYPE_CHECKING:
    from PIL import Image

RECORDS, SIGNATURES, REPORT, IMAGES = "records.jsonl", "signatures.npz", "scan.json", "images"
SCAN_STEPS = ("bad_record", "hashtag", "min_words", "language", "bad_image", "non_static")
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass
class ScanResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    phash: list[int] = field(default_factory=list)
    minhash: list[np.ndarray] = field(default_factory=list)
    minhash_alt: list[np.ndarray] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    skipped: list[dict[str, Any]] = field(default_factory=list)


class Scanner:
    """Applies the filters of ``spec`` to records of ``spec.raw_file`` and computes signatures."""

    def __init__(self, spec: CurateSpec, out_dir: Path) -> None:
        self.spec, self.out_dir = spec, Path(out_dir)
        self.file = Path(spec.raw_file)
        self.root = Path(spec.images) if spec.images else None
        self.real_root = Path(os.path.realpath(self.root)) if self.root else None
        self.result = ScanResult()

    def scan(self, positions: range) -> ScanResult:
        for record in read_shard(self.file, positions):
            step = self._step(record)
            if step is not None:
                self.result.dropped[step] += 1
        return self.result

    def _step(self, record: RawRecord) -> str | None:
        """The funnel step that drops ``record`` (None: it survives and is added)."""
        if record.problem is not None:
            return self._bad(record, "bad_record", *record.problem)
        step = text_filter(record.context, record.alt_text, self.spec.filters)
        if step is not None:
            return step
        try:
            source, image = self._image(record)
        except BadRecord as exc:
            return self._bad(record, "bad_image", exc.code, exc.detail)
        non_static, fmt = is_non_static(source)
        if non_static and self.spec.filters.drop_non_static:
            return "non_static"
        self._add(record, source, image, fmt)
        return None

    def _bad(self, record: RawRecord, step: str, code: str, detail: str) -> str:
        if self.spec.on_bad_record == "fail":
            raise record.bad(self.file, code, detail)
        self.result.reasons[code] += 1
        self.result.skipped.append(record.bad(self.file, code, detail).as_dict())
        return step

    def _image(self, record: RawRecord) -> tuple[Path | bytes, Image.Image]:
        from mcmdpo.method.data.images import ImageError, load_image
        from mcmdpo.method.data.records import UnsafePath, resolve_image

        try:
            if record.image_bytes is not None:
                source: Path | bytes = record.image_bytes
            elif self.root is None:
                raise UnsafePath("the record names an image path but [curate] images is not set")
            else:
                source = resolve_image(self.root, record.image or "", self.real_root)
            image, _ = load_image(source, self.spec.max_image_pixels)
        except UnsafePath as exc:
            raise record.bad(self.file, "unsafe_path", str(exc)) from None
        except ImageError as exc:
            raise record.bad(self.file, exc.code, str(exc)) from None
        return source, image

    def _add(self, record: RawRecord, source: Path | bytes, image: Image.Image, fmt: str) -> None:
        if isinstance(source, bytes):
            name = f"{IMAGES}/{record.position:09d}{EXTENSIONS.get(fmt, '.img')}"
            with atomic_path(self.out_dir / name) as tmp:
                tmp.write_bytes(source)
            ref = {"root": "scan", "path": name}
        else:
            ref = {"root": "raw", "path": record.image}
        self.result.records.append(
            {
                "id": record.position,
                "raw_id": record.id,
                "context": record.context,
                "alt_text": record.alt_text,
                "image": ref,
                "format": fmt,
            }
        )
        self.result.phash.append(phash(image))
        self.result.minhash.append(minhash(record.context))
        self.result.minhash_alt.append(minhash(record.alt_text))


def write_scan(result: ScanResult, out_dir: Path, positions: range) -> list[str]:
    """Write the three outputs of a scanned shard; return their names."""
    from mcmdpo.evaluation.metrics.predictions import write_predictions

    write_predictions(out_dir / RECORDS, result.records)
    with atomic_path(out_dir / SIGNATURES) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            positions=np.array([r["id"] for r in result.records], dtype=np.int64),
            phash=np.array(result.phash, dtype=np.uint64),
            minhash=np.array(result.minhash, dtype=np.uint32).reshape(-1, NUM_PERM),
            minhash_alt=np.array(result.minhash_alt, dtype=np.uint32).reshape(-1, NUM_PERM),
        )
    report = {
        "positions": [positions.start, positions.stop],
        "input": len(positions),
        "dropped": {step: result.dropped.get(step, 0) for step in SCAN_STEPS},
        "bad_reasons": dict(result.reasons),
        "kept": len(result.records),
        "skipped": result.skipped,
    }
    write_json_atomic(out_dir / REPORT, report)
    images = [IMAGES] if (out_dir / IMAGES).is_dir() else []
    return [RECORDS, SIGNATURES, REPORT, *images]
