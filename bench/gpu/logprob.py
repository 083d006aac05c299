"""Suite part ``logprob``: one preference step, upstream (naive) vs the shared engine, SDPA vs flex.

Per preference sample, with LLaVA-1.6 token proportions (prefix 35, 576 image tokens, contexts of 100
tokens, answers of 20 tokens), vision tower trained (P4), gradient checkpointing on:

- ``upstream_mcmdpo``: 8 policy sequences forward+backward (one vision pass each) + 8 reference
  sequences forward; ``upstream_dpo``: the same with 2 + 2;
- ``ours_sdpa`` / ``ours_flex``: shared policy forward+backward + shared reference forward / 3 (the
  reference log-probs are computed once by the ``reference`` stage and reused for 3 epochs), tree
  attention as SDPA + boolean mask or FlexAttention + BlockMask;
- the 4-condition hallucination variant (``mw_cw_yw, mw_cw_yl, ml_cw_yw, ml_cw_yl``: RPO, VPO, VRPO):
  ``upstream_hal`` (4 + 4 sequences), ``ours_hal_sdpa``, ``ours_hal_flex``.

Each row: median wall time of the policy and reference parts and of the step, wall per sample, its
ratio to the naive step with the same conditions and to upstream DPO, tokens/s (tokens fed),
equivalent tokens/s (the upstream sequences of the same conditions, so its ratios are speed-ups),
TFLOP/s, MFU of the step and of the policy forward+backward (model FLOPs counted on the meta device
with dense attention; activation recomputation not counted), the policy's HFU (x 4/3: the forward
that gradient checkpointing re-runs) and peak memory.

``check_flex`` compares flex with SDPA: fp32 log-probs and every parameter gradient (<= 1e-5) on a
small model with padded, multi-block rows, and the bf16 relative error at 7B shapes (with the
naive-vs-SDPA error at the same shapes as the bf16 noise floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bench import logprobs as flops_bench
from bench.gpu.common import (
    Geometry,
    Shape,
    build_model,
    count_step_flops,
    input_tokens,
    median_times,
    peak_gb,
    reset_memory,
    synthetic_batch,
    tiny_text_vision,
)
from mcmdpo.method.logprobs import shared_logprobs
from mcmdpo.method.losses import CONDITIONS

PREFERENCE_EPOCHS = 3
DPO = flops_bench.DPO_CONDITIONS
HALLUCINATION = ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "ml_cw_yl")
STEPS: dict[str, tuple[str, tuple[str, ...], float, str]] = {
    # name -> (engine, conditions, weight of the reference pass, tree attention)
    "upstream_mcmdpo": ("naive", CONDITIONS, 1.0, "sdpa"),
    "upstream_dpo": ("naive", DPO, 1.0, "sdpa"),
    "ours_sdpa": ("shared", CONDITIONS, 1.0 / PREFERENCE_EPOCHS, "sdpa"),
    "ours_flex": ("shared", CONDITIONS, 1.0 / PREFERENCE_EPOCHS, "flex"),
    "upstream_hal": ("naive", HALLUCINATION, 1.0, "sdpa"),
    "ours_hal_sdpa": ("shared", HALLUCINATION, 1.0 / PREFERENCE_EPOCHS, "sdpa"),
    "ours_hal_flex": ("shared", HALLUCINATION, 1.0 / PREFERENCE_EPOCHS, "flex"),
}
RECOMPUTE = 4 / 3  # forward + backward = 3 forward-equivalents; checkpointing re-runs one forward
NO_FLEX_ON_CPU = "FlexAttention has no backward on CPU: flex rows run on CUDA only"


def baseline_of(step: str) -> str:
    """The naive step with the same conditions (the ratio's denominator)."""
    return "upstream_hal" if "hal" in step else "upstream_mcmdpo"


def measure_steps(
    model: Any, shape: Shape, device: str, batch_size: int, warmup: int, repeats: int, peak: float | None
) -> list[dict[str, Any]]:
    """Every step of :data:`STEPS` at ``batch_size``; flex rows are skipped off CUDA, OOM reported."""
    config = shape.config
    image_id = config.image_token_id
    batch = synthetic_batch(batch_size, shape.geometry, config.text_config.vocab_size, 1, image_id)
    flops = count_step_flops(config, batch, STEPS)
    rows = []
    for step, (engine, conditions, weight, attention) in STEPS.items():
        if attention == "flex" and not device.startswith("cuda"):
            rows.append({"step": step, "skipped": NO_FLEX_ON_CPU})
            continue
        try:
            reset_memory(device)
            parts = flops_bench.step_parts(model, batch, engine, conditions, attention)
            seconds = median_times(parts, device, warmup, repeats)
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            rows.append({"step": step, "batch_size": batch_size, "oom": True})
            continue
        tokens = {
            "fed": input_tokens(batch, engine, conditions, image_id),
            "equivalent": input_tokens(batch, "naive", conditions, image_id),
        }
        rows.append(step_row(step, batch_size, seconds, flops[step], tokens, weight, peak, peak_gb(device)))
    return add_ratios(rows)


def step_row(
    step: str,
    size: int,
    seconds: dict[str, float],
    flops: dict[str, float],
    tokens: dict[str, int],
    weight: float,
    peak: float | None,
    memory_gb: float | None,
) -> dict[str, Any]:
    """Derived numbers of one step: the reference part weighted as in :data:`STEPS`."""
    engine, conditions, _, attention = STEPS[step]
    step_s = seconds["policy"] + weight * seconds["reference"]
    step_flops = flops["policy"] + weight * flops["reference"]
    achieved = step_flops / step_s / 1e12
    policy_tflops = flops["policy"] / seconds["policy"] / 1e12
    return {
        "step": step,
        "engine": engine,
        "attention": attention if engine == "shared" else "sdpa (causal)",
        "conditions": len(conditions),
        "batch_size": size,
        "policy_s": round(seconds["policy"], 5),
        "reference_s": round(seconds["reference"], 5),
        "step_s": round(step_s, 5),
        "wall_per_sample_s": round(step_s / size, 5),
        "tokens_per_s": round((1 + weight) * tokens["fed"] / step_s, 1),
        "equiv_tokens_per_s": round(2 * tokens["equivalent"] / step_s, 1),
        "tflops_per_s": round(achieved, 3),
        "mfu": round(achieved / peak, 4) if peak else None,
        "policy_mfu": round(policy_tflops / peak, 4) if peak else None,
        "policy_hfu": round(policy_tflops * RECOMPUTE / peak, 4) if peak else None,
        "tflop_per_step": round(step_flops / 1e12, 4),
        "max_memory_gb": memory_gb,
    }


def add_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Wall per sample over the naive step with the same conditions, and over upstream DPO."""
    by = {r["step"]: r for r in rows if "step_s" in r}
    for row in by.values():
        for key, base in (
            ("ratio_vs_naive", baseline_of(row["step"])),
            ("ratio_vs_upstream_dpo", "upstream_dpo"),
        ):
            if base in by:
                row[key] = round(row["step_s"] / by[base]["step_s"], 4)
    return rows


# ---------------------------------------------------------------- flex vs sdpa


def check_geometry() -> Geometry:
    """Rows of ~720 tokens (6 blocks of 128) with 64 image tokens per image."""
    return Geometry(image_side=112, patch=14, prefix=35, context=100, answer=20)


def check_flex_fp32(shape: Shape, device: str, pair: tuple[str, str] = ("sdpa", "flex")) -> dict[str, Any]:
    """fp32, small width: max |flex - sdpa| of the log-probs and of every parameter gradient
    (``pair``: the two tree attentions compared)."""
    from transformers import LlavaNextConfig

    geometry = check_geometry()
    vision, text = tiny_text_vision(geometry, hidden=128)  # head dim 32
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text, key, getattr(shape.config.text_config, key))
    config = LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_index=shape.config.image_token_id
    )
    with _no_tf32():
        model = build_model(config, device, torch.float32, checkpointing=True, seed=1)
        batch = synthetic_batch(3, geometry, text.vocab_size, 2, config.image_token_id, jitter=7)
        sdpa, flex = (logprobs_and_grads(model, batch, a) for a in pair)
    logp = max_abs(sdpa[0], flex[0])
    grad = max_abs(sdpa[1], flex[1])
    return {
        "check": "flex_vs_sdpa_fp32",
        "rows_tokens": _row_tokens(batch, config.image_token_id),
        "max_abs_logp_diff": logp,
        "max_abs_grad_diff": grad,
        "max_abs_grad": max(g.abs().max().item() for g in sdpa[1].values()),
        "tolerance": 1e-5,
        "passed": logp <= 1e-5 and grad <= 1e-5,
    }


def check_flex_bf16(
    model: Any, shape: Shape, batch_size: int, pair: tuple[str, str] = ("sdpa", "flex")
) -> dict[str, Any]:
    """bf16 at the suite's shape: relative error of flex vs sdpa (log-probs, gradients), and of
    naive vs sdpa log-probs as the noise floor of two valid bf16 computations."""
    from mcmdpo.method.logprobs import naive_logprobs

    config = shape.config
    batch = synthetic_batch(
        batch_size, shape.geometry, config.text_config.vocab_size, 3, config.image_token_id
    )
    sdpa = logprobs_and_grads(model, batch, pair[0])
    diff: dict[str, float] = {}
    flex_logp, _ = logprobs_and_grads(model, batch, pair[1], grads_like=sdpa[1], diff_out=diff)
    sdpa[1].clear()  # free the stashed gradients before the naive pass
    with torch.no_grad():
        naive = naive_logprobs(model, batch)
    floor = relative(torch.stack([naive[c] for c in CONDITIONS]), _stack(sdpa[0]))
    logp = relative(_stack(flex_logp), _stack(sdpa[0]))
    grad = (diff["sq"] ** 0.5) / (diff["ref_sq"] ** 0.5)
    return {
        "check": "flex_vs_sdpa_bf16",
        "rel_logp_diff": logp,
        "rel_grad_diff": grad,
        "rel_logp_naive_vs_sdpa": floor,
        "tolerance_logp": 1e-2,
        "tolerance_grad": 2e-2,
        "passed": logp <= 1e-2 and grad <= 2e-2,
    }


def logprobs_and_grads(
    model: Any,
    batch: Sequence[Any],
    attention: str,
    grads_like: dict[str, torch.Tensor] | None = None,
    diff_out: dict[str, float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Shared log-probs and the gradients of the MCM-DPO loss (reference: the log-probs minus 1).

    With ``grads_like`` the gradients are not kept: only ``sum (g - g_like)^2`` and ``sum g_like^2``
    go into ``diff_out`` (two full gradient copies of a 7B model would double the memory)."""
    model.zero_grad(set_to_none=True)
    policy = shared_logprobs(model, batch, attention=attention)  # type: ignore[arg-type]
    reference = {c: v.detach() - 1.0 for c, v in policy.items()}
    flops_bench.preference_loss(policy, reference, CONDITIONS).loss.sum().backward()
    named = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    values = {c: v.detach() for c, v in policy.items()}
    if grads_like is None:
        grads = {n: g.detach().clone() for n, g in named.items()}
        model.zero_grad(set_to_none=True)
        return values, grads
    sq = sum(float((g.float() - grads_like[n].float()).pow(2).sum()) for n, g in named.items())
    ref_sq = sum(float(g.float().pow(2).sum()) for g in grads_like.values())
    diff_out.update(sq=sq, ref_sq=ref_sq)  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)
    return values, {}


def max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).norm() / reference.double().norm())


def _stack(values: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([values[c] for c in CONDITIONS])


def _row_tokens(batch: Sequence[Any], image_id: int) -> list[int]:
    return [input_tokens([s], "shared", CONDITIONS, image_id) for s in batch]


class _no_tf32:
    """fp32 comparisons with IEEE matmuls and convolutions (no TF32), restored afterwards."""

    def __enter__(self) -> None:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
