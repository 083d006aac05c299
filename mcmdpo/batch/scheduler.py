"""Queries of the scheduler (SLURM) and of local processes for resume and status, and the two ways a
user's stop reaches them: ``scancel`` and killing a local job's process tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "PREEMPTED",
    "SIGNALING",
    "STAGE_OUT",
}


def is_alive(state: str) -> bool:
    return state.split(" ")[0] in ALIVE


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """job id (``123`` or ``123_4``) -> SLURM state, from squeue (live) then sacct (finished).

    Ids the scheduler does not know are absent. No SLURM on this machine: an empty dict.
    """
    wanted = {str(j) for j in job_ids if j}
    if not wanted:
        return {}
    states: dict[str, str] = {}
    for line in _run(["squeue", "-h", "-r", "-o", "%i|%T"]).splitlines():
        job, _, state = line.partition("|")
        if job in wanted:
            states[job] = state.strip()
    rest = sorted({j.split("_")[0] for j in wanted - set(states)})
    if rest:
        out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)])
        for line in out.splitlines():
            job, _, state = line.partition("|")
            if job in wanted and job not in states:
                states[job] = state.strip()
    return states


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return not (fields and fields[0] in ("Z", "X"))


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """When ``pid`` started, as ``<boot id>:<clock ticks since boot>``: with the pid and the host, an
    identity a reused pid cannot have. None where /proc is absent or the process is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{boot}:{fields[19]}"


def same_process(pid: int, start: str | None) -> bool:
    """Whether ``pid`` still runs and is the process that started at ``start`` (None: not recorded,
    the pid alone decides)."""
    if not pid_alive(pid):
        return False
    return start is None or process_start(pid) in (start, None)


def parent_pid(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(int(stat.parent.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int, rounds: int = 5) -> bool:
    """SIGKILL ``pid`` and every process below it (a local job: its controller, its task processes,
    their workers); repeated until none is left. True when something was killed."""
    killed = False
    for _ in range(rounds):
        alive = [p for p in [pid, *descendants(pid)] if pid_alive(p)]
        if not alive:
            break
        for p in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    return killed


def job_root(pid: int) -> int:
    """The submitit controller of a local task process (its parent, when that runs submitit), else
    ``pid``: killing the controller's tree stops every rank of the job, not only one."""
    parent = parent_pid(pid)
    return parent if parent > 1 and is_job_process(parent) else pid


def scancel(job_ids: Iterable[str]) -> None:
    """Cancel SLURM jobs (array tasks as ``123_4``)."""
    ids = [str(j) for j in job_ids if j]
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60, check=False)


def is_job_process(pid: int) -> bool:
    """Whether ``pid`` runs a submitit job (guards against a reused pid; True where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"submitit" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc")
    except OSError:
        return True
