"""Recipe -> DAG of stages -> array tasks with content-hash ids. Pure and deterministic.

A *stage instance* is one distinct configuration of a stage: its own section, the sections it reads,
the run seed, the stage's code version and the instances it consumes. Sweep points that agree on all
of these share the instance (a gamma sweep trains three policies on one SFT model). An instance
expands into array tasks (its ``tasks()``), each with id = hash(instance id, task params): changing a
stage's spec changes its ids and those of everything downstream, and never touches older results.

Stages with a ``consumes`` filter or a ``key`` (``Stage.task_level``) hash per task instead: what
decides the task's content (``key``), the ids of the upstream tasks it reads, the seed and its
params. Instances of such a stage then share the tasks whose inputs agree: with a gamma sweep the
base and SFT models are evaluated once, only the preference models once per point. Every task lists
the upstream task ids it reads (``inputs``); a stage's ``tasks`` are the distinct tasks of all its
instances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import content_hash, read_json
from mcmdpo.batch.errors import ConfigError, MissingInput, StateError
from mcmdpo.batch.paths import RunPaths
from mcmdpo.batch.recipe import Recipe, profiles
from mcmdpo.batch.recipe.schema import ResourceSpec
from mcmdpo.batch.stage import Stage, load_plugins

PLAN_VERSION = 1


@dataclass(frozen=True)
class PlannedTask:
    stage: str
    task_id: str
    instance: str
    index: int
    params: dict[str, Any]
    inputs: dict[str, list[str]] = field(default_factory=dict)
    """Upstream stage -> the ids of the tasks this one reads, in their task order."""
    resources: dict[str, Any] = field(default_factory=dict)
    """Overrides of the stage's resources for this task (``Stage.task_resources``); not in its id."""

    def resources_in(self, stage: PlannedStage) -> dict[str, Any]:
        """The stage's resources with this task's overrides."""
        return {**stage.resources, **self.resources}


@dataclass(frozen=True)
class PlannedInstance:
    stage: str
    instance_id: str
    spec: dict[str, Any]
    recipe: dict[str, Any]
    upstream: dict[str, str]
    points: list[dict[str, Any]]
    tasks: list[PlannedTask]


@dataclass(frozen=True)
class PlannedStage:
    name: str
    kind: str
    checkpointable: bool
    after: list[str]
    resources: dict[str, Any]
    instances: list[PlannedInstance] = field(default_factory=list)

    @property
    def tasks(self) -> list[PlannedTask]:
        """The distinct tasks of every instance (a task shared by instances appears once)."""
        unique = {t.task_id: t for inst in self.instances for t in inst.tasks}
        return list(unique.values())


@dataclass(frozen=True)
class Plan:
    run_name: str
    run_dir: Path
    seed: int
    plugins: list[str]
    executor: str
    stages: list[PlannedStage]
    version: int = PLAN_VERSION

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    def stage(self, name: str) -> PlannedStage:
        return next(s for s in self.stages if s.name == name)

    def instance(self, stage: str, instance_id: str) -> PlannedInstance:
        return next(i for i in self.stage(stage).instances if i.instance_id == instance_id)

    def task_points(self, stage: str, task_id: str) -> list[dict[str, Any]]:
        """The sweep points served by a task (all points of every instance that lists it)."""
        points: list[dict[str, Any]] = []
        for inst in self.stage(stage).instances:
            if any(t.task_id == task_id for t in inst.tasks):
                points += [p for p in inst.points if p not in points]
        return points

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        stages = []
        for s in data["stages"]:
            instances = [
                PlannedInstance(**{**i, "tasks": [PlannedTask(**t) for t in i["tasks"]]})
                for i in s["instances"]
            ]
            stages.append(PlannedStage(**{**s, "instances": instances}))
        return cls(**{**data, "run_dir": Path(data["run_dir"]), "stages": stages})


def load_plan(run_dir: Path) -> Plan:
    """The plan of the run in ``run_dir``, with its paths under ``run_dir`` as given: a run dir that
    was moved or copied is read where it is now, never at the path recorded in ``plan.json``."""
    path = RunPaths(Path(run_dir)).plan
    if not path.is_file():
        raise MissingInput(
            f"no plan here; is {run_dir} a run directory (made by `mcmdpo submit`)?", file=path
        )
    try:
        plan = Plan.from_json(read_json(path))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(
            f"not a plan written by mcmdpo ({type(exc).__name__}: {str(exc)[:80]}); is {run_dir} a run "
            "directory of another tool?",
            file=path,
        ) from None
    return replace(plan, run_dir=Path(run_dir).absolute())


def order_stages(registry: Mapping[str, Stage], present: Sequence[str]) -> list[str]:
    """Topological order of the present stages (dependencies first, ties in registry order)."""
    remaining = [name for name in registry if name in present]
    ordered: list[str] = []
    while remaining:
        ready = next(
            (n for n in remaining if all(d in ordered or d not in present for d in registry[n].after)), None
        )
        if ready is None:
            raise ValueError(f"dependency cycle among stages {remaining}")
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


def build_plan(recipe: Recipe) -> Plan:
    """Expand every sweep point of ``recipe`` into stage instances and array tasks."""
    registry = load_plugins(recipe.run.plugins)
    variants = recipe.variants or (recipe,)
    names = order_stages(registry, list(recipe.stages))
    stages = {
        n: PlannedStage(
            name=n,
            kind=registry[n].kind,
            checkpointable=registry[n].checkpointable,
            after=_after(registry[n], variants),
            resources=_resources(recipe, n, registry[n].kind),
        )
        for n in names
    }
    for variant in variants:
        chosen: dict[str, PlannedInstance] = {}
        for name in names:
            if registry[name].gather:
                continue
            used = registry[name].used(variant.stages[name], variant.doc)
            upstream = {d: chosen[d] for d in used if d in chosen}
            inst = _instance(registry[name], variant, upstream, stages[name])
            known = next((i for i in stages[name].instances if i.instance_id == inst.instance_id), None)
            if known is None:
                stages[name].instances.append(inst)
            elif variant.point not in known.points:
                known.points.append(variant.point)
            chosen[name] = known or inst
    for name in names:
        if registry[name].gather:
            stages[name].instances.append(_gathering(registry[name], recipe, variants, stages))
    return Plan(
        run_name=recipe.run.name,
        run_dir=recipe.run_dir,
        seed=recipe.run.seed,
        plugins=list(recipe.run.plugins),
        executor=recipe.cluster.executor,
        stages=[stages[n] for n in names],
    )


def _after(stage: Stage, variants: Sequence[Recipe]) -> list[str]:
    """The stages this one runs after in some sweep point: present and read (``Stage.uses``)."""
    used = {d for v in variants for d in stage.used(v.stages[stage.name], v.doc) if d in v.stages}
    return [d for d in stage.after if d in used]


def _instance(
    stage: Stage, variant: Recipe, upstream: dict[str, PlannedInstance], planned: PlannedStage
) -> PlannedInstance:
    doc = variant.doc
    key = {
        "stage": stage.name,
        "version": stage.version,
        "spec": doc[stage.name],
        "reads": {r: doc.get(r) for r in stage.reads},
        "seed": variant.run.seed,
        "upstream": {s: inst.instance_id for s, inst in upstream.items()},
    }
    instance_id = content_hash(key)
    known = {t.task_id: t for t in planned.tasks}
    tasks = []
    for index, params in enumerate(stage.tasks(variant.stages[stage.name], doc)):
        inputs = _inputs(stage, params, upstream)
        if stage.task_level:
            task_id = content_hash(_task_key(stage, variant, params, inputs))
        else:
            task_id = content_hash({"instance": instance_id, "params": params})
        resources = stage.resources_of(variant.stages[stage.name], params, planned.resources)
        tasks.append(
            known.get(task_id)
            or PlannedTask(stage.name, task_id, instance_id, index, params, inputs, resources)
        )
    if len({t.task_id for t in tasks}) != len(tasks):
        raise ValueError(f"stage {stage.name}: tasks() returned repeated params")
    return PlannedInstance(
        stage.name, instance_id, doc[stage.name], dict(doc), key["upstream"], [variant.point], tasks
    )


def _gathering(
    stage: Stage, recipe: Recipe, variants: Sequence[Recipe], stages: Mapping[str, PlannedStage]
) -> PlannedInstance:
    """The one instance of a gathering stage: it reads every task of its upstream stages."""
    if any(v.doc[stage.name] != recipe.doc[stage.name] for v in variants):
        raise ConfigError(f"[{stage.name}] reads every sweep point: its own fields cannot be swept")
    upstream = {d: _Union(stages[d]) for d in stages[stage.name].after}
    inst = _instance(stage, recipe, upstream, stages[stage.name])  # type: ignore[arg-type]
    points = [v.point for v in variants]
    return PlannedInstance(
        inst.stage, inst.instance_id, inst.spec, inst.recipe, inst.upstream, points, inst.tasks
    )


@dataclass(frozen=True)
class _Union:
    """Every instance of a stage seen as one (what a gathering stage consumes)."""

    planned: PlannedStage

    @property
    def instance_id(self) -> str:
        return content_hash(sorted(i.instance_id for i in self.planned.instances))

    @property
    def tasks(self) -> list[PlannedTask]:
        return self.planned.tasks


def _inputs(
    stage: Stage, params: dict[str, Any], upstream: dict[str, PlannedInstance]
) -> dict[str, list[str]]:
    """The upstream task ids one task reads (all of its instance's upstream, or the ``consumes`` ones)."""
    pick = stage.consumes or (lambda _params, _stage, _upstream: True)
    inputs = {s: [t.task_id for t in inst.tasks if pick(params, s, t.params)] for s, inst in upstream.items()}
    return {s: ids for s, ids in inputs.items() if ids or stage.consumes is None}


def _task_key(stage: Stage, variant: Recipe, params: dict[str, Any], inputs: dict[str, list[str]]) -> Any:
    doc = variant.doc
    content = (
        stage.key(variant.stages[stage.name], params, doc)
        if stage.key is not None
        else {"spec": doc[stage.name], "reads": {r: doc.get(r) for r in stage.reads}}
    )
    return {
        "stage": stage.name,
        "version": stage.version,
        "key": content,
        "seed": variant.run.seed,
        "inputs": inputs,
        "params": params,
    }


def _resources(recipe: Recipe, stage: str, kind: str) -> dict[str, Any]:
    spec: ResourceSpec = profiles.resolve_resources(recipe.profile, recipe.cluster.resources, stage, kind)
    return spec.model_dump()
