"""What a run dir says about its tasks: done / running / pending / failed, progress, requeues, logs,
and where each attempt ran (the nodes its start event names).

Reads only plan.json (and the earlier plans under ``plans/``), the submission records, each task's
DONE, events.jsonl and ``.work/mcmdpo-progress.json``, and one squeue + one sacct call; it imports nothing
heavy, so it answers in well under a second.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from mcmdpo.batch import scheduler
from mcmdpo.batch.artifacts import done_or_damaged, read_events, read_json
from mcmdpo.batch.errors import MissingInput
from mcmdpo.batch.paths import RunPaths
from mcmdpo.batch.plan import Plan, PlannedTask, load_plan
from mcmdpo.batch.stage import PROGRESS

STATES = ("done", "running", "pending", "failed")
COUNTERS = ("num_samples", "num_skipped", "predictions", "items", "steps", "train", "test", "too_long")
"""Summary facts that add up across the tasks of a stage (sums of rates or losses mean nothing);
facts named ``*_max`` combine by their maximum (the longest sample of any shard)."""


def previous_jobs(run_dir: Path) -> dict[str, str]:
    """task id -> job id of its latest submission (older records first, newer ones win)."""
    jobs: dict[str, str] = {}
    for path in sorted((Path(run_dir) / "submissions").glob("[0-9]*.json")):
        try:
            jobs.update(read_json(path).get("jobs", {}))
        except (OSError, ValueError):
            continue
    return jobs


def run_status(run_dir: Path, all_plans: bool = False) -> dict[str, Any]:
    """The status of every task of the run in ``run_dir``, grouped by stage (JSON-serialisable).

    ``all_plans`` adds ``earlier``: tasks of earlier plans of the run (other sweeps, ``--set``
    experiments) that the current plan no longer lists.
    """
    plan = load_plan(Path(run_dir))
    jobs = previous_jobs(plan.run_dir)
    slurm = scheduler.slurm_states(jobs.values()) if plan.executor == "slurm" else {}
    stages = [_stage_status(plan, s.name, s.tasks, jobs, slurm) for s in plan.stages]
    out = {"run": plan.run_name, "run_dir": str(plan.run_dir), "executor": plan.executor, "stages": stages}
    if all_plans:
        out["earlier"] = earlier_tasks(plan, jobs, slurm)
    return out


def _stage_status(
    plan: Plan, name: str, tasks: list[PlannedTask], jobs: dict[str, str], slurm: dict[str, str]
) -> dict[str, Any]:
    rows = [task_status(plan, t, jobs.get(t.task_id, ""), slurm) for t in tasks]
    counts = Counter(t["state"] for t in rows)
    return {
        "stage": name,
        "tasks": len(rows),
        **{s: counts.get(s, 0) for s in STATES},
        "requeues": sum(t["requeues"] for t in rows),
        "nodes": sorted({n for t in rows for n in t.get("nodes", [])}),
        "summary": stage_notes(rows),
        "task_status": rows,
    }


def stage_notes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Facts for the notes column: a single task's whole summary; for several tasks, only counters."""
    done = [r.get("summary", {}) for r in rows if r["state"] == "done"]
    if len(rows) == 1:
        return {k: v for k, v in (done[0] if done else {}).items() if isinstance(v, int | float)}
    sums: Counter[str] = Counter()
    maxima: dict[str, Any] = {}
    for summary in done:
        sums.update({k: v for k, v in summary.items() if k in COUNTERS and isinstance(v, int)})
        for key, value in summary.items():
            if key.endswith("_max") and isinstance(value, int | float):
                maxima[key] = max(value, maxima.get(key, value))
    return {**dict(sums), **maxima}


def task_status(plan: Plan, task: PlannedTask, job_id: str, slurm: dict[str, str]) -> dict[str, Any]:
    """One task: state, requeues, outputs (done), progress and elapsed time (running), error (failed)."""
    folder = plan.paths.task_dir(task.stage, task.task_id)
    events = read_events(plan.paths.events(task.stage, task.task_id))
    starts = [e for e in events if e["event"] == "start"]
    out: dict[str, Any] = {
        "stage": task.stage,
        "task_id": task.task_id,
        "index": task.index,
        "params": task.params,
        "dir": str(folder),
        "job_id": job_id,
        "requeues": max(0, len(starts) - 1),
    }
    if starts:  # every attempt's nodes (rank 0's first); "nodes": the latest attempt's
        out["node_history"] = [start_nodes(s) for s in starts]
        out["nodes"] = out["node_history"][-1]
    done, damaged = done_or_damaged(folder / "DONE")
    if damaged:
        out.update(state="failed", error=f"{damaged}; re-submit to run it again", log="")
        return out
    if done is not None:
        out.update(state="done", outputs=[str(folder / o) for o in done.get("outputs", [])])
        out["summary"] = done.get("summary", {})
        return out
    last = events[-1] if events else {}
    out["log"] = last.get("log") or (starts[-1].get("log") if starts else "")
    out["state"], reason = _live_state(last, job_id, slurm)
    if out["state"] == "running":
        out["progress"] = read_progress(folder / ".work" / PROGRESS)
        out["elapsed_s"] = round(time.time() - starts[-1]["time"], 1) if starts else None
    if out["state"] == "failed":
        first = first_failure(plan.paths, task, last, starts[-1]["time"] if starts else 0.0)
        if first is not None:
            where = f"rank {first['rank']} on {first.get('host', '?')}: " if first["rank"] else ""
            out.update(error=where + str(first.get("error", "")), log=first.get("log") or out["log"])
        out.update(error=out.get("error") or reason, last_log_line=_last_line(out["log"]))
    return out


def first_failure(
    paths: RunPaths, task: PlannedTask, last: dict[str, Any], since: float
) -> dict[str, Any] | None:
    """The earliest error of the latest attempt: rank 0's "failed" event or another rank's own file."""
    found = [last] if last.get("event") == "failed" else []
    for path in paths.rank_failures(task.stage, task.task_id):
        try:
            record = read_json(path)
        except (OSError, ValueError):
            continue
        if record.get("time", 0) >= since:
            found.append(record)
    return min(found, key=lambda r: (r.get("time", 0), r.get("rank", 0))) if found else None


def start_nodes(event: dict[str, Any]) -> list[str]:
    """The nodes a start event names (events before multi-node support: only rank 0's host)."""
    nodes = event.get("nodes") or [event.get("host", "?")]
    return [str(n) for n in nodes]


def read_progress(path: Path) -> dict[str, Any]:
    """A running task's last ``ctx.progress`` report (``{}`` when it has sent none)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _live_state(last: dict[str, Any], job_id: str, slurm: dict[str, str]) -> tuple[str, str]:
    state = slurm.get(job_id, "")
    if state:
        if state.startswith("PENDING") or state.startswith("REQUEUE"):
            return "pending", ""
        if scheduler.is_alive(state):
            return "running", ""
        if last.get("event") != "failed" and state.startswith("COMPLETED"):
            return "failed", "job completed without a DONE marker"
        return "failed", f"job {job_id} ended {state}"
    event = last.get("event")
    if event in ("failed", "cancelled"):
        return "failed", "cancelled" if event == "cancelled" else ""
    if event == "start":
        mine = last.get("host") == socket.gethostname()
        if mine and not scheduler.pid_alive(int(last.get("pid", 0))):
            return "failed", "process ended without DONE (killed?)"
        return "running", ""
    return "pending", ""


def earlier_tasks(plan: Plan, jobs: dict[str, str], slurm: dict[str, str]) -> list[dict[str, Any]]:
    """Tasks of the plans of earlier submissions (``plans/NNNN.json``) that the current plan lacks."""
    current = {t.task_id for s in plan.stages for t in s.tasks}
    seen: dict[str, dict[str, Any]] = {}
    for path in sorted(plan.paths.plans.glob("[0-9]*.json"), reverse=True):
        try:
            old = replace(Plan.from_json(read_json(path)), run_dir=plan.run_dir)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for stage in old.stages:
            for task in stage.tasks:
                if task.task_id not in current and task.task_id not in seen:
                    row = task_status(old, task, jobs.get(task.task_id, ""), slurm)
                    seen[task.task_id] = {**row, "plan": path.name}
    return list(seen.values())


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Every run dir below ``root`` (a folder with a plan.json, up to three levels down) and its state."""
    if not Path(root).is_dir():
        raise MissingInput(f"no such folder: {root} (run dirs are made by `mcmdpo submit`)", file=root)
    runs = []
    for plan_file in sorted(
        p for depth in ("*", "*/*", "*/*/*") for p in Path(root).glob(f"{depth}/plan.json")
    ):
        try:
            status = run_status(plan_file.parent)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        totals = Counter({s: sum(st[s] for st in status["stages"]) for s in STATES})
        submitted = sorted((plan_file.parent / "submissions").glob("[0-9]*.json"))
        last = submitted[-1].stat().st_mtime if submitted else plan_file.stat().st_mtime
        rel = plan_file.parent.relative_to(root).as_posix()
        facts = {
            "run": status["run"],
            "run_dir": status["run_dir"],
            "path": rel,
            "executor": status["executor"],
        }
        runs.append({**facts, "tasks": sum(totals.values()), **totals, "last_submit": last})
    return runs


def _last_line(log: str) -> str:
    if not log:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
