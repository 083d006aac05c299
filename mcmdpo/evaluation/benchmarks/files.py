"""Reading benchmark files: JSONL, JSON lists, text fields, base64 images; errors name file and line."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.errors import InputError, MissingInput

MISSING_HINT = "benchmark file not found (see `mcmdpo assets check`)"


def text_field(raw: Mapping[str, Any], key: str, where: str) -> str:
    """``raw[key]`` as a non-empty string (``where`` names the file and record)."""
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"field {key!r} must be a non-empty string", record=where)
    return value


def b64_image(raw: Mapping[str, Any], where: str) -> bytes:
    """The decoded bytes of a base64 ``image`` field."""
    value = raw.get("image")
    if not isinstance(value, str):
        raise InputError("field 'image' must be a base64 string", record=where)
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"field 'image' is not valid base64 ({exc})", record=where) from None


def read_jsonl(file: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line."""
    _require(file)
    out = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON ({exc})", file=file, line=number) from None
            if not isinstance(value, dict):
                raise InputError("expected a JSON object", file=file, line=number)
            out.append(value)
    return out


def is_json_list(file: Path) -> bool:
    """Whether the file starts with ``[`` (a JSON list rather than JSONL)."""
    _require(file)
    with open(file, "rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def read_json_list(file: Path) -> list[dict[str, Any]]:
    """A JSON list of objects."""
    _require(file)
    with open(file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON ({exc})", file=file) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError("expected a JSON list of objects", file=file)
    return data


def _require(file: Path) -> None:
    if not Path(file).is_file():
        raise MissingInput(MISSING_HINT, file=file)
