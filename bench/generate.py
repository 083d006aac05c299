"""Benchmark: tokens/s of the eval stage's batched generation vs batch size 1 (upstream's loop).

The upstream inference script generates one item at a time. The eval stage left-pads a batch of
prompts and runs one ``generate`` call (KV cache, greedy) per batch. Both are measured side by side
here, in one process, on the tiny LLaVA-NeXT (the same factory the tests use) on CPU, over the same
items; generation stops at ``max_new_tokens`` or EOS, and only generated tokens are counted. The
batched responses are checked to equal the one-by-one responses.

Run: ``python bench/generate.py`` (about a minute on 2 cores). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.utils import logging as hf_logging

from mcmdpo.evaluation.benchmarks import Item
from mcmdpo.evaluation.generate import GenerationConfig, load_generator
from mcmdpo.method.model import build_tiny_llava

QUESTION = "Given an image and context, generate alt-text for the image.\nContext:\n{post}"
POSTS = ["Our new sign is finally up!", "Counting practice: how many stars?", "Minimal art for the hall."]


def make_items(folder: Path, n: int) -> list[Item]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = folder / f"{i}.png"
        side = (int(rng.integers(200, 500)), int(rng.integers(200, 500)))
        Image.fromarray(rng.integers(0, 256, (side[1], side[0], 3), dtype=np.uint8)).save(path)
        items.append(Item(i, QUESTION.format(post=POSTS[i % len(POSTS)] + " #" * (i % 5)), path))
    return items


def measure(generator, items: list[Item], batch: int) -> tuple[float, int, list[str]]:
    started = time.perf_counter()
    outputs = []
    for start in range(0, len(items), batch):
        outputs += generator.generate(items[start : start + batch])
    seconds = time.perf_counter() - started
    return seconds, sum(n for _, n in outputs), [text for text, _ in outputs]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_llava(folder / "model", [QUESTION, *POSTS], seed=0)
        items = make_items(folder, args.items)
        config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch)
        generator = load_generator(model, config)
        generator.generate(items[:2])  # warm-up (lazy initialisation, allocator)
        one_s, one_tokens, one_text = measure(generator, items, 1)
        batch_s, batch_tokens, batch_text = measure(generator, items, args.batch)
    one_rate, batch_rate = one_tokens / one_s, batch_tokens / batch_s
    print(f"items {args.items}, max_new_tokens {args.max_new_tokens}, tiny model on CPU, greedy")
    print(f"batch size 1 (upstream loop): {one_tokens} tokens in {one_s:.2f} s = {one_rate:.1f} tokens/s")
    print(f"batch size {args.batch} (eval stage): {batch_tokens} tokens in {batch_s:.2f} s", end="")
    print(f" = {batch_rate:.1f} tokens/s")
    result = {
        "items": args.items,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch,
        "tokens_per_s_batch1": round(one_rate, 2),
        "tokens_per_s_batched": round(batch_rate, 2),
        "speedup": round(batch_rate / one_rate, 2),
        "same_responses": one_text == batch_text,
        "target_speedup": 3.0,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
