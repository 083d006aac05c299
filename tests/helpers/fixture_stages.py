"""Small real stages registered by tests; recipes name them as
run.plugins = ["tests.helpers.fixture_stages"]."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import Field

from mcmdpo.batch.artifacts import atomic_path, read_json, write_json_atomic
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.llm import LLMSpec


class CountSpec(StageSpec):
    shards: int = Field(1, ge=1)
    steps: int = Field(5, ge=1)
    step_s: float = Field(0.0, ge=0)
    fail_index: int | None = None
    fail_unless: str | None = None  # a path: the failing task succeeds once this file exists
    pad_bytes: int = Field(0, ge=0)  # also write an output of this size (a full disk, in tests)
    llm: LLMSpec | None = None  # an endpoint the task would call (its key variable is checked at submit)


def count_tasks(spec: CountSpec, recipe: dict) -> list[dict]:
    return [{"shard": i} for i in range(spec.shards)]


def run_count(ctx: TaskContext) -> list[str]:
    """Count to `steps`, one step at a time; save progress and ask for requeue when told to stop."""
    spec: CountSpec = ctx.spec
    if spec.fail_index == ctx.index and not (spec.fail_unless and Path(spec.fail_unless).exists()):
        print("about to fail on purpose", flush=True)
        raise RuntimeError(f"shard {ctx.index} fails on purpose")
    progress_file = ctx.work_dir / "progress.json"
    progress = read_json(progress_file) if progress_file.exists() else {"step": 0, "attempts": []}
    progress["attempts"].append(progress["step"])
    while progress["step"] < spec.steps:
        time.sleep(spec.step_s)
        progress["step"] += 1
        ctx.progress(progress["step"], spec.steps, "steps")
        if ctx.should_checkpoint() and progress["step"] < spec.steps:
            write_json_atomic(progress_file, progress)
            raise ctx.interrupted()
    out = {
        "shard": ctx.params["shard"],
        "steps": progress["step"],
        "attempts": progress["attempts"],
        "pid": os.getpid(),
        "restart_count": os.environ.get("SLURM_RESTART_COUNT"),
    }
    write_json_atomic(ctx.out_dir / "result.json", out)
    if spec.pad_bytes:
        with atomic_path(ctx.out_dir / "pad.bin") as tmp:  # as real stages write: nothing partial left
            tmp.write_bytes(b"\0" * spec.pad_bytes)
        return ["result.json", "pad.bin"]
    return ["result.json"]


class SumSpec(StageSpec):
    scale: int = 1


def run_sum(ctx: TaskContext) -> list[str]:
    total = 0
    for task in ctx.inputs["count"]:
        total += json.loads((task.dir / "result.json").read_text())["steps"] * ctx.spec.scale
    write_json_atomic(ctx.out_dir / "total.json", {"total": total, "inputs": len(ctx.inputs["count"])})
    return ["total.json"]


class ReduceSpec(StageSpec):
    value: float = 1.0


def run_reduce(ctx: TaskContext) -> list[str]:
    """All-reduce (rank + 1) * value over gloo across the job's tasks."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        t = torch.tensor([(dist.get_rank() + 1) * ctx.spec.value])
        dist.all_reduce(t)
        env = {
            k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        }
        if ctx.rank == 0:
            write_json_atomic(ctx.out_dir / "reduce.json", {"sum": t.item(), "env": env})
    finally:
        dist.destroy_process_group()
    return ["reduce.json"] if ctx.rank == 0 else []


COUNT = register(Stage("count", CountSpec, run_count, tasks=count_tasks, checkpointable=True))
SUM = register(Stage("sum", SumSpec, run_sum, after=("count",)))
REDUCE = register(Stage("reduce", ReduceSpec, run_reduce))
