"""Benchmark the training stages on the tiny model on CPU: steps/s, samples/s and the share of step
time spent outside forward/backward/update (data loading: HDF5 reads + tokenisation + collation,
the per-step all-reduce of metrics and stop flags, logging).

One run, one temporary run dir: data -> model -> precompute -> reference in-process, then SFT and
MCM-DPO with 1 and 2 ranks through the local executor (real processes; ZeRO-2, fp32, global batch 8,
no periodic checkpoints), side by side on the same shards. Per step, from the metrics JSONL:

    wall     = time between consecutive metric lines (includes logging and the metric all-reduce)
    compute  = forward + backward (this rank)          update = optimizer step (DeepSpeed)
    sync     = the step-boundary all-reduce (metrics + stop flags; with 2 ranks it also waits for
               the slower rank, i.e. load imbalance, reported separately)
    outside  = wall - compute - update - sync           (target: <= 10% of wall)

Data loading runs one step ahead on a background thread; its cost without that overlap is measured
separately (in-process, same objective code) and printed as "data (no prefetch)". The first
``--warmup`` steps are not counted. Ends with one JSON line.

    python bench/train_step.py              # ~2-3 minutes on 2 shared cores
    python bench/train_step.py --steps 80
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcmdpo.batch.launch import submit  # noqa: E402
from mcmdpo.batch.plan import build_plan  # noqa: E402
from mcmdpo.batch.recipe import load_recipe  # noqa: E402

BASE = """\
[run]
name = "bench"
output_root = "{root}"

[data]
num_train = 64
num_test = 4

[model]

[precompute]
samples_per_shard = 32

[reference]
batch_size = 8
"""

TRAIN = """\
[{stage}]
max_steps = {steps}
epochs = 100
global_batch_size = 8
micro_batch_size = {micro}
lr = 1e-4
precision = "fp32"
gradient_checkpointing = false
checkpoint_every_minutes = 1000.0
log_every_steps = 1000
deepspeed = {{ zero_optimization = {{ stage = 2 }} }}
[cluster.resources.{stage}]
tasks_per_node = {ranks}
cpus_per_task = {cpus}
"""

CONFIGS = (("sft", 1, 4), ("sft", 2, 4), ("preference", 1, 2), ("preference", 2, 2))


def write(root: Path, name: str, *sections: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(BASE.format(root=root / "runs") + "\n".join(sections))
    return path


def train(base: Path, stage: str, ranks: int, micro: int, steps: int) -> Path:
    """Run one training config through the local executor in a copy of the base run; return its task
    folder (a copy: the world size is not part of a task id, so the configs must not share a run dir)."""
    root = base.parent / f"{stage}{ranks}"
    shutil.copytree(base / "runs", root / "runs", symlinks=True)
    section = TRAIN.format(stage=stage, steps=steps, micro=micro, ranks=ranks, cpus=2 // ranks)
    path = write(root, "train", section)
    recipe = load_recipe(path)
    report = submit(recipe)
    if not report.ok:
        raise RuntimeError(f"{stage} with {ranks} ranks failed: {report.blocked_by}")
    (task,) = build_plan(recipe).stage(stage).tasks
    return recipe.run_dir / stage / task.task_id


def step_figures(task: Path, warmup: int) -> dict[str, float]:
    """Medians over the counted steps (rank 0's view) and the overall rates."""
    rows = [json.loads(line) for line in (task / "metrics.jsonl").read_text().splitlines()]
    walls = [b["time"] - a["time"] for a, b in zip(rows, rows[1:], strict=False)][warmup:]
    counted = rows[warmup + 1 :]
    compute = [r["compute_s"] for r in counted]
    update = [r["update_s"] for r in counted]
    sync = [r["sync_s"] for r in counted]
    data = [r["data_s"] for r in counted]
    outside = [w - c - u - s for w, c, u, s in zip(walls, compute, update, sync, strict=True)]
    total = sum(walls)
    return {
        "steps_per_s": len(walls) / total,
        "samples_per_s": (counted[-1]["samples"] - rows[warmup]["samples"]) / total,
        "wall_ms": 1e3 * statistics.median(walls),
        "compute_ms": 1e3 * statistics.median(compute),
        "update_ms": 1e3 * statistics.median(update),
        "sync_ms": 1e3 * statistics.median(sync),
        "data_wait_ms": 1e3 * statistics.median(data),
        "sync_share": sum(sync) / total,
        "outside_share": sum(outside) / total,
    }


def data_cost(run_dir: Path, stage: str, steps: int) -> float:
    """ms to load one step's 8 samples on the calling thread (no prefetch): shards, tokens, collation."""
    import numpy as np
    from transformers.utils import logging as hf_logging

    from mcmdpo.method.data.reference_logprobs import ReferenceLogprobs
    from mcmdpo.method.data.shards import PreferenceShards
    from mcmdpo.method.model import load_llava
    from mcmdpo.method.train.objectives import (
        OfflineReference,
        PreferenceObjective,
        SampleSource,
        SftObjective,
    )
    from mcmdpo.method.train.spec import LossSpec

    hf_logging.disable_progress_bar()
    shards = PreferenceShards(sorted(run_dir.glob("precompute/*/*.h5")))
    model, processor = load_llava(next(run_dir.glob("model/*/model")))
    source = SampleSource(shards, processor, "pad")
    if stage == "sft":
        objective: Any = SftObjective(source, 2048, 0, int(model.config.image_token_id))
    else:
        table = ReferenceLogprobs(sorted(run_dir.glob("reference/*/logprobs.h5")))
        loss = LossSpec()
        objective = PreferenceObjective(
            source, loss, OfflineReference(table, table.conditions), "shared", 2048
        )
    order = np.random.default_rng(0).permutation(len(shards))
    objective.load(order[:8])  # first use tokenises; later epochs hit the cache, as in training
    started = time.perf_counter()
    for k in range(steps):
        objective.load(order[(8 * k) % 56 : (8 * k) % 56 + 8])
    return 1e3 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per config")
    parser.add_argument("--warmup", type=int, default=5, help="first steps not counted")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp) / "base"
        root.mkdir()
        submit(load_recipe(write(root, "base", '[cluster]\nexecutor = "debug"\n')))
        run_dir = root / "runs" / "bench"
        print(
            f"{'config':<16}{'steps/s':>9}{'samples/s':>11}{'wall ms':>9}{'fwd+bwd':>9}{'update':>8}"
            f"{'sync':>7}{'data wait':>11}{'outside':>9}"
        )
        for stage, ranks, micro in CONFIGS:
            figures = step_figures(train(root, stage, ranks, micro, args.steps), args.warmup)
            name = f"{'mcmdpo' if stage == 'preference' else stage}_{ranks}rank"
            results[name] = {k: round(v, 4) for k, v in figures.items()}
            print(
                f"{name:<16}{figures['steps_per_s']:9.2f}{figures['samples_per_s']:11.1f}"
                f"{figures['wall_ms']:9.1f}{figures['compute_ms']:9.1f}{figures['update_ms']:8.1f}"
                f"{figures['sync_ms']:7.1f}"
                f"{figures['data_wait_ms']:11.2f}{100 * figures['outside_share']:8.1f}%"
            )
        for stage in ("sft", "preference"):
            name = "mcmdpo" if stage == "preference" else stage
            cost = results[name + "_data_no_prefetch_ms"] = round(data_cost(run_dir, stage, 20), 2)
            print(f"{name} data (no prefetch): {cost:.2f} ms per step of 8 samples")
    worst = max(v["outside_share"] for v in results.values() if isinstance(v, dict))
    for name in ("sft", "mcmdpo"):
        results[f"{name}_2rank_vs_1rank_steps"] = round(
            results[f"{name}_2rank"]["steps_per_s"] / results[f"{name}_1rank"]["steps_per_s"], 3
        )
    print(f"largest share outside forward/backward/update/sync: {100 * worst:.1f}% (target <= 10%)")
    summary = {"bench": "train_step", "steps": args.steps, "warmup": args.warmup, "zero_stage": 2}
    print(
        json.dumps({**summary, **results, "max_outside_share": round(worst, 4), "target_outside_share": 0.10})
    )


if __name__ == "__main__":
    main()
