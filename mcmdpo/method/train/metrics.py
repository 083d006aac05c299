"""Per-step metrics: a JSONL file (rank 0), optional TensorBoard, a rich progress bar on a terminal.

The live file is ``<task>/.work/metrics.jsonl`` (one JSON object per optimizer step); checkpoints
record its size, and a resumed run cuts it back to that size before continuing, so the finished
file has exactly one line per step, as an uninterrupted run writes it. The stage copies it to
``<task>/metrics.jsonl`` at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class MetricsLog:
    """Appends one JSON line per step; a no-op on ranks other than 0."""

    def __init__(self, path: Path, *, enabled: bool, tensorboard: Path | None = None):
        self.path, self.enabled = path, enabled
        self._tb: SummaryWriter | None = None
        self._tb_dir = tensorboard if enabled else None
        self._progress: Progress | None = None

    @property
    def offset(self) -> int:
        """Current size of the JSONL file in bytes (recorded in checkpoints)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        """Cut the file back to ``offset`` bytes (the size it had at the checkpoint resumed from)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
        os.truncate(self.path, min(offset, self.offset))

    def open(self, start_step: int, total_steps: int) -> None:
        """Start TensorBoard (dropping events past ``start_step``) and the progress bar."""
        if not self.enabled:
            return
        if self._tb_dir is not None:
            self._tb = tensorboard_writer(self._tb_dir, start_step)
        if sys.stdout.isatty():
            self._progress = Progress(start_step, total_steps)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_finite(record), sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self._tb.add_scalar(f"train/{key}", value, record["step"])
        if self._progress is not None:
            self._progress.update(record)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None


def tensorboard_writer(folder: Path, start_step: int) -> SummaryWriter:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise RuntimeError(
            "tensorboard = true needs the tensorboard package (pip install tensorboard)"
        ) from exc
    return SummaryWriter(str(folder), purge_step=start_step + 1)


class Progress:
    """A rich progress bar (rank 0, only when stdout is a terminal: bars garble job log files)."""

    def __init__(self, start_step: int, total_steps: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")
        self._bar.start()

    def update(self, record: dict[str, Any]) -> None:
        info = f"loss {record.get('loss', float('nan')):.4f}  lr {record.get('lr', 0):.2e}"
        self._bar.update(self._task, completed=record["step"], info=info)

    def close(self) -> None:
        self._bar.stop()


def log_line(log: logging.Logger, record: dict[str, Any], total_steps: int) -> None:
    """One human line per logged step (the JSONL has everything)."""
    extra = "  ".join(f"{k} {record[k]:.4g}" for k in ("rewards/accuracy", "rewards/margin") if k in record)
    log.info(
        "step %d/%d  loss %.4f  lr %.3g  grad %.3g  %.1f samples/s  %.0f tok/s  %s",
        record["step"],
        total_steps,
        record["loss"],
        record["lr"],
        record.get("grad_norm") or float("nan"),
        record["samples_per_s"],
        record["tokens_per_s"],
        extra,
    )


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
