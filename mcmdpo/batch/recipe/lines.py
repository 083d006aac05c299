"""Where each dotted key of a TOML document is written: ``{"run.name": 3, ...}``.

``tomllib`` keeps no positions, so this scanner reads the text once more. It understands table
headers, dotted and quoted keys, and skips the bodies of multi-line arrays and strings; a key it cannot
place (e.g. inside an inline table) is reported at the line of its nearest written parent.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*="
)
_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_\-]+)")


def split_key(text: str) -> list[str]:
    """``a."b.c".d`` -> ``["a", "b.c", "d"]``."""
    return [m.group(1) or m.group(2) or m.group(3) or "" for m in _PART.finditer(text)]


def key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    tables: dict[str, int] = {}
    prefix: list[str] = []
    depth = 0
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string:
            if in_string in line:
                in_string = None
            continue
        if depth > 0:
            depth += _bracket_delta(line)
            continue
        header = _HEADER.match(line)
        if header and "=" not in line.split("#")[0]:
            prefix = split_key(header.group(1))
            lines.setdefault(".".join(prefix), number)
            prefix = _indexed(prefix, tables, line.lstrip().startswith("[["))
            lines.setdefault(".".join(prefix), number)
            continue
        key = _KEY.match(line)
        if not key:
            continue
        lines[".".join(prefix + split_key(key.group(1)))] = number
        rest = line[key.end() :]
        for quote in ('"""', "'''"):
            if rest.count(quote) == 1:
                in_string = quote
        depth = max(0, _bracket_delta(rest))
    return lines


def _indexed(prefix: list[str], tables: dict[str, int], array: bool) -> list[str]:
    """Entry ``k`` of an array of tables is ``<name>.<k>`` (pydantic's error location), its sub-tables
    ``<name>.<k>.<sub>``; ``tables`` counts the entries seen so far."""
    if array:
        name = ".".join(prefix)
        tables[name] = tables.get(name, -1) + 1
        return [*prefix, str(tables[name])]
    for cut in range(len(prefix) - 1, 0, -1):
        name = ".".join(prefix[:cut])
        if name in tables:
            return [*prefix[:cut], str(tables[name]), *prefix[cut:]]
    return prefix


def _bracket_delta(text: str) -> int:
    text = re.sub(r"\"[^\"]*\"|'[^']*'", "", text).split("#")[0]
    return text.count("[") - text.count("]")


def line_of(lines: dict[str, int], dotted: str) -> int | None:
    """Line of ``dotted`` or of its nearest written parent; None if nothing is written."""
    parts = dotted.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None
