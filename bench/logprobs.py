"""Benchmark: cost of one preference step, upstream (naive) vs ours (shared log-probs).

Per preference sample, with LLaVA-1.6 token proportions (prefix 35, 576 image tokens at 336/14,
contexts of 100 tokens, answers of 20 tokens):

(a) upstream MCM-DPO step: 8 policy sequences forward+backward, each with its own vision pass, plus
    8 reference sequences forward;
(b) upstream DPO step: the same with 2 + 2 sequences;
(c) ours: shared policy forward+backward + shared reference forward / 3 (the reference log-probs
    are computed once offline and reused for the 3 preference epochs);
(d) the hallucination variant (paper appendix A: no context, RPO + VPO + VRPO): 4 conditions
    (``mw_cw_yw, mw_cw_yl, ml_cw_yw, ml_cw_yl``), upstream-style (naive, 4 + 4 sequences) and ours
    (one shared tree row of prefix, 2 images, 1 context, 4 answers).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the *meta* device with the real
LLaVA-1.6-Vicuna-7B widths (CLIP ViT-L/14-336 + Llama-7B): nothing is computed, so the count is free,
and the widths matter: at a small width the dense L^2 attention of the ~1750-token tree row
dominates and the ratio would not describe the real model (the small-width ratios are printed too).
Wall times and the naive-vs-shared log-prob agreement are measured on CPU with a small-width model
(hidden 64, 2 layers) at the same token proportions, in fp32. The vision tower is trained (paradigm P4).
The last line is one JSON object.

Run: ``python bench/logprobs.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import transformers.masking_utils as masking_utils
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from mcmdpo.method.logprobs import PreferenceTokens, naive_logprobs, sequence_logprobs, shared_logprobs
from mcmdpo.method.losses import CONDITIONS, TERMS, LossResult, dpo_loss, mcmdpo_loss
from mcmdpo.method.model import build_tiny_llava, load_llava

PREFIX, IMAGE_SIDE, PATCH, CONTEXT, ANSWER = 35, 336, 14, 100, 20
IMAGE_TOKENS = (IMAGE_SIDE // PATCH) ** 2
PREFERENCE_EPOCHS = 3
DPO_CONDITIONS = ("mw_cw_yw", "mw_cw_yl")
HALLUCINATION_CONDITIONS = ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "ml_cw_yl")
TEXTS = ["Given an image and context, generate alt-text for the image.\nContext:\n", "A photo of a dog."]


def llava16_7b_config() -> LlavaNextConfig:
    """llava-hf/llava-v1.6-vicuna-7b-hf dimensions (CLIP ViT-L/14-336 + Vicuna-7B)."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=4096,
        pad_token_id=0,
    )
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=32000)


def synthetic_batch(n_samples: int, vocab: int, seed: int, jitter: int = 0) -> list[PreferenceTokens]:
    """Random token ids with the benchmark lengths (``jitter`` shortens later samples: padding)."""
    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(5, vocab, (n,), generator=gen).tolist())

    def pixels() -> torch.Tensor:
        return torch.randn(1, 3, IMAGE_SIDE, IMAGE_SIDE, generator=gen)

    side = (IMAGE_SIDE, IMAGE_SIDE)
    return [
        PreferenceTokens(
            prefix=ids(PREFIX),
            context_w=ids(CONTEXT - i * jitter),
            context_l=ids(CONTEXT - 2 * i * jitter),
            answer_w=ids(ANSWER - i * jitter),
            answer_l=ids(ANSWER),
            pixels_w=pixels(),
            pixels_l=pixels(),
            image_size_w=side,
            image_size_l=side,
            image_tokens_w=IMAGE_TOKENS,
            image_tokens_l=IMAGE_TOKENS,
        )
        for i in range(n_samples)
    ]


# ------------------------------------------------------------------------------------------- steps


def reference_pass(
    model: PreTrainedModel, batch, engine: str, conditions, attention: str = "auto"
) -> dict[str, torch.Tensor]:
    """Reference log-probs: forward only."""
    with torch.no_grad():
        return sequence_logprobs(model, batch, engine=engine, conditions=conditions, attention=attention)


def preference_loss(policy, reference, conditions) -> LossResult:
    """DPO for the DPO pair; MCM-DPO over the terms whose rejected condition was scored otherwise
    (all seven for the eight conditions; RPO, VPO and VRPO for the four hallucination conditions)."""
    if tuple(conditions) == DPO_CONDITIONS:
        return dpo_loss(policy, reference)
    return mcmdpo_loss(policy, reference, drop=[t for t, c in TERMS.items() if c not in conditions])


def policy_pass(model: PreTrainedModel, batch, engine: str, conditions, reference, attention="auto") -> None:
    """Policy forward + loss + backward."""
    policy = sequence_logprobs(model, batch, engine=engine, conditions=conditions, attention=attention)
    preference_loss(policy, reference, conditions).loss.sum().backward()
    model.zero_grad(set_to_none=True)


def step_parts(
    model: PreTrainedModel, batch, engine: str, conditions, attention: str = "auto"
) -> dict[str, Callable[[], None]]:
    """The two parts of a step as thunks (the policy part reuses reference values, as training does).
    ``attention`` is the shared engine's tree attention (``auto``: flex on CUDA, sdpa elsewhere)."""
    reference = reference_pass(model, batch, engine, conditions, attention)
    return {
        "reference": lambda: reference_pass(model, batch, engine, conditions, attention),
        "policy": lambda: policy_pass(model, batch, engine, conditions, reference, attention),
    }


STEPS = {  # name -> (engine, conditions, reference weight)
    "upstream_mcmdpo": ("naive", CONDITIONS, 1.0),
    "upstream_dpo": ("naive", DPO_CONDITIONS, 1.0),
    "ours": ("shared", CONDITIONS, 1.0 / PREFERENCE_EPOCHS),
    "upstream_hallucination": ("naive", HALLUCINATION_CONDITIONS, 1.0),
    "ours_hallucination": ("shared", HALLUCINATION_CONDITIONS, 1.0 / PREFERENCE_EPOCHS),
}


# ------------------------------------------------------------------------------------------- FLOPs


@contextlib.contextmanager
def meta_friendly_masks() -> Iterator[None]:
    """transformers reads mask *values* to detect packed sequences (impossible on "meta"); the FLOP
    batches are unpadded and unpacked, so "no packing" is the right answer. Its value checks
    (``torch_compilable_check``) cannot run on "meta" either: they are off inside this block only
    (an import-time switch would silence them for everything else in the process)."""
    original = masking_utils.find_packed_sequence_indices
    previous = os.environ.get(CHECK_ENV)
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    os.environ[CHECK_ENV] = "1"
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original
        if previous is None:
            os.environ.pop(CHECK_ENV, None)
        else:
            os.environ[CHECK_ENV] = previous


CHECK_ENV = "TRANSFORMERS_DISABLE_TORCH_CHECK"


def count_flops(fn: Callable[[], None]) -> int:
    """Total FLOPs of ``fn`` (matmuls, convolutions, attention), counted on any device."""
    with meta_friendly_masks(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def step_flops(model: PreTrainedModel, batch: Sequence[PreferenceTokens]) -> dict[str, float]:
    """Per-sample FLOPs of each step in ``STEPS``."""
    out = {}
    for name, (engine, conditions, ref_weight) in STEPS.items():
        parts = step_parts(model, batch, engine, conditions)
        flops = count_flops(parts["policy"]) + ref_weight * count_flops(parts["reference"])
        out[name] = flops / len(batch)
    return out


def meta_model(config: LlavaNextConfig) -> PreTrainedModel:
    """A model on the meta device: shapes only, no memory, no compute. Also the only place where
    attention is counted: on CPU sdpa runs a fused kernel that FlopCounterMode does not know (0 FLOPs),
    on "meta" it decomposes into counted matmuls."""
    with torch.device("meta"):
        return LlavaNextForConditionalGeneration._from_config(config, attn_implementation="sdpa")


# ------------------------------------------------------------------------------------- wall / error


def wall_times(model: PreTrainedModel, batch, repeats: int) -> dict[str, float]:
    """Median seconds per step, the three steps interleaved so that machine load hits them alike."""
    parts = {name: step_parts(model, batch, engine, conds) for name, (engine, conds, _) in STEPS.items()}
    samples: dict[str, list[float]] = {name: [] for name in STEPS}
    for _ in range(repeats):
        for name, (_, _, ref_weight) in STEPS.items():
            samples[name].append(
                _timed(parts[name]["policy"]) + ref_weight * _timed(parts[name]["reference"])
            )
    return {name: statistics.median(values) for name, values in samples.items()}


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def max_logp_diff(model: PreTrainedModel, batch) -> float:
    """Largest |naive - shared| over conditions and samples (fp32 model)."""
    with torch.no_grad():
        naive, shared = naive_logprobs(model, batch), shared_logprobs(model, batch)
    return max((naive[c] - shared[c]).abs().max().item() for c in CONDITIONS)


def small_model(folder: Path) -> PreTrainedModel:
    """A small-width model at the real image geometry (336/14 -> 576 tokens), vision tower trained."""
    path = build_tiny_llava(folder, TEXTS, image_size=IMAGE_SIDE, patch_size=PATCH, hidden_size=64)
    return load_llava(path, mode="pad", train_vision_tower=True)[0]


# -------------------------------------------------------------------------------------------- main


def ratios(values: dict[str, float]) -> dict[str, float]:
    """ours / upstream MCM-DPO and ours / upstream DPO; the hallucination variant vs its upstream
    form and vs the full eight-condition step."""
    return {
        "vs_upstream_mcmdpo": values["ours"] / values["upstream_mcmdpo"],
        "vs_upstream_dpo": values["ours"] / values["upstream_dpo"],
        "hallucination_vs_upstream": values["ours_hallucination"] / values["upstream_hallucination"],
        "hallucination_vs_ours": values["ours_hallucination"] / values["ours"],
    }


def main() -> dict[str, float]:
    """Run everything, print a readable report and one JSON line."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = small_model(Path(tmp) / "small")
    vocab = model.config.text_config.vocab_size
    with meta_friendly_masks():
        big = step_flops(meta_model(llava16_7b_config()), synthetic_batch(1, 32000, seed=0))
        small = step_flops(meta_model(model.config), synthetic_batch(1, vocab, seed=1))
    batch = synthetic_batch(2, vocab, seed=2, jitter=3)
    diff = max_logp_diff(model, batch)
    wall = wall_times(model, batch, repeats=5)
    result = report(big, small, wall, diff)
    print(json.dumps(result, sort_keys=True))
    return result


def report(big: dict, small: dict, wall: dict, diff: float) -> dict[str, float]:
    """Print the readable lines; return the JSON summary."""
    sequence = PREFIX + IMAGE_TOKENS + CONTEXT + ANSWER
    tree = PREFIX + 2 * IMAGE_TOKENS + 4 * CONTEXT + 8 * ANSWER
    print(f"tokens: prefix {PREFIX}, image {IMAGE_TOKENS}, context {CONTEXT}, answer {ANSWER}")
    print(f"upstream sequence {sequence} tokens (x8 MCM-DPO, x2 DPO); shared tree row {tree} tokens")
    for name in STEPS:
        print(
            f"{name:>16}: {big[name] / 1e12:8.2f} TFLOP/sample (7B widths)"
            f"  {small[name] / 1e9:7.2f} GFLOP/sample (hidden 64)"
            f"  {wall[name]:6.3f} s/step (CPU, 2 samples)"
        )
    r_big, r_small, r_wall = ratios(big), ratios(small), ratios(wall)
    for label, r in (
        ("FLOPs 7B widths", r_big),
        ("FLOPs hidden 64", r_small),
        ("CPU wall hidden 64", r_wall),
    ):
        mcmdpo, dpo = r["vs_upstream_mcmdpo"], r["vs_upstream_dpo"]
        print(f"{label:>20}: ours/upstream MCM-DPO {mcmdpo:.3f}   ours/upstream DPO {dpo:.3f}")
        hal, full = r["hallucination_vs_upstream"], r["hallucination_vs_ours"]
        print(f"{'':>20}  hallucination (4 conditions): vs its upstream {hal:.3f}   vs ours (8) {full:.3f}")
    print(f"max |naive - shared| log-prob (fp32, hidden 64): {diff:.3g}")
    return {
        "flops_ratio_vs_upstream_mcmdpo": round(r_big["vs_upstream_mcmdpo"], 4),
        "flops_ratio_vs_upstream_dpo": round(r_big["vs_upstream_dpo"], 4),
        "max_abs_logp_diff": diff,
        "flops_per_sample_upstream_mcmdpo": big["upstream_mcmdpo"],
        "flops_per_sample_upstream_dpo": big["upstream_dpo"],
        "flops_per_sample_ours": big["ours"],
        "small_width_flops_ratio_vs_upstream_mcmdpo": round(r_small["vs_upstream_mcmdpo"], 4),
        "small_width_flops_ratio_vs_upstream_dpo": round(r_small["vs_upstream_dpo"], 4),
        "cpu_wall_ratio_vs_upstream_mcmdpo": round(r_wall["vs_upstream_mcmdpo"], 4),
        "cpu_wall_ratio_vs_upstream_dpo": round(r_wall["vs_upstream_dpo"], 4),
        "flops_per_sample_ours_hallucination": big["ours_hallucination"],
        "flops_per_sample_upstream_hallucination": big["upstream_hallucination"],
        "hallucination_flops_ratio_vs_upstream": round(r_big["hallucination_vs_upstream"], 4),
        "hallucination_flops_ratio_vs_ours": round(r_big["hallucination_vs_ours"], 4),
    }


if __name__ == "__main__":
    main()
