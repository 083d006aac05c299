"""Suite part ``plan``: the memory plan (:mod:`mcmdpo.method.memory`) against the allocator's peak.

For the suite's model (7B widths and depth, bf16, gradient checkpointing, vision tower trained) and
synthetic LLaVA-1.6-shaped samples, per stage: the planned bytes (weights, gradients, activations
measured on ``meta`` at depths 1-2 exactly as ``mcmdpo rehearse`` does, times the real depth, and the
backward transients) next to the allocator's peak of one real step:

- ``sft``: one sequence per sample (the chosen condition), answer log-likelihood, backward;
- ``preference``: MCM-DPO policy step, shared engine with SDPA, zero offline reference, backward;
- ``reference``: the shared engine's forward of all eight conditions under ``no_grad``.

There is no optimizer here (the suite holds no DeepSpeed engine): its states and buffers are the
ZeRO paper's arithmetic and left out on both sides. Target: every stage within 15%. On CPU
(``--cpu-smoke``) the same code runs at the tiny shapes and the measured side is None.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.gpu.common import Shape, peak_gb, reset_memory, synthetic_batch
from mcmdpo.method.losses import CONDITIONS
from mcmdpo.method.memory import GiB, Tokens, TrainSetup, activation_bytes, inference_plan, model_states
from mcmdpo.method.model.architecture import Architecture

SFT = ("mw_cw_yw",)


def _preference_loss(batch: list, reference: dict[str, torch.Tensor]) -> Any:
    from mcmdpo.method.logprobs import shared_logprobs
    from mcmdpo.method.losses import PreferenceLoss
    from mcmdpo.method.train.spec import LossSpec

    loss = PreferenceLoss.from_spec(LossSpec())

    def forward(model: Any) -> Any:
        policy = shared_logprobs(model, batch, attention="sdpa")
        return loss(policy, {c: v.to(model.device) for c, v in reference.items()}).loss.mean()

    return forward


def _sft_loss(batch: list) -> Any:
    from mcmdpo.method.logprobs import naive_logprobs

    def forward(model: Any) -> Any:
        return -naive_logprobs(model, batch, conditions=SFT)[SFT[0]].mean()

    return forward


def _tokens(arch: Architecture, batch: list, conditions: tuple[str, ...], engine: str) -> Tokens:
    from mcmdpo.smoke.rehearsal_stages import preference_tokens

    return preference_tokens(arch, batch, conditions, engine)


def planned_training(shape: Shape, forward: Any, tokens: Tokens, precision: str) -> dict[str, float]:
    """Weights, gradients and activations (meta-measured) of one step, no optimizer (GiB)."""
    from mcmdpo.method.train.spec import PreferenceSpec
    from mcmdpo.smoke.rehearsal_steps import Family, measure

    family = Family(shape.config.to_dict(), shape.processor, "suite")
    spec = PreferenceSpec(
        precision=precision, gradient_checkpointing=True, global_batch_size=1, micro_batch_size=1
    )
    activations = measure(family, spec, forward, tokens)
    arch = family.arch
    setup = TrainSetup(arch=arch, trainable=arch.params, precision=precision, zero_stage=0, world=1,
                       checkpointing=True, micro=1, tokens=tokens, activations=activations,
                       loss_bytes=8)  # fmt: skip
    states = model_states(setup)
    parts = {"weights": states["weights"], "gradients": states["gradients"], **activation_bytes(setup)}
    return {k: round(v / GiB, 3) for k, v in parts.items()}


def measured_step(model: Any, device: str, forward: Any, backward: bool) -> float | None:
    """The allocator's peak of one step (weights included), GiB; None off CUDA (the step still runs)."""
    model.zero_grad(set_to_none=True)
    reset_memory(device)
    if backward:
        forward(model).backward()
    else:
        with torch.no_grad():
            forward(model)
    peak = peak_gb(device)
    model.zero_grad(set_to_none=True)
    return peak


def plan_vs_measured(model: Any, shape: Shape, device: str, batch_size: int, reference_batch: int) -> dict:
    """Per stage: planned parts and total, measured peak, relative error."""
    config, g = shape.config, shape.geometry
    arch = Architecture.from_config(config.to_dict())
    precision = "bf16" if model.dtype == torch.bfloat16 else "fp32"
    batch = synthetic_batch(batch_size, g, config.text_config.vocab_size, 3, config.image_token_id)
    reference = {c: torch.zeros(batch_size, dtype=torch.float64) for c in CONDITIONS}
    out: dict[str, Any] = {}
    for stage, forward, conditions, engine in (
        ("sft", _sft_loss(batch), SFT, "naive"),
        ("preference", _preference_loss(batch, reference), CONDITIONS, "shared"),
    ):
        parts = planned_training(shape, forward, _tokens(arch, batch, conditions, engine), precision)
        out[stage] = _row(parts, measured_step(model, device, forward, True))
    ref_batch = synthetic_batch(reference_batch, g, config.text_config.vocab_size, 4, config.image_token_id)
    out["reference"] = _reference_row(model, shape, device, arch, ref_batch, precision)
    errors = [abs(r["error"]) for r in out.values() if r["error"] is not None]
    out["max_abs_error"] = max(errors) if errors else None
    return out


def _reference_row(
    model: Any, shape: Shape, device: str, arch: Architecture, batch: list, precision: str
) -> dict:
    from mcmdpo.method.logprobs import shared_logprobs

    tokens = _tokens(arch, batch, CONDITIONS, "shared")
    dtype = "bfloat16" if precision == "bf16" else "float32"
    plan = inference_plan("reference", arch, dtype, tokens, logit_bytes=2 + 16)
    parts = {k: round(v / GiB, 3) for k, v in plan.parts.items()}

    def forward(m: Any) -> Any:
        return shared_logprobs(m, batch, attention="sdpa")

    return _row(parts, measured_step(model, device, forward, False))


def _row(parts: dict[str, float], measured: float | None) -> dict[str, Any]:
    total = round(sum(parts.values()), 3)
    error = None if not measured else round((total - measured) / measured, 4)
    return {"planned_gb": total, "parts": parts, "measured_gb": measured, "error": error}
