"""The one place where run-dir paths are built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Layout of a run directory.

    <run_dir>/plan.json                      the resolved plan (stages, tasks, ids)
    <run_dir>/recipe.toml                    the resolved recipe of the last submission (defaults, overrides)
    <run_dir>/submit.lock                    held while a `mcmdpo submit` of this run dir is running
    <run_dir>/submissions/NNNN.json          one record per `mcmdpo submit`: who, overrides, recipe, job ids
    <run_dir>/plans/NNNN.json                the plan of each submission (status --all, clean)
    <run_dir>/logs/<stage>/                  submitit folder: sbatch files, pickles, stdout/stderr
    <run_dir>/<stage>/<task_id>/             a task's outputs, its DONE manifest and events.jsonl
    <run_dir>/<stage>/<task_id>/.work/       scratch and checkpoints kept across requeues
    <run_dir>/<stage>/<task_id>/.work/failed-rank-RRRRR.json  the error of a rank other than 0
    <run_dir>/<stage>/.aside/<task_id>.<why>.<n>/  outputs set aside by --rerun or as damaged
    """

    run_dir: Path

    @property
    def plan(self) -> Path:
        return self.run_dir / "plan.json"

    @property
    def recipe(self) -> Path:
        return self.run_dir / "recipe.toml"

    @property
    def submissions(self) -> Path:
        return self.run_dir / "submissions"

    @property
    def plans(self) -> Path:
        return self.run_dir / "plans"

    def aside(self, stage: str) -> Path:
        return self.run_dir / stage / ".aside"

    def logs(self, stage: str) -> Path:
        return self.run_dir / "logs" / stage

    def task_dir(self, stage: str, task_id: str) -> Path:
        return self.run_dir / stage / task_id

    def done(self, stage: str, task_id: str) -> Path:
        return self.task_dir(stage, task_id) / "DONE"

    def events(self, stage: str, task_id: str) -> Path:
        return self.task_dir(stage, task_id) / "events.jsonl"

    def work_dir(self, stage: str, task_id: str) -> Path:
        return self.task_dir(stage, task_id) / ".work"

    def rank_failure(self, stage: str, task_id: str, rank: int) -> Path:
        """Where a rank other than 0 leaves its error (rank 0 records its own in events.jsonl)."""
        return self.work_dir(stage, task_id) / f"failed-rank-{rank:05d}.json"

    def rank_failures(self, stage: str, task_id: str) -> list[Path]:
        return sorted(self.work_dir(stage, task_id).glob("failed-rank-*.json"))
