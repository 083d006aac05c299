"""Small read-only queries of the scheduler (SLURM) and of local processes, for resume and status."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable

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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
