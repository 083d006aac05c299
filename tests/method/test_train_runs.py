"""Real runs of the training stages (DeepSpeed on CPU, gloo): loss, exact resume, errors, SLURM.

A run killed with SIGKILL at a random step and re-submitted must end with the same parameters, bit
for bit (fp32, CPU), as an uninterrupted run of the same spec; so must a SLURM job that hits its
2-minute time limit (USR2 -> save at a step boundary -> requeue). Uninterrupted runs of one rank go
through the in-process debug executor (no job start-up cost); everything that is killed, and every
2-rank run, goes through the local executor (real processes). Every run trains on a fixed batch
(max_samples = global_batch_size), so the same runs show that the loss goes down, for ZeRO-2 and
ZeRO-3, 1 and 2 ranks, SFT and MCM-DPO.

Each test works in a copy of one module-wide run dir that already holds data, model, precompute
and reference(model) (same task ids, so nothing upstream reruns); independent flows run in threads.
The SLURM job starts with the module (when its test is selected and the cluster is up) so that its
time limit passes while the other tests run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mcmdpo.batch.artifacts import read_events, read_json
from mcmdpo.batch.launch import submit
from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.batch.status import run_status
from tests.helpers.slurm import slurm_conf
from tests.helpers.train_recipes import (
    BASE,
    DEBUG,
    EVERY2,
    PREF1_Z2,
    PREF1_Z3,
    PREF2_Z2,
    PREF2_Z3,
    SFT1_Z2,
    SFT1_Z3,
    SFT2_Z2,
    SFT2_Z3,
    STEPS,
    assert_trained,
    clone,
    section,
)
from tests.helpers.training import (
    assert_bit_identical,
    last_log,
    losses,
    run,
    submit_and_kill,
    task_dir,
    weights,
)

# _short_result_wait: SIGKILLed jobs write no result file; _release_process_group: in-process training
# leaves a gloo group behind (both in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("_short_result_wait", "_release_process_group")


def with_checkpoints(text: str) -> str:
    head, _, rest = text.partition("\n")
    return f"{head}\n{EVERY2}{rest}"


LOAD_WITHOUT_MCMDPO = """\
import math, sys
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1])
AutoProcessor.from_pretrained(sys.argv[1])
total = math.fsum(x for p in model.parameters() for x in p.double().flatten().tolist())
print(type(model).__name__, "mcmdpo" in sys.modules, repr(total))
"""


# --------------------------------------------------------------------------------------------- helpers


def write(root: Path, name: str, *sections: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(BASE.format(root=root / "runs") + "\n".join(sections))
    return path


def run_in_process(path: Path, stage: str) -> dict[str, Any]:
    """One task through the job runtime in this process: errors surface as exceptions. The process
    environment is restored afterwards (the task exports RANK etc., which later jobs must not inherit)."""
    from mcmdpo.batch.launch import payload
    from mcmdpo.batch.runtime import TaskRunner

    plan = build_plan(load_recipe(path))
    (task,) = plan.stage(stage).tasks
    saved = dict(os.environ)
    try:
        return TaskRunner()(payload(plan, task))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parallel(*flows: Callable[[], Any]) -> list[Any]:
    """Run independent flows on threads; re-raise the first failure."""
    with ThreadPoolExecutor(len(flows)) as pool:
        return [f.result() for f in [pool.submit(flow) for flow in flows]]


def plant_broken_checkpoints(task: Path) -> list[str]:
    """Two newer step folders that resume must skip: no marker, and a truncated file under a marker."""
    root = task / ".work" / "checkpoints"
    complete = sorted(p for p in root.glob("step-*") if (p / "COMPLETE").exists())
    assert complete, "the kill came before the first checkpoint"
    newest, names = complete[-1], []
    for offset, keep_marker in ((100, False), (101, True)):
        fake = root / f"step-{int(newest.name[5:]) + offset:07d}"
        shutil.copytree(newest, fake)
        if not keep_marker:
            (fake / "COMPLETE").unlink()
        biggest = max(fake.glob("*.pt"), key=lambda p: p.stat().st_size)
        os.truncate(biggest, biggest.stat().st_size // 2)
        names.append(fake.name)
    return names


def kill_resume_compare(root: Path, name: str, stage: str, baseline: Path, *sections: str) -> Path:
    """Run ``sections`` (``stage`` saving every 2 steps), SIGKILL it at a random step after the first
    checkpoint, plant broken checkpoints, re-submit; the result must equal ``baseline`` bit for bit."""
    seed = random.randrange(1 << 30)
    at_step = random.Random(seed).randint(3, STEPS - 2)  # >= 2 steps before the end: time to kill
    context = f"({name}: killed at step {at_step}, seed {seed})"
    path = write(root, name, *sections)
    submit_and_kill(path, stage, at_step)
    planted = plant_broken_checkpoints(task_dir(path, stage))
    report = run(path)
    task = task_dir(path, stage)
    assert [e["event"] for e in read_events(task / "events.jsonl")][-1] == "done", context
    assert read_json(task / "train.json")["resumes"] >= 1, context
    log = "".join(p.read_text() for p in report.plan.run_dir.glob(f"logs/{stage}/*_0_log.err"))
    for fake in planted:
        assert f"ignoring checkpoint {fake}" in log, context
    assert_bit_identical(task, baseline, context)
    assert losses(task) == losses(baseline), context
    return task


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """data -> model -> precompute -> reference(model), in-process (debug executor)."""
    root = tmp_path_factory.mktemp("train-base")
    run(write(root, "base", DEBUG))
    return root


@pytest.fixture(scope="module")
def pref1_baseline(base, tmp_path_factory) -> Path:
    """MCM-DPO, 1 rank, ZeRO-3, offline reference: uninterrupted, in-process."""
    root = clone(base, tmp_path_factory.mktemp("pref1"))
    path = write(root, "pref1", PREF1_Z3, DEBUG)
    run(path)
    return task_dir(path, "preference")


@pytest.fixture(scope="module", autouse=True)
def slurm_requeue_run(request, base, tmp_path_factory) -> dict[str, Any]:
    """Start the SLURM preference job early, when the SLURM test is selected and the cluster is up,
    so that its 2-minute time limits pass while the other tests run (its steps mostly sleep)."""
    mine = [item for item in request.session.items if item.module is request.module]
    wanted = any(item.get_closest_marker("slurm") for item in mine)
    if not wanted or slurm_conf() is None:
        return {}
    root = clone(base, tmp_path_factory.mktemp("slurm"))
    resources = "[cluster.resources.preference]\ntimeout_min = 2\nsignal_delay_s = 30\nmax_requeues = 8\n"
    path = write(root, "slurm", PREF1_Z3, '[cluster]\nexecutor = "slurm"\nprofile = "local"\n' + resources)
    os.environ["MCMDPO_TEST_PAUSE_MS"] = "30000"  # first attempt: 8 steps x 30 s > the 2-min limit
    try:
        report = submit(load_recipe(path))
    finally:
        del os.environ["MCMDPO_TEST_PAUSE_MS"]
    return {"path": path, "report": report, "started": time.time()}


# ----------------------------------------------------------------------------------------------- tests


def test_one_rank_sft_zero2_and_mcmdpo_zero3_exact_resume(base, pref1_baseline, tmp_path):
    sft_root = clone(base, tmp_path / "sft")
    sft_path = write(sft_root, "sft1", SFT1_Z2, DEBUG)
    run(sft_path)
    sft_baseline = task_dir(sft_path, "sft")
    assert_trained(sft_baseline, world=1)
    assert_trained(pref1_baseline, world=1)
    first = json.loads((pref1_baseline / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/margin"] == 0.0  # the policy equals the offline reference before any update
    pref_root = clone(base, tmp_path / "pref")
    parallel(
        lambda: kill_resume_compare(sft_root, "sft1k", "sft", sft_baseline, with_checkpoints(SFT1_Z2)),
        lambda: kill_resume_compare(
            pref_root, "pref1k", "preference", pref1_baseline, with_checkpoints(PREF1_Z3)
        ),
    )


def test_one_rank_sft_zero3_and_mcmdpo_zero2_loss_goes_down(base, tmp_path):
    root = clone(base, tmp_path / "r")
    path = write(
        root, "z", SFT1_Z3.replace("gradient_checkpointing = false", "gradient_checkpointing = true"), DEBUG
    )
    run(path)
    sft = task_dir(path, "sft")
    assert_trained(sft, world=1)
    assert read_json(sft / "model" / "config.json")["text_config"]["use_cache"] is True  # restored
    path = write(root, "p", PREF1_Z2, DEBUG)  # no [sft]: MCM-DPO from the base model
    run(path)
    pref = task_dir(path, "preference")
    assert_trained(pref, world=1)
    status = {s["stage"]: s for s in run_status(load_recipe(path).run_dir)["stages"]}["preference"]
    assert str(pref / "model") in status["task_status"][0]["outputs"]
    out = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_MCMDPO, str(pref / "model")],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
    )
    name, imported, total = out.stdout.split()
    expected = math.fsum(x for t in weights(pref).values() for x in t.double().flatten().tolist())
    assert (name, imported, float(total)) == ("LlavaNextForConditionalGeneration", "False", expected)


def test_clear_errors_batch_arithmetic_missing_sft_output_incompatible_checkpoint_and_reference(
    base, tmp_path
):
    from mcmdpo.method.model import build_tiny_llava
    from mcmdpo.method.train.loop import IncompatibleCheckpoint
    from mcmdpo.method.train.spec import BatchSizeError

    root = clone(base, tmp_path / "r")
    bad = write(root, "bad", section("sft", 2, 4, 1, "gradient_accumulation_steps = 2\n"), DEBUG)
    with pytest.raises(
        BatchSizeError,
        match=r"global_batch_size \(4\) must equal micro_batch_size \(1\) x "
        r"gradient_accumulation_steps \(2\) x world size \(1\) = 2",
    ):
        run_in_process(bad, "sft")
    failed = read_events(task_dir(bad, "sft") / "events.jsonl")[-1]  # what `mcmdpo status` shows
    assert failed["event"] == "failed" and failed["error"].startswith("BatchSizeError: global_batch_size (4)")

    sft_path = write(root, "sft", with_checkpoints(SFT1_Z2), DEBUG)
    run(sft_path)
    sft = task_dir(sft_path, "sft")
    online = section("preference", 2, 2, 1, 'reference = "online"\n')
    chain = write(root, "chain", with_checkpoints(SFT1_Z2), online, DEBUG)
    shutil.move(sft / "model", tmp_path / "moved")
    with pytest.raises(
        FileNotFoundError, match=rf"preference: the sft output {sft / 'model'} has no config.json"
    ):
        run_in_process(chain, "preference")

    (sft / "DONE").unlink()  # the SFT task reruns from its checkpoints, but the base model got wider
    (sft / ".work" / "complete.json").unlink()
    (model_task,) = build_plan(load_recipe(sft_path)).stage("model").tasks
    model_dir = load_recipe(sft_path).run_dir / "model" / model_task.task_id / "model"
    shutil.rmtree(model_dir)
    build_tiny_llava(model_dir, ["a wider model"], hidden_size=48)
    with pytest.raises(
        IncompatibleCheckpoint,
        match=r"step-0000006 does not match this job: parameter .*: "
        r"checkpoint \[\d+, 32\], model \[\d+, 48\]",
    ):
        run_in_process(sft_path, "sft")
    pref_path = write(root, "pref", PREF1_Z2, DEBUG)  # offline reference(model) was scored by the old model
    with pytest.raises(ValueError, match=r"logprobs.h5 was computed with another model or image mode"):
        run_in_process(pref_path, "preference")


@pytest.mark.slow
def test_two_ranks_sft_zero3_feeds_mcmdpo_zero2_exact_resume(base, tmp_path):
    """sft -> preference with 2 ranks each; the SFT output is the policy and the (online) reference."""
    root = clone(base, tmp_path / "r")
    sft_path = write(root, "sft2", SFT2_Z3)
    run(sft_path)
    sft_baseline = task_dir(sft_path, "sft")
    assert_trained(sft_baseline, world=2)

    pref_root = clone(root, tmp_path / "pref")  # before the SFT kill flow writes into root

    def preference_flow() -> None:
        path = write(pref_root, "chain2", SFT2_Z3, PREF2_Z2)
        run(path)
        baseline = task_dir(path, "preference")
        assert_trained(baseline, world=2)
        assert read_json(baseline / "DONE")["inputs"]["sft"] == [sft_baseline.name]
        first = json.loads((baseline / "metrics.jsonl").read_text().splitlines()[0])
        assert first["rewards/margin"] == 0.0  # the reference is the SFT model, as is the policy
        kill_resume_compare(pref_root, "chain2k", "preference", baseline, SFT2_Z3, with_checkpoints(PREF2_Z2))

    parallel(
        lambda: kill_resume_compare(root, "sft2k", "sft", sft_baseline, with_checkpoints(SFT2_Z3)),
        preference_flow,
    )


@pytest.mark.slow
def test_two_ranks_sft_zero2_and_mcmdpo_zero3_loss_goes_down(base, tmp_path):
    sft_path = write(clone(base, tmp_path / "s"), "s", SFT2_Z2)
    pref_path = write(clone(base, tmp_path / "p"), "p", PREF2_Z3)
    parallel(lambda: run(sft_path), lambda: run(pref_path))
    assert_trained(task_dir(sft_path, "sft"), world=2)
    assert_trained(task_dir(pref_path, "preference"), world=2)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_time_limit_requeues_and_matches_local_run(slurm_cluster, slurm_requeue_run, pref1_baseline):
    """A preference job with a 2-minute limit: USR2, save, requeue (same job), resume, same weights."""
    assert slurm_requeue_run, "the SLURM job was not started"
    path = slurm_requeue_run["path"]
    run_dir = load_recipe(path).run_dir
    deadline = slurm_requeue_run["started"] + 600
    while True:
        status = {s["stage"]: s for s in run_status(run_dir)["stages"]}["preference"]
        if status["running"] == 0 and status["pending"] == 0 or time.time() > deadline:
            break
        time.sleep(3)
    task = task_dir(path, "preference")
    assert status["done"] == 1, f"{status}\n{last_log(run_dir)}"
    events = [e["event"] for e in read_events(task / "events.jsonl")]
    assert events == ["start", "interrupted", "start", "done"], events
    assert status["requeues"] == 1 and read_json(task / "train.json")["resumes"] == 1
    jobs = read_json(slurm_requeue_run["report"].submission)["jobs"]
    assert read_json(task / "DONE")["job_id"] == jobs[task.name]  # the same job, requeued
    assert_bit_identical(task, pref1_baseline)
