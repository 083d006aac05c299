"""SFT records in the upstream formats: LLaVA conversations, and question/chosen files.

Two layouts (JSON list, JSONL, or parquet / arrow through ``datasets``):

- **LLaVA conversation** (``llava_v1_5_mix665k.json`` style): ``{"id", "image", "conversations":
  [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; turns
  alternate human / gpt, every gpt turn is supervised. ``<image>`` is removed from the human turns
  (LLaVA puts it at the start of the first one, which the template does too).
- **question / chosen** (the upstream preference and test layouts, RLHF-V's parquet): top-level
  ``question`` + ``chosen`` or a ``text`` field holding them as a JSON string; one turn.

The image is a path (``image`` / ``image.path`` / ``image_path``, relative to the source's image
root) or encoded bytes (``image.bytes``, parquet). Problems are attached to the record with the
bad-record codes of :mod:`mcmdpo.method.data.records` (plus ``malformed_conversation``), never raised, so
that every array task classifies the file the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcmdpo.method.data.records import mark_duplicates, parse_record, read_raw

IMAGE_TOKEN = "<image>"
HUMAN, GPT = ("human", "user"), ("gpt", "assistant")
PROBLEMS = {"malformed_conversation": "turns do not alternate human / gpt, or a turn is not text"}


@dataclass(frozen=True)
class SftRecord:
    """One SFT sample: ``turns`` = ((human, gpt), ...) with the image token removed."""

    position: int
    id: int | str
    image: str | None = None
    image_bytes: bytes | None = None
    turns: tuple[tuple[str, str], ...] = ()
    problem: tuple[str, str] | None = None


def load_sft_records(path: Path | str, limit: int | None = None) -> list[SftRecord]:
    """Read and classify the records of one SFT file (the first ``limit`` only, when given)."""
    raws = read_raw(Path(path))
    if limit is not None:
        raws = raws[:limit]
    return mark_duplicates(parse_sft_record(raw, i) for i, raw in enumerate(raws))


def parse_sft_record(raw: Any, position: int) -> SftRecord:
    """Normalise one raw record of either layout; problems are recorded, not raised."""
    if isinstance(raw, Mapping) and "conversations" in raw:
        return _conversation(raw, position)
    base = parse_record(raw, position, "test")  # question + chosen, image path or bytes
    turns = ((_strip_image(base.question), base.chosen.strip()),) if base.problem is None else ()
    return SftRecord(position, base.id, base.image, base.image_bytes, turns, base.problem)


def _conversation(raw: Mapping[str, Any], position: int) -> SftRecord:
    base = parse_record({k: v for k, v in raw.items() if k != "conversations"}, position, "test")
    record_id = raw.get("id", base.id)
    record_id = (
        record_id if isinstance(record_id, (int, str)) and not isinstance(record_id, bool) else position
    )
    image, image_bytes = base.image, base.image_bytes
    turns, problem = conversation_turns(raw["conversations"])
    if problem is None and image is None and image_bytes is None:
        problem = ("missing_field", "missing image (text-only conversations are not supported)")
    return SftRecord(position, record_id, image, image_bytes, turns, problem)


def conversation_turns(
    messages: Any,
) -> tuple[tuple[tuple[str, str], ...], tuple[str, str] | None]:
    """``[{"from", "value"}, ...]`` -> ((human, gpt), ...) or a ``malformed_conversation`` problem."""
    bad = ("malformed_conversation", PROBLEMS["malformed_conversation"])
    if not isinstance(messages, Sequence) or isinstance(messages, str) or len(messages) < 2:
        return (), ("malformed_conversation", "conversations must be a list of at least two turns")
    if len(messages) % 2:
        return (), ("malformed_conversation", f"{len(messages)} turns: the last human turn has no answer")
    turns = []
    for k in range(0, len(messages), 2):
        human, gpt = messages[k], messages[k + 1]
        if not (_is_turn(human, HUMAN) and _is_turn(gpt, GPT)):
            return (), bad
        question, answer = _strip_image(human["value"]), gpt["value"].strip()
        if not question or not answer:
            return (), ("empty_text", f"turn {k // 2}: empty question or answer")
        turns.append((question, answer))
    return tuple(turns), None


def _is_turn(message: Any, roles: tuple[str, ...]) -> bool:
    return (
        isinstance(message, Mapping)
        and str(message.get("from", "")).lower() in roles
        and isinstance(message.get("value"), str)
    )


def _strip_image(text: str) -> str:
    """The question without LLaVA's image token (the template puts the image first)."""
    return text.replace(IMAGE_TOKEN, "").strip()
