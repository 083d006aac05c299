"""Find what the ``score``, training, ``represent`` and ``curate_split`` stages wrote in run dirs.

Reads only ``plan.json``, the ``DONE`` manifests of finished tasks, the metrics JSON files (and,
lazily, their ``.samples.jsonl``) listed as outputs of ``score`` tasks, the ``metrics.jsonl`` of
training tasks and the ``funnel.json`` of curation. A metrics file belongs to one *row identity*: the
run, the model and the sweep values that can change that model (a gamma sweep changes the preference
model, not the SFT one), so the base and SFT models scored once per sweep point appear once. Rows
whose recipes differ only in seeds (``run.seed``, ``<stage>.seed``) share a ``group``: the table
shows them as ``mean ± std``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import content_hash, done_or_damaged, read_json
from mcmdpo.curate.outputs import FUNNEL, Funnel, read_funnel
from mcmdpo.method.model.folders import MODEL_STAGES

SCORE_STAGE = "score"
GLOBAL_SECTIONS = ("eval", "score")
"""Sweeping these changes every model's scores."""
IGNORED_RUN_KEYS = ("seed", "name", "output_root", "plugins")


@dataclass(frozen=True)
class MetricsFile:
    """One ``metrics/<model>/<benchmark>.json`` of a finished score task."""

    run: str
    run_dir: Path
    task_id: str
    path: Path
    doc: Mapping[str, Any]
    point: Mapping[str, Any]
    group: str
    seed: int
    recipe: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The resolved recipe of the sweep point that scored it (what ``--paper`` matches settings on)."""

    @property
    def model(self) -> str:
        return str(self.doc["model"])

    @property
    def model_stage(self) -> str:
        return str(self.doc.get("model_stage") or MODEL_STAGES.get(self.model, self.model))

    @property
    def benchmark(self) -> str:
        return str(self.doc["benchmark"])

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def samples_path(self) -> Path | None:
        name = self.doc.get("samples")
        return self.path.parent / name if name else None

    @property
    def predictions_path(self) -> Path:
        """The merged predictions of this (model, benchmark) in its score task's folder."""
        from mcmdpo.evaluation.scoring import predictions_file

        return self.path.parents[2] / predictions_file(self.model, self.benchmark)

    def samples(self) -> list[dict[str, Any]]:
        """Per-item rows (``<benchmark>.samples.jsonl``); ``[]`` when the file is absent."""
        path = self.samples_path
        return list(_read_samples(path)) if path is not None and path.is_file() else []


@dataclass(frozen=True)
class TrainingLog:
    """The per-step ``metrics.jsonl`` of a finished training task (``sft``, ``preference``)."""

    run: str
    stage: str
    task_id: str
    path: Path
    spec: Mapping[str, Any]
    point: Mapping[str, Any]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Collection:
    """Everything the report reads, in run order then plan order."""

    run_dirs: tuple[Path, ...]
    files: list[MetricsFile] = field(default_factory=list)
    training: list[TrainingLog] = field(default_factory=list)
    funnels: list[Funnel] = field(default_factory=list)
    """The funnel of every finished ``curate_split`` task."""
    representations: list[MetricsFile] = field(default_factory=list)
    """Every finished ``represent`` task as a file of its row (path: its ``represent.json``)."""

    @property
    def runs(self) -> list[str]:
        return list(dict.fromkeys(f.run for f in self.files))


@functools.lru_cache(maxsize=256)
def _read_samples(path: Path) -> tuple[dict[str, Any], ...]:
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return tuple(rows)


def collect(run_dirs: Iterable[Path | str], score_tasks: Iterable[str] | None = None) -> Collection:
    """Metrics files and training logs of every finished task in ``run_dirs`` (duplicates dropped).

    ``score_tasks``: only these task ids (score and represent tasks), and only the training tasks
    upstream of them (what the report stage consumes); default: everything finished in the run dirs.
    """
    from mcmdpo.batch.plan import load_plan

    dirs = tuple(dict.fromkeys(Path(d).resolve() for d in run_dirs))
    if not dirs:
        raise ValueError("report: no run directory given")
    only = None if score_tasks is None else set(score_tasks)
    result = Collection(dirs)
    for run_dir in dirs:
        plan = load_plan(run_dir).to_json()
        keep = None if only is None else upstream_instances(plan, only)
        result.files.extend(_dedupe(_metrics_files(run_dir, plan, only)))
        result.training.extend(_training_logs(run_dir, plan, keep))
        result.funnels.extend(collect_funnels(run_dir, plan, keep))
        result.representations.extend(collect_representations(run_dir, plan, keep))
    return result


def upstream_instances(plan: Mapping[str, Any], task_ids: set[str]) -> set[tuple[str, str]]:
    """(stage, instance id) of the instances holding ``task_ids`` and of everything they consume."""
    instances = {(s["name"], i["instance_id"]): i for s in plan["stages"] for i in s["instances"]}
    todo = [k for k, inst in instances.items() if any(t["task_id"] in task_ids for t in inst["tasks"])]
    seen: set[tuple[str, str]] = set()
    while todo:
        key = todo.pop()
        if key not in seen and key in instances:
            seen.add(key)
            todo.extend(instances[key].get("upstream", {}).items())
    return seen


def _stage_ancestors(plan: Mapping[str, Any]) -> dict[str, set[str]]:
    after = {s["name"]: set(s["after"]) for s in plan["stages"]}
    closure: dict[str, set[str]] = {}
    for name in after:  # plan order is topological: parents are done first
        closure[name] = set(after[name]).union(*(closure.get(p, set()) for p in after[name]))
    return closure


def relevant_sections(plan: Mapping[str, Any], model_stage: str) -> set[str]:
    """Recipe sections whose values can change the scores of ``model_stage``'s model."""
    return {model_stage, *GLOBAL_SECTIONS, *_stage_ancestors(plan).get(model_stage, set())}


def restrict_point(points: Sequence[Mapping[str, Any]], sections: set[str]) -> dict[str, Any]:
    """The sweep values of the first point whose section is in ``sections`` (sorted keys)."""
    point = points[0] if points else {}
    return {k: point[k] for k in sorted(point) if k.split(".")[0] in sections}


def seed_free_key(recipe: Mapping[str, Any], sections: set[str], model: str) -> str:
    """Content hash of what decides a model row apart from seeds: the relevant sections without
    ``*.seed`` fields and ``[run]`` without seed / name / output root."""
    doc = {name: _without_seeds(recipe[name]) for name in sorted(sections) if name in recipe}
    run = {k: v for k, v in recipe.get("run", {}).items() if k not in IGNORED_RUN_KEYS}
    return content_hash({"model": model, "run": run, "sections": doc})


def _without_seeds(section: Any) -> Any:
    if isinstance(section, Mapping):
        return {k: _without_seeds(v) for k, v in section.items() if k != "seed"}
    return section


def _metrics_files(run_dir: Path, plan: Mapping[str, Any], only: set[str] | None) -> list[MetricsFile]:
    stage = next((s for s in plan["stages"] if s["name"] == SCORE_STAGE), None)
    if stage is None:
        return []
    out = []
    for inst in stage["instances"]:
        for task in inst["tasks"]:
            if only is not None and task["task_id"] not in only:
                continue
            done, _ = done_or_damaged(run_dir / SCORE_STAGE / task["task_id"] / "DONE")
            for rel in (done or {}).get("outputs", []):
                if rel.startswith("metrics/") and rel.endswith(".json"):
                    out.append(_metrics_file(run_dir, plan, inst, task["task_id"], rel))
    return out


def _metrics_file(
    run_dir: Path,
    plan: Mapping[str, Any],
    inst: Mapping[str, Any],
    task_id: str,
    rel: str,
    stage_name: str = SCORE_STAGE,
) -> MetricsFile:
    path = run_dir / stage_name / task_id / rel
    try:
        doc = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the metrics JSON ({exc})") from None
    for key in ("model", "benchmark", "kind", *(["metrics"] if stage_name == SCORE_STAGE else [])):
        if key not in doc:
            raise ValueError(f"{path}: field {key!r} missing (not a metrics JSON of the score stage?)")
    stage = doc.get("model_stage") or MODEL_STAGES.get(doc["model"], doc["model"])
    sections = relevant_sections(plan, stage)
    recipe = inst.get("recipe", {})
    return MetricsFile(
        run=str(plan.get("run_name", run_dir.name)),
        run_dir=run_dir,
        task_id=task_id,
        path=path,
        doc=doc,
        point=restrict_point(inst.get("points", []), sections),
        group=seed_free_key(recipe, sections, doc["model"]),
        seed=int(recipe.get("run", {}).get("seed", plan.get("seed", 0))),
        recipe=recipe,
    )


def _dedupe(files: list[MetricsFile]) -> list[MetricsFile]:
    """One file per (row, benchmark) in a run: the base/SFT models are scored once per sweep point."""
    seen: dict[tuple[str, str], MetricsFile] = {}
    for f in files:
        seen.setdefault((f.group, f.benchmark), f)
    return list(seen.values())


def finished_tasks(
    run_dir: Path, plan: Mapping[str, Any], keep: set[tuple[str, str]] | None, stage: str | None = None
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any], Path, dict[str, Any]]]:
    """(stage, instance, task folder, DONE manifest) of every finished task of the plan, in plan
    order; ``keep``: only these (stage, instance id); ``stage``: only that stage."""
    for planned in plan["stages"]:
        if stage is not None and planned["name"] != stage:
            continue
        for inst in planned["instances"]:
            if keep is not None and (planned["name"], inst["instance_id"]) not in keep:
                continue
            for task in inst["tasks"]:
                folder = run_dir / planned["name"] / task["task_id"]
                done, _ = done_or_damaged(folder / "DONE")  # damaged: not finished
                if done is not None:
                    yield planned, inst, folder, done


def _training_logs(
    run_dir: Path, plan: Mapping[str, Any], keep: set[tuple[str, str]] | None
) -> list[TrainingLog]:
    logs = []
    for stage, inst, folder, done in finished_tasks(run_dir, plan, keep):
        if "metrics.jsonl" in done.get("outputs", []):
            sections = relevant_sections(plan, stage["name"])
            logs.append(
                TrainingLog(
                    run=str(plan.get("run_name", run_dir.name)),
                    stage=stage["name"],
                    task_id=folder.name,
                    path=folder / "metrics.jsonl",
                    spec=inst.get("spec", {}),
                    point=restrict_point(inst.get("points", []), sections),
                )
            )
    return logs


def collect_representations(
    run_dir: Path, plan: Mapping[str, Any], keep: set[tuple[str, str]] | None = None
) -> list[MetricsFile]:
    """The finished ``represent`` tasks of one run, each as a file of the row of its model."""
    from mcmdpo.evaluation.represent import REPRESENT

    out: dict[str, MetricsFile] = {}
    for _, inst, folder, done in finished_tasks(run_dir, plan, keep, "represent"):
        if REPRESENT in done.get("outputs", []) and folder.name not in out:
            out[folder.name] = _metrics_file(run_dir, plan, inst, folder.name, REPRESENT, "represent")
    return list(out.values())


def collect_funnels(
    run_dir: Path, plan: Mapping[str, Any], keep: set[tuple[str, str]] | None = None
) -> list[Funnel]:
    """Funnels of the finished ``curate_split`` tasks of one run (``keep``: only these instances)."""
    run = str(plan.get("run_name", run_dir.name))
    return [
        Funnel(run, folder.name, folder / FUNNEL, read_funnel(folder / FUNNEL))
        for _, _, folder, done in finished_tasks(run_dir, plan, keep, "curate_split")
        if FUNNEL in done.get("outputs", [])
    ]
