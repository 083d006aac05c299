"""Item images for the baselines: decoded for a processor, or encoded as a data URL for an endpoint."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from mcmdpo.batch.errors import InputError
from mcmdpo.evaluation.benchmarks.registry import Item

SENT_AS_IS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}
"""Image formats an endpoint gets as the file's own bytes (others: re-encoded as PNG)."""


def item_image(item: Item) -> Any:
    """The item's image as an RGB PIL image (a one-line error naming the item when it is unusable)."""
    from mcmdpo.method.data.images import ImageError, load_image

    try:
        return load_image(item.image)[0]
    except ImageError as exc:
        raise InputError(f"image {item.describe()}: {exc.code}: {exc}", record=f"item {item.id!r}") from None


def data_url(image: Path | bytes) -> str:
    """``data:image/<fmt>;base64,...`` of an image file or its bytes (checked to decode first)."""
    from PIL import Image

    raw = image if isinstance(image, bytes) else Path(image).read_bytes()
    fmt = Image.open(io.BytesIO(raw)).format
    if fmt not in SENT_AS_IS:
        buffer = io.BytesIO()
        item_image(Item("image", "", image)).save(buffer, format="PNG")
        raw, fmt = buffer.getvalue(), "PNG"
    return f"data:image/{SENT_AS_IS[fmt]};base64,{base64.b64encode(raw).decode()}"
