"""Rejected images m_l: diffusion schedules, the five strategies, deterministic per-sample draws.

Strategies (paper Table 5, upstream code):

- ``diffusion``: forward diffusion on the *preprocessed, CLIP-normalised* tensor,
  ``x_t = sqrt(alphas_bar[t]) * x_0 + sqrt(1 - alphas_bar[t]) * eps``.
- ``black``: an all-zero tensor (zeros *after* normalisation, as upstream).
- ``crop``: a random crop of at most 320x240 (width x height) of the original image, then preprocessed.
- ``rotate``: the original image rotated by a random whole number of degrees in [10, 80], then preprocessed.
- ``random``: the image of another, randomly drawn sample of the same file.

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
drawn by torch's CPU ``randn`` seeded from that generator (:func:`gaussian`); integer draws (crop
box, angle, other sample) come from the numpy generator directly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

Schedule = Literal["upstream_sigmoid", "linear_ddpm"]
Strategy = Literal["diffusion", "black", "crop", "rotate", "random"]

SCHEDULES: tuple[str, ...] = ("upstream_sigmoid", "linear_ddpm")
STRATEGIES: tuple[str, ...] = ("diffusion", "black", "crop", "rotate", "random")
NUM_STEPS = 1000
MAX_STEP = 1000
"""Largest accepted t; t = 1000 is clamped to the last table index (999)."""

CROP_MAX_WIDTH = 320
CROP_MAX_HEIGHT = 240
ROTATE_MIN_DEG = 10
ROTATE_MAX_DEG = 80


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


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box of min(320, W) x min(240, H) at a uniformly random position."""
    w, h = min(CROP_MAX_WIDTH, width), min(CROP_MAX_HEIGHT, height)
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


def crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.crop(crop_box(image.width, image.height, rng))


def rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate without expanding the canvas; uncovered corners are black (PIL defaults)."""
    return image.rotate(rotation_degrees(rng))


NOISE_KEY = (
    "rng = numpy PCG64(SeedSequence([seed, *id_key, sha256(strategy)[:8], t or 0])); "
    "eps = torch.randn(Generator().manual_seed(rng.integers(2**63 - 1)))"
)
"""How every draw of a sample's rejected image is keyed (written into the shard attributes)."""


@dataclass(frozen=True)
class RejectedImages:
    """The rejected-image strategy of a recipe, built once: the one door into this module.

    A sample's m_l is made in up to two parts. :meth:`image_level` works on the decoded PIL image
    (``crop``, ``rotate``; the caller preprocesses the result) and :meth:`tensor_level` on the
    preprocessed chosen tensor (``diffusion``, ``black``). ``random`` takes another record's image,
    drawn with :meth:`other` (the caller decodes and preprocesses it).
    """

    strategy: str = "diffusion"
    diffusion_step: int = 700
    schedule: str = "upstream_sigmoid"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} (valid: {', '.join(STRATEGIES)})")
        betas(self.schedule)  # unknown schedules fail here, not on the first sample
        step_index(self.diffusion_step)

    @classmethod
    def from_spec(cls, spec: Any, seed: int) -> RejectedImages:
        """From a ``[precompute]`` spec (``strategy``, ``diffusion_step``, ``schedule``)."""
        return cls(spec.strategy, spec.diffusion_step, spec.schedule, int(seed))

    @property
    def uses_other_record(self) -> bool:
        return self.strategy == "random"

    def rng(self, sample_id: int | str) -> np.random.Generator:
        """The generator of every draw for one sample (see :func:`sample_rng`)."""
        return sample_rng(self.seed, sample_id, self.strategy, self.diffusion_step)

    def image_level(self, image: Image.Image, rng: np.random.Generator) -> Image.Image | None:
        """The PIL-level m_l (``crop``, ``rotate``), or None for the other strategies."""
        if self.strategy == "crop":
            return crop(image, rng)
        if self.strategy == "rotate":
            return rotate(image, rng)
        return None

    def tensor_level(self, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """The tensor-level m_l from the preprocessed chosen tensor, or None (image-level strategies)."""
        if self.strategy == "diffusion":
            return add_diffusion_noise(chosen, self.diffusion_step, rng, self.schedule)
        if self.strategy == "black":
            return np.zeros_like(chosen)
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
            "noise_key": NOISE_KEY,
        }
