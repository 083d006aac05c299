"""One submission at a time per run dir: ``<run>/submit.lock`` holds the submitting process's pid,
host and process start time.

A second ``mcmdpo submit`` of the same run while the holder is alive stops with one line (exit 3),
or waits for it (``--wait``). The holder is judged by all three: a lock whose pid no longer runs on
this host, or runs a different process (a reused pid: another start time), is taken over with a
warning. A holder on another host cannot be checked from here: it counts as alive until its lock file
is removed. The lock is written whole or not at all (a temporary file, then a hard link), so an
unreadable lock file is never a live submission's: it is taken over too.
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
from mcmdpo.batch.scheduler import process_start, same_process

LOCK = "submit.lock"


class RunBusy(StateError):
    """Another submission of this run dir is in progress."""

    exit_code = 3


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs (other hosts: assumed to)."""
    if holder.get("host") != socket.gethostname():
        return True
    return same_process(int(holder.get("pid") or 0), holder.get("start"))


def read_lock(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: never a live submission's (locks are written whole)
    return doc if isinstance(doc, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {started}"


def _stale(holder: dict[str, Any]) -> bool:
    """A holder that has ended (or a lock without one: unreadable or not ours)."""
    return "pid" not in holder or not holder_alive(holder)


def _try_create(path: Path) -> bool:
    """Create the lock whole: written to a temporary file, then hard-linked under its name (which
    fails when a lock exists). A full disk raises a one-line :class:`StateError` and leaves nothing."""
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": process_start(os.getpid()),
        "time": time.time(),
        "argv": sys.argv,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(mine, f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StateError(f"cannot write the submit lock {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
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
        if _stale(holder):
            who = _describe(holder) if holder else "unreadable lock file"
            warn(f"taking over the submit lock of {run_dir}: its holder ({who}) has ended")
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
