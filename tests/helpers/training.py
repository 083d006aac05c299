"""Submitting training recipes and comparing their results: run, kill mid-run, compare weights."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import read_json
from mcmdpo.batch.launch import SubmitReport, submit
from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe


def run(path: Path) -> SubmitReport:
    report = submit(load_recipe(path))
    assert report.ok, f"{path.name}: {report.blocked_by}\n{last_log(report.plan.run_dir)}"
    return report


def last_log(run_dir: Path) -> str:
    logs = sorted(run_dir.glob("logs/*/*_log.err"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text()[-3000:] if logs else "(no job logs)"


def task_dir(path: Path, stage: str) -> Path:
    recipe = load_recipe(path)
    (task,) = build_plan(recipe).stage(stage).tasks
    return recipe.run_dir / stage / task.task_id


def weights(task: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(task / "model" / "model.safetensors"))


def assert_bit_identical(a: Path, b: Path, context: str = "") -> None:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), context
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]} {context}"


def losses(task: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (task / "metrics.jsonl").read_text().splitlines()]


def submit_and_kill(path: Path, stage: str, at_step: int, timeout_s: float = 300) -> None:
    """Submit; SIGKILL every task process of ``stage`` once it has logged step ``at_step``."""
    recipe = load_recipe(path)
    work = task_dir(path, stage) / ".work"
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(report=submit(recipe)), daemon=True)
    thread.start()
    deadline = time.time() + timeout_s
    while not logged(work / "metrics.jsonl", at_step):
        assert thread.is_alive() and time.time() < deadline, f"{stage} never reached step {at_step}"
        time.sleep(0.02)
    killed = [pid for pid in task_processes(recipe.run_dir, task_dir(path, stage).name) if sigkill(pid)]
    thread.join(timeout_s)
    assert killed and not thread.is_alive() and not result["report"].ok


def logged(metrics: Path, step: int) -> bool:
    try:
        return len(metrics.read_text().splitlines()) >= step
    except FileNotFoundError:
        return False


def task_processes(run_dir: Path, task_id: str) -> list[int]:
    """The task processes of a local job: children of its controller (job id = controller pid)."""
    for record in sorted(run_dir.glob("submissions/*.json"), reverse=True):
        job = read_json(record).get("jobs", {}).get(task_id)
        if job is not None:
            children = Path(f"/proc/{job}/task/{job}/children")
            return [int(p) for p in children.read_text().split()] if children.exists() else []
    raise AssertionError(f"no job recorded for {task_id}")


def sigkill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
