"""The training recipes of the training-run tests (tests/method/test_train_runs.py) and the
multi-node SLURM tests (tests/batch/test_slurm_multinode.py): sections, rank layouts, checks."""

from __future__ import annotations

import shutil
from pathlib import Path

from mcmdpo.batch.artifacts import read_json
from tests.helpers.training import losses, weights

RUN = "train"
BASE = """\
[run]
name = "train"
output_root = "{root}"
seed = 5

[data]
num_train = 6
num_test = 2
min_image_size = 32
max_image_size = 48

[model]

[precompute]

[reference]
batch_size = 6
"""

STEPS = 8
COMMON = f"""\
precision = "fp32"
gradient_checkpointing = false
warmup_ratio = 0.0
checkpoint_every_minutes = 1000.0
lr = 2e-3
epochs = {STEPS}
"""
EVERY2 = "checkpoint_every_steps = 2\nkeep_last = 2\nkeep_checkpoints = true\n"


def section(stage: str, zero: int, global_batch: int, micro: int, *extra: str) -> str:
    """A training section on a fixed batch: ``max_samples`` = ``global_batch_size``, one step per epoch."""
    sizes = f"global_batch_size = {global_batch}\nmax_samples = {global_batch}\nmicro_batch_size = {micro}"
    head = [f"[{stage}]", sizes, COMMON]
    head.append(f"deepspeed = {{zero_optimization = {{stage = {zero}}}}}\n")
    return "\n".join([*head, *extra])


def ranks(stage: str, n: int) -> str:
    return f"[cluster.resources.{stage}]\ntasks_per_node = {n}\ncpus_per_task = 1\n"


SFT1_Z2 = section("sft", 2, 2, 1)
SFT1_Z3 = section("sft", 3, 2, 1)
PREF1_Z3 = section("preference", 3, 2, 1)
PREF1_Z2 = section("preference", 2, 2, 1, '[preference.loss]\nkind = "mcmdpo"\nform = "upstream"\n')
SFT2_Z3 = section("sft", 3, 4, 1) + ranks("sft", 2)
SFT2_Z2 = section("sft", 2, 4, 1) + ranks("sft", 2)
PREF2_Z2 = section("preference", 2, 4, 1, 'reference = "online"\n') + ranks("preference", 2)
PREF2_Z3 = section("preference", 3, 4, 1) + ranks("preference", 2)
DEBUG = '[cluster]\nexecutor = "debug"\n'


def clone(base: Path, folder: Path) -> Path:
    """A fresh root whose run dir is a copy of the base run (finished upstream tasks included)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base / "runs" / RUN, folder / "runs" / RUN, symlinks=True)
    return folder


def assert_trained(task: Path, world: int) -> None:
    """STEPS steps; the loss went down on the fixed batch; the export has every tensor at full shape."""
    values = losses(task)
    assert len(values) == STEPS and values[-1] < values[0] - 1e-4, f"loss did not go down: {values}"
    summary = read_json(task / "train.json")
    assert summary["world_size"] == world and summary["steps"] == STEPS
    assert read_json(task / "DONE")["outputs"] == ["model", "metrics.jsonl", "train.json"]
    start = weights(task.parents[1] / "model" / read_json(task / "DONE")["inputs"]["model"][0])
    trained = weights(task)
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in start.items()}
    assert any(not (trained[k] == start[k]).all() for k in start)
