"""One submission at a time per run dir: ``<run>/submit.lock`` holds the submitting process's pid,
host and start time.

A second ``mcmdpo submit`` of the same run while the holder is alive stops with one line (exit 3),
or waits for it (``--wait``). A lock whose holder died (a pid on this host that no longer runs) is
taken over with a warning. A holder on another host cannot be checked from here: it counts as alive
until its lock file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mcmdpo.batch.errors import StateError
from mcmdpo.batch.scheduler import pid_alive

LOCK = "submit.lock"


class RunBusy(StateError):
    """Another submission of this run dir is in progress."""

    exit_code = 3


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (other hosts: assumed to)."""
    if holder.get("host") != socket.gethostname():
        return True
    return pid_alive(int(holder.get("pid", 0)))


def read_lock(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written right now, or torn: treated as held until it is old


def _describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {started}"


def _stale(path: Path, holder: dict[str, Any]) -> bool:
    """A dead holder, or a lock that stayed unreadable (torn) for more than 30 s."""
    if holder:
        return not holder_alive(holder)
    with contextlib.suppress(FileNotFoundError):
        return time.time() - path.stat().st_mtime > 30
    return False


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "argv": sys.argv}
    with os.fdopen(fd, "w") as f:
        json.dump(mine, f)
    return True


def acquire(run_dir: Path, wait: bool = False, warn: Callable[[str], None] = print) -> Path:
    """Take the run's submit lock (see the module docstring); return its path."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while not _try_create(path):
        holder = read_lock(path)
        if holder is None:
            continue
        if _stale(path, holder):
            warn(f"taking over the submit lock of {run_dir}: its holder ({_describe(holder)}) has ended")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if not wait:
            raise RunBusy(
                f"{run_dir} is being submitted by {_describe(holder)}; wait for it (mcmdpo submit --wait) "
                f"or stop it (mcmdpo cancel {run_dir})"
            )
        if not announced:
            warn(f"waiting for the submission by {_describe(holder)} to end")
            announced = True
        time.sleep(1.0)
    return path


def release(path: Path) -> None:
    """Remove the lock if this process holds it."""
    holder = read_lock(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(run_dir: Path, wait: bool = False, warn: Callable[[str], None] = print) -> Iterator[Path]:
    """The submit lock for the duration of a ``with`` block."""
    path = acquire(run_dir, wait, warn)
    try:
        yield path
    finally:
        release(path)
