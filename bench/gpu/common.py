"""What every part of the GPU suite shares: shapes, model construction, timing, memory, FLOP counting.

The 7B shape is ``llava-hf/llava-v1.6-vicuna-7b-hf`` (CLIP ViT-L/14-336 + Vicuna-7B, from
``bench/logprobs.py``), built with random weights directly on the device in the benchmark dtype
(``_from_config`` under ``torch.device``: no host copy, no checkpoint). Its special token ids are
those of the in-process tokenizer of :mod:`mcmdpo.method.model.tiny`, so the same model object serves the
log-prob steps (synthetic token ids) and generation (real prompts through the eval stage's
``BatchGenerator``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedModel,
)

from bench import logprobs as flops_bench
from mcmdpo.method.logprobs import PreferenceTokens, build_tree_row, parse_condition
from mcmdpo.method.model import set_gradient_checkpointing, set_paradigm
from mcmdpo.method.model.template import IMAGE_TOKEN
from mcmdpo.method.model.tiny import build_processor, build_tokenizer

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
TEXTS = [
    "Given an image and context, generate alt-text for the image.\nContext:\n",
    "Our new sign is finally up! Counting practice: how many stars? Minimal art for the hall.",
]


@dataclass(frozen=True)
class Geometry:
    """Token and pixel proportions of one synthetic preference sample."""

    image_side: int
    patch: int
    prefix: int
    context: int
    answer: int

    @property
    def image_tokens(self) -> int:
        return (self.image_side // self.patch) ** 2


LLAVA16 = Geometry(image_side=336, patch=14, prefix=35, context=100, answer=20)
TINY = Geometry(image_side=56, patch=14, prefix=12, context=24, answer=8)


@dataclass
class Shape:
    """One model shape of the suite: its config, its geometry and the processor matching both."""

    name: str
    config: LlavaNextConfig
    geometry: Geometry
    processor: Any


# ---------------------------------------------------------------- configs


def tiny_text_vision(geometry: Geometry, hidden: int = 64) -> tuple[CLIPVisionConfig, LlamaConfig]:
    """Small CLIP + Llama (``hidden`` wide, 4 heads, 2 layers) at ``geometry``'s image size."""
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=geometry.image_side,
        patch_size=geometry.patch,
        projection_dim=32,
    )
    text = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=4096,
    )
    return vision, text


def one_b_text() -> LlamaConfig:
    """A ~1B Llama (hidden 2048, 16 layers, head dim 128): with CLIP ViT-L/14-336, ~1.25B in all."""
    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32064,
        max_position_embeddings=4096,
    )


def make_shape(name: str) -> Shape:
    """``7b``, ``1b`` or ``tiny``: config with the tokenizer's special ids, geometry, processor."""
    geometry = TINY if name == "tiny" else LLAVA16
    tokenizer = build_tokenizer(TEXTS, vocab_size=512)
    processor = build_processor(tokenizer, geometry.image_side, geometry.patch)
    if name == "tiny":
        vision, text = tiny_text_vision(geometry)
    else:
        seven = flops_bench.llava16_7b_config()
        vision = seven.vision_config
        text = seven.text_config if name == "7b" else one_b_text()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text, key, getattr(tokenizer, key))
    text.tie_word_embeddings = False
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=geometry.image_tokens,
        tie_word_embeddings=False,
    )
    return Shape(name, config, geometry, processor)


def build_model(
    config: LlavaNextConfig, device: str, dtype: torch.dtype, checkpointing: bool, seed: int = 0
) -> PreTrainedModel:
    """Random initialisation directly on ``device``; vision tower trained (P4), sdpa attention."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration._from_config(
            config, attn_implementation="sdpa", dtype=dtype
        )
    set_paradigm(model, train_vision_tower=True)
    set_gradient_checkpointing(model, checkpointing)
    return model.train()


def synthetic_batch(
    n: int, geometry: Geometry, vocab: int, seed: int, image_id: int, jitter: int = 0
) -> list[PreferenceTokens]:
    """Random token ids and pixels with the geometry's lengths (``jitter`` shortens later samples,
    so rows are padded); the image token id never appears in the text."""
    gen = torch.Generator().manual_seed(seed)

    def ids(length: int) -> tuple[int, ...]:
        values = torch.randint(5, vocab, (length,), generator=gen)
        return tuple(values.masked_fill(values == image_id, 5).tolist())

    def pixels() -> torch.Tensor:
        return torch.randn(1, 3, geometry.image_side, geometry.image_side, generator=gen)

    side = (geometry.image_side, geometry.image_side)
    g = geometry
    return [
        PreferenceTokens(
            prefix=ids(g.prefix),
            context_w=ids(g.context - i * jitter),
            context_l=ids(g.context - 2 * i * jitter),
            answer_w=ids(g.answer - i * jitter // 2),
            answer_l=ids(g.answer),
            pixels_w=pixels(),
            pixels_l=pixels(),
            image_size_w=side,
            image_size_l=side,
            image_tokens_w=g.image_tokens,
            image_tokens_l=g.image_tokens,
        )
        for i in range(n)
    ]


def input_tokens(
    batch: Sequence[PreferenceTokens], engine: str, conditions: Sequence[str], image_id: int
) -> int:
    """Tokens fed to the language model (padding excluded) for one pass over ``batch``."""
    if engine == "shared":
        return sum(len(build_tree_row(s, conditions, image_id).ids) for s in batch)
    total = 0
    for s in batch:
        for name in conditions:
            m, c, y = parse_condition(name)
            total += len(s.prefix) + s.image(m)[2] + len(s.context(c)) + len(s.answer(y))
    return total


def parameter_count(model: PreTrainedModel, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


# ---------------------------------------------------------------- timing and memory


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds of ``fn``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_times(
    parts: dict[str, Callable[[], Any]], device: str, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds of each thunk over ``repeats`` rounds after ``warmup`` untimed rounds (the thunks
    interleaved so that clock and load changes hit them alike)."""
    times: dict[str, list[float]] = {part: [] for part in parts}
    for i in range(warmup + repeats):
        for part, fn in parts.items():
            seconds = timed(fn, device)
            if i >= warmup:
                times[part].append(seconds)
    return {part: statistics.median(values) for part, values in times.items()}


def reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    """Peak allocated device memory since the last reset, GiB (None off CUDA)."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else device


def peak_tflops(device: str, override: float | None) -> float | None:
    """Dense bf16 peak of the GPU (by name), or ``override``; None when unknown (no MFU)."""
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def count_step_flops(
    config: LlavaNextConfig, batch: Sequence[PreferenceTokens], steps: dict[str, tuple]
) -> dict[str, dict[str, float]]:
    """FLOPs of the policy and reference parts of each step, counted on the meta device (attention
    dense: a tree row's masked tiles count too, so MFU is per model FLOP of the SDPA formulation)."""
    model = flops_bench.meta_model(config)
    counted: dict[tuple, dict[str, float]] = {}  # flex and sdpa rows share one count
    with flops_bench.meta_friendly_masks():
        for engine, conditions, *_rest in steps.values():
            if (engine, conditions) not in counted:
                parts = flops_bench.step_parts(model, batch, engine, conditions, "sdpa")
                counted[engine, conditions] = {p: float(flops_bench.count_flops(f)) for p, f in parts.items()}
    return {name: counted[engine, conditions] for name, (engine, conditions, *_rest) in steps.items()}
