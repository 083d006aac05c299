"""LLaVA-1.6 model layer: loading (pad / anyres), paradigms, tiny factory, Vicuna v1 template."""

from mcmdpo.method.model.images import (
    IMAGE_MODES,
    ImageMode,
    encode_images,
    expand_to_square,
    image_encoder_outputs,
    num_image_tokens,
    preprocess_image,
)
from mcmdpo.method.model.load import load_llava, set_gradient_checkpointing, set_paradigm
from mcmdpo.method.model.template import PromptPieces, encode_prompt, format_prompt
from mcmdpo.method.model.tiny import build_tiny_llava

__all__ = [
    "IMAGE_MODES",
    "ImageMode",
    "PromptPieces",
    "build_tiny_llava",
    "encode_images",
    "encode_prompt",
    "expand_to_square",
    "format_prompt",
    "image_encoder_outputs",
    "load_llava",
    "num_image_tokens",
    "preprocess_image",
    "set_gradient_checkpointing",
    "set_paradigm",
]
