"""Whether the single-node SLURM dev cluster (slurm/dev-cluster/start.sh) is up."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def slurm_conf() -> str | None:
    """``$SLURM_CONF`` when it names a file and ``sinfo`` answers with at least one node state."""
    conf = os.environ.get("SLURM_CONF")
    if conf and Path(conf).is_file() and shutil.which("sinfo"):
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return conf
    return None


def wait_settled(run_dir: Path, timeout_s: float) -> dict:
    """Poll the run's status until no task is running or pending (or the deadline passes)."""
    import time

    from mcmdpo.batch.status import run_status

    deadline = time.time() + timeout_s
    while True:
        status = run_status(run_dir)
        if all(s["running"] == 0 and s["pending"] == 0 for s in status["stages"]) or time.time() > deadline:
            return status
        time.sleep(2)
