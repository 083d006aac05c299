"""Static, self-contained HTML pages: inline CSS and JS from ``mcmdpo/report/web/``, data as JSON.

Every page opens from a ``file://`` URL and keeps working when its folder is copied: no CDN, no
fetch; pictures are files next to the page. Strings from data or models never become markup: the
server-side parts go through :func:`esc`, and the data travels as JSON in a
``<script type="application/json">`` (every ``<``, ``>`` and ``&`` written as ``\\u003c`` etc., so no
``</script>`` can close it) that the page's script turns into DOM nodes with ``textContent``. A
Content-Security-Policy with a per-page nonce runs only the page's own script, so an injected
``<script>`` or ``onerror=`` would not run even if escaping were missed.
"""

from __future__ import annotations

import html
import json
import math
import secrets
from functools import cache
from importlib import resources
from typing import Any

DATA_ID = "page-data"
"""The id of the JSON data element every page script reads."""


def esc(text: Any) -> str:
    """Text as HTML (quotes too, so it is also safe inside an attribute value)."""
    return html.escape(str(text), quote=True)


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has no NaN; ``JSON.parse`` rejects it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def embed_json(data: Any) -> str:
    """JSON that is inert inside ``<script type="application/json">`` (no ``<``, ``>``, ``&`` left)."""
    text = json.dumps(finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


@cache
def asset(name: str) -> str:
    """A file of ``mcmdpo/report/web/`` (our own CSS / JS, inlined into pages)."""
    text = (resources.files("mcmdpo.report") / "web" / name).read_text(encoding="utf-8")
    if "</" in text:  # it would end the inline <script> / <style>
        raise ValueError(f"web/{name}: contains '</', which would end its inline element")
    return text


def page(title: str, body: str, data: Any, styles: tuple[str, ...], scripts: tuple[str, ...]) -> str:
    """A complete HTML document: ``body`` (already escaped markup), ``data`` as JSON, inline assets."""
    nonce = secrets.token_urlsafe(16)
    policy = (
        "default-src 'none'; img-src 'self' file: data: blob:; "
        f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'"
    )
    css = "\n".join(asset(name) for name in styles)
    js = "\n".join(asset(name) for name in scripts)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{esc(title)}</title>\n<style nonce="{nonce}">\n{css}\n</style>\n</head>\n<body>\n'
        f"{body}\n"
        f'<script type="application/json" id="{DATA_ID}">{embed_json(data)}</script>\n'
        f'<script nonce="{nonce}">\n{js}\n</script>\n</body>\n</html>\n'
    )
