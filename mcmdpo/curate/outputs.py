"""The merged curation outputs: ``sft.json``, ``preference.json``, ``test.jsonl``, ``funnel.json``.

Image paths in the three files are file names under the output's ``images/`` folder (hard links to
the source images when the filesystem allows, else copies: no symlinks, which the precompute stage
refuses when they leave the image root). ``question`` = instruction + "\\nContext:\\n" + context.

- ``sft.json``: LLaVA conversation format, a JSON list of
  ``{"id", "idx", "image", "conversations": [{"from": "human", "value": "<image>\\n" + question},
  {"from": "gpt", "value": alt_text}]}``.
- ``preference.json``: the upstream preference format, a JSON list of ``{"ds_name", "image": {"path"},
  "idx", "question", "chosen", "rejected", "text", "id"}`` (``text`` holds question / chosen /
  rejected as a JSON string, which the upstream ``DPODataset`` reads).
- ``test.jsonl``: the upstream test format, one ``{"image_path", "question", "chosen", "idx", "id"}``
  per line.
- ``funnel.json``: the count after every step (see :func:`build_funnel`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import write_json_atomic, write_text_atomic
from mcmdpo.curate.pipeline import SPLITS
from mcmdpo.curate.scan import SCAN_STEPS
from mcmdpo.curate.spec import CurateSpec

SFT, PREFERENCE, TEST, FUNNEL, IMAGES = "sft.json", "preference.json", "test.jsonl", "funnel.json", "images"
DEDUPE_STEPS = ("duplicate_id", "duplicate_image", "duplicate_text")
SPLIT_ORDER = ("sft", "preference", "test")


def question(spec: CurateSpec, context: str) -> str:
    return f"{spec.instruction}\nContext:\n{context}"


def image_name(record: Mapping[str, Any]) -> str:
    return f"{record['id']:09d}{Path(record['source']).suffix.lower() or '.img'}"


def link_image(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (copy across filesystems); replaces a stale target."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_outputs(spec: CurateSpec, records: Sequence[Mapping[str, Any]], out_dir: Path) -> dict[str, int]:
    """Write the three data files and ``images/`` for the kept records; return records per split."""
    kept = [r for r in records if r["status"] == "kept"]
    (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
    for record in kept:
        link_image(Path(record["source"]), out_dir / IMAGES / image_name(record))
    by_split = {s: [r for r in kept if r["split"] == s] for s in SPLITS}
    write_json_atomic(out_dir / SFT, [_sft(spec, r) for r in by_split["sft"]])
    write_json_atomic(out_dir / PREFERENCE, [_preference(spec, r) for r in by_split["preference"]])
    lines = [json.dumps(_test(spec, r), ensure_ascii=False) + "\n" for r in by_split["test"]]
    write_text_atomic(out_dir / TEST, "".join(lines))
    return {s: len(v) for s, v in by_split.items()}


def _sft(spec: CurateSpec, r: Mapping[str, Any]) -> dict[str, Any]:
    human = "<image>\n" + question(spec, r["context"])
    conversation = [{"from": "human", "value": human}, {"from": "gpt", "value": r["alt_text"]}]
    return {"id": r["raw_id"], "idx": r["id"], "image": image_name(r), "conversations": conversation}


def _preference(spec: CurateSpec, r: Mapping[str, Any]) -> dict[str, Any]:
    texts = {"question": question(spec, r["context"]), "chosen": r["alt_text"], "rejected": r["rejected"]}
    return {
        "ds_name": spec.ds_name,
        "image": {"path": image_name(r)},
        "idx": r["id"],
        **texts,
        "text": json.dumps(texts, ensure_ascii=False),
        "id": r["raw_id"],
    }


def _test(spec: CurateSpec, r: Mapping[str, Any]) -> dict[str, Any]:
    q = question(spec, r["context"])
    return {
        "image_path": image_name(r),
        "question": q,
        "chosen": r["alt_text"],
        "idx": r["id"],
        "id": r["raw_id"],
    }


# ---------------------------------------------------------------- funnel


def build_funnel(
    scans: Sequence[Mapping[str, Any]], dedupe: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Counts after every step: ``steps`` (input, each filter, duplicates, dropped after max attempts,
    with what remains after each), ``bad_reasons``, ``names``, ``grammar``, ``rejected``, ``splits``."""
    remaining = sum(s["input"] for s in scans)
    steps: list[dict[str, Any]] = [{"step": "input", "remaining": remaining}]
    drops = [(k, sum(s["dropped"][k] for s in scans)) for k in SCAN_STEPS]
    drops += [(k, dedupe["counts"][k]) for k in DEDUPE_STEPS]
    drops.append(("dropped_after_max_attempts", sum(r["status"] == "dropped" for r in records)))
    for step, dropped in drops:
        remaining -= dropped
        steps.append({"step": step, "dropped": dropped, "remaining": remaining})
    kept = [r for r in records if r["status"] == "kept"]
    reasons: Counter[str] = Counter()
    for s in scans:
        reasons.update(s["bad_reasons"])
    reasons.update(b["reason"] for b in dedupe["duplicate_ids"])
    return {
        "steps": steps,
        "bad_reasons": dict(reasons),
        "names": _names(records),
        "grammar": _grammar(records),
        "rejected": _rejected(records),
        "splits": {s: sum(r["split"] == s for r in kept) for s in SPLITS},
    }


def _names(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "methods": sorted({r["names"]["method"] for r in records}),
        "records_with_names": sum(r["names"]["replaced"] > 0 for r in records),
        "names_replaced": sum(r["names"]["replaced"] for r in records),
        "unparsed_replies": sum(r["names_unparsed"] for r in records),
    }


def _grammar(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    checked = [r["grammar"] for r in records if "grammar" in r]
    out: dict[str, Any] = {"records": len(checked)}
    for field in ("context", "alt_text"):
        out[f"{field}_corrected"] = sum(g[field]["corrected"] for g in checked)
        out[f"{field}_unparsed"] = sum(not g[field]["parsed"] for g in checked)
    return out


def _rejected(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    pref = [r for r in records if r["split"] == "preference"]
    attempts = [a for r in pref for a in r["attempts"]]
    outcomes = Counter(a["outcome"] for a in attempts)
    return {
        "records": len(pref),
        "generated": len(attempts),
        "verification_attempts": sum(bool(a["verdicts"]) for a in attempts),
        "verification_requests": sum(len(a["verdicts"]) for a in attempts),
        "outcomes": {k: outcomes.get(k, 0) for k in ("kept", "lost", "unparsed", "identical", "empty")},
        "kept_at_attempt": dict(Counter(str(len(r["attempts"])) for r in pref if r["status"] == "kept")),
        "dropped_after_max_attempts": sum(r["status"] == "dropped" for r in pref),
    }


def write_funnel(out_dir: Path, funnel: Mapping[str, Any]) -> None:
    write_json_atomic(out_dir / FUNNEL, dict(funnel))


def read_funnel(path: Path) -> dict[str, Any]:
    """A ``funnel.json`` as :func:`build_funnel` wrote it (ValueError naming the file otherwise)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the curation funnel ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise ValueError(f"{path}: field 'steps' missing or empty (not a funnel.json of curate_split?)")
    return doc


@dataclass(frozen=True)
class Funnel:
    """The ``funnel.json`` of one finished ``curate_split`` task."""

    run: str
    task_id: str
    path: Path
    doc: Mapping[str, Any]

    @property
    def steps(self) -> list[Mapping[str, Any]]:
        return list(self.doc["steps"])

    def splits(self) -> dict[str, int]:
        """Kept records per output split, in pipeline order (sft, preference, test)."""
        counts = self.doc.get("splits", {})
        names = [*[n for n in SPLIT_ORDER if n in counts], *sorted(set(counts) - set(SPLIT_ORDER))]
        return {n: int(counts[n]) for n in names}

    def work(self) -> dict[str, int]:
        """LLM work behind the kept records (the third panel), in pipeline order."""
        grammar, rejected = self.doc.get("grammar", {}), self.doc.get("rejected", {})
        return {
            "names replaced": int(self.doc.get("names", {}).get("names_replaced", 0)),
            "contexts corrected": int(grammar.get("context_corrected", 0)),
            "alt-texts corrected": int(grammar.get("alt_text_corrected", 0)),
            "rejected texts generated": int(rejected.get("generated", 0)),
            "verification attempts": int(rejected.get("verification_attempts", 0)),
            "dropped after max attempts": int(rejected.get("dropped_after_max_attempts", 0)),
        }
