"""Integration tests on the real single-node SLURM cluster (slurm/dev-cluster/start.sh)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from mcmdpo.batch.artifacts import read_events
from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.batch.status import run_status
from tests.helpers.recipes import BASE

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM = '\n[cluster]\nexecutor = "slurm"\nprofile = "local"\n'


def wait_settled(run_dir: Path, timeout_s: float) -> dict:
    """Poll `mcmdpo status` until no task is running or pending (or the deadline passes)."""
    deadline = time.time() + timeout_s
    while True:
        status = run_status(run_dir)
        if all(s["running"] == 0 and s["pending"] == 0 for s in status["stages"]) or time.time() > deadline:
            return status
        time.sleep(2)


def scontrol_dependency(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((w for w in out.split() if w.startswith("Dependency=")), "")


def result(run_dir: Path, stage: str, task_id: str, name: str) -> dict:
    return json.loads((run_dir / stage / task_id / name).read_text())


def test_array_with_afterok_dependency(slurm_cluster, write_recipe):
    recipe = load_recipe(write_recipe(BASE.replace("steps = 3", "steps = 3\nstep_s = 1.0") + SLURM))
    started = time.time()
    report = submit(recipe)
    assert time.time() - started < 30  # returns right after sbatch: the user can log out
    count, total = report.stages
    assert count.submitted == 4 and total.submitted == 1
    sum_job = json.loads(report.submission.read_text())["jobs"][report.plan.stage("sum").tasks[0].task_id]
    assert scontrol_dependency(sum_job).startswith(f"Dependency=afterok:{count.array_job_id}")
    status = wait_settled(recipe.run_dir, 240)
    assert [(s["done"], s["tasks"]) for s in status["stages"]] == [(4, 4), (1, 1)], status
    (sum_task,) = report.plan.stage("sum").tasks
    assert result(recipe.run_dir, "sum", sum_task.task_id, "total.json") == {"total": 24, "inputs": 4}
    done = json.loads((recipe.run_dir / "sum" / sum_task.task_id / "DONE").read_text())
    assert done["job_id"] == sum_job
    again = submit(recipe)
    assert [s.submitted for s in again.stages] == [0, 0]


def test_a_second_submit_while_the_arrays_are_queued_submits_nothing(slurm_cluster, write_recipe):
    import sys

    path = write_recipe(BASE.replace("steps = 3", "steps = 3\nstep_s = 1.0") + SLURM)
    recipe = load_recipe(path)
    first = submit(recipe)
    assert [s.submitted for s in first.stages] == [4, 1]
    second = subprocess.run(
        [sys.executable, "-m", "mcmdpo", "submit", str(path)], capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert "count: 0 submitted (array -), 4 in the queue" in second.stderr
    assert "sum: 0 submitted (array -), 1 in the queue" in second.stderr
    status = wait_settled(recipe.run_dir, 240)
    assert [(s["done"], s["tasks"]) for s in status["stages"]] == [(4, 4), (1, 1)], status
    for task in first.plan.stage("count").tasks:  # each task ran exactly once
        events = read_events(recipe.run_dir / "count" / task.task_id / "events.jsonl")
        assert [e["event"] for e in events] == ["start", "done"]


def test_failed_task_status_and_resubmit(slurm_cluster, write_recipe, tmp_path):
    fix = tmp_path / "fixed"
    body = BASE.replace("steps = 3", f'steps = 3\nfail_index = 1\nfail_unless = "{fix}"') + SLURM
    recipe = load_recipe(write_recipe(body))
    report = submit(recipe)
    status = wait_settled(recipe.run_dir, 240)
    count = status["stages"][0]
    assert (count["done"], count["failed"]) == (3, 1), status
    failed = next(t for t in count["task_status"] if t["state"] == "failed")
    assert failed["task_id"] == report.plan.stage("count").tasks[1].task_id
    assert "RuntimeError: shard 1 fails on purpose" in failed["error"]
    assert Path(failed["log"]).is_file() and failed["last_log_line"]
    assert status["stages"][1]["done"] == 0  # afterok never satisfied
    done_before = {
        t["task_id"]: Path(t["dir"], "DONE").read_text() for t in count["task_status"] if t["state"] == "done"
    }
    fix.touch()
    again = submit(recipe)
    assert [s.submitted for s in again.stages] == [1, 1]
    status = wait_settled(recipe.run_dir, 240)
    assert [(s["done"], s["tasks"]) for s in status["stages"]] == [(4, 4), (1, 1)], status
    for task_id, text in done_before.items():
        assert (recipe.run_dir / "count" / task_id / "DONE").read_text() == text
        assert [e["event"] for e in read_events(recipe.run_dir / "count" / task_id / "events.jsonl")] == [
            "start",
            "done",
        ]


def test_time_limit_usr2_checkpoint_requeue(slurm_cluster, write_recipe):
    body = BASE.split("[sum]")[0].replace("shards = 4\nsteps = 3", "shards = 1\nsteps = 150\nstep_s = 1.0")
    body += SLURM + "[cluster.resources.count]\ntimeout_min = 2\nsignal_delay_s = 30\n"
    recipe = load_recipe(write_recipe(body))
    report = submit(recipe)
    status = wait_settled(recipe.run_dir, 420)
    (task,) = report.plan.stage("count").tasks
    assert status["stages"][0]["done"] == 1, status
    out = result(recipe.run_dir, "count", task.task_id, "result.json")
    assert out["steps"] == 150 and len(out["attempts"]) >= 2 and 0 < out["attempts"][1] < 150
    assert int(out["restart_count"]) >= 1  # the same job, requeued by SLURM
    assert status["stages"][0]["requeues"] >= 1
    events = [e["event"] for e in read_events(recipe.run_dir / "count" / task.task_id / "events.jsonl")]
    assert events[:3] == ["start", "interrupted", "start"] and events[-1] == "done"


def test_preemption_by_urgent_partition(slurm_cluster, write_recipe):
    body = BASE.split("[sum]")[0].replace("shards = 4\nsteps = 3", "shards = 1\nsteps = 60\nstep_s = 1.0")
    body += SLURM + "[cluster.resources.count]\ncpus_per_task = 2\ntimeout_min = 30\nsignal_delay_s = 30\n"
    recipe = load_recipe(write_recipe(body))
    report = submit(recipe)
    (task,) = report.plan.stage("count").tasks
    events_file = recipe.run_dir / "count" / task.task_id / "events.jsonl"
    deadline = time.time() + 120
    while not events_file.exists() and time.time() < deadline:
        time.sleep(1)
    time.sleep(5)  # a few steps of progress
    urgent = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-p",
            "urgent",
            "-c",
            "2",
            "-t",
            "2",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    status = wait_settled(recipe.run_dir, 300)
    assert status["stages"][0]["done"] == 1, status
    out = result(recipe.run_dir, "count", task.task_id, "result.json")
    assert out["steps"] == 60 and len(out["attempts"]) >= 2 and out["attempts"][1] > 0
    events = [e["event"] for e in read_events(events_file)]
    assert "interrupted" in events and events[-1] == "done"
    sacct = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "State", "-j", urgent.stdout.strip()],
        capture_output=True,
        text=True,
    ).stdout
    assert "COMPLETED" in sacct


def test_two_task_job_gloo_all_reduce(slurm_cluster, write_recipe):
    body = '[run]\nname = "r"\noutput_root = "@RUNS@"\nplugins = ["tests.helpers.fixture_stages"]\n'
    body += "[reduce]\nvalue = 2.0\n"
    body += SLURM + "[cluster.resources.reduce]\ntasks_per_node = 2\n"
    recipe = load_recipe(write_recipe(body))
    report = submit(recipe)
    status = wait_settled(recipe.run_dir, 180)
    assert status["stages"][0]["done"] == 1, status
    (task,) = report.plan.stage("reduce").tasks
    out = result(recipe.run_dir, "reduce", task.task_id, "reduce.json")
    assert out["sum"] == 6.0 and out["env"]["WORLD_SIZE"] == "2" and out["env"]["RANK"] == "0"
