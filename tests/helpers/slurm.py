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
