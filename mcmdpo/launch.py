"""Submit a plan through submitit: SLURM arrays chained with afterok, local processes, or in-process.

Re-submitting is always safe: DONE tasks are skipped, tasks whose SLURM job is still queued or
running are left alone (and become dependencies), and only the rest is submitted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from mcmdpo import scheduler
from mcmdpo.artifacts import read_json, write_json_atomic, write_text_atomic
from mcmdpo.plan import Plan, PlannedStage, PlannedTask, build_plan
from mcmdpo.recipe import Recipe
from mcmdpo.runtime import TaskPayload, TaskRunner


@dataclass
class StageReport:
    stage: str
    total: int
    done: int = 0
    live: int = 0
    submitted: int = 0
    failed: list[str] = field(default_factory=list)
    array_job_id: str = ""


@dataclass
class SubmitReport:
    plan: Plan
    stages: list[StageReport]
    submission: Path | None = None
    blocked_by: str = ""

    @property
    def ok(self) -> bool:
        return not self.blocked_by and not any(s.failed for s in self.stages)


def submit(
    recipe: Recipe, *, dry_run: bool = False, progress: Callable[[str], None] | None = None
) -> SubmitReport:
    """Plan ``recipe`` and submit every task that is neither done nor still alive in the scheduler."""
    plan = build_plan(recipe)
    reports = [_stage_report(plan, s) for s in plan.stages]
    if dry_run:
        return SubmitReport(plan, reports)
    paths = plan.paths
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.plan, plan.to_json())
    write_text_atomic(paths.recipe, recipe.path.read_text())
    record = _new_submission(plan)
    launcher = _LAUNCHERS[plan.executor](plan, recipe, record, progress or (lambda _: None))
    report = SubmitReport(plan, reports, record["path"])
    for stage, rep in zip(plan.stages, reports, strict=False):
        blocked = launcher.launch(stage, rep)
        _save_submission(record)
        if blocked:
            report.blocked_by = blocked
            break
    return report


def _stage_report(plan: Plan, stage: PlannedStage) -> StageReport:
    done = sum(plan.paths.done(stage.name, t.task_id).exists() for t in stage.tasks)
    return StageReport(stage.name, len(stage.tasks), done=done)


def _new_submission(plan: Plan) -> dict[str, Any]:
    folder = plan.paths.submissions
    folder.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.stem) for p in folder.glob("[0-9]*.json")), default=0)
    return {
        "path": folder / f"{number:04d}.json",
        "number": number,
        "time": time.time(),
        "executor": plan.executor,
        "stages": {},
        "jobs": {},
    }


def _save_submission(record: dict[str, Any]) -> None:
    write_json_atomic(record["path"], {k: v for k, v in record.items() if k != "path"})


def previous_jobs(plan: Plan) -> dict[str, str]:
    """task id -> job id of its latest submission (older records first, newer ones win)."""
    jobs: dict[str, str] = {}
    for path in sorted(plan.paths.submissions.glob("[0-9]*.json")):
        try:
            jobs.update(read_json(path).get("jobs", {}))
        except (OSError, ValueError):
            continue
    return jobs


def payload(plan: Plan, task: PlannedTask) -> TaskPayload:
    inst = plan.instance(task.stage, task.instance)
    return TaskPayload(
        run_dir=str(plan.run_dir),
        stage=task.stage,
        task_id=task.task_id,
        instance=task.instance,
        index=task.index,
        params=task.params,
        spec=inst.spec,
        recipe=inst.recipe,
        seed=plan.seed,
        plugins=tuple(plan.plugins),
        upstream=task.inputs,
    )


class _Launcher:
    def __init__(self, plan: Plan, recipe: Recipe, record: dict[str, Any], progress: Callable[[str], None]):
        self.plan, self.recipe, self.record, self.progress = plan, recipe, record, progress

    def pending(self, stage: PlannedStage) -> list[PlannedTask]:
        return [t for t in stage.tasks if not self.plan.paths.done(stage.name, t.task_id).exists()]

    def executor(self, stage: PlannedStage) -> submitit.Executor:
        raise NotImplementedError

    def launch(self, stage: PlannedStage, report: StageReport) -> str:
        """Submit the stage's pending tasks; return a reason to stop submitting later stages, or ''."""
        raise NotImplementedError


class _SlurmLauncher(_Launcher):
    """One array per stage; ``afterok`` on the arrays of the stages it consumes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.previous = previous_jobs(self.plan)
        self.stage_jobs: dict[str, list[str]] = {}

    def executor(self, stage: PlannedStage) -> submitit.Executor:
        res = stage.resources
        ex = submitit.AutoExecutor(
            folder=self.plan.paths.logs(stage.name),
            cluster="slurm",
            slurm_max_num_timeout=res["max_requeues"],
        )
        optional = {f"slurm_{k}": res[k] for k in ("partition", "account", "qos", "constraint") if res[k]}
        deps = sorted({j.split("_")[0] for d in stage.after for j in self.stage_jobs.get(d, [])})
        extra = {"dependency": "afterok:" + ":".join(deps), "kill-on-invalid-dep": "yes"} if deps else {}
        ex.update_parameters(
            name=f"{self.plan.run_name}.{stage.name}",
            timeout_min=max(1, math.ceil(res["timeout_min"])),
            nodes=res["nodes"],
            tasks_per_node=res["tasks_per_node"],
            cpus_per_task=res["cpus_per_task"],
            gpus_per_node=res["gpus_per_node"],
            mem_gb=res["mem_gb"],
            slurm_signal_delay_s=res["signal_delay_s"],
            slurm_array_parallelism=res["array_parallelism"],
            slurm_additional_parameters=extra,
            **optional,
        )
        return ex

    def launch(self, stage: PlannedStage, report: StageReport) -> str:
        pending = self.pending(stage)
        states = scheduler.slurm_states(
            [self.previous[t.task_id] for t in pending if t.task_id in self.previous]
        )
        live = [t for t in pending if scheduler.is_alive(states.get(self.previous.get(t.task_id, ""), ""))]
        todo = [t for t in pending if t not in live]
        self.stage_jobs[stage.name] = [self.previous[t.task_id] for t in live]
        report.live = len(live)
        if todo:
            jobs = self.executor(stage).map_array(TaskRunner(), [payload(self.plan, t) for t in todo])
            ids = [j.job_id for j in jobs]
            self.stage_jobs[stage.name] += ids
            self.record["jobs"].update({t.task_id: i for t, i in zip(todo, ids, strict=False)})
            report.array_job_id = ids[0].split("_")[0]
            report.submitted = len(todo)
        self.record["stages"][stage.name] = {"array": report.array_job_id, "submitted": report.submitted}
        self.progress(f"{stage.name}: {report.submitted} submitted (array {report.array_job_id or '-'})")
        return ""


class _LocalLauncher(_Launcher):
    """Stage by stage on this machine; at most ``cluster.max_parallel`` tasks at once."""

    cluster = "local"

    def executor(self, stage: PlannedStage) -> submitit.Executor:
        res = stage.resources
        folder = self.plan.paths.logs(stage.name)
        if self.cluster == "debug":
            return submitit.DebugExecutor(folder=folder)
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=res["max_requeues"])
        ex.update_parameters(
            timeout_min=res["timeout_min"],
            tasks_per_node=res["tasks_per_node"],
            signal_delay_s=res["signal_delay_s"],
        )
        return ex

    def launch(self, stage: PlannedStage, report: StageReport) -> str:
        todo = self.pending(stage)
        if not todo:
            return ""
        ex = self.executor(stage)
        limit = 1 if self.cluster == "debug" else self.recipe.cluster.max_parallel
        running: list[tuple[PlannedTask, submitit.Job]] = []
        queue = list(todo)
        while queue or running:
            while queue and len(running) < limit:
                task = queue.pop(0)
                job = ex.submit(TaskRunner(), payload(self.plan, task))
                self.record["jobs"][task.task_id] = str(job.job_id)
                running.append((task, job))
                _save_submission(self.record)
            finished = [(t, j) for t, j in running if j.done()]
            for task, job in finished:
                running.remove((task, job))
                if not self.plan.paths.done(stage.name, task.task_id).exists():
                    report.failed.append(task.task_id)
                    self.progress(f"{stage.name}/{task.task_id}: FAILED ({_job_error(job)})")
            if running and not finished:
                time.sleep(0.2)
        report.submitted = len(todo)
        self.progress(f"{stage.name}: {len(todo) - len(report.failed)}/{len(todo)} tasks finished")
        return f"stage {stage.name} has failed tasks" if report.failed else ""


class _DebugLauncher(_LocalLauncher):
    """In this process, one task at a time (pdb works); no timeouts, no requeue."""

    cluster = "debug"


def _job_error(job: submitit.Job) -> str:
    if not job.paths.result_pickle.exists():  # killed: submitit would wait for a result that never comes
        return "the job ended without a result (killed?)"
    try:
        exc = job.exception()
    except Exception as err:  # submitit raises when the job died without a result pickle
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0] if exc else "no DONE marker"


_LAUNCHERS: dict[str, type[_Launcher]] = {
    "slurm": _SlurmLauncher,
    "local": _LocalLauncher,
    "debug": _DebugLauncher,
}
