"""Compare two run dirs of the same recipe output by output: are they the same results?

    python tools/compare_runs.py RUN_A RUN_B

What counts as the same:
- weights (``*.safetensors``) and figures: byte for byte;
- HDF5 (precompute shards, reference log-probs): every dataset's values; attributes that differ are
  listed (they hold absolute paths and hashes of them) but are not differences;
- JSON / JSONL / CSV / Markdown / LaTeX / HTML: byte for byte once each run dir's absolute path is
  replaced by one placeholder (predictions record the model folder they came from) and the HTML
  report's "written <time>" line and its per-page CSP nonce are left out, except the training logs
  (``metrics.jsonl``, ``train.json``) and ``generation.json``, whose timing fields (and the
  generation key, a hash over absolute paths) are left out.

Bookkeeping (``DONE``, ``events.jsonl``, ``.work/``, logs, submissions) is not compared. Prints one line
per difference and ends with ``differences: N``; exit 1 when N > 0. Used to show that a refactor
leaves the demo's results unchanged (run the demo before and after into two output roots).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np

TIMING = {"compute_s", "data_s", "samples_per_s", "step_s", "sync_s", "time", "tokens_per_s", "update_s"}
TIMING |= {"wall_s", "load_s", "generate_s", "train_time_s", "started_at", "finished_at"}
TIMING |= {"key"}  # generation.json: a hash over absolute paths
SKIP_NAMES = {"DONE", "events.jsonl", "submit.lock"}
SKIP_SUFFIXES = {".log", ".out", ".err", ".pkl"}
TEXT = {".json", ".jsonl", ".csv", ".md", ".tex", ".txt", ".toml", ".html"}
WRITTEN = re.compile(rb"written \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")
"""The HTML report's header says when it was written (mcmdpo/report/html.py)."""
NONCE = re.compile(rb"nonce(-|=\")[A-Za-z0-9_-]+")
"""... and its Content-Security-Policy nonce is drawn per page."""


def h5_signature(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(dataset name -> sha256 of its values, attribute -> repr) of an HDF5 file."""
    data, attrs = {}, {}
    with h5py.File(path) as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                raw = (
                    repr(value.tolist()).encode()
                    if obj.dtype.kind == "O"
                    else np.ascontiguousarray(value).tobytes()
                )
                data[name] = hashlib.sha256(raw).hexdigest()
            for key, val in obj.attrs.items():
                attrs[f"{name}:{key}"] = repr(val)

        f.visititems(visit)
        attrs.update({f"/:{k}": repr(v) for k, v in f.attrs.items()})
    return data, attrs


def _normalised(path: Path, run_dir: Path) -> bytes:
    text = path.read_bytes().replace(str(run_dir.parent).encode(), b"<ROOT>")
    if path.name in ("metrics.jsonl", "train.json", "generation.json"):
        if path.suffix == ".jsonl":
            doc: object = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            doc = json.loads(text)
        text = json.dumps(_drop_timing(doc), sort_keys=True).encode()
    if path.suffix == ".html":
        text = NONCE.sub(rb"nonce\1<NONCE>", WRITTEN.sub(b"written <TIME>", text))
    return text


def _drop_timing(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _drop_timing(v) for k, v in doc.items() if k not in TIMING}
    if isinstance(doc, list):
        return [_drop_timing(v) for v in doc]
    return doc


def compare(a: Path, b: Path) -> list[str]:
    out = []
    for pa in sorted(p for p in a.rglob("*") if p.is_file()):
        rel = pa.relative_to(a)
        if ".work" in rel.parts or rel.parts[0] == "submissions" or pa.name in SKIP_NAMES:
            continue
        if pa.suffix in SKIP_SUFFIXES:
            continue
        pb = b / rel
        if not pb.is_file():
            out.append(f"only in {a}: {rel}")
        elif pa.suffix == ".h5":
            (da, aa), (db, ab) = h5_signature(pa), h5_signature(pb)
            out += [
                f"{rel}: dataset {k} differs" for k in sorted(da.keys() | db.keys()) if da.get(k) != db.get(k)
            ]
            for key in sorted(k for k in aa.keys() | ab.keys() if aa.get(k) != ab.get(k)):
                print(f"(attribute, not counted) {rel}: {key}")
        elif pa.suffix in TEXT:
            if _normalised(pa, a) != _normalised(pb, b):
                out.append(f"{rel}: content differs")
        elif pa.read_bytes() != pb.read_bytes():
            out.append(f"{rel}: bytes differ")
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    a, b = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    found = compare(a, b)
    for line in found:
        print(line)
    print(f"differences: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
