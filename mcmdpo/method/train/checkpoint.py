"""Training checkpoints: ``step-NNNNNNN/`` folders with a completion marker written last.

Layout of one checkpoint (``<task>/.work/checkpoints/step-0000040/``)::

    step-0000040/
      mp_rank_00_model_states.pt         DeepSpeed: model, LR scheduler (ZeRO-3: zero_pp_rank_R_...)
      [bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt    DeepSpeed: optimizer partition of rank R
      rng-rank-RRRRR.pt                  python / numpy / torch (/ cuda) RNG states of rank R
      trainer.json                       step, epoch, position in the epoch, data order, counters,
                                         metrics offset, world size, batch layout, parameter shapes
      COMPLETE                           written last, by rank 0 once every rank has finished:
                                         {"step", "files": {name: bytes}, "time"}

A folder counts only if ``COMPLETE`` exists and every file it lists has the recorded size, so a
checkpoint cut short by a kill (no marker) or damaged later (a truncated file) is skipped and the
newest *complete* one is used. Deleting removes the marker first, so a half-deleted folder is
never mistaken for a complete one.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mcmdpo.batch.artifacts import read_json, write_json_atomic

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

MARKER = "COMPLETE"
TRAINER_STATE = "trainer.json"
STEP_RE = re.compile(r"^step-(\d{7,})$")

log = logging.getLogger(__name__)


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def rng_name(rank: int) -> str:
    return f"rng-rank-{rank:05d}.pt"


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """Every ``step-*`` folder under ``root`` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def incomplete_reason(folder: Path) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None when it is complete."""
    try:
        marker = read_json(folder / MARKER)
    except FileNotFoundError:
        return f"no {MARKER} marker (cut short while saving)"
    except (OSError, ValueError) as exc:
        return f"unreadable {MARKER} marker ({exc})"
    for name, size in marker.get("files", {}).items():
        path = folder / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            return f"{name}: {actual if actual is not None else 'missing'} bytes, expected {size}"
    return None


def latest_complete(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``; incomplete newer ones are logged and skipped."""
    for _, folder in reversed(step_folders(root)):
        reason = incomplete_reason(folder)
        if reason is None:
            return folder
        log.warning("ignoring checkpoint %s: %s", folder.name, reason)
    return None


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and, when present, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine: DeepSpeedEngine, root: Path, step: int, state: dict[str, Any], rank: int) -> Path:
    """Write ``step-NNNNNNN/`` on every rank, then (rank 0, after a barrier) its ``COMPLETE`` marker.

    Collective: every rank must call it at the same step.
    """
    import torch.distributed as dist

    folder = root / step_name(step)
    engine.save_checkpoint(str(root), tag=folder.name, save_latest=False)
    torch.save(capture_rng(), folder / rng_name(rank))
    if rank == 0:
        write_json_atomic(folder / TRAINER_STATE, state)
    dist.barrier()
    if rank == 0:
        write_marker(folder, step)
    return folder


def write_marker(folder: Path, step: int) -> None:
    """``COMPLETE``: the step and the size of every file in the folder, written atomically."""
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER and not p.name.startswith(".")
    }
    write_json_atomic(folder / MARKER, {"step": step, "files": files, "time": time.time()})


def read_state(folder: Path) -> dict[str, Any]:
    """``trainer.json`` of a checkpoint folder."""
    return dict(read_json(folder / TRAINER_STATE))


def load_checkpoint(engine: DeepSpeedEngine, folder: Path, rank: int) -> dict[str, Any]:
    """Restore DeepSpeed state (model, optimizer, scheduler) and this rank's RNG; return trainer.json."""
    path, _ = engine.load_checkpoint(
        str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {folder}")
    restore_rng(torch.load(folder / rng_name(rank), weights_only=False))
    return read_state(folder)


def remove(folder: Path) -> None:
    """Delete a step folder: marker first, then the rest under a hidden name."""
    (folder / MARKER).unlink(missing_ok=True)
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and incomplete ones below them."""
    complete = [f for _, f in step_folders(root) if incomplete_reason(f) is None]
    keep_set = set(complete[-keep:])
    newest = complete[-1] if complete else None
    for _, folder in step_folders(root):
        if folder in keep_set:
            continue
        if newest is not None and step_of(folder) < step_of(newest):
            remove(folder)
    for trash in root.glob(".trash-*"):
        shutil.rmtree(trash, ignore_errors=True)


def discard_after(root: Path, step: int) -> None:
    """Delete every step folder newer than ``step`` (left by a killed attempt; it will be redone)."""
    for folder_step, folder in step_folders(root):
        if folder_step > step:
            log.info("removing %s (newer than the checkpoint resumed from)", folder.name)
            remove(folder)


def remove_all(root: Path) -> None:
    for _, folder in step_folders(root):
        remove(folder)


def step_of(folder: Path) -> int:
    match = STEP_RE.match(folder.name)
    if match is None:
        raise ValueError(f"{folder} is not a step-NNNNNNN folder")
    return int(match.group(1))
