"""Rejected images m_l: diffusion schedules, the six strategies, deterministic per-sample draws.

Strategies (paper Table 5, upstream code; ``mdpo_crop``: the mDPO baseline's own rejected image):

- ``diffusion``: forward diffusion on the *preprocessed, CLIP-normalised* tensor,
  ``x_t = sqrt(alphas_bar[t]) * x_0 + sqrt(1 - alphas_bar[t]) * eps``.
- ``black``: an all-zero tensor (zeros *after* normalisation, as upstream: ``llava/train/train.py``'s
  ``diffusion_image = torch.zeros_like(image)`` on the preprocessed tensor; the model sees a mean-grey
  image). This is what produced the paper's Table 5 "Blackness" row.
- ``black_rgb``: the paper's words for Table 5 ("set all RGB values to 0"): a black RGB image of the
  chosen image's size, then preprocessed like the chosen one (in ``pad`` mode its square padding keeps
  the processor's mean colour, as every padded image does).
- ``crop``: a random crop of the original image, then preprocessed. Window (``crop_window``):
  ``upstream`` (default) = at most 240 wide x 320 tall, what upstream's code does (``height, width =
  image.size`` swaps PIL's (W, H) before ``RandomCrop(size=(min(H, 320), min(W, 240)))``);
  ``documented`` = at most 320 wide x 240 tall, the reading of "a crop of at most 320x240".
- ``rotate``: the original image rotated by a random whole number of degrees in [10, 80], then preprocessed.
- ``random``: the image of another sample of the same file. ``random_source = "context"`` (default,
  upstream): the record whose question became the rejected context c_l (upstream's ``random_idx``
  serves both); ``independent``: a separate uniform draw.
- ``mdpo_crop``: mDPO's ``crop_images`` (luka-group/mDPO ``bunny/modeling_bunny_phi.py``):
  torchvision ``RandomResizedCrop(size=(S, S), scale=(0.01, 0.2))`` (ratio 3/4..4/3, bilinear) on the
  preprocessed tensor: a crop covering 1-20% of the image, resized back to S x S.

Schedules (1000 steps each):

- ``upstream_sigmoid``: the upstream/VCD schedule,
  ``betas = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5``.
- ``linear_ddpm``: the standard DDPM schedule (Ho et al. 2020), ``betas = linspace(1e-4, 0.02, 1000)``.

``alphas_bar = cumprod(1 - betas)`` is computed in float64 (upstream: float32 torch; the two agree to
~1e-6 relative). The step ``t`` indexes the table 0-based exactly as upstream (``alphas_bar[t]``), so
t = 0..999 are upstream-identical. The paper also reports t = 1000, which is out of range in a
1000-entry table (upstream raises IndexError): **t = 1000 maps to index 999**, the last and noisiest
step, so t = 999 and t = 1000 give the same tensor (see :func:`step_index`).

Determinism: upstream draws fresh noise on every access. Here every random draw of a sample comes
from one generator keyed by ``(seed, sample id, strategy, t)`` (:func:`sample_rng`), never by the
sample's position in a shard, so a tensor is the same whatever the shard layout or task count. The
key uses ``t`` only for ``diffusion`` (crop/rotate/random ignore it), and does not include the
schedule: both schedules see the same eps for a sample, a controlled comparison. eps itself is
drawn by torch's CPU ``randn`` seeded from that generator (:func:`gaussian`), and ``mdpo_crop``'s
draws by torchvision's own sampling code on a ``torch.Generator`` seeded the same way; integer draws
(crop box, angle, other sample) come from the numpy generator directly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from mcmdpo.method.data.spec import PrecomputeSpec

Schedule = Literal["upstream_sigmoid", "linear_ddpm"]
Strategy = Literal["diffusion", "black", "black_rgb", "crop", "rotate", "random", "mdpo_crop"]
CropWindow = Literal["upstream", "documented"]
RandomSource = Literal["context", "independent"]

SCHEDULES: tuple[str, ...] = ("upstream_sigmoid", "linear_ddpm")
STRATEGIES: tuple[str, ...] = ("diffusion", "black", "black_rgb", "crop", "rotate", "random", "mdpo_crop")
CROP_WINDOWS: tuple[str, ...] = ("upstream", "documented")
RANDOM_SOURCES: tuple[str, ...] = ("context", "independent")
NUM_STEPS = 1000
MAX_STEP = 1000
"""Largest accepted t; t = 1000 is clamped to the last table index (999)."""

CROP_WINDOW_SIZES: dict[str, tuple[int, int]] = {"upstream": (240, 320), "documented": (320, 240)}
"""Largest crop (width, height) per ``crop_window``."""
ROTATE_MIN_DEG = 10
ROTATE_MAX_DEG = 80
MDPO_SCALE = (0.01, 0.2)
"""mDPO's ``RandomResizedCrop`` area range (share of the image)."""
MDPO_RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""torchvision's default aspect-ratio range (width / height), which mDPO keeps."""
MDPO_ANTIALIAS = False
"""Resize without antialiasing: torchvision < 0.17 (mDPO pins fall-2023 packages: torch 2.1 pairs with
torchvision 0.16) resizes tensors with ``antialias=None``, i.e. False; >= 0.17 uses True. For these
upscales the two differ by < 2e-5 (normalised units), below float16 storage rounding."""


def betas(schedule: Schedule | str = "upstream_sigmoid") -> np.ndarray:
    """The 1000 betas of ``schedule`` (float64)."""
    if schedule == "upstream_sigmoid":
        x = np.linspace(-6.0, 6.0, NUM_STEPS)
        return 1.0 / (1.0 + np.exp(-x)) * (5e-3 - 1e-5) + 1e-5
    if schedule == "linear_ddpm":
        return np.linspace(1e-4, 0.02, NUM_STEPS)
    raise ValueError(f"unknown schedule {schedule!r} (valid: {', '.join(SCHEDULES)})")


def alphas_bar(schedule: Schedule | str = "upstream_sigmoid") -> np.ndarray:
    """``cumprod(1 - betas)``: the signal fraction kept after each step (float64, length 1000)."""
    return np.cumprod(1.0 - betas(schedule))


def step_index(t: int) -> int:
    """Table index of step ``t``: t for 0 <= t <= 999 (upstream), 999 for t = 1000."""
    if not 0 <= t <= MAX_STEP:
        raise ValueError(f"diffusion step must be in [0, {MAX_STEP}] (got {t})")
    return min(int(t), NUM_STEPS - 1)


def _name_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def id_key(sample_id: int | str) -> list[int]:
    """Stable non-negative integers for a sample id (ints and strings never collide)."""
    if isinstance(sample_id, int) and not isinstance(sample_id, bool) and sample_id >= 0:
        return [0, sample_id]
    return [1, _name_key(str(sample_id))]


def sample_rng(seed: int, sample_id: int | str, strategy: str, t: int = 0) -> np.random.Generator:
    """The generator of every random draw for one sample's rejected image.

    Keyed by (seed, sample id, strategy, t); t counts only for ``diffusion``.
    """
    t_key = step_index(t) if strategy == "diffusion" else 0
    entropy = [int(seed), *id_key(sample_id), _name_key(strategy), t_key]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def gaussian(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard-normal float32 noise eps for one sample.

    Drawn with torch's CPU ``randn`` (the generator upstream's ``torch.randn_like`` uses; 2-3x
    faster than numpy's ziggurat here), seeded by the first 63-bit draw of the sample's ``rng``.
    Bit-identical for the same torch version on the same CPU architecture.
    """
    import torch

    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()


def add_diffusion_noise(
    x0: np.ndarray, t: int, rng: np.random.Generator, schedule: Schedule | str = "upstream_sigmoid"
) -> np.ndarray:
    """Forward diffusion ``q(x_t | x_0)`` on a (normalised) float tensor; float32 like upstream."""
    a_bar = alphas_bar(schedule)[step_index(t)]
    out = gaussian(x0.shape, rng)
    out *= np.float32(np.sqrt(1.0 - a_bar))
    out += np.multiply(x0, np.float32(np.sqrt(a_bar)), dtype=np.float32)
    return out


def crop_box(
    width: int, height: int, rng: np.random.Generator, window: CropWindow | str = "upstream"
) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box at a uniformly random position, of size

    - ``upstream``: min(240, W) wide x min(320, H) tall (upstream ``train.py``'s swapped reading);
    - ``documented``: min(320, W) wide x min(240, H) tall.
    """
    max_w, max_h = CROP_WINDOW_SIZES[window]
    w, h = min(max_w, width), min(max_h, height)
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return left, top, left + w, top + h


def rotation_degrees(rng: np.random.Generator) -> int:
    """A whole number of degrees, uniform in [10, 80] (counter-clockwise, PIL convention)."""
    return int(rng.integers(ROTATE_MIN_DEG, ROTATE_MAX_DEG + 1))


def other_index(rng: np.random.Generator, position: int, n: int) -> int:
    """A uniformly random index in [0, n) other than ``position`` (the ``random`` strategy)."""
    if n < 2:
        raise ValueError("the 'random' strategy needs at least two samples")
    j = int(rng.integers(0, n - 1))
    return j + 1 if j >= position else j


def crop(image: Image.Image, rng: np.random.Generator, window: CropWindow | str = "upstream") -> Image.Image:
    return image.crop(crop_box(image.width, image.height, rng, window))


def rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate without expanding the canvas; uncovered corners are black (PIL defaults)."""
    return image.rotate(rotation_degrees(rng))


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by the next 63-bit draw of ``rng``."""
    import torch

    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))


def resized_crop_params(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w): torchvision ``RandomResizedCrop._get_params`` with mDPO's ``scale=(0.01, 0.2)``
    and the default ratio, drawing from ``generator`` (torchvision draws from the global generator)."""
    import torch

    area = height * width
    log_ratio = torch.log(torch.tensor(MDPO_RATIO))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*MDPO_SCALE, generator=generator).item()
        aspect_ratio = torch.exp(
            torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)  # type: ignore[arg-type]
        ).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return i, j, h, w
    return _central_crop(height, width)


def _central_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """torchvision's fallback after 10 misses (never reached for square inputs at mDPO's scale)."""
    in_ratio = float(width) / float(height)
    if in_ratio < min(MDPO_RATIO):
        w, h = width, int(round(width / min(MDPO_RATIO)))
    elif in_ratio > max(MDPO_RATIO):
        h, w = height, int(round(height * max(MDPO_RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def mdpo_crop(x0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mDPO's ``crop_images`` on preprocessed tensors ``[P, 3, S, S]``: each tensor its own random
    crop of 1-20% of its area, resized back to S x S (bilinear, as torchvision's ``resized_crop``)."""
    import torch
    import torch.nn.functional as F

    generator = torch_generator(rng)
    x = torch.from_numpy(np.ascontiguousarray(x0, dtype=np.float32))
    out = torch.empty_like(x)
    height, width = x.shape[-2:]
    for p in range(x.shape[0]):
        top, left, h, w = resized_crop_params(height, width, generator)
        patch = x[p : p + 1, :, top : top + h, left : left + w]
        size = (height, width)
        out[p] = F.interpolate(patch, size, mode="bilinear", align_corners=False, antialias=MDPO_ANTIALIAS)[0]
    return out.numpy()


NOISE_KEY = (
    "rng = numpy PCG64(SeedSequence([seed, *id_key, sha256(strategy)[:8], t or 0])); "
    "eps = torch.randn(Generator().manual_seed(rng.integers(2**63 - 1))); "
    "mdpo_crop: torchvision RandomResizedCrop sampling on the same kind of Generator"
)
"""How every draw of a sample's rejected image is keyed (written into the shard attributes)."""


@dataclass(frozen=True)
class RejectedImages:
    """The rejected-image strategy of a recipe, built once: the one door into this module.

    A sample's m_l is made in up to two parts. :meth:`image_level` works on the decoded PIL image
    (``crop``, ``rotate``, ``black_rgb``; the caller preprocesses the result) and :meth:`tensor_level` on the
    preprocessed chosen tensor (``diffusion``, ``black``, ``mdpo_crop``). ``random`` takes another
    record's image (the caller decodes and preprocesses it): the rejected-context record when
    :attr:`coupled` (upstream), else one drawn with :meth:`other`.
    """

    strategy: str = "diffusion"
    diffusion_step: int = 700
    schedule: str = "upstream_sigmoid"
    seed: int = 0
    crop_window: str = "upstream"
    random_source: str = "context"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {self.strategy!r} (valid: {', '.join(STRATEGIES)}; resolve 'auto' "
                "first with mcmdpo.method.data.spec.resolve_strategy)"
            )
        betas(self.schedule)  # unknown schedules fail here, not on the first sample
        step_index(self.diffusion_step)
        if self.crop_window not in CROP_WINDOWS or self.random_source not in RANDOM_SOURCES:
            raise ValueError(f"crop_window must be in {CROP_WINDOWS}, random_source in {RANDOM_SOURCES}")

    @classmethod
    def from_spec(cls, spec: PrecomputeSpec, seed: int) -> RejectedImages:
        """From a resolved ``[precompute]`` spec (``strategy``, ``diffusion_step``, ``schedule``, ...)."""
        fields = (spec.diffusion_step, spec.schedule, int(seed), spec.crop_window, spec.random_source)
        return cls(spec.strategy, *fields)

    @property
    def uses_other_record(self) -> bool:
        return self.strategy == "random"

    @property
    def coupled(self) -> bool:
        """``random`` with the image of the rejected-context record (upstream's ``random_idx``)."""
        return self.strategy == "random" and self.random_source == "context"

    def rng(self, sample_id: int | str) -> np.random.Generator:
        """The generator of every draw for one sample (see :func:`sample_rng`)."""
        return sample_rng(self.seed, sample_id, self.strategy, self.diffusion_step)

    def image_level(self, image: Image.Image, rng: np.random.Generator) -> Image.Image | None:
        """The PIL-level m_l (``crop``, ``rotate``, ``black_rgb``), or None for the other strategies."""
        if self.strategy == "black_rgb":
            from PIL import Image

            return Image.new("RGB", image.size)  # every RGB value 0
        if self.strategy == "crop":
            return crop(image, rng, self.crop_window)
        if self.strategy == "rotate":
            return rotate(image, rng)
        return None

    def tensor_level(self, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """The tensor-level m_l from the preprocessed chosen tensor, or None (image-level strategies)."""
        if self.strategy == "diffusion":
            return add_diffusion_noise(chosen, self.diffusion_step, rng, self.schedule)
        if self.strategy == "black":
            return np.zeros_like(chosen)
        if self.strategy == "mdpo_crop":
            return mdpo_crop(chosen, rng)
        return None

    def other(self, rng: np.random.Generator, position: int, n: int) -> int:
        """``random``: another record's position (redraw with the same generator when it is unusable)."""
        return other_index(rng, position, n)

    def describe(self) -> dict[str, Any]:
        """Provenance attributes of the shards made with this strategy."""
        return {
            "strategy": self.strategy,
            "schedule": self.schedule,
            "diffusion_step": self.diffusion_step,
            "step_index": step_index(self.diffusion_step),
            "seed": self.seed,
            "crop_window": self.crop_window,
            "random_source": self.random_source,
            "noise_key": NOISE_KEY,
        }
