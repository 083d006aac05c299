"""Submit a plan through submitit: SLURM arrays chained with afterok, local processes, or in-process.

Re-submitting is always safe: DONE tasks are skipped (unless their outputs were damaged since, or
``--rerun`` names their stage), tasks whose SLURM job is still queued or running are left alone (and
become dependencies), a local task still running from an earlier submission is adopted (waited for,
not started twice), and only the rest is submitted. One submission at a time per run dir
(:mod:`mcmdpo.batch.lock`). Every submission records who ran what with which overrides and the resolved
recipe (``submissions/NNNN.json``, ``plans/NNNN.json``, ``recipe.toml``).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from mcmdpo.batch import recovery, scheduler, toolkit_version
from mcmdpo.batch.artifacts import append_event, read_events, write_json_atomic, write_text_atomic
from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.lock import run_lock
from mcmdpo.batch.plan import Plan, PlannedStage, PlannedTask, build_plan
from mcmdpo.batch.recipe import Recipe
from mcmdpo.batch.runtime import TaskPayload, TaskRunner
from mcmdpo.batch.status import previous_jobs


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
    set_aside: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.blocked_by and not any(s.failed for s in self.stages)


class Observer:
    """What a submission tells its caller; the CLI shows it (one line per change, or live on a TTY)."""

    def message(self, text: str) -> None:
        """A note (a lock taken over, a damaged output set aside, a stage summary)."""

    def task(self, task: PlannedTask, state: str, detail: str = "", log: str = "") -> None:
        """A task changed state: ``submitted``, ``adopted``, ``done``, ``failed`` (``detail``: why,
        ``log``: where the failed task logged)."""

    def tick(self, plan: Plan, running: Sequence[PlannedTask]) -> None:
        """Called about every 0.2 s while local tasks run (a live display re-reads their progress)."""


class _Messages(Observer):
    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress

    def message(self, text: str) -> None:
        self.progress(text)

    def task(self, task: PlannedTask, state: str, detail: str = "", log: str = "") -> None:
        if state == "failed":
            self.progress(f"{task.stage}/{task.task_id}: FAILED ({detail}); log: {log or '-'}")


def submit(
    recipe: Recipe,
    *,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
    observer: Observer | None = None,
    rerun: Sequence[str] = (),
    wait: bool = False,
    overrides: Sequence[str] = (),
) -> SubmitReport:
    """Plan ``recipe`` and submit every task that is neither done nor still alive in the scheduler."""
    plan = build_plan(recipe)
    observer = observer or _Messages(progress or (lambda _: None))
    if dry_run:
        return SubmitReport(plan, [_stage_report(plan, s) for s in plan.stages])
    _check_environment(recipe)
    plan.paths.run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(plan.run_dir, wait=wait, warn=observer.message):
        aside = recovery.prepare_resubmit(plan, rerun, observer.message)
        record = _new_submission(plan, recipe, tuple(overrides) or recipe.overrides)
        report = SubmitReport(
            plan, [_stage_report(plan, s) for s in plan.stages], record["path"], set_aside=aside
        )
        launcher = _LAUNCHERS[plan.executor](plan, recipe, record, observer)
        try:
            for stage, rep in zip(plan.stages, report.stages, strict=True):
                blocked = launcher.launch(stage, rep)
                _save_submission(record)
                if blocked:
                    report.blocked_by = blocked
                    break
        except KeyboardInterrupt:  # a user's stop reaches what this submission queued, on SLURM too
            launcher.stop()
            _save_submission(record)
            raise
        recovery.drop_replaced(plan)
    return report


def _check_environment(recipe: Recipe) -> None:
    """What the submitting environment lacks (an API key variable the jobs will read): one line,
    before anything is queued. (``validate``, ``--dry-run`` and ``mcmdpo assets`` still work without.)"""
    for variant in (recipe, *recipe.variants):
        for name, spec in variant.stages.items():
            for key, why in spec.environment_problems():
                raise ConfigError(why, file=recipe.path, field=f"{name}.{key}")


def _stage_report(plan: Plan, stage: PlannedStage) -> StageReport:
    done = sum(plan.paths.done(stage.name, t.task_id).exists() for t in stage.tasks)
    return StageReport(stage.name, len(stage.tasks), done=done)


def _new_submission(plan: Plan, recipe: Recipe, overrides: Sequence[str]) -> dict[str, Any]:
    """Number the submission; write plan.json, plans/NNNN.json and the resolved recipe.toml."""
    paths = plan.paths
    paths.submissions.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.stem) for p in paths.submissions.glob("[0-9]*.json")), default=0)
    write_json_atomic(paths.plan, plan.to_json())
    write_json_atomic(paths.plans / f"{number:04d}.json", plan.to_json())
    write_text_atomic(paths.recipe, recipe.resolved_toml())
    return {
        "path": paths.submissions / f"{number:04d}.json",
        "number": number,
        "time": time.time(),
        "executor": plan.executor,
        "recipe_file": str(recipe.path.absolute()),
        "overrides": list(overrides),
        "recipe": recipe.resolved_doc(),
        "argv": sys.argv,
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "mcmdpo": toolkit_version(),
        "stages": {},
        "jobs": {},
    }


def _save_submission(record: dict[str, Any]) -> None:
    write_json_atomic(record["path"], {k: v for k, v in record.items() if k != "path"})


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


def job_python() -> str:
    """The interpreter command jobs run: ``-P`` keeps the submit directory off ``sys.path``, so a
    stray ``mcmdpo/`` folder there cannot shadow the installed package (plugins still load: they are
    looked up in the submit directory explicitly)."""
    return f"{sys.executable} -P" if sys.version_info >= (3, 11) else sys.executable


class _Launcher:
    def __init__(self, plan: Plan, recipe: Recipe, record: dict[str, Any], observer: Observer):
        self.plan, self.recipe, self.record, self.observer = plan, recipe, record, observer

    def pending(self, stage: PlannedStage) -> list[PlannedTask]:
        return [t for t in stage.tasks if not self.plan.paths.done(stage.name, t.task_id).exists()]

    def launch(self, stage: PlannedStage, report: StageReport) -> str:
        """Submit the stage's pending tasks; return a reason to stop submitting later stages, or ''."""
        raise NotImplementedError

    def stop(self) -> None:
        """Ctrl-C during the submission: what it started is stopped (local stages stop their own)."""


class _SlurmLauncher(_Launcher):
    """One array per stage; ``afterok`` on the arrays of the stages it consumes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.previous = previous_jobs(self.plan.run_dir)
        self.stage_jobs: dict[str, list[str]] = {}

    def executor(self, stage: PlannedStage, overrides: Mapping[str, Any] | None = None) -> submitit.Executor:
        res = {**stage.resources, **(overrides or {})}
        ex = submitit.AutoExecutor(
            folder=self.plan.paths.logs(stage.name),
            cluster="slurm",
            slurm_max_num_timeout=res["max_requeues"],
            slurm_python=job_python(),
        )
        optional = {f"slurm_{k}": res[k] for k in ("partition", "account", "qos", "constraint") if res[k]}
        deps = sorted({j.split("_")[0] for d in stage.after for j in self.stage_jobs.get(d, [])})
        extra = {"dependency": "afterok:" + ":".join(deps), "kill-on-invalid-dep": "yes"} if deps else {}
        if res["nodes"] > 1:  # a rank that dies ends the job, instead of its peers on the other nodes
            optional["slurm_srun_args"] = ["--kill-on-bad-exit=1"]  # waiting 30 min in a collective
        if res.get("env"):  # exported by the job script, before srun starts the tasks
            optional["slurm_setup"] = [f"export {k}={shlex.quote(v)}" for k, v in sorted(res["env"].items())]
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
        for group in _resource_groups(todo):  # one array per distinct set of per-task resources
            jobs = self.executor(stage, group[0].resources).map_array(
                TaskRunner(), [payload(self.plan, t) for t in group]
            )
            ids = [j.job_id for j in jobs]
            self.stage_jobs[stage.name] += ids
            self.record["jobs"].update({t.task_id: i for t, i in zip(group, ids, strict=False)})
            array = ids[0].split("_")[0]
            report.array_job_id = report.array_job_id or array
            report.submitted += len(group)
            for task in group:
                self.observer.task(task, "submitted", array)
        self.record["stages"][stage.name] = {"array": report.array_job_id, "submitted": report.submitted}
        array = report.array_job_id or "-"
        self.observer.message(
            f"{stage.name}: {report.submitted} submitted (array {array}), {len(live)} in the queue"
        )
        return ""

    def stop(self) -> None:
        jobs = sorted({j.split("_")[0] for ids in self.stage_jobs.values() for j in ids} - self._adopted())
        if jobs:
            scheduler.scancel(jobs)
            self.observer.message(f"scancel {' '.join(jobs)} (queued by this submission)")

    def _adopted(self) -> set[str]:
        return {j.split("_")[0] for j in self.previous.values()}


def _resource_groups(tasks: Sequence[PlannedTask]) -> list[list[PlannedTask]]:
    """``tasks`` grouped by their resource overrides (first-seen order; the common case: one group)."""
    groups: dict[str, list[PlannedTask]] = {}
    for task in tasks:
        groups.setdefault(json.dumps(task.resources, sort_keys=True), []).append(task)
    return list(groups.values())


class _LocalLauncher(_Launcher):
    """Stage by stage on this machine; at most ``cluster.max_parallel`` tasks at once."""

    cluster = "local"

    def executor(self, stage: PlannedStage) -> submitit.Executor:
        res = stage.resources
        folder = self.plan.paths.logs(stage.name)
        if self.cluster == "debug":
            return submitit.DebugExecutor(folder=folder)
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=res["max_requeues"], python=job_python())
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
        run = _LocalStage(self, stage, report)
        try:
            run.run(todo)
        except KeyboardInterrupt:
            run.cancel()
            raise
        report.submitted = len(run.started)
        finished = len(todo) - len(report.failed)
        self.observer.message(f"{stage.name}: {finished}/{len(todo)} tasks finished")
        return f"stage {stage.name} has failed tasks" if report.failed else ""


class _LocalStage:
    """One stage's tasks on this machine: started, adopted (still running from an earlier
    submission), polled until each ends."""

    def __init__(self, launcher: _LocalLauncher, stage: PlannedStage, report: StageReport):
        self.launcher, self.stage, self.report = launcher, stage, report
        self.plan, self.observer = launcher.plan, launcher.observer
        self.limit = 1 if launcher.cluster == "debug" else launcher.recipe.cluster.max_parallel
        self.running: dict[str, tuple[PlannedTask, Any]] = {}  # task id -> (task, job or adopted pid)
        self.started: list[PlannedTask] = []

    def run(self, todo: list[PlannedTask]) -> None:
        queue, previous = [], previous_jobs(self.plan.run_dir)
        for task in todo:
            pid = recovery.live_local_pid(self.plan.paths, task, previous.get(task.task_id, ""))
            if pid is None:
                queue.append(task)
            else:
                self.running[task.task_id] = (task, pid)
                self.observer.task(task, "adopted", f"pid {pid}")
        executor = self.launcher.executor(self.stage) if queue else None
        while queue or self.running:
            while queue and len(self.running) < self.limit:
                self._start(executor, queue.pop(0))
            if not self._reap():
                self.observer.tick(self.plan, [t for t, _ in self.running.values()])
                time.sleep(0.2)

    def _start(self, executor: submitit.Executor, task: PlannedTask) -> None:
        with _children_ignore_sigint():
            job = executor.submit(TaskRunner(), payload(self.plan, task))
        self.launcher.record["jobs"][task.task_id] = str(job.job_id)
        _save_submission(self.launcher.record)
        self.running[task.task_id] = (task, job)
        self.started.append(task)
        self.observer.task(task, "submitted", str(job.job_id))

    def _reap(self) -> bool:
        """Handle the tasks that ended; True when any did."""
        ended = [(t, j) for t, j in self.running.values() if _ended(j)]
        for task, job in ended:
            del self.running[task.task_id]
            if self.plan.paths.done(task.stage, task.task_id).exists():
                self.observer.task(task, "done")
            else:
                self.report.failed.append(task.task_id)
                self.observer.task(
                    task, "failed", _job_error(job, self.plan, task), _log(job, self.plan, task)
                )
        return bool(ended)

    def cancel(self) -> None:
        """A user's stop (Ctrl-C, ``mcmdpo cancel``): kill the process tree of every task this
        submission runs, started or adopted (their SIGINT is ignored, so submitit's own cancel, a
        SIGINT, would not reach them), and record ``cancelled``. Outputs are atomic: nothing partial
        is left visible, and the next submit resumes."""
        for task, job in self.running.values():
            pid = job if isinstance(job, int) else _job_pid(job)
            if pid and scheduler.kill_tree(scheduler.job_root(pid) if isinstance(job, int) else pid):
                append_event(
                    self.plan.paths.events(task.stage, task.task_id), "cancelled", host=socket.gethostname()
                )
        self.running.clear()


def _job_pid(job: Any) -> int:
    """The controller pid of a submitted local job (0 for the in-process debug executor)."""
    process = getattr(job, "_process", None)
    return int(process.pid) if process is not None else 0


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Local jobs start with SIGINT ignored (inherited through exec; Python then installs no
    KeyboardInterrupt handler): a Ctrl-C reaches only the submitting process, which stops its jobs
    itself instead of every controller printing a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ended(job: Any) -> bool:
    if isinstance(job, int):
        return not scheduler.pid_alive(job)
    return bool(job.done())


class _DebugLauncher(_LocalLauncher):
    """In this process, one task at a time (pdb works); no timeouts, no requeue."""

    cluster = "debug"


def _log(job: Any, plan: Plan, task: PlannedTask) -> str:
    """Where a local task logged (its last start event; else submitit's stderr file)."""
    starts = [e for e in read_events(plan.paths.events(task.stage, task.task_id)) if e["event"] == "start"]
    if starts and starts[-1].get("log"):
        return str(starts[-1]["log"])
    return "" if isinstance(job, int) else str(job.paths.stderr)


def _job_error(job: Any, plan: Plan, task: PlannedTask) -> str:
    events = read_events(plan.paths.events(task.stage, task.task_id))
    failed = [e for e in events if e["event"] == "failed"]
    if failed:
        return str(failed[-1].get("error", "failed"))
    if isinstance(job, int):
        return f"the adopted process {job} ended without DONE"
    if not job.paths.result_pickle.exists():  # killed: submitit would wait for a result that never comes
        return "the job ended without a result (killed?)"
    try:
        exc = job.exception()
    except Exception as err:  # submitit raises when the job died without a result pickle
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0] if exc else "no DONE marker"


def cancel(run_dir: Path) -> list[str]:
    """Stop a run: scancel every live SLURM job any submission of it queued, or (local) interrupt its
    submitting process and kill the process tree of every task still running."""
    from mcmdpo.batch.plan import load_plan

    plan = load_plan(Path(run_dir))
    if plan.executor == "slurm":
        recorded = set(previous_jobs(plan.run_dir).values())
        states = scheduler.slurm_states(recorded)
        jobs = sorted({j.split("_")[0] for j, s in states.items() if scheduler.is_alive(s)})
        if jobs:
            scheduler.scancel(jobs)
        return [f"scancel {j}" for j in jobs]
    return recovery.stop_local(plan)


_LAUNCHERS: dict[str, type[_Launcher]] = {
    "slurm": _SlurmLauncher,
    "local": _LocalLauncher,
    "debug": _DebugLauncher,
}
