"""Prediction files: one JSON object per line with an ``id``; reading, writing and merging shards.

(Generation appends finished batches to a :class:`mcmdpo.batch.resumable.BatchLedger` while it runs.)

Item ids may be ints or strings (upstream ``idx`` values, AMBER ids, MMHal positions); they are
compared through :func:`id_key` so that ``7`` and ``"7"`` never collide silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import atomic_path
from mcmdpo.batch.errors import InputError, MissingInput
from mcmdpo.batch.resumable import dump_line

PREDICTIONS = "predictions.jsonl"
"""An eval task's predictions (one JSON object per item), read by the score stage."""
GENERATION = "generation.json"
"""An eval task's generation settings and throughput."""


class PredictionError(InputError):
    """A predictions file that cannot be used; the message names the file and line."""


def response_text(record: Mapping[str, Any]) -> str:
    """The response as the RLAIF-V scorers read it: every ``"Assistant:"`` removed, then stripped.

    ``eval/eval_gpt_obj_halbench.py`` (``load_generated_captions``) and ``eval/eval_gpt_mmhal.py``
    (``merge_template_answer``: ``answer.replace("Assistant:", "").strip()``) both do this before
    extracting objects or asking the judge. (The alt-text ``paper`` protocol strips only a leading one.)
    """
    return str(record["response"]).replace("Assistant:", "").strip()


def id_key(item_id: Any) -> str:
    """A hashable, type-preserving key for an item id (``7`` and ``"7"`` differ)."""
    return json.dumps(item_id, sort_keys=True)


def read_predictions(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """All records of a finished predictions file (JSONL); any malformed line, any record without
    ``required`` fields (e.g. ``("response", "chosen")``) and any repeated ``id`` is an error naming
    the file and line: a record is never scored twice."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput("no such predictions file", file=path)
    records, seen = [], {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            record = _record(path, number, raw, required)
            if "id" in record:
                key = id_key(record["id"])
                if key in seen:
                    raise PredictionError(
                        f"id {record['id']!r} repeats the record of line {seen[key]}", file=path, line=number
                    )
                seen[key] = number
            records.append(record)
    return records


def _record(path: Path, number: int, raw: bytes, required: Sequence[str]) -> dict[str, Any]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PredictionError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", file=path, line=number
        ) from None
    except json.JSONDecodeError as exc:
        raise PredictionError(f"malformed JSON line ({exc.msg})", file=path, line=number) from None
    if not isinstance(record, dict):
        raise PredictionError("expected a JSON object", file=path, line=number)
    missing = [k for k in required if k not in record]
    if missing:
        raise PredictionError(f"missing field(s) {', '.join(missing)}", file=path, line=number)
    return record


def write_predictions(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write ``records`` as JSONL atomically; return how many were written."""
    count = 0
    with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(dump_line(record))
            count += 1
    return count


def merge_predictions(shards: Sequence[Path], out: Path, expected_ids: Sequence[Any] | None = None) -> int:
    """Concatenate shard files (in the given order) into ``out``; ids must be unique.

    With ``expected_ids`` the merged ids must be exactly those, in that order (every item of the
    benchmark predicted once). Returns the number of records.
    """
    merged: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for shard in shards:
        for record in read_predictions(shard):
            key = id_key(record["id"])
            if key in seen:
                raise PredictionError(
                    f"{shard}: item id {record['id']!r} is also predicted in {seen[key]} (overlapping shards)"
                )
            seen[key] = Path(shard)
            merged.append(record)
    if expected_ids is not None:
        _check_complete(merged, expected_ids, shards)
    return write_predictions(out, merged)


def _check_complete(
    merged: Sequence[Mapping[str, Any]], expected: Sequence[Any], shards: Sequence[Path]
) -> None:
    got = [id_key(r["id"]) for r in merged]
    want = [id_key(i) for i in expected]
    if got == want:
        return
    missing = [i for i in want if i not in set(got)]
    extra = [i for i in got if i not in set(want)]
    where = ", ".join(str(s) for s in shards)
    detail = f"{len(missing)} missing (first: {missing[:3]}), {len(extra)} unexpected (first: {extra[:3]})"
    if not missing and not extra:
        detail = "same ids in a different order"
    raise PredictionError(f"merged predictions of {where} do not cover the benchmark: {detail}")
