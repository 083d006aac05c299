"""Safe image decoding and the model's own preprocessing, in ``pad`` and ``anyres`` modes.

- ``pad`` (upstream parity, ``image_aspect_ratio = pad``): expand the image to a square filled with
  ``tuple(int(x * 255) for x in image_mean)``, then CLIP preprocessing (resize the shortest edge,
  centre-crop, rescale, normalise) -> one ``3 x S x S`` tensor (S = 336 for LLaVA-1.6).
- ``anyres`` (native LLaVA-NeXT): ``LlavaNextImageProcessor`` tiling -> ``P x 3 x S x S`` (the resized
  full image plus the grid tiles of the best pinpoint resolution) and the original ``(height, width)``.

Both use the PIL backend of transformers (``*ImageProcessorPil``), the same PIL bicubic resize as
the upstream (slow) ``CLIPImageProcessor``; the torchvision backend resizes slightly differently.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

if TYPE_CHECKING:
    from PIL import Image
    from transformers import BaseImageProcessor

Mode = Literal["pad", "anyres"]
NonRgb = Literal["convert", "bad"]

DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``): ~ a 9459 x 9459 image."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

LLAVA_V16_PROCESSOR: dict[str, Any] = {
    "size": {"shortest_edge": 336},
    "crop_size": {"height": 336, "width": 336},
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
    "do_pad": True,
}
"""The image-processor config of ``llava-hf/llava-v1.6-vicuna-7b-hf``, built in (no download)."""


class ImageError(Exception):
    """An image that cannot be used; ``code`` is one of the bad-record reasons."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Pixels:
    """A preprocessed image: ``values`` is ``[P, 3, S, S]`` float32; ``size`` the original (h, w)."""

    values: np.ndarray
    size: tuple[int, int]


# ---------------------------------------------------------------- decoding


def load_image(
    source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, non_rgb: NonRgb = "convert"
) -> tuple[Image.Image, str]:
    """Decode ``source`` fully into an RGB image; return it with its original mode.

    Raises :class:`ImageError` with code missing_image / unreadable_image / truncated_image /
    huge_image / non_rgb. The pixel count is checked from the header, before decoding. Non-RGB images
    (L, LA, P, PA, RGBA, CMYK, I;16, ...) are converted with ``convert("RGB")`` like upstream, or
    refused with ``non_rgb = "bad"``. EXIF orientation is not applied (upstream does not either).
    """
    from PIL import Image

    # PIL raises its own DecompressionBombError above 2x MAX_IMAGE_PIXELS; keep it above our limit
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with _open_bytes(source) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _decode(fh, max_pixels)
    except FileNotFoundError as exc:
        raise ImageError("missing_image", f"no such file: {exc.filename or source}") from None
    except Image.DecompressionBombError as exc:
        raise ImageError("huge_image", str(exc)) from None
    mode = image.mode
    if mode != "RGB":
        if non_rgb == "bad":
            raise ImageError("non_rgb", f"image mode is {mode}, not RGB")
        image = image.convert("RGB")
    return image, mode


def _open_bytes(source: Path | bytes) -> BinaryIO:
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    return open(source, "rb")  # noqa: SIM115 (closed by the caller's with-block)


def _decode(fh: BinaryIO, max_pixels: int) -> Image.Image:
    from PIL import Image, ImageFile, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image = Image.open(fh)
    except UnidentifiedImageError as exc:
        raise ImageError("unreadable_image", f"not a recognised image: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(_code(exc), f"cannot open: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("unreadable_image", f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("huge_image", f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    try:
        image.load()
    except OSError as exc:
        raise ImageError(_code(exc), f"cannot decode: {exc}") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("unreadable_image", f"cannot decode: {exc}") from None
    return image


def _code(exc: Exception) -> str:
    # PIL reports truncation as OSError, from open() (header cut) or load() (data cut)
    return "truncated_image" if "truncat" in str(exc).lower() else "unreadable_image"


# ---------------------------------------------------------------- processors


def default_processor() -> BaseImageProcessor:
    """The LLaVA-1.6 image processor (PIL backend), from the built-in config."""
    from transformers import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(**LLAVA_V16_PROCESSOR)


def load_processor(path: Path | str | None) -> BaseImageProcessor:
    """The image processor saved in a model folder (PIL backend), or the built-in one for ``None``."""
    if path is None:
        return default_processor()
    from transformers import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil.from_pretrained(str(path))


def processor_config(processor: BaseImageProcessor) -> dict[str, Any]:
    """JSON-able processor settings, for provenance."""
    import json

    return json.loads(json.dumps(processor.to_dict(), default=_jsonable))


def _jsonable(value: Any) -> Any:
    return int(value) if hasattr(value, "__int__") else str(value)


def expand2square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Upstream LLaVA ``expand2square``: paste centred on a square canvas of colour ``fill``."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class ImagePreprocessor:
    """Turns RGB PIL images into model-ready float32 tensors, in ``pad`` or ``anyres`` mode."""

    def __init__(self, processor: BaseImageProcessor, mode: Mode = "pad"):
        if mode not in ("pad", "anyres"):
            raise ValueError(f"unknown mode {mode!r} (valid: pad, anyres)")
        self.processor, self.mode = processor, mode
        self.fill = tuple(int(x * 255) for x in processor.image_mean)
        crop = processor.crop_size
        self.patch_shape = (3, int(crop["height"]), int(crop["width"]))
        self._clip = _clip_processor(processor) if mode == "pad" else None

    @property
    def max_patches(self) -> int:
        """Tensors per image: 1 in pad mode; 1 + the largest grid of the pinpoints in anyres."""
        if self.mode == "pad":
            return 1
        _, h, w = self.patch_shape
        return 1 + max((ph // h) * (pw // w) for ph, pw in self.processor.image_grid_pinpoints)

    def __call__(self, image: Image.Image) -> Pixels:
        size = (image.height, image.width)
        if self._clip is not None:
            square = expand2square(image, self.fill)
            values = self._clip(square, return_tensors="np")["pixel_values"]
            return Pixels(np.ascontiguousarray(values, dtype=np.float32), size)
        out = self.processor(image, return_tensors="np")
        values = np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)
        return Pixels(values, tuple(int(x) for x in out["image_sizes"][0]))


def _clip_processor(processor: BaseImageProcessor) -> BaseImageProcessor:
    """CLIP preprocessing with the model processor's own settings (what upstream ``pad`` runs)."""
    from transformers import CLIPImageProcessorPil

    keys = ("size", "crop_size", "resample", "image_mean", "image_std", "rescale_factor")
    flags = ("do_resize", "do_center_crop", "do_rescale", "do_normalize")
    settings = {k: getattr(processor, k) for k in (*keys, *flags)}
    return CLIPImageProcessorPil(**settings, do_convert_rgb=True)
