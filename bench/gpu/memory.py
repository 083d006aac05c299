"""Suite part ``memory``: activation memory per sample, naive vs shared, and the largest micro-batch.

Per sample: the peak memory of one policy forward+backward (gradient checkpointing on) at 1 and at 2
samples; the difference is what one more sample costs (the weights, their gradients and the workspace
cancel out). Naive = upstream MCM-DPO's 8 sequences; shared = one tree row (SDPA and flex).

Largest micro-batch: powers of two until the step runs out of memory under a cap that stands for one
80 GB A100 of the ``a100`` profile (8 GPUs per node, ZeRO-2, bf16): 80 GiB minus 1 GiB of CUDA
context, minus what ZeRO-2 holds beyond this benchmark's bf16 weights and full bf16 gradients (its
1/8 shards of fp32 master weights, Adam moments and fp32 gradients, and two 5e8-element bf16
buckets). SFT = one sequence per sample (prefix, image, context, chosen answer) with the
answer-only loss; MCM-DPO = the shared engine's policy step with offline reference log-probs (the
trainer's step on a GPU). A size that would not fit the time left is not tried (reported).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench import logprobs as flops_bench
from bench.gpu.common import Shape, parameter_count, peak_gb, reset_memory, synthetic_batch
from mcmdpo.method.logprobs import naive_logprobs
from mcmdpo.method.losses import CONDITIONS

GiB = 2**30
SFT_CONDITIONS = ("mw_cw_yw",)
ENGINES = {  # name -> (engine, tree attention)
    "naive": ("naive", "sdpa"),
    "shared_sdpa": ("shared", "sdpa"),
    "shared_flex": ("shared", "flex"),
}


def policy_step(model: Any, batch: list, engine: str, attention: str) -> None:
    """MCM-DPO policy forward+backward with (constant) offline reference values."""
    reference = {c: torch.zeros(len(batch), dtype=torch.float64) for c in CONDITIONS}
    reference = {c: v.to(model.device) for c, v in reference.items()}
    flops_bench.policy_pass(model, batch, engine, CONDITIONS, reference, attention)


def sft_step(model: Any, batch: list) -> None:
    """SFT: one sequence per sample, loss = mean answer log-likelihood (negated), backward."""
    logp = naive_logprobs(model, batch, conditions=SFT_CONDITIONS)["mw_cw_yw"]
    (-logp.mean()).backward()
    model.zero_grad(set_to_none=True)


def per_sample_memory(model: Any, shape: Shape, device: str) -> dict[str, Any]:
    """GiB per extra sample of each engine (None off CUDA), and shared / naive."""
    config = shape.config
    out: dict[str, Any] = {}
    for name, (engine, attention) in ENGINES.items():
        if attention == "flex" and not device.startswith("cuda"):
            continue
        peaks = []
        for size in (1, 2):
            batch = synthetic_batch(
                size, shape.geometry, config.text_config.vocab_size, size, config.image_token_id
            )
            reset_memory(device)
            policy_step(model, batch, engine, attention)
            peaks.append(peak_gb(device))
        out[name] = {"peak_gb_1": peaks[0], "peak_gb_2": peaks[1], "gb_per_sample": _diff(peaks)}
    naive = out["naive"]["gb_per_sample"]
    for name in ("shared_sdpa", "shared_flex"):
        if name in out and naive and out[name]["gb_per_sample"] is not None:
            out[name]["ratio_vs_naive"] = round(out[name]["gb_per_sample"] / naive, 4)
    return out


def _diff(peaks: list[float | None]) -> float | None:
    return None if None in peaks else round(peaks[1] - peaks[0], 3)  # type: ignore[operator]


def zero2_extra_bytes(params: int, trainable: int, world: int = 8, bucket: float = 5e8) -> int:
    """What a ZeRO-2 bf16 rank holds beyond bf16 weights and full bf16 gradients (never negative)."""
    deepspeed = 2 * params + (4 + 8 + 4) * trainable / world + 2 * 2 * bucket
    here = 2 * params + 2 * trainable
    return int(max(0.0, deepspeed - here))


def a100_cap_bytes(model: Any, world: int = 8) -> int:
    extra = zero2_extra_bytes(parameter_count(model), parameter_count(model, trainable=True), world)
    return int(80 * GiB - 1 * GiB - extra)


@contextlib.contextmanager
def memory_cap(device: str, cap_bytes: int) -> Iterator[float | None]:
    """Limit this process's CUDA allocations to ``cap_bytes`` (the caching allocator raises
    ``torch.OutOfMemoryError`` beyond it); a no-op off CUDA."""
    if not device.startswith("cuda"):
        yield None
        return
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    fraction = min(1.0, cap_bytes / total)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        yield fraction
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def search_micro_batch(
    attempt: Callable[[int], float | None],
    cleanup: Callable[[], None],
    limit: int,
    seconds_left: Callable[[], float],
) -> dict[str, Any]:
    """Largest power of two <= ``limit`` for which ``attempt(size)`` runs without running out of
    memory; ``attempt`` returns the peak GiB. Stops at the first OOM, or when the next size (about
    twice the last one's time) would not fit ``seconds_left()``."""
    tried: list[dict[str, Any]] = []
    best, size, last_s = None, 1, 0.0
    while size <= limit:
        if 2.5 * last_s > seconds_left():
            return {"largest": best, "tried": tried, "stopped": f"no time left for micro-batch {size}"}
        started = time.perf_counter()
        oom = False
        try:
            peak = attempt(size)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            oom, peak = True, None
        if oom:
            cleanup()
            tried.append({"micro_batch": size, "oom": True})
            return {"largest": best, "tried": tried, "stopped": f"out of memory at {size}"}
        last_s = time.perf_counter() - started
        tried.append({"micro_batch": size, "peak_gb": peak, "seconds": round(last_s, 3)})
        best, size = size, size * 2
    return {"largest": best, "tried": tried, "stopped": f"search limit {limit} reached (fits)"}


def is_out_of_memory(exc: BaseException) -> bool:
    """The allocator's OOM, or a library's failed allocation (cuBLAS / cuDNN workspaces)."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def largest_micro_batches(
    model: Any, shape: Shape, device: str, limits: dict[str, int], seconds_left: Callable[[], float]
) -> dict[str, Any]:
    """SFT and MCM-DPO micro-batch searches under the A100-80GB cap."""
    config = shape.config

    def batch(size: int) -> list:
        return synthetic_batch(size, shape.geometry, config.text_config.vocab_size, 7, config.image_token_id)

    def cleanup() -> None:
        model.zero_grad(set_to_none=True)
        gc.collect()
        reset_memory(device)

    steps = {
        "sft": lambda size: sft_step(model, batch(size)),
        "mcmdpo": lambda size: policy_step(model, batch(size), "shared", "auto"),
    }
    cap = a100_cap_bytes(model)
    out: dict[str, Any] = {"cap_gb": round(cap / GiB, 2)}
    with memory_cap(device, cap) as fraction:
        out["cap_fraction"] = fraction
        for name, step in steps.items():

            def attempt(size: int, step: Callable[[int], None] = step) -> float | None:
                reset_memory(device)
                step(size)
                return peak_gb(device)

            out[name] = search_micro_batch(attempt, cleanup, limits[name], seconds_left)
            cleanup()
    return out
