"""LLaVA-1.6 model layer: loading (pad / anyres), paradigms, tiny factory, Vicuna v1 template.

The names below load on first use (PEP 562): ``mcmdpo.method.model.folders`` (the model hand-off,
read by stage modules that must stay free of torch) imports this package without pulling torch in.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "IMAGE_MODES": "images",
    "ImageMode": "images",
    "encode_images": "images",
    "expand_to_square": "images",
    "image_encoder_outputs": "images",
    "num_image_tokens": "images",
    "preprocess_image": "images",
    "load_llava": "load",
    "set_gradient_checkpointing": "load",
    "set_paradigm": "load",
    "PromptPieces": "template",
    "encode_prompt": "template",
    "format_prompt": "template",
    "build_tiny_llava": "tiny",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
