"""Schedules against independent computations; deterministic per-sample draws; the PIL strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from mcmdpo.method import noise


def sigmoid_alphas_bar(t: int) -> float:
    """Independent: a plain-Python loop over the upstream formula (betas from sigmoid(linspace))."""
    prod = 1.0
    for k in range(t + 1):
        x = -6.0 + 12.0 * k / 999
        beta = 1.0 / (1.0 + math.exp(-x)) * (0.5e-2 - 1e-5) + 1e-5
        prod *= 1.0 - beta
    return prod


def linear_alphas_bar(t: int) -> float:
    prod = 1.0
    for k in range(t + 1):
        prod *= 1.0 - (1e-4 + (0.02 - 1e-4) * k / 999)
    return prod


# Recorded values (float64); a change here changes every diffusion shard: bump the stage version.
RECORDED = {
    "upstream_sigmoid": {300: 0.9623293721781833, 500: 0.7447985260430766, 700: 0.3512664202026591},
    "linear_ddpm": {300: 0.394011122523382, 500: 0.07779665836502389, 700: 0.006868278890364642},
}


@pytest.mark.parametrize("t", [300, 500, 700])
def test_alphas_bar_matches_independent_loops_and_recorded_values(t):
    assert noise.alphas_bar("upstream_sigmoid")[t] == pytest.approx(sigmoid_alphas_bar(t), rel=1e-12)
    assert noise.alphas_bar("linear_ddpm")[t] == pytest.approx(linear_alphas_bar(t), rel=1e-12)
    for schedule, values in RECORDED.items():
        assert noise.alphas_bar(schedule)[t] == pytest.approx(values[t], rel=1e-12)


def test_upstream_sigmoid_matches_the_upstream_torch_float32_code():
    torch = pytest.importorskip("torch")
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    upstream = torch.cumprod(1 - betas, dim=0).double().numpy()
    assert np.allclose(noise.alphas_bar("upstream_sigmoid"), upstream, rtol=2e-6, atol=0)


def test_schedules_decrease_and_t1000_maps_to_the_last_step():
    for schedule in noise.SCHEDULES:
        ab = noise.alphas_bar(schedule)
        assert len(ab) == 1000 and np.all(np.diff(ab) < 0) and 0 < ab[-1] < ab[0] < 1
    assert [noise.step_index(t) for t in (0, 700, 999, 1000)] == [0, 700, 999, 999]
    for bad in (-1, 1001):
        with pytest.raises(ValueError):
            noise.step_index(bad)
    x0 = np.ones((1, 3, 4, 4), np.float32)
    a = noise.add_diffusion_noise(x0, 1000, noise.sample_rng(0, 1, "diffusion", 1000))
    b = noise.add_diffusion_noise(x0, 999, noise.sample_rng(0, 1, "diffusion", 999))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        noise.betas("cosine")


def test_diffusion_is_deterministic_per_key_and_differs_across_keys():
    x0 = np.linspace(-2, 2, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)

    def noisy(seed=0, sid=7, strategy="diffusion", t=500, schedule="upstream_sigmoid"):
        return noise.add_diffusion_noise(x0, t, noise.sample_rng(seed, sid, strategy, t), schedule)

    ref = noisy()
    assert ref.dtype == np.float32 and ref.shape == x0.shape
    assert np.array_equal(ref, noisy())
    for other in (noisy(seed=1), noisy(sid=8), noisy(sid="7"), noisy(t=501)):
        assert not np.array_equal(ref, other)
    # the schedule is not part of the key: both schedules see the same eps
    ab_s, ab_l = noise.alphas_bar("upstream_sigmoid")[500], noise.alphas_bar("linear_ddpm")[500]
    eps_s = (noisy() - math.sqrt(ab_s) * x0) / math.sqrt(1 - ab_s)
    eps_l = (noisy(schedule="linear_ddpm") - math.sqrt(ab_l) * x0) / math.sqrt(1 - ab_l)
    assert np.allclose(eps_s, eps_l, atol=1e-4)


def test_diffusion_formula_and_statistics():
    t = 700
    ab = noise.alphas_bar("upstream_sigmoid")[t]
    x0 = np.full((4, 3, 64, 64), 1.5, np.float32)
    out = noise.add_diffusion_noise(x0, t, noise.sample_rng(3, 0, "diffusion", t))
    eps = noise.gaussian(x0.shape, noise.sample_rng(3, 0, "diffusion", t))
    assert np.allclose(out, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, atol=1e-6)
    assert out.mean() == pytest.approx(1.5 * math.sqrt(ab), abs=0.01)
    assert out.std() == pytest.approx(math.sqrt(1 - ab), rel=0.01)


def test_t_only_keys_diffusion_and_ids_never_collide():
    crop = [noise.sample_rng(0, 5, "crop", t).integers(0, 1 << 30) for t in (300, 700)]
    assert crop[0] == crop[1]
    assert noise.id_key(5) != noise.id_key("5") and noise.id_key(-5) == noise.id_key("-5")
    assert noise.sample_rng(0, 5, "crop").integers(1 << 30) != noise.sample_rng(0, 5, "rotate").integers(
        1 << 30
    )


def test_crop_box_rotation_and_other_index():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = noise.crop_box(1024, 768, rng, "documented")
        assert (right - left, bottom - top) == (320, 240) and 0 <= left <= 704 and 0 <= top <= 528
        left, top, right, bottom = noise.crop_box(1024, 768, rng)  # upstream: 240 wide x 320 tall
        assert (right - left, bottom - top) == (240, 320) and 0 <= left <= 784 and 0 <= top <= 448
    assert noise.crop_box(100, 50, rng, "documented") == (0, 0, 100, 50)  # smaller: the whole image
    assert noise.crop_box(100, 50, rng) == (0, 0, 100, 50)
    angles = {noise.rotation_degrees(rng) for _ in range(2000)}
    assert angles == set(range(10, 81))
    picks = [noise.other_index(rng, 2, 5) for _ in range(4000)]
    assert set(picks) == {0, 1, 3, 4} and min(np.bincount(picks, minlength=5)[[0, 1, 3, 4]]) > 850
    with pytest.raises(ValueError):
        noise.other_index(rng, 0, 1)


def test_pil_strategies_are_deterministic():
    image = Image.fromarray(np.arange(600 * 400 * 3, dtype=np.uint32).reshape(400, 600, 3).astype(np.uint8))
    a = noise.crop(image, noise.sample_rng(0, 1, "crop"))
    b = noise.crop(image, noise.sample_rng(0, 1, "crop"))
    assert a.size == (240, 320) and np.array_equal(np.asarray(a), np.asarray(b))
    r1 = noise.rotate(image, noise.sample_rng(0, 1, "rotate"))
    r2 = noise.rotate(image, noise.sample_rng(0, 1, "rotate"))
    assert r1.size == image.size and np.array_equal(np.asarray(r1), np.asarray(r2))
    assert not np.array_equal(np.asarray(r1), np.asarray(image))
