"""Image preprocessing and image features for the two image modes.

``pad`` (upstream parity): the image is expanded to a square with the processor's mean colour
(upstream ``expand2square``), resized to one ``S x S`` crop (``S`` = the vision tower's image size,
336 for LLaVA-1.6) and CLIP-normalised: pixel values ``[1, 3, S, S]``. Its features are the vision
tower's ``vision_feature_layer`` hidden states without CLS (strategy ``default``) through the
projector: ``(S / patch)**2`` tokens (576 at 336/14), no ``image_newline``, exactly what upstream
LLaVA does for a 4-D image batch. transformers' ``LlavaNextModel`` cannot produce this itself (its
``get_image_features`` always expects a base crop plus anyres tiles and appends newline tokens), so
pad-mode features are computed here and handed to the model as ``mm_encoder_outputs`` (works for
``forward`` and ``generate``); the model still checks that placeholder count == feature count.

``anyres``: native LLaVA-NeXT tiling by the processor; features from ``get_image_features``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mcmdpo.batch.errors import ConfigError

if TYPE_CHECKING:
    from transformers import BaseImageProcessor

ImageMode = Literal["pad", "anyres"]
IMAGE_MODES: tuple[str, ...] = ("pad", "anyres")


def check_mode(mode: str) -> None:
    """Raise a ValueError for an unknown image mode."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"image mode must be one of {IMAGE_MODES} (got {mode!r})")


def expand_to_square(img: Image.Image, background_rgb: Sequence[int]) -> Image.Image:
    """Pad the shorter side symmetrically with ``background_rgb`` (upstream LLaVA ``expand2square``)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), tuple(background_rgb))
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def mean_rgb(processor: ProcessorMixin) -> tuple[int, int, int]:
    """The processor's mean colour as 0-255 integers (upstream: ``int(x * 255)``)."""
    return tuple(int(x * 255) for x in processor.image_processor.image_mean)  # type: ignore[return-value]


def crop_side(processor: ProcessorMixin) -> int:
    """Side ``S`` of one square crop seen by the vision tower."""
    crop = processor.image_processor.crop_size
    height = crop["height"] if isinstance(crop, dict) else crop.height
    return int(height)


def preprocess_image(processor: ProcessorMixin, img: Image.Image, mode: ImageMode) -> dict[str, Any]:
    """Pixel values for one image.

    Returns ``{"pixel_values": FloatTensor[P, 3, S, S], "image_size": (h, w), "original_size": (h, w)}``
    with ``P == 1`` in pad mode (``image_size == (S, S)``, the square the model sees) and ``P`` = base
    crop + tiles in anyres mode (``image_size`` = the original size, which the model needs to unpad).
    """
    check_mode(mode)
    img = img.convert("RGB")
    original = (img.height, img.width)
    if mode == "pad":
        pixels = _pad_pixels(processor, img)
        side = crop_side(processor)
        return {"pixel_values": pixels, "image_size": (side, side), "original_size": original}
    out = processor.image_processor(images=[img], return_tensors="pt")
    return {"pixel_values": out["pixel_values"][0], "image_size": original, "original_size": original}


def _pad_pixels(processor: ProcessorMixin, img: Image.Image) -> torch.Tensor:
    """Upstream pad preprocessing: expand2square, then CLIP resize/crop/rescale/normalise."""
    ip = processor.image_processor
    side = crop_side(processor)
    square = expand_to_square(img, mean_rgb(processor)).resize((side, side), resample=_resample(ip))
    array = np.asarray(square, dtype=np.float32) * np.float32(ip.rescale_factor)
    array = (array - np.asarray(ip.image_mean, np.float32)) / np.asarray(ip.image_std, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy()).unsqueeze(0)


def _resample(image_processor: BaseImageProcessor) -> int:
    resample = getattr(image_processor, "resample", None)
    return int(resample) if resample is not None else int(Image.Resampling.BICUBIC)


def num_image_tokens(processor: ProcessorMixin, mode: ImageMode, image_size: Sequence[int]) -> int:
    """Number of ``<image>`` placeholders the model fills for one image of ``image_size`` (h, w)."""
    check_mode(mode)
    if mode == "pad":
        side = crop_side(processor) // int(processor.patch_size)
        keep_cls = processor.vision_feature_select_strategy == "full"
        return side * side + int(keep_cls)
    sizes = [[int(image_size[0]), int(image_size[1])]]
    return int(processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"][0])


def encode_images(
    model: PreTrainedModel,
    pixel_values: Sequence[torch.Tensor],
    image_sizes: Sequence[Sequence[int]],
    mode: ImageMode,
) -> list[torch.Tensor]:
    """Vision tower + projector for a list of images: one ``[n_i, hidden]`` tensor per image.

    ``pixel_values[i]`` is ``[P_i, 3, S, S]`` as returned by :func:`preprocess_image`.
    """
    check_mode(mode)
    if not pixel_values:
        return []
    dtype = model.dtype
    if mode == "pad":
        return _pad_features(model, torch.cat([p.to(dtype) for p in pixel_values], dim=0))
    stacked = _stack_tiles(pixel_values).to(dtype=dtype, device=model.device)
    on = "cpu" if model.device.type == "meta" else model.device  # sizes are read as values (meta has none)
    sizes = torch.tensor([list(s) for s in image_sizes], dtype=torch.long, device=on)
    out = model.model.get_image_features(pixel_values=stacked, image_sizes=sizes, return_dict=True)
    return list(out.pooler_output)


def _pad_features(model: PreTrainedModel, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Upstream LLaVA ``encode_images`` for a 4-D batch: select layer, drop CLS, project."""
    base, config = model.model, model.config
    out = base.vision_tower(pixels.to(model.device), output_hidden_states=True, return_dict=True)
    layer = config.vision_feature_layer
    if isinstance(layer, int):
        hidden = out.hidden_states[layer]
    else:
        hidden = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
    if config.vision_feature_select_strategy == "default":
        hidden = hidden[:, 1:]
    return list(base.multi_modal_projector(hidden).unbind(0))


def _stack_tiles(pixel_values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Zero-pad per-image tile stacks to ``[N, P_max, 3, S, S]`` (the model slices by image size)."""
    most = max(p.shape[0] for p in pixel_values)
    out = pixel_values[0].new_zeros((len(pixel_values), most, *pixel_values[0].shape[1:]))
    for i, p in enumerate(pixel_values):
        out[i, : p.shape[0]] = p
    return out


def image_encoder_outputs(features: Sequence[torch.Tensor]) -> dict[str, BaseModelOutputWithPooling]:
    """Pre-computed features in the form LlavaNext ``forward``/``generate`` take as ``mm_encoder_outputs``.

    The model scatters them, in order, into the image placeholders of ``input_ids`` (row-major).
    """
    return {"image": BaseModelOutputWithPooling(pooler_output=list(features))}


def check_geometry(
    processor: ProcessorMixin, patch_shape: Iterable[int] | None, path: Path | str, who: str
) -> None:
    """Shard pixel tensors must have the crop size of ``who``'s processor (the model that reads them)."""
    side = crop_side(processor)
    if patch_shape is not None and int(list(patch_shape)[-1]) != side:
        raise ConfigError(
            f"{path}: pixel tensors are {int(list(patch_shape)[-1])}px but {who}'s processor expects "
            f"{side}px crops; precompute with this model's processor (a [model] stage in the recipe)"
        )
