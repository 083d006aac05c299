"""The thin CLI commands over the evaluation library: score and assets check (real subprocesses)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "mcmdpo"]


@pytest.mark.skipif(shutil.which("java") is None, reason="the coco protocol needs Java")
def test_score_standalone_and_bad_line(tmp_path):
    pred = tmp_path / "pred.jsonl"
    rows = [
        {
            "idx": 1,
            "chosen": "a red circle above a blue square",
            "response": "Assistant: a red circle above a square",
        },
        {"idx": 2, "chosen": "three green triangles on white", "response": "three green triangles"},
    ]
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "metrics.json"
    run = subprocess.run(
        [*CLI, "score", str(pred), "--protocol", "coco", "--out", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    coco = doc["metrics"]["coco"]
    assert coco["num_samples"] == 2 and 0 < coco["bleu_4"] <= 100 and coco["cider"] > 0
    assert (tmp_path / "metrics.samples.jsonl").is_file()
    pred.write_text(pred.read_text() + "{not json\n")
    bad = subprocess.run(
        [*CLI, "score", str(pred), "--protocol", "coco", "--out", str(out)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and f"{pred}:3" in bad.stderr


def test_assets_check_lists_missing_with_how_to_obtain(write_recipe, tmp_path):
    path = write_recipe(
        f"""
        [run]
        name = "a"
        output_root = "@RUNS@"
        [data]
        [model]
        [eval]
        benchmarks = ["talt"]
        [eval.talt]
        file = "{tmp_path}/nope/twitter_test.json"
        images = "{tmp_path}/nope/images"
        """
    )
    run = subprocess.run([*CLI, "assets", "check", str(path)], capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "[MISSING]" in run.stdout and f"{tmp_path}/nope/twitter_test.json" in run.stdout
    assert "obtain:" in run.stdout and "missing" in run.stdout.splitlines()[-1]


SWEEP = """
[run]
name = "plan"
output_root = "@RUNS@"
[data]
[model]
[precompute]
num_shards = 2
[sft]
[reference]
[preference]
[eval]
benchmarks = ["test"]
shards = 2
[sweep]
"preference.loss.gamma" = [0.1, 0.2, 0.4]
"""


def dry_run_json(path, *overrides):
    sets = [arg for o in overrides for arg in ("--set", o)]
    run = subprocess.run(
        [*CLI, "submit", str(path), "--dry-run", "--json", *sets], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def tasks_of(plan, stage):
    (found,) = [s for s in plan["stages"] if s["name"] == stage]
    return list({t["task_id"]: t for inst in found["instances"] for t in inst["tasks"]}.values())


def test_dry_run_json_plans_base_and_sft_evals_once_per_sweep(write_recipe, tmp_path):
    path = write_recipe(SWEEP)
    plan = dry_run_json(path)
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    evals = tasks_of(plan, "eval")
    by_model = {m: [t for t in evals if t["params"]["model"] == m] for m in ("base", "sft", "preference")}
    assert [len(by_model[m]) for m in ("base", "sft", "preference")] == [2, 2, 6]  # x 2 shards
    model_task = tasks_of(plan, "model")[0]["task_id"]
    assert all(
        t["inputs"]["model"] == [model_task] and "preference" not in t["inputs"] for t in by_model["base"]
    )
    preference_ids = {t["task_id"] for t in tasks_of(plan, "preference")}
    assert {t["inputs"]["preference"][0] for t in by_model["preference"]} == preference_ids
    assert len(tasks_of(plan, "score")) == 5  # base, sft, 3 preference points
    (stage,) = [s for s in plan["stages"] if s["name"] == "preference"]
    assert sorted(i["points"][0]["preference.loss.gamma"] for i in stage["instances"]) == [0.1, 0.2, 0.4]

    rescored = dry_run_json(path, 'score.protocols=["paper"]')
    assert [t["task_id"] for t in tasks_of(rescored, "eval")] == [t["task_id"] for t in evals]
    assert {t["task_id"] for t in tasks_of(rescored, "score")}.isdisjoint(
        t["task_id"] for t in tasks_of(plan, "score")
    )
    regenerated = dry_run_json(path, "eval.max_new_tokens=32")
    assert {t["task_id"] for t in tasks_of(regenerated, "eval")}.isdisjoint(t["task_id"] for t in evals)


def test_user_errors_are_one_line_and_debug_shows_the_traceback(write_recipe):
    path = write_recipe(SWEEP.replace("[reference]\n", ""))
    run = subprocess.run([*CLI, "submit", str(path), "--dry-run"], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    line = SWEEP.replace("[reference]\n", "").splitlines().index("[preference]") + 1
    assert run.stderr.strip().splitlines() == [
        f"error: {path}:{line}: preference.reference: 'offline' needs a [reference] section in the recipe "
        "(or set preference.reference = 'online')"
    ]
    debug = subprocess.run(
        [*CLI, "--debug", "submit", str(path), "--dry-run"], capture_output=True, text=True
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "RecipeError" in debug.stderr
