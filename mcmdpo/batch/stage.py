"""The stage registry and what a stage function sees when it runs.

A stage is one file under ``mcmdpo/stages/`` that calls :func:`register` with a :class:`Stage`:
its recipe section's schema (a pydantic model), the stages it runs after, how its section expands
into array tasks, and the function that runs one task. Plugins (and tests) register stages the same
way from any importable module named in ``run.plugins``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import write_json_atomic
from mcmdpo.batch.spec import Spec

PROGRESS = "mcmdpo-progress.json"
"""``.work/mcmdpo-progress.json`` of a running task: ``done``, ``total``, ``unit``, ``time``."""
TaskParams = dict[str, Any]
"""JSON-serialisable parameters of one array task (e.g. ``{"shard": 3, "num_shards": 8}``)."""


class StageSpec(Spec):
    """Base class of every stage's recipe section: frozen, unknown keys are errors."""


def single_task(spec: StageSpec, recipe: Mapping[str, Any]) -> list[TaskParams]:
    """Default array expansion: one task per stage instance."""
    return [{}]


@dataclass(frozen=True)
class Stage:
    """A registered pipeline stage.

    name:    recipe section and run-dir folder name.
    spec:    pydantic model (subclass of :class:`StageSpec`) validating the recipe section.
    run:     ``run(ctx) -> outputs``; outputs are paths (relative to ``ctx.out_dir`` or inside it).
    after:   stages whose outputs this one consumes (used only when they are in the recipe).
    reads:   other top-level recipe sections whose content changes this stage's outputs.
    tasks:   ``tasks(spec, recipe) -> [params, ...]``: the array tasks of one stage instance.
    checkpointable: the stage polls ``ctx.should_checkpoint()`` and saves its own progress; other
             stages are simply restarted from scratch when their job is requeued.
    kind:    resource class used to pick defaults from a cluster profile ("cpu" or "gpu").
    version: bump when the stage's code changes its outputs: new task ids, nothing reused.
    implied_by: sections that bring this stage along with its default spec when the recipe has
             no section of its own (e.g. scoring runs wherever evaluation does); ``section.field``
             brings it along when that field of the section is true (``report.representations``).
    consumes: ``consumes(params, upstream_stage, upstream_params) -> bool``: which tasks of the
             consumed instances one task reads (default: all). With it (or ``key``), a task's id
             hashes the ids of the tasks it reads instead of its instance's, so sweep points that
             share those inputs share the task (the base model is evaluated once per sweep).
    key:     ``key(spec, params, doc) -> JSON``: what decides one task's content (default: its
             section and the sections it reads). Keep it to what the run function uses.
    gather:  one instance for the whole plan, reading every task of the stages it runs after across
             all sweep points (a report over every point); its section cannot be swept.
    resolve: ``resolve(spec, doc) -> spec``: fills values that depend on other sections (e.g.
             ``precompute.strategy = "auto"``) when the recipe (and every sweep point) is validated,
             so the resolved value is what the recipe, the plan and the task ids carry.
    uses:    ``uses(spec, doc) -> stages``: the stages of ``after`` that this configuration reads
             (default: all of them). A stage whose inputs depend on its settings declares them here
             (``[sft] data = "files"`` reads ``sft_data``, not ``precompute``), so that sweep points
             over stages it does not read share its instance.
    stale:   ``stale(task_dir, manifest) -> message | None``: whether a finished task's sources
             changed since it ran (a data file edited in place); a re-submit stops with the
             message, one line, before anything is queued.
    task_resources: ``task_resources(spec, params, resources) -> overrides``: resources one task
             needs beyond the stage's (e.g. more GPUs for a bigger model), given the stage's resolved
             resources; ``{}`` when they fit. Raise a ``ConfigError`` to refuse (at validation).
             Tasks with different overrides are submitted as separate arrays.
    memory:  ``memory(spec, doc, world) -> MemoryNeed | None``: the GPU memory of one task on a rank
             of a ``world``-rank job (:mod:`mcmdpo.batch.memory`); checked against the profile's
             ``gpu_mem_gb`` at validation and shown by ``--dry-run``.
    """

    name: str
    spec: type[StageSpec]
    run: Callable[[TaskContext], Sequence[str | Path] | None]
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    tasks: Callable[[Any, Mapping[str, Any]], list[TaskParams]] = single_task
    checkpointable: bool = False
    kind: str = "cpu"
    version: int = 1
    implied_by: tuple[str, ...] = ()
    consumes: Callable[[TaskParams, str, TaskParams], bool] | None = None
    key: Callable[[Any, TaskParams, Mapping[str, Any]], Any] | None = None
    gather: bool = False
    resolve: Callable[[Any, Mapping[str, Any]], Any] | None = None
    uses: Callable[[Any, Mapping[str, Any]], Sequence[str]] | None = None
    stale: Callable[[Path, Mapping[str, Any]], str | None] | None = None
    task_resources: Callable[[Any, TaskParams, Mapping[str, Any]], Mapping[str, Any]] | None = None

    def resources_of(self, spec: Any, params: TaskParams, resources: Mapping[str, Any]) -> dict[str, Any]:
        """The resource overrides of one task (``{}``: the stage's resources)."""
        return dict(self.task_resources(spec, params, resources)) if self.task_resources else {}

    memory: Callable[[Any, Mapping[str, Any], int], Any] | None = None

    def used(self, spec: Any, doc: Mapping[str, Any]) -> tuple[str, ...]:
        """The stages of ``after`` read by this configuration (present in ``doc`` or not)."""
        names = self.after if self.uses is None else tuple(self.uses(spec, doc))
        return tuple(d for d in self.after if d in names)

    @property
    def task_level(self) -> bool:
        """True when task ids are computed per task (``consumes`` or ``key``)."""
        return self.consumes is not None or self.key is not None


_REGISTRY: dict[str, Stage] = {}

STAGE_ENTRY_POINTS = "mcmdpo.stages"
"""Entry point group naming the modules that register the built-in stages (``pyproject.toml``);
plugins named in ``run.plugins`` register after them."""


def builtin_modules() -> tuple[str, ...]:
    """The modules of the installed stage entry points (an uninstalled toolkit has none: an error)."""
    found = tuple(ep.value for ep in importlib.metadata.entry_points(group=STAGE_ENTRY_POINTS))
    if not found:
        raise RuntimeError(
            f"no stages are registered (entry point group {STAGE_ENTRY_POINTS!r}): install the toolkit "
            "with `pip install -e .` (tools/setup.sh does)"
        )
    return found


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (idempotent for the same object; a different one is an error)."""
    if not (isinstance(stage.spec, type) and issubclass(stage.spec, Spec)):
        raise TypeError(f"stage {stage.name!r}: its spec {stage.spec!r} does not derive from batch.spec.Spec")
    known = _REGISTRY.get(stage.name)
    if known is not None and known.run is not stage.run:
        raise ValueError(f"stage {stage.name!r} is already registered by {known.run.__module__}")
    _REGISTRY[stage.name] = stage
    return stage


def load_plugins(modules: Sequence[str] = ()) -> dict[str, Stage]:
    """Import the built-in stages and ``modules`` (which register theirs); return the registry.

    Plugin modules are looked up from the current directory too, as ``python -m`` would (jobs start
    in the directory `mcmdpo submit` ran in).
    """
    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in (*builtin_modules(), *modules):
        importlib.import_module(name)
    return dict(_REGISTRY)


def registered() -> tuple[str, ...]:
    """The names of the stages registered so far."""
    return tuple(_REGISTRY)


def get_stage(name: str) -> Stage:
    return _REGISTRY[name]


class Interrupted(Exception):
    """Raised by a stage after it saved its progress on request: the job is requeued and resumes."""


@dataclass(frozen=True)
class TaskInput:
    """One finished upstream task: its folder and the outputs its DONE manifest lists."""

    stage: str
    task_id: str
    dir: Path
    params: TaskParams
    outputs: tuple[Path, ...]


class _StopFlag:
    """Set from a signal handler; read at safe points by the stage (never save inside the handler)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self, signum: int | None = None, frame: Any = None) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()


STOP = _StopFlag()


@dataclass
class TaskContext:
    """Everything one array task needs; built by the runtime inside the job."""

    stage: str
    task_id: str
    index: int
    params: TaskParams
    spec: Any
    recipe: Mapping[str, Any]
    seed: int
    run_dir: Path
    out_dir: Path
    work_dir: Path
    inputs: Mapping[str, list[TaskInput]] = field(default_factory=dict)
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mcmdpo.task"))
    attempt: int = 0
    """0 on the first start of this task, n after n earlier starts (requeues, re-submits)."""
    _progress_at: float = field(default=0.0, repr=False)

    def progress(self, done: int, total: int | None = None, unit: str = "items") -> None:
        """Report how far the task is (``.work/mcmdpo-progress.json``; rank 0; at most once a second, and
        always at the end): what ``mcmdpo submit`` and ``mcmdpo status`` show for a running task."""
        now = time.time()
        if self.rank != 0 or (now - self._progress_at < 1.0 and done != total):
            return
        self._progress_at = now
        record = {
            "done": int(done),
            "total": None if total is None else int(total),
            "unit": unit,
            "time": now,
        }
        write_json_atomic(self.work_dir / PROGRESS, record)

    summary: dict[str, Any] = field(default_factory=dict)
    """Small JSON facts for the DONE manifest; numbers are summed per stage by `mcmdpo status`."""

    def should_checkpoint(self) -> bool:
        """True once the scheduler asked this job to stop (USR2 before a time limit or preemption).

        Only this process's flag; multi-rank stages combine it across ranks at a step boundary
        (e.g. an all-reduce of the flag) so that every rank saves at the same step.
        """
        return STOP.is_set()

    def input_dirs(self, stage: str) -> list[Path]:
        return [t.dir for t in self.inputs.get(stage, [])]

    def interrupted(self) -> Interrupted:
        """The exception to raise after saving progress: ``raise ctx.interrupted()``."""
        return Interrupted(f"{self.stage}/{self.task_id} saved its progress and asks to be requeued")


def install_stop_handler() -> Any:
    """Route USR2 to the stop flag; return the previous handler (submitit's requeue handler)."""
    return signal.signal(signal.SIGUSR2, STOP.set)
