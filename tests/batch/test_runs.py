"""Runs a researcher can trust: one submit at a time, adoption after a killed submit, validation,
one-line errors, status exit codes, verify / --rerun / clean, provenance, file modes, the installed
package in jobs. Real subprocesses of the CLI, the local executor, real signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mcmdpo.batch.artifacts import read_events
from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from tests.helpers.paths import REPO
from tests.helpers.recipes import BASE

CLI = [sys.executable, "-m", "mcmdpo"]
SLOW = BASE.replace("steps = 3", "steps = 3\nstep_s = 1.5")  # 4 tasks x ~4.5 s, two at a time


def cli(*args: str, cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, **kw)


def starts(run_dir: Path, stage: str) -> dict[str, int]:
    return {
        d.name: sum(e["event"] == "start" for e in read_events(d / "events.jsonl"))
        for d in (run_dir / stage).iterdir()
        if not d.name.startswith(".")
    }


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


# ---------------------------------------------------------------- one submit at a time


def test_second_submit_is_refused_then_waits(write_recipe):
    path = write_recipe(SLOW)
    run_dir = load_recipe(path).run_dir
    first = subprocess.Popen(
        [*CLI, "submit", str(path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(lambda: (run_dir / "submit.lock").exists())
    second = cli("submit", str(path))
    assert second.returncode == 3 and "Traceback" not in second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert f"is being submitted by pid {first.pid} on " in line and "--wait" in line
    waited = cli("submit", str(path), "--wait")
    assert first.wait(timeout=120) == 0
    assert waited.returncode == 0 and "waiting for the submission by" in waited.stderr
    assert set(starts(run_dir, "count").values()) == {1}  # the waiting submit ran nothing again
    assert not (run_dir / "submit.lock").exists()


def test_killed_submit_leaves_live_tasks_that_a_resubmit_adopts(write_recipe):
    path = write_recipe(BASE.replace("steps = 3", "steps = 3\nstep_s = 4"))  # running when resubmitted
    # (12 s a task: a busy machine's slow python start does not outlast them)
    run_dir = load_recipe(path).run_dir
    first = subprocess.Popen(
        [*CLI, "submit", str(path)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: (run_dir / "count").is_dir() and any(starts(run_dir, "count").values()))
    first.kill()  # SIGKILL: the lock stays behind, the running task processes live on
    first.wait()
    again = cli("submit", str(path))
    assert again.returncode == 0, again.stderr
    assert "taking over the submit lock" in again.stderr and "adopted" in again.stderr
    assert set(starts(run_dir, "count").values()) == {1}  # no task ran twice
    status = json.loads(cli("status", str(run_dir), "--json").stdout)
    assert [s["done"] for s in status["stages"]] == [4, 1]


def test_ctrl_c_stops_the_tasks_and_says_how_to_resume(write_recipe):
    path = write_recipe(SLOW)
    run_dir = load_recipe(path).run_dir
    proc = subprocess.Popen(  # started with SIGINT ignored, as a script's background job is: it still stops
        [*CLI, "submit", str(path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    wait_for(lambda: (run_dir / "count").is_dir() and any(starts(run_dir, "count").values()))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted; re-submit to resume (finished tasks are kept)"
    time.sleep(1.0)
    status = json.loads(cli("status", str(run_dir), "--json").stdout)
    assert status["stages"][0]["running"] == 0  # nothing left running behind our back
    assert cli("submit", str(path)).returncode == 0


# ---------------------------------------------------------------- validation and one-line errors


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_recipe_problems_fail_at_validation_with_file_line_key(write_recipe, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    path = write_recipe(BASE.replace('output_root = "@RUNS@"', f'output_root = "{blocked}/runs"'))
    expected = f"run.output_root: value error, cannot create {blocked}/runs: {blocked} is not a folder"
    assert one_error(cli("validate", str(path))).startswith(f"error: {path}:3: {expected}")
    assert "--set sft..lr=1: sft..lr: not a valid TOML dotted key" in one_error(
        cli("validate", str(write_recipe(BASE)), "--set", "sft..lr=1")
    )
    line = one_error(cli("validate", str(write_recipe(BASE)), "--set", "nosuch.x=1"))
    assert line.startswith("error: --set nosuch.x=1: nosuch: the recipe has no [nosuch] section")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(BASE.replace("@RUNS@", str(tmp_path)).encode() + b"# caf\xe9\n")
    assert (
        one_error(cli("validate", str(latin)))
        == f"error: {latin}:{BASE.count(chr(10)) + 1}: not UTF-8 text (byte 0xe9); save the recipe as UTF-8"
    )


DATA = """
[run]
name = "d"
output_root = "@RUNS@"
[data]
source = "files"
train_file = "{train}"
train_images = "{images}"
{more}
"""


def files(folder: Path, n: int = 4, broken_line: int | None = None) -> tuple[Path, Path]:
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (20, 20), (i, 0, 0)).save(images / f"{i}.png")
        record = {"idx": i, "image": {"path": f"{i}.png"}, "question": "q", "chosen": "c", "rejected": "r"}
        lines.append(json.dumps(record))
    if broken_line is not None:
        lines[broken_line - 1] = '{"idx": 9, "question": '
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl", images


def test_missing_data_file_and_offline_reference_fail_at_validation(write_recipe, tmp_path):
    train, images = files(tmp_path / "src")
    body = DATA.format(train=tmp_path / "nope.json", images=images, more="")
    line = one_error(cli("validate", str(write_recipe(body))))
    assert line.startswith(
        f"error: {tmp_path / 'r.toml'}:7: data.train_file: file does not exist: {tmp_path / 'nope.json'}"
    )
    more = "[precompute]\nsamples_per_shard = 2\n"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"idx": 1,}]')
    body = DATA.format(train=bad, images=images, more=more)
    line = one_error(cli("submit", str(write_recipe(body)), "--dry-run"))
    assert f"r.toml:5: data: {bad}:1: malformed JSON" in line  # said once, by the first stage reading it


def test_the_data_stage_checks_every_split_before_training(write_recipe, tmp_path):
    train, images = files(tmp_path / "src", broken_line=3)
    (images / "1.png").unlink()
    body = DATA.format(train=train, images=images, more="[model]\n[precompute]\n[sft]\n")
    result = cli("submit", str(write_recipe(body)))
    assert result.returncode == 2 and "Traceback" not in result.stderr  # at validation: nothing queued
    (line,) = result.stderr.strip().splitlines()
    assert f"data.train_file: 2 bad record(s): {train}: record 2 (id=1): missing_image" in line
    assert "record 3 (id=2): malformed_json: line 3" in line
    assert not (tmp_path / "runs" / "d").exists()


def test_non_utf8_data_file_names_the_file_and_line(tmp_path):
    from mcmdpo.method.data.records import load_records

    path = tmp_path / "train.json"
    path.write_bytes(b'[{"idx": 1,\n "question": "caf\xe9"}]')
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 text \(byte 0xe9\)"):
        load_records(path)


# ---------------------------------------------------------------- verify, damaged outputs, --rerun, clean


def test_verify_a_truncated_output_and_the_resubmit_reruns_it(write_recipe):
    recipe = load_recipe(write_recipe(BASE))
    first = submit(recipe)
    assert first.ok
    task = first.plan.stage("count").tasks[1]
    folder = recipe.run_dir / "count" / task.task_id
    result = folder / "result.json"
    assert cli("verify", str(recipe.run_dir)).returncode == 0
    result.write_text(result.read_text()[:-5])  # truncated on disk
    checked = cli("verify", str(recipe.run_dir))
    assert (
        checked.returncode == 1
        and f"{result}: size" in checked.stdout
        and "5 finished task(s)" in checked.stdout
    )
    again = submit(recipe)
    assert again.ok and [s.submitted for s in again.stages] == [1, 0]
    assert any(line.startswith(f"count/{task.task_id}: damaged") for line in again.set_aside)
    assert json.loads(result.read_text())["steps"] == 3  # rebuilt
    assert not (recipe.run_dir / "count" / ".aside").exists()


def test_rerun_a_stage_and_what_reads_it_then_clean(write_recipe):
    path = write_recipe(BASE)
    recipe = load_recipe(path)
    assert submit(recipe).ok
    before = starts(recipe.run_dir, "count")
    result = cli("submit", str(path), "--rerun", "count")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(": re-run (old outputs: ") == 5  # 4 count tasks + the sum reading them
    assert starts(recipe.run_dir, "count") == {k: 1 for k in before}  # fresh folders, one start each
    assert not (recipe.run_dir / "count" / ".aside").exists()  # replaced: the old ones are gone
    assert one_error(cli("submit", str(path), "--rerun", "nosuch")).endswith(
        "nosuch is not a stage of this plan (stages: count, sum)"
    )
    other = submit(load_recipe(path, ["count.steps=4"]))  # an earlier plan's tasks stay on disk
    assert other.ok
    dry = cli("clean", str(recipe.run_dir), "--latest")  # the recipe's own plan is kept too
    assert dry.returncode == 0 and dry.stdout.count("would delete") == 0
    status = json.loads(cli("status", str(recipe.run_dir), "--json", "--all").stdout)
    assert len(status["earlier"]) == 5 and {t["plan"] for t in status["earlier"]} == {"0002.json"}
    assert (
        cli("clean", str(recipe.run_dir)).stdout.strip().endswith("0 folder(s) (dry run: --yes deletes them)")
    )
    cli("clean", str(recipe.run_dir), "--latest", "--yes")
    assert sum(1 for _ in (recipe.run_dir / "count").iterdir()) == 8  # nothing the main run uses went


# ---------------------------------------------------------------- provenance, modes, the installed package


def test_submission_records_overrides_and_resolved_recipe(write_recipe, tmp_path):
    path = write_recipe(BASE)
    result = cli("submit", str(path), "--set", "sum.scale=5")
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "t"
    record = json.loads((run_dir / "submissions" / "0001.json").read_text())
    assert record["overrides"] == ["sum.scale=5"] and record["recipe"]["sum"]["scale"] == 5
    assert record["recipe_file"] == str(path) and record["mcmdpo"] and record["user"]
    assert (
        "scale = 5" in (run_dir / "recipe.toml").read_text()
        and "step_s = 0.0" in (run_dir / "recipe.toml").read_text()
    )
    assert (run_dir / "plans" / "0001.json").is_file()
    runs = cli("runs", str(tmp_path / "runs"))
    (row,) = [line for line in runs.stdout.splitlines() if line.startswith("│ t ")]
    assert runs.returncode == 0 and [c.strip() for c in row.split("│")[2:6]] == ["local", "5", "5", "0"]
    cancel = cli("cancel", str(run_dir))
    assert cancel.returncode == 0 and "nothing to stop" in cancel.stdout
    assert cli("--version").stdout.startswith("mcmdpo ")


def test_outputs_follow_the_umask(write_recipe, tmp_path):
    body = textwrap.dedent(
        """
        [run]
        name = "m"
        output_root = "@RUNS@"
        [model]
        source = "tiny"
        """
    )
    path = write_recipe(body)
    result = subprocess.run(
        ["bash", "-c", f"umask 022 && exec {' '.join(CLI)} submit {path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "m"
    checked = [p for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts]
    assert any(p.name == "model.safetensors" for p in checked) and any(p.name == "DONE" for p in checked)
    modes = {p.relative_to(run_dir).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in checked}
    assert {m for m in modes.values()} == {"0o644"}, modes


def test_jobs_import_the_installed_package_not_a_stray_copy(write_recipe, tmp_path):
    work = tmp_path / "work"
    (work / "mcmdpo").mkdir(parents=True)
    (work / "mcmdpo" / "__init__.py").write_text('raise ImportError("the stray copy was imported")\n')
    (work / "where_stage.py").write_text(
        textwrap.dedent(
            """
            import mcmdpo
            from mcmdpo.batch.artifacts import write_json_atomic
            from mcmdpo.batch.stage import Stage, StageSpec, register

            class WhereSpec(StageSpec):
                pass

            def run_where(ctx):
                write_json_atomic(ctx.out_dir / "where.json", {"mcmdpo": mcmdpo.__file__})
                return ["where.json"]

            register(Stage("where", WhereSpec, run_where))
            """
        )
    )
    recipe = work / "r.toml"
    recipe.write_text(
        f'[run]\nname = "w"\noutput_root = "{tmp_path}/runs"\nplugins = ["where_stage"]\n[where]\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = Path(sys.executable).parent / "mcmdpo"  # not `python -m`, which would put work/ first itself
    result = subprocess.run(
        [str(script), "submit", str(recipe)], capture_output=True, text=True, cwd=work, env=env
    )
    assert result.returncode == 0, result.stderr
    (where,) = (tmp_path / "runs" / "w" / "where").glob("*/where.json")
    assert json.loads(where.read_text())["mcmdpo"] == str(REPO / "mcmdpo" / "__init__.py")
    (done,) = (tmp_path / "runs" / "w" / "where").glob("*/DONE")
    versions = json.loads(done.read_text())["versions"]
    assert versions["mcmdpo_path"] == str(REPO / "mcmdpo")


def test_a_data_file_edited_in_place_says_how_to_reread_it(write_recipe, tmp_path):
    train, images = files(tmp_path / "src")
    path = write_recipe(DATA.format(train=train, images=images, more="[precompute]\n"))
    assert cli("submit", str(path)).returncode == 0
    lines = train.read_text().splitlines()
    train.write_text("\n".join(lines[:-1]).replace('"c"', '"C"') + "\n")  # edited: one record fewer
    result = cli("submit", str(path))  # said at re-submit, before anything is queued
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{train}: changed since the data stage recorded it (" in result.stderr
    assert "to use the new version: mcmdpo submit <recipe> --rerun data" in result.stderr
    again = cli("submit", str(path), "--rerun", "data")
    assert again.returncode == 0, again.stderr
    status = json.loads(cli("status", str(tmp_path / "runs" / "d"), "--json").stdout)
    assert status["stages"][0]["summary"]["train"] == 3 and status["stages"][1]["summary"]["num_samples"] == 3


def test_cancel_stops_a_running_local_submission(write_recipe):
    path = write_recipe(SLOW)
    run_dir = load_recipe(path).run_dir
    proc = subprocess.Popen(
        [*CLI, "submit", str(path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (run_dir / "count").is_dir() and any(starts(run_dir, "count").values()))
    result = cli("cancel", str(run_dir))
    assert result.returncode == 0 and f"interrupted the submission (pid {proc.pid})" in result.stdout
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; re-submit to resume" in stderr
    time.sleep(1.0)
    status = json.loads(cli("status", str(run_dir), "--json").stdout)
    assert status["stages"][0]["running"] == 0 and status["stages"][0]["done"] < 4
