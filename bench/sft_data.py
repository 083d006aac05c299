"""Benchmark the SFT data path (encoded images in sft_data shards, decoded in DataLoader workers)
against the preprocessed-HDF5 path (precompute shards), on generated 1024x768 JPEGs, pad mode, 336.

Prints:
  1. bytes stored per sample: sft_data shard with ``store = "bytes"`` and ``"paths"``, vs a precompute
     shard (float16 pixels of the chosen and the rejected image) and the chosen tensor alone
     (3 x 336 x 336 x 2 bytes, what an SFT-only preprocessed store would hold);
  2. images/s of one worker: decode + preprocess from the shard's bytes (what each DataLoader worker
     does, ``ConversationSource.image``), and reading a preprocessed tensor from a precompute shard;
  3. images/s of the trainer's DataLoader (``WorkerLoader``, tokenising too) with 1 and 2 workers;
  4. the 202K-sample SFT set extrapolated: storage of both paths, worker-hours of decoding per epoch;
and ends with one JSON line.

    python bench/sft_data.py            # 120 images (about a minute on 2 shared cores)
    python bench/sft_data.py --n 400
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.precompute import bench_full, make_images  # noqa: E402
from mcmdpo.method.data.sft_shards import SftShards, SftShardWriter, SftSource, build_sft_shard  # noqa: E402

SFT_SET = 202_793  # PAlt 101,715 + TAlt 101,078 (paper Table 1)
SIDE = 336


def build(train: Path, images: Path, out: Path, store: str) -> tuple[SftShards, float]:
    """One sft_data shard of every record; returns it and its bytes per sample."""
    writer = SftShardWriter(out)
    report = build_sft_shard([SftSource("bench", train, images)], 0, 1, writer, store=store)
    writer.close()
    return SftShards([out]), out.stat().st_size / report["num_samples"]


def tiny_processor(folder: Path):  # noqa: ANN201 - a transformers processor
    """A processor with LLaVA-1.6's 336 crop (tiny weights: only the processor is used)."""
    from mcmdpo.method.model import build_tiny_llava
    from mcmdpo.method.model.load import load_llava

    path = build_tiny_llava(folder, ["a scene with shapes"], image_size=SIDE, patch_size=14, hidden_size=32)
    return load_llava(path)


def per_worker(source, indices) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for i in indices:
        source.image(i, "chosen")
    return len(indices) / (time.perf_counter() - start)


def loader_rate(source, image_token_id: int, workers: int) -> float:  # noqa: ANN001
    """Samples/s through the trainer's WorkerLoader (micro-batches of 4, one step at a time)."""
    from mcmdpo.method.train.batches import DataOrder, WorkerLoader
    from mcmdpo.method.train.objectives import SftObjective
    from mcmdpo.method.train.spec import BatchLayout

    objective = SftObjective(source, 4096, 0, image_token_id)
    order = DataOrder(len(source), BatchLayout(4, 4, 1, 1), seed=0)
    steps = order.steps_per_epoch
    loader = WorkerLoader(objective.item, objective.collate, order, 0, 0, steps, workers)
    loader.get(0)  # start-up (fork, first batch) not counted
    start = time.perf_counter()
    for step in range(1, steps):
        loader.get(step)
    loader.close()
    return (steps - 1) * 4 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=120, help="images (default 120)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        train = make_images(root / "data", args.n, 1024, 768, seed=0)
        images = root / "data" / "images"
        shards, stored = build(train, images, root / "bytes.h5", "bytes")
        _, path_bytes = build(train, images, root / "paths.h5", "paths")
        _, _, pre = bench_full(train, images, root / "pre", 1, "diffusion")
        pre_bytes = sum(p.stat().st_size for p in pre) / args.n
        model, processor = tiny_processor(root / "model")
        from mcmdpo.method.data.shards import PreferenceShards
        from mcmdpo.method.samples import ConversationSource, SampleSource

        source = ConversationSource(shards, processor, "pad")
        per_worker(source, range(4))  # warm-up
        decode = per_worker(source, range(args.n))
        pre_read = per_worker(SampleSource(PreferenceShards(pre), processor, "pad"), range(args.n))
        loaders = {w: loader_rate(source, model.config.image_token_id, w) for w in (1, 2)}
    chosen = 3 * SIDE * SIDE * 2
    result = {
        "bench": "sft_data",
        "n": args.n,
        "image_size": [1024, 768],
        "bytes_per_sample": {
            "sft_bytes": round(stored),
            "sft_paths": round(path_bytes),
            "precompute_shard": round(pre_bytes),
            "preprocessed_chosen_only": chosen,
        },
        "per_worker_images_per_s": {
            "decode_preprocess": round(decode, 1),
            "preprocessed_read": round(pre_read, 1),
        },
        "dataloader_samples_per_s": {str(w): round(r, 1) for w, r in loaders.items()},
        "sft_set_202k": {
            "gb_bytes": round(SFT_SET * stored / 1e9, 1),
            "gb_preprocessed": round(SFT_SET * chosen / 1e9, 1),
            "worker_hours_per_epoch": round(SFT_SET / decode / 3600, 2),
        },
    }
    report(result)
    print(json.dumps(result))


def report(r: dict) -> None:
    b, w, s = r["bytes_per_sample"], r["per_worker_images_per_s"], r["sft_set_202k"]
    kb = {k: v / 1e3 for k, v in b.items()}
    print(f"bytes/sample: sft_data {kb['sft_bytes']:.0f} KB (bytes), {b['sft_paths']} B (paths)")
    print(f"  precompute shard {kb['precompute_shard']:.0f} KB (chosen + rejected, fp16)")
    print(f"  a preprocessed chosen tensor alone {kb['preprocessed_chosen_only']:.0f} KB")
    print(f"one worker: decode + preprocess {w['decode_preprocess']:.1f} images/s")
    print(f"            preprocessed read {w['preprocessed_read']:.1f} images/s")
    print(f"DataLoader (tokenise + collate too), samples/s by workers: {r['dataloader_samples_per_s']}")
    print(f"202K SFT set: {s['gb_bytes']} GB as bytes vs {s['gb_preprocessed']} GB preprocessed (fp16, pad)")
    print(f"  {s['worker_hours_per_epoch']} worker-hours of decoding per epoch")


if __name__ == "__main__":
    main()
