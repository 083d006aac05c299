"""TOML reading with a line map, and ``--set dotted.key=value`` overrides on the raw document."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.recipe.errors import Problem, RecipeError
from mcmdpo.batch.recipe.lines import key_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_toml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse ``path``; errors name the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError([Problem(str(path), None, "", "file not found")]) from None
    except (IsADirectoryError, PermissionError) as exc:
        raise RecipeError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        message = f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the recipe as UTF-8"
        raise RecipeError([Problem(str(path), line, "", message)]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise RecipeError([Problem(str(path), line, "", f"TOML syntax error: {exc}")]) from None
    return doc, key_lines(text)


def _line_from_message(message: str) -> int | None:
    import re

    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=1e-5`` -> (["a", "b"], 1e-05). Values are TOML; anything else is taken as a string."""
    if "=" not in text:
        raise RecipeError([Problem("--set", None, text, "expected dotted.key=value")])
    key, value = text.split("=", 1)
    parts = _key_parts(key.strip())
    if not parts:
        message = "not a valid TOML dotted key (expected section.key=value, e.g. sft.lr=2e-5)"
        raise RecipeError([Problem(f"--set {text}", None, key.strip(), message)])
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return parts, parsed


def _key_parts(key: str) -> list[str]:
    """The parts of a TOML dotted key, parsed by TOML itself (``sft..lr`` and ``.lr`` are errors)."""
    try:
        node: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return []
    parts = []
    while isinstance(node, dict) and len(node) == 1:
        name, node = next(iter(node.items()))
        parts.append(name)
    return parts if node == 0 else []


def set_dotted(doc: dict[str, Any], parts: list[str], value: Any, source: str) -> None:
    node = doc
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise RecipeError([Problem(source, None, where, f"is a value, not a table (got {child!r})")])
        node = child
    node[parts[-1]] = value


def get_dotted(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        node = node[part]
    return node


def dump_toml(doc: Mapping[str, Any]) -> str:
    """A small TOML writer for resolved recipes (tables, scalars, lists; None values are omitted)."""
    lines: list[str] = []
    _dump_table(doc, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _dump_table(table: Mapping[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append(f"\n[{'.'.join(prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _dump_table(value, [*prefix, _key(key)], lines)


def _key(key: str) -> str:
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_\-]+", key) or key.startswith('"') else f'"{key}"'


def _value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):  # e.g. a swept section: an inline table
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(str(value))
