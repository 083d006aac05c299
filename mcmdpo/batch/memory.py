"""GPU memory per task against the profile's GPUs: the check at validation and the ``--dry-run`` column.

A stage that knows its memory registers ``Stage.memory(spec, doc, world) -> MemoryNeed | None`` (the
method layer computes it; the framework only compares). A GPU task whose need plus
:attr:`MemoryNeed.reserve_gib` exceeds ``gpu_mem_gb`` of its resources (profile ``[kinds.gpu]`` or a
recipe override) is refused when the recipe is validated, in one line naming the knobs that would make
it fit. Profiles without ``gpu_mem_gb`` (CPU machines) are not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MemoryNeed:
    """Planned GPU memory of one task per rank (an estimate of the allocator's peak)."""

    gib: float
    summary: str
    """One line: the parts and whether activations are analytic or measured."""
    field: str
    """The recipe key a refusal points at (its line number is shown)."""
    fixes: Callable[[float], list[str]] = field(default=lambda limit: [], compare=False)
    """``fixes(limit_gib)``: settings that would each make the task fit ``limit_gib``."""
    reserve_gib: float = 1.0
    """Memory the GPU needs besides the allocator's (CUDA context, library workspaces)."""

    def fits(self, gpu_gib: float) -> bool:
        return self.gib + self.reserve_gib <= gpu_gib


MemoryHook = Callable[[Any, Mapping[str, Any], int], "MemoryNeed | None"]


def world_size(resources: Mapping[str, Any]) -> int:
    return int(resources.get("nodes") or 1) * int(resources.get("tasks_per_node") or 1)


def refusal(name: str, need: MemoryNeed, gpu_gib: float, profile: str) -> str:
    """The one-line problem of a task that does not fit."""
    limit = gpu_gib - need.reserve_gib
    fixes = need.fixes(limit)
    hint = f"would fit with {' or '.join(fixes)}" if fixes else (
        "no single knob (micro-batch, checkpointing, ZeRO-3, offload) makes it fit: combine them"
    )  # fmt: skip
    return (
        f"{name} needs {need.gib:.1f} GiB per GPU (+{need.reserve_gib:g} GiB CUDA context) but profile "
        f"{profile!r} has {gpu_gib:g} GiB GPUs: {hint} [{need.summary}]"
    )


def stage_needs(
    hook: MemoryHook | None, spec: Any, doc: Mapping[str, Any], resources: Mapping[str, Any]
) -> MemoryNeed | None:
    """The need of one stage instance, or None (no hook, unknown model, no GPUs in the resources)."""
    if hook is None or not resources.get("gpus_per_node"):
        return None
    return hook(spec, doc, world_size(resources))


def plan_memory(plan: Any, registry: Mapping[str, Any]) -> dict[str, list[tuple[str, MemoryNeed]]]:
    """Per GPU stage of a plan: (sweep point label, need) of each distinct instance."""
    out: dict[str, list[tuple[str, MemoryNeed]]] = {}
    for stage in plan.stages:
        hook = getattr(registry.get(stage.name), "memory", None)
        if hook is None or stage.kind != "gpu":
            continue
        for inst in stage.instances:
            spec = registry[stage.name].spec.model_validate(inst.spec)
            need = stage_needs(hook, spec, inst.recipe, stage.resources)
            if need is not None:
                single = inst.points if len(inst.points) == 1 else []  # shared by points: no label
                label = ", ".join(f"{k}={_short(v)}" for p in single for k, v in p.items())
                out.setdefault(stage.name, []).append((label, need))
    return out


def _short(value: Any) -> str:
    text = str(value.get("train_file", value)) if isinstance(value, Mapping) else str(value)
    return text.rsplit("/", 1)[-1][:40]
