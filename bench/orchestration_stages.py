"""Five chained no-op stages for bench/orchestration.py (plugin: bench.orchestration_stages)."""

from __future__ import annotations

from pydantic import Field

from mcmdpo.batch.artifacts import write_json_atomic
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register


class NoopSpec(StageSpec):
    tasks: int = Field(64, ge=1, description="array tasks of this stage")


def noop_tasks(spec: NoopSpec, recipe: dict) -> list[dict]:
    return [{"i": i} for i in range(spec.tasks)]


def run_noop(ctx: TaskContext) -> list[str]:
    write_json_atomic(ctx.out_dir / "out.json", {"i": ctx.params["i"], "inputs": len(ctx.inputs)})
    return ["out.json"]


for _i in range(1, 6):
    register(
        Stage(f"noop{_i}", NoopSpec, run_noop, after=(f"noop{_i - 1}",) if _i > 1 else (), tasks=noop_tasks)
    )
