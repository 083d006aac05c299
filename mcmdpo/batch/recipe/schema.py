"""Typed schema of the recipe sections every recipe shares: ``[run]``, ``[cluster]``.

Stage sections are validated by the stages' own specs (see :mod:`mcmdpo.batch.stage`). Strings that end up
in a scheduler submission (names, partitions, accounts) are restricted to a safe alphabet, so no
recipe value can smuggle shell syntax or extra ``#SBATCH`` lines into the job script.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

from mcmdpo.batch.spec import expand_vars

SafeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
"""A job/run name: letters, digits, '_', '.', '-' (no spaces, quotes or shell metacharacters)."""

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
SlurmToken = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.,:+=@\-\[\]|&]{1,128}$")]
"""A partition/account/qos/constraint value: no spaces, quotes, '$', ';', '`' or newlines."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunSpec(Section):
    """``[run]``: what the run is called, where it writes, which seed it uses."""

    name: SafeName = Field(description="run name; the run dir is <output_root>/<name>")
    output_root: Annotated[Path, BeforeValidator(expand_vars)] = Field(
        Path("runs"), description="parent of run dirs (relative: to the cwd; ${VAR} expanded)"
    )
    seed: int = Field(0, ge=0, description="base seed; every stage derives its own from it")
    plugins: tuple[str, ...] = Field((), description="importable modules that register extra stages")
    expected_records: dict[str, int] = Field(
        default_factory=dict,
        description="record counts by file name (e.g. pinterest_train.json = 8212) for the --dry-run "
        "GPU-hour estimate when a data file cannot be counted at planning time",
    )

    @field_validator("output_root")
    @classmethod
    def _writable(cls, value: Path) -> Path:
        """The run dir must be creatable and writable here (checked now, not in the first job)."""
        problem = writable_problem(Path(value).expanduser().absolute())
        if problem:
            raise ValueError(problem)
        return value


def writable_problem(folder: Path) -> str:
    """Why ``folder`` cannot be created or written ("" when it can)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot create {folder}: {probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "write to" if probe == folder else "create"
        return f"cannot {verb} {folder}: no write permission on {probe}"
    return ""


class ResourceSpec(Section):
    """Resources of one stage's jobs. Every field is optional: unset fields come from the profile."""

    nodes: int | None = Field(None, ge=1)
    tasks_per_node: int | None = Field(None, ge=1, description="processes per node (one per GPU)")
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: float | None = Field(None, gt=0, description="wall-clock limit of one job attempt")
    partition: SlurmToken | None = None
    account: SlurmToken | None = None
    qos: SlurmToken | None = None
    constraint: SlurmToken | None = None
    signal_delay_s: int | None = Field(None, ge=0, description="USR2 this long before the limit")
    max_requeues: int | None = Field(None, ge=0, description="timeouts/preemptions before giving up")
    array_parallelism: int | None = Field(None, ge=1, description="array tasks running at once")
    gpu_mem_gb: float | None = Field(
        None,
        gt=0,
        description="memory of one GPU (GiB): GPU tasks planned above it fail validation; lets a stage "
        "place a task on several GPUs",
    )
    node_gpus: int | None = Field(None, ge=1, description="GPUs of one node: the most a task may ask for")
    env: dict[EnvName, str] | None = Field(
        None,
        description="environment of the SLURM job script (e.g. NCCL_SOCKET_IFNAME); layers merge key by key",
    )


RESOURCE_DEFAULTS = ResourceSpec(
    nodes=1,
    tasks_per_node=1,
    gpus_per_node=0,
    cpus_per_task=1,
    mem_gb=4,
    timeout_min=60,
    signal_delay_s=90,
    max_requeues=10,
    array_parallelism=64,
)


class ClusterSpec(Section):
    """``[cluster]``: where the tasks run and with what resources."""

    executor: Literal["local", "slurm", "debug"] = Field(
        "local", description="local: processes on this machine; slurm: sbatch arrays; debug: in-process"
    )
    profile: SafeName = Field("local", description="a profile name from slurm/profiles/<name>.toml")
    max_parallel: int = Field(2, ge=1, description="local executor: tasks running at once")
    resources: dict[SafeName, ResourceSpec] = Field(
        default_factory=dict, description="per-stage overrides ('default' applies to every stage)"
    )
