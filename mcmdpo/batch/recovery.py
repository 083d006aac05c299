"""Recovering a run without hand edits: re-run stages, set damaged outputs aside, verify, clean, stop.

- ``mcmdpo submit RECIPE --rerun STAGE[,STAGE]``: the DONE tasks of those stages, and every DONE task
  that reads them (directly or further down), are moved to ``<stage>/.aside/<task>.rerun.<n>/`` and
  run again; the old outputs stay there until the new task is DONE (then they are removed by the
  submission, or by ``mcmdpo clean``).
- Every re-submit checks each DONE task's outputs against its manifest (sizes, and the sha256 of
  files changed since their last check: :mod:`mcmdpo.batch.integrity`): a task whose output went
  missing or changed, or whose DONE cannot be read, is set aside (``.damaged.<n>``) and run again
  instead of feeding a damaged file to the next stage.
- ``mcmdpo verify RUN_DIR``: sizes and sha256 of every DONE task's outputs.
- ``mcmdpo clean RUN_DIR``: what no plan of the run refers to (dry by default).
- ``mcmdpo cancel RUN_DIR`` (local runs): the submitting process and the tasks it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mcmdpo.batch import scheduler
from mcmdpo.batch.artifacts import append_event, done_or_damaged, read_events, read_json
from mcmdpo.batch.errors import ConfigError, StateError
from mcmdpo.batch.integrity import check_outputs
from mcmdpo.batch.lock import LOCK, holder_alive, read_lock
from mcmdpo.batch.paths import RunPaths
from mcmdpo.batch.plan import Plan, PlannedTask, load_plan
from mcmdpo.batch.stage import get_stage, registered
from mcmdpo.batch.status import previous_jobs


def rerun_tasks(plan: Plan, stages: Iterable[str]) -> list[PlannedTask]:
    """The tasks of ``stages`` and every task that reads one of them, transitively (plan order)."""
    names = [s for s in stages if s]
    unknown = [s for s in names if s not in {st.name for st in plan.stages}]
    if unknown:
        have = ", ".join(s.name for s in plan.stages)
        raise ConfigError(
            f"{', '.join(unknown)} is not a stage of this plan (stages: {have})", field="--rerun"
        )
    chosen = {t.task_id for s in plan.stages if s.name in names for t in s.tasks}
    for stage in plan.stages:  # plan order is topological
        for task in stage.tasks:
            if any(i in chosen for ids in task.inputs.values() for i in ids):
                chosen.add(task.task_id)
    return [t for s in plan.stages for t in s.tasks if t.task_id in chosen]


def set_aside(paths: RunPaths, task: PlannedTask, why: str) -> Path:
    """Move a task folder to ``<stage>/.aside/<task>.<why>.<n>/`` (kept until replaced)."""
    folder = paths.task_dir(task.stage, task.task_id)
    aside = paths.aside(task.stage)
    aside.mkdir(parents=True, exist_ok=True)
    number = 1 + sum(1 for _ in aside.glob(f"{task.task_id}.*"))
    target = aside / f"{task.task_id}.{why}.{number}"
    os.replace(folder, target)
    return target


def prepare_resubmit(plan: Plan, rerun: Sequence[str], warn: Callable[[str], None]) -> list[str]:
    """Set aside the DONE tasks to re-run (``--rerun``) and the damaged ones; return what moved."""
    paths, moved = plan.paths, []
    targets = {t.task_id for t in rerun_tasks(plan, rerun)} if rerun else set()
    for stage in plan.stages:
        for task in stage.tasks:
            manifest, damaged = done_or_damaged(paths.done(task.stage, task.task_id))
            if damaged:
                target = set_aside(paths, task, "damaged")
                moved.append(f"{task.stage}/{task.task_id}: {damaged}; re-running it (old: {target})")
                continue
            if manifest is None:
                continue
            if task.task_id in targets:
                moved.append(
                    f"{task.stage}/{task.task_id}: re-run (old outputs: {set_aside(paths, task, 'rerun')})"
                )
                continue
            _refuse_stale(plan, task, manifest, targets)
            problems = check_outputs(paths.task_dir(task.stage, task.task_id), manifest)
            if problems:
                target = set_aside(paths, task, "damaged")
                moved.append(
                    f"{task.stage}/{task.task_id}: damaged ({problems[0]}); re-running it (old: {target})"
                )
    for line in moved:
        warn(line)
    return moved


def _refuse_stale(plan: Plan, task: PlannedTask, manifest: dict[str, Any], rerun: set[str]) -> None:
    """A finished task whose sources changed since it ran stops the submit (one line, exit 2)."""
    stale = get_stage(task.stage).stale if task.stage in registered() else None
    if stale is not None and task.task_id not in rerun:
        message = stale(plan.paths.task_dir(task.stage, task.task_id), manifest)
        if message:
            raise StateError(f"{task.stage}/{task.task_id}: {message}")


def drop_replaced(plan: Plan) -> None:
    """Remove set-aside folders whose task is DONE again."""
    for stage in plan.stages:
        aside = plan.paths.aside(stage.name)
        for folder in sorted(aside.glob("*")) if aside.is_dir() else []:
            task_id = folder.name.split(".")[0]
            if plan.paths.done(stage.name, task_id).exists():
                shutil.rmtree(folder, ignore_errors=True)
        if aside.is_dir() and not any(aside.iterdir()):
            aside.rmdir()


def live_local_pid(paths: RunPaths, task: PlannedTask, job_id: str = "") -> int | None:
    """The pid of a local job still running this task (started by an earlier submission), or None.

    The task's last ``start`` event names its process (pid and start time: a reused pid does not
    count); a job started so recently that it has not written one yet is found through its
    controller (``job_id``, the local job's pid).
    """
    events = read_events(paths.events(task.stage, task.task_id))
    last = events[-1] if events else {}
    if last.get("event") == "start" and last.get("host") == socket.gethostname():
        pid = int(last.get("pid") or 0)
        if scheduler.same_process(pid, last.get("start")) and scheduler.is_job_process(pid):
            return pid
    controller = int(job_id) if job_id.isdigit() else 0
    if controller and scheduler.pid_alive(controller) and scheduler.is_job_process(controller):
        return controller
    return None


def stop_local(plan: Plan, wait_s: float = 15.0) -> list[str]:
    """A user's stop of a local run: interrupt the submitting process (it kills the jobs it started or
    adopted), then kill the process tree of every task still running (its controller, every rank,
    their workers) and record ``cancelled``. Nothing is left running; what finished stays DONE."""
    done = []
    holder = read_lock(plan.run_dir / LOCK) or {}
    if holder.get("host") == socket.gethostname() and holder_alive(holder):
        os.kill(int(holder["pid"]), signal.SIGINT)
        done.append(f"interrupted the submission (pid {holder['pid']})")
        deadline = time.time() + wait_s
        while time.time() < deadline and holder_alive(holder):
            time.sleep(0.1)
    jobs = previous_jobs(plan.run_dir)
    for stage in plan.stages:
        for task in stage.tasks:
            if plan.paths.done(task.stage, task.task_id).exists():
                continue
            pid = live_local_pid(plan.paths, task, jobs.get(task.task_id, ""))
            if pid is not None and scheduler.kill_tree(scheduler.job_root(pid)):
                append_event(
                    plan.paths.events(task.stage, task.task_id), "cancelled", host=socket.gethostname()
                )
                done.append(f"stopped {task.stage}/{task.task_id} (pid {pid})")
    return done


def verify_run(run_dir: Path) -> tuple[int, list[str]]:
    """Sizes and sha256 of every DONE task of the current plan: (tasks checked, problems)."""
    plan = load_plan(Path(run_dir))
    checked, problems = 0, []
    for stage in plan.stages:
        for task in stage.tasks:
            manifest, damaged = done_or_damaged(plan.paths.done(task.stage, task.task_id))
            if damaged:
                checked += 1
                problems.append(damaged)
                continue
            if manifest is None:
                continue
            checked += 1
            if "files" not in manifest:
                problems.append(f"{task.stage}/{task.task_id}: DONE records no file sizes (older mcmdpo)")
            problems += check_outputs(plan.paths.task_dir(task.stage, task.task_id), manifest, hashes=True)
    return checked, problems


def clean_run(run_dir: Path, delete: bool = False, latest_only: bool = False) -> list[Path]:
    """Task folders no plan of the run refers to (``latest_only``: no longer in the current plan) and
    set-aside folders; deleted with ``delete``, else only listed."""
    paths = RunPaths(Path(run_dir).absolute())
    plan = load_plan(paths.run_dir)
    plans = [plan, *_main_plan(paths)] if latest_only else [plan, *_recorded_plans(paths)]
    keep = {(s.name, t.task_id) for p in plans for s in p.stages for t in s.tasks}
    stages = {s.name for p in plans for s in p.stages}
    found = []
    for stage in sorted(stages):
        folder = paths.run_dir / stage
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            aside = child.name == ".aside" and any(child.iterdir())
            if aside or (
                child.is_dir() and not child.name.startswith(".") and (stage, child.name) not in keep
            ):
                found.append(child)
    if delete:
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
    return found


def _main_plan(paths: RunPaths) -> list[Plan]:
    """The plan of the newest submission without ``--set`` overrides (the recipe's own run), which
    ``clean --latest`` keeps too: an experiment submitted last does not make the main run's work
    look unused."""
    for record in sorted(paths.submissions.glob("[0-9]*.json"), reverse=True):
        try:
            if read_json(record).get("overrides"):
                continue
            return [replace(Plan.from_json(read_json(paths.plans / record.name)), run_dir=paths.run_dir)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return []


def _recorded_plans(paths: RunPaths) -> list[Plan]:
    out = []
    for path in sorted(paths.plans.glob("[0-9]*.json")):
        try:
            out.append(replace(Plan.from_json(read_json(path)), run_dir=paths.run_dir))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
