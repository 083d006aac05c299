"""The same recipes the SLURM tests use, through the local and debug executors (no SLURM needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mcmdpo.batch.artifacts import read_events
from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.batch.status import run_status
from tests.helpers.recipes import BASE


def events(run_dir: Path, stage: str) -> dict[str, list[str]]:
    return {
        d.name: [e["event"] for e in read_events(d / "events.jsonl")] for d in (run_dir / stage).iterdir()
    }


def test_two_stage_array_outputs_done_and_resubmit_skips(write_recipe):
    recipe = load_recipe(write_recipe(BASE))
    report = submit(recipe)
    assert report.ok and [s.submitted for s in report.stages] == [4, 1]
    run = recipe.run_dir
    for task in report.plan.stage("count").tasks:
        done = json.loads((run / "count" / task.task_id / "DONE").read_text())
        assert done["outputs"] == ["result.json"] and done["params"] == task.params
        assert json.loads((run / "count" / task.task_id / "result.json").read_text())["steps"] == 3
        assert {"torch", "submitit", "mcmdpo"} <= set(done["versions"])
    (sum_task,) = report.plan.stage("sum").tasks
    assert json.loads((run / "sum" / sum_task.task_id / "total.json").read_text()) == {
        "total": 24,
        "inputs": 4,
    }
    status = run_status(run)
    assert [(s["stage"], s["done"], s["tasks"]) for s in status["stages"]] == [("count", 4, 4), ("sum", 1, 1)]
    assert status["stages"][1]["task_status"][0]["outputs"] == [
        str(run / "sum" / sum_task.task_id / "total.json")
    ]
    before = events(run, "count")
    again = submit(recipe)
    assert [s.submitted for s in again.stages] == [0, 0] and events(run, "count") == before
    assert sorted(p.name for p in (run / "submissions").iterdir()) == ["0001.json", "0002.json"]


def test_failed_task_is_reported_and_only_it_reruns(write_recipe, tmp_path):
    fix = tmp_path / "fixed"
    path = write_recipe(BASE.replace("steps = 3", f'steps = 3\nfail_index = 2\nfail_unless = "{fix}"'))
    recipe = load_recipe(path)
    report = submit(recipe)
    assert not report.ok and report.blocked_by == "stage count has failed tasks"
    assert report.stages[0].failed == [report.plan.stage("count").tasks[2].task_id]
    assert report.stages[1].submitted == 0  # downstream never starts after a failure
    status = run_status(recipe.run_dir)["stages"][0]
    assert (status["done"], status["failed"]) == (3, 1)
    failed = next(t for t in status["task_status"] if t["state"] == "failed")
    assert "RuntimeError: shard 2 fails on purpose" in failed["error"]
    assert Path(failed["log"]).is_file() and failed["log"].endswith("_0_log.err")
    assert failed["last_log_line"]
    before = events(recipe.run_dir, "count")
    fix.touch()
    report = submit(recipe)
    assert report.ok and [s.submitted for s in report.stages] == [1, 1]
    after = events(recipe.run_dir, "count")
    assert after[failed["task_id"]] == ["start", "failed", "start", "done"]
    assert all(after[k] == v for k, v in before.items() if k != failed["task_id"])


def test_time_limit_checkpoints_requeues_and_keeps_progress(write_recipe):
    # 10 s of work, the signal 6 s into each 12 s attempt: at least two attempts, more when a busy
    # machine makes python slow to start (max_requeues leaves room for that)
    body = BASE.replace("shards = 4\nsteps = 3", "shards = 1\nsteps = 40\nstep_s = 0.25")
    body += "\n[cluster.resources.count]\ntimeout_min = 0.2\nsignal_delay_s = 6\nmax_requeues = 20\n"
    recipe = load_recipe(write_recipe(body.split("[sum]")[0] + body.split("scale = 2")[1]))
    report = submit(recipe)
    assert report.ok
    (task,) = report.plan.stage("count").tasks
    result = json.loads((recipe.run_dir / "count" / task.task_id / "result.json").read_text())
    assert result["steps"] == 40 and len(result["attempts"]) >= 2
    assert result["attempts"] == sorted(result["attempts"]) and result["attempts"][1] > 0  # progress kept
    assert run_status(recipe.run_dir)["stages"][0]["requeues"] == len(result["attempts"]) - 1


def test_two_task_job_runs_gloo_all_reduce(write_recipe):
    body = '[run]\nname = "r"\noutput_root = "@RUNS@"\nplugins = ["tests.helpers.fixture_stages"]\n'
    body += "[cluster.resources.reduce]\ntasks_per_node = 2\n[reduce]\nvalue = 2.0\n"
    recipe = load_recipe(write_recipe(body))
    report = submit(recipe)
    assert report.ok
    (task,) = report.plan.stage("reduce").tasks
    out = json.loads((recipe.run_dir / "reduce" / task.task_id / "reduce.json").read_text())
    assert out["sum"] == 6.0 and out["env"]["WORLD_SIZE"] == "2" and out["env"]["RANK"] == "0"


def test_changed_spec_keeps_earlier_results(write_recipe):
    path = write_recipe(BASE)
    first = submit(load_recipe(path))
    second = submit(load_recipe(path, ["count.steps=2"]))
    assert second.ok and second.stages[0].submitted == 4
    run = first.plan.run_dir
    for task in first.plan.stage("count").tasks + second.plan.stage("count").tasks:
        assert (run / "count" / task.task_id / "DONE").is_file()


def test_debug_executor_runs_in_process(write_recipe):
    recipe = load_recipe(write_recipe(BASE), ["cluster.executor=debug"])
    assert submit(recipe).ok
    assert all(s["done"] == s["tasks"] for s in run_status(recipe.run_dir)["stages"])


def test_cli_commands(write_recipe, tmp_path):
    path = write_recipe(BASE)
    cli = [sys.executable, "-m", "mcmdpo"]
    bad = subprocess.run(
        [*cli, "validate", str(path), "--set", "count.stepz=1"], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2
        and "--set count.stepz=1: count.stepz: unknown key; did you mean 'steps'?" in bad.stderr
    )
    ok = subprocess.run([*cli, "validate", str(path)], capture_output=True, text=True)
    assert ok.returncode == 0 and "[count]\nshards = 4\nsteps = 3\n" in ok.stdout
    dry = subprocess.run([*cli, "submit", str(path), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0 and "count" in dry.stdout and "nothing submitted" in dry.stdout
    assert not (tmp_path / "runs").exists()
    run = subprocess.run([*cli, "submit", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    st = subprocess.run(
        [*cli, "status", str(tmp_path / "runs" / "t"), "--json"], capture_output=True, text=True
    )
    data = json.loads(st.stdout)
    assert [s["done"] for s in data["stages"]] == [4, 1]
    missing = subprocess.run([*cli, "status", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and "no plan here" in missing.stderr


def test_status_does_not_import_torch(write_recipe, tmp_path):
    code = "import sys, mcmdpo.cli, mcmdpo.batch.status, mcmdpo.batch.launch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("missing", ["sum"])
def test_missing_upstream_output_is_a_clear_error(write_recipe, missing):
    recipe = load_recipe(write_recipe(BASE))
    report = submit(recipe)
    (count0,) = [t for t in report.plan.stage("count").tasks if t.index == 0]
    done = recipe.run_dir / "count" / count0.task_id / "DONE"
    done.unlink()
    (recipe.run_dir / "count" / count0.task_id / "result.json").unlink()
    again = submit(recipe)  # count/0 reruns (no DONE), sum is done and stays
    assert again.ok and again.stages[0].submitted == 1 and again.stages[1].submitted == 0
