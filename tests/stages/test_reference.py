"""Stage ``reference``: stored reference log-probs equal a direct naive computation, resume, SIGKILL.

The pipeline data (demo, 6 samples) -> model (tiny) -> precompute (2 shards) -> reference runs
in-process for the fast tests; one slow test runs the same recipe through the local executor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mcmdpo.batch.artifacts import file_hash
from mcmdpo.batch.launch import submit
from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import RecipeError, load_recipe
from mcmdpo.batch.resumable import PAUSE_ENV as SLOW_ENV
from mcmdpo.batch.resumable import BatchLedger
from mcmdpo.batch.stage import STOP, Interrupted, TaskContext, TaskInput
from mcmdpo.handoff import split_source
from mcmdpo.method.data.reference_logprobs import OUTPUT, ReferenceLogprobs
from mcmdpo.method.data.shards import PreferenceShards
from mcmdpo.method.logprobs import build_preference_tokens, naive_logprobs, sequence_logprobs
from mcmdpo.method.losses import CONDITIONS
from mcmdpo.method.model import load_llava
from mcmdpo.method.model.folders import model_dir, model_fingerprint
from mcmdpo.method.model.images import crop_side
from mcmdpo.method.samples import SampleSource
from mcmdpo.stages.data import DataSpec, run_data
from mcmdpo.stages.model import ModelSpec, run_model
from mcmdpo.stages.precompute import PrecomputeSpec, run_precompute
from mcmdpo.stages.reference import ReferenceSpec, reference_tasks, run_reference
from tests.helpers.paths import REPO

TOL = 1e-5
NUM_TRAIN = 6
SPEC = {"batch_size": 2}


def ledger_of(work_dir: Path) -> Path | None:
    """The reference task's batch ledger (named after its key), if it exists."""
    return next(Path(work_dir).glob("logprobs.*.jsonl"), None)


def context(
    root: Path, stage: str, name: str, spec: Any, inputs: dict, params: dict | None = None
) -> TaskContext:
    return TaskContext(
        stage=stage, task_id=name, index=0, params=params or {}, spec=spec, recipe={"run": {"name": "t"}},
        seed=0, run_dir=root, out_dir=root / stage / name, work_dir=root / stage / name / ".work",
        inputs=inputs,
    )  # fmt: skip


def finished(ctx: TaskContext, outputs: list[str]) -> TaskInput:
    return TaskInput(
        ctx.stage, ctx.task_id, ctx.out_dir, dict(ctx.params), tuple(ctx.out_dir / o for o in outputs)
    )


def shard_params(k: int, n: int = 2) -> dict[str, int]:
    return {"shard": k, "num_shards": n}


def run(ctx: TaskContext, fn) -> TaskInput:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    return finished(ctx, fn(ctx))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Any]:
    """data -> model -> precompute (2 shards) -> reference, each task run in this process."""
    root = tmp_path_factory.mktemp("pipeline")
    data_spec = DataSpec(num_train=NUM_TRAIN, num_test=0, min_image_size=32, max_image_size=48)
    data = run(context(root, "data", "d", data_spec, {}), run_data)
    model = run(context(root, "model", "m", ModelSpec(), {"data": [data]}), run_model)
    upstream = {"data": [data], "model": [model]}
    pre_spec = PrecomputeSpec(num_shards=2)
    precompute = [
        run(context(root, "precompute", f"p{k}", pre_spec, upstream, shard_params(k)), run_precompute)
        for k in range(2)
    ]
    inputs = {"precompute": precompute, "model": [model]}
    reference = [
        run(
            context(root, "reference", f"r{k}", ReferenceSpec(**SPEC), inputs, shard_params(k)), run_reference
        )
        for k in range(2)
    ]
    return {"root": root, "data": data, "model": model, "precompute": precompute, "reference": reference}


@pytest.fixture(scope="module")
def stored(pipeline) -> ReferenceLogprobs:
    return ReferenceLogprobs.from_inputs(pipeline["reference"])


def engine_tokens(processor: Any, item: dict[str, Any], mode: str = "pad"):
    """Engine input from a shard item, written out here independently of the stage's helper."""
    side = crop_side(processor)

    def image(which: str) -> dict[str, Any]:
        size = (side, side) if mode == "pad" else tuple(int(x) for x in item[f"{which}_image_size"])
        return {
            "pixel_values": torch.tensor(item[f"{which}_pixels"], dtype=torch.float32),
            "image_size": size,
        }

    return build_preference_tokens(
        processor,
        question_w=item["question"],
        question_l=item["rejected_question"],
        chosen=item["chosen"],
        rejected=item["rejected"],
        image_w=image("chosen"),
        image_l=image("rejected"),
        mode=mode,
    )


def naive_reference(model_folder: Path, shards: PreferenceShards, mode: str = "pad") -> dict[str, np.ndarray]:
    model, processor = load_llava(model_folder, mode=mode)
    batch = [engine_tokens(processor, shards[i], mode) for i in range(len(shards))]
    with torch.no_grad():
        return {k: v.numpy() for k, v in naive_logprobs(model, batch, mode=mode).items()}


def assert_close(stored: dict[str, Any], expected: dict[str, np.ndarray], names=CONDITIONS) -> None:
    for name in names:
        diff = np.abs(np.asarray(stored[name]) - expected[name]).max()
        assert diff <= TOL, f"{name}: |stored - naive| = {diff:.3g}"


# ---------------------------------------------------------------- values


def test_stored_logprobs_equal_a_direct_naive_computation(pipeline, stored):
    shards = PreferenceShards.from_inputs(pipeline["precompute"])
    stored.check_aligned(shards)
    assert len(stored) == len(shards) == NUM_TRAIN and stored.conditions == CONDITIONS
    expected = naive_reference(model_dir(pipeline["model"]), shards)
    values = stored.as_tensors()
    assert all(v.dtype == torch.float64 for v in values.values())
    assert_close(values, expected)
    table = np.stack([values[c].numpy() for c in CONDITIONS])
    assert np.unique(table).size == table.size  # every condition and sample differs
    picked = stored.lookup([5, 0, 3])
    for name in CONDITIONS:
        assert picked[name].tolist() == [values[name][i].item() for i in (5, 0, 3)]
    assert stored.lookup(4)["ml_cl_yl"].item() == values["ml_cl_yl"][4].item()


def test_file_layout_and_provenance(pipeline, stored):
    import h5py

    for k, (task, shard) in enumerate(zip(pipeline["reference"], pipeline["precompute"], strict=True)):
        (h5,) = [p for p in shard.outputs if p.suffix == ".h5"]
        with h5py.File(task.dir / OUTPUT, "r") as f:
            assert sorted(f) == sorted(["ids", "positions", *CONDITIONS])
            assert all(f[c].dtype == np.float64 for c in CONDITIONS)
            with h5py.File(h5, "r") as s:
                assert list(f["ids"].asstr()[:]) == list(s["ids"].asstr()[:])
                assert list(f["positions"][:]) == list(s["positions"][:])
        attrs = stored.attrs[k]
        assert attrs["reference_model"] == str(model_dir(pipeline["model"]))
        assert attrs["reference_fingerprint"] == model_fingerprint(model_dir(pipeline["model"]))
        assert (attrs["engine"], attrs["mode"], attrs["batch_size"], attrs["dtype"]) == (
            "shared",
            "pad",
            2,
            "float32",
        )
        assert attrs["precompute_shard_sha256"] == file_hash(h5) and attrs["shard"] == k
        assert attrs["conditions"] == list(CONDITIONS) and attrs["device"] == "cpu"
        assert ledger_of(task.dir / ".work") is None  # the finished file holds its rows


def test_subset_of_conditions_with_the_naive_engine(pipeline, stored, tmp_path):
    names = ("mw_cw_yw", "ml_cl_yl")
    spec = ReferenceSpec(batch_size=3, engine="naive", conditions=names)
    inputs = {"precompute": pipeline["precompute"], "model": [pipeline["model"]]}
    tasks = [
        run(context(tmp_path, "reference", f"n{k}", spec, inputs, shard_params(k)), run_reference)
        for k in (1, 0)
    ]
    subset = ReferenceLogprobs.from_inputs(tasks)
    assert subset.conditions == names
    assert_close(subset.as_tensors(), {k: v.numpy() for k, v in stored.as_tensors().items()}, names)


def test_anyres_shards(pipeline, tmp_path):
    """anyres: tiles and the original image size reach the model (placeholder counts as for the image)."""
    from PIL import Image

    upstream = {"data": [pipeline["data"]], "model": [pipeline["model"]]}
    pre_ctx = context(
        tmp_path, "precompute", "a", PrecomputeSpec(mode="anyres"), upstream, shard_params(0, 1)
    )
    pre = run(pre_ctx, run_precompute)
    inputs = {"precompute": [pre], "model": [pipeline["model"]]}
    ref = run(
        context(tmp_path, "reference", "a", ReferenceSpec(**SPEC), inputs, shard_params(0, 1)), run_reference
    )
    shards = PreferenceShards.from_inputs([pre])
    model, processor = load_llava(model_dir(pipeline["model"]), mode="anyres")
    images = Path(split_source(pipeline["data"], "train")["images"])
    item = shards[0]
    with Image.open(images / item["image_path"]) as img:
        rgb = img.convert("RGB")
    texts = {"question_w": "q", "question_l": "q", "chosen": "a", "rejected": "b"}
    direct = build_preference_tokens(processor, **texts, image_w=rgb, image_l=rgb, mode="anyres")
    ours = engine_tokens(processor, item, "anyres")
    assert ours.image_tokens_w == direct.image_tokens_w and ours.pixels_w.shape == direct.pixels_w.shape
    assert ours.pixels_w.shape[0] > 1  # tiles, not one padded square
    assert_close(
        ReferenceLogprobs.from_inputs([ref]).as_tensors(),
        naive_reference(model_dir(pipeline["model"]), shards, "anyres"),
    )


def policy_logprobs(
    model_folder: Path, shards: PreferenceShards, table: ReferenceLogprobs, mode: str, batch: int
) -> dict[str, torch.Tensor]:
    """What the preference objective computes for the policy before its first update (same batches)."""
    from mcmdpo.method.losses import PreferenceLoss
    from mcmdpo.method.train.loop import load_policy
    from mcmdpo.method.train.objectives import OfflineReference, PreferenceObjective
    from mcmdpo.method.train.spec import LossSpec, PreferenceSpec

    policy = load_policy(model_folder, PreferenceSpec(precision="fp32", gradient_checkpointing=False), mode)
    source = SampleSource(shards, policy.processor, mode)
    loss = PreferenceLoss.from_spec(LossSpec())
    objective = PreferenceObjective(source, loss, OfflineReference(table, loss.conditions), "shared", 4096)
    ends = [int(e) for e in shards.offsets[1:]]  # the reference batches never cross a shard boundary
    rows = [range(s, min(s + batch, end)) for start, end in zip([0, *ends], ends, strict=False)
            for s in range(start, end, batch)]  # fmt: skip
    out: dict[str, list[torch.Tensor]] = {c: [] for c in loss.conditions}
    for r in rows:
        tokens = objective.load(list(r)).tokens
        values = sequence_logprobs(
            policy.model, tokens, engine="shared", mode=mode, conditions=loss.conditions
        )
        for c in loss.conditions:
            out[c].append(values[c].detach())
    return {c: torch.cat(v) for c, v in out.items()}


@pytest.mark.parametrize("mode", ["pad", "anyres"])
def test_stored_reference_equals_the_policy_bit_for_bit(pipeline, stored, tmp_path, mode):
    """The reference stage and the training objective build the same sequences (one code path)."""
    precompute, reference = pipeline["precompute"], pipeline["reference"]
    if mode == "anyres":
        upstream = {"data": [pipeline["data"]], "model": [pipeline["model"]]}
        spec = PrecomputeSpec(mode="anyres", num_shards=2)
        precompute = [
            run(context(tmp_path, "precompute", f"a{k}", spec, upstream, shard_params(k)), run_precompute)
            for k in range(2)
        ]
        inputs = {"precompute": precompute, "model": [pipeline["model"]]}
        reference = [
            run(
                context(tmp_path, "reference", f"a{k}", ReferenceSpec(**SPEC), inputs, shard_params(k)),
                run_reference,
            )
            for k in range(2)
        ]
    table = ReferenceLogprobs.from_inputs(reference)
    shards = PreferenceShards.from_inputs(precompute)
    policy = policy_logprobs(model_dir(pipeline["model"]), shards, table, mode, SPEC["batch_size"])
    for name in CONDITIONS:
        assert torch.equal(policy[name], table.as_tensors()[name]), name


# ---------------------------------------------------------------- resume


def test_checkpoint_request_saves_progress_and_the_restart_resumes(pipeline, stored, tmp_path):
    inputs = {"precompute": pipeline["precompute"], "model": [pipeline["model"]]}
    ctx = context(tmp_path, "reference", "c", ReferenceSpec(**SPEC), inputs, shard_params(1))
    ctx.work_dir.mkdir(parents=True)
    STOP.set()  # as if USR2 arrived: the task saves after the batch in flight and asks for requeue
    try:
        with pytest.raises(Interrupted):
            run_reference(ctx)
    finally:
        STOP.clear()
    assert not (ctx.out_dir / OUTPUT).exists()
    saved = BatchLedger(ledger_of(ctx.work_dir)).resume()
    assert [r["id"] for r in saved] == [0, 1] and all(isinstance(r["mw_cw_yw"], float) for r in saved)
    assert run_reference(ctx) == [OUTPUT]
    assert ctx.summary == {"num_samples": 3, "resumed_from": 2}
    resumed = ReferenceLogprobs([ctx.out_dir / OUTPUT]).as_tensors()
    for name in CONDITIONS:  # the same fixed batches: identical values, not just close ones
        assert torch.equal(resumed[name], stored.as_tensors()[name][3:])


def test_a_finished_file_is_reused(pipeline):
    task = pipeline["reference"][0]
    before = (task.dir / OUTPUT).stat().st_mtime_ns
    inputs = {"precompute": pipeline["precompute"], "model": [pipeline["model"]]}
    ctx = context(pipeline["root"], "reference", "r0", ReferenceSpec(**SPEC), inputs, shard_params(0))
    assert run_reference(ctx) == [OUTPUT]
    assert (task.dir / OUTPUT).stat().st_mtime_ns == before


KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from mcmdpo.batch.stage import TaskContext, TaskInput
    from mcmdpo.stages.reference import ReferenceSpec, run_reference
    args = json.loads(sys.argv[1])
    def task(stage, d, params, outputs):
        return TaskInput(stage, Path(d).name, Path(d), params, tuple(Path(d) / o for o in outputs))
    inputs = {{
        "model": [task("model", args["model"], {{}}, ["model", "model.json"])],
        "precompute": [task("precompute", d, p, o) for d, p, o in args["precompute"]],
    }}
    out = Path(args["out"])
    ctx = TaskContext(stage="reference", task_id="k", index=0, params={{"shard": 1, "num_shards": 2}},
                      spec=ReferenceSpec(**args["spec"]), recipe={{}}, seed=0, run_dir=out, out_dir=out,
                      work_dir=out / ".work", inputs=inputs)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    run_reference(ctx)
    """
)


def test_sigkill_mid_shard_leaves_no_logprobs_and_the_rerun_matches(pipeline, stored, tmp_path):
    out = tmp_path / "killed"
    pre = [(str(t.dir), t.params, [p.name for p in t.outputs]) for t in pipeline["precompute"]]
    args = json.dumps({"out": str(out), "model": str(pipeline["model"].dir), "precompute": pre, "spec": SPEC})
    env = {**os.environ, SLOW_ENV: "3000"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(repo=str(REPO)), args], env=env)
    deadline = time.time() + 120
    while ledger_of(out / ".work") is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the task finished (or failed) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / OUTPUT).exists() and not list(out.glob(".logprobs*"))
    inputs = {"precompute": pipeline["precompute"], "model": [pipeline["model"]]}
    ctx = context(tmp_path, "reference", "x", ReferenceSpec(**SPEC), inputs, shard_params(1))
    ctx.out_dir, ctx.work_dir = out, out / ".work"
    assert run_reference(ctx) == [OUTPUT] and ctx.summary["resumed_from"] == 2
    resumed = ReferenceLogprobs([out / OUTPUT]).as_tensors()
    for name in CONDITIONS:
        assert torch.equal(resumed[name], stored.as_tensors()[name][3:])


# ---------------------------------------------------------------- reader checks


def test_reader_refuses_gaps_and_misaligned_shards(pipeline, stored):
    with pytest.raises(ValueError, match="incomplete reference set"):
        ReferenceLogprobs.from_inputs(pipeline["reference"][:1])
    with pytest.raises(IndexError):
        stored.lookup([NUM_TRAIN])
    swapped = PreferenceShards(
        [p for t in pipeline["precompute"][::-1] for p in t.outputs if p.suffix == ".h5"]
    )
    with pytest.raises(ValueError, match="record ids differ"):
        stored.check_aligned(swapped)


# ---------------------------------------------------------------- tasks and spec


def test_one_task_per_precompute_shard_and_none_when_online():
    spec = ReferenceSpec()
    doc = {"data": {"source": "demo", "num_train": 7}, "precompute": {"samples_per_shard": 3}}
    assert reference_tasks(spec, doc) == [shard_params(k, 3) for k in range(3)]
    assert reference_tasks(spec, {"precompute": {"num_shards": 2}}) == [shard_params(0), shard_params(1)]
    assert reference_tasks(spec, {**doc, "preference": {"reference": "online"}}) == []
    with pytest.raises(ValueError, match=r"needs a \[precompute\] section"):
        reference_tasks(spec, {"data": {}})


RECIPE = """
[run]
name = "ref"
output_root = "@RUNS@"

[data]
num_train = @N@
num_test = 0
min_image_size = 32
max_image_size = 48

[model]
source = "tiny"

[precompute]
@SHARDS@

[reference]
batch_size = 2
"""


def recipe_text(n: int = NUM_TRAIN, shards: str = "num_shards = 2") -> str:
    return RECIPE.replace("@N@", str(n)).replace("@SHARDS@", shards)


def test_plan_mirrors_the_precompute_shards(write_recipe):
    plan = build_plan(load_recipe(write_recipe(recipe_text(7, "samples_per_shard = 3"))))
    params = [t.params for t in plan.stage("precompute").tasks]
    assert [t.params for t in plan.stage("reference").tasks] == params and len(params) == 3
    assert plan.stage("reference").after == ["precompute", "model"] and plan.stage("reference").kind == "gpu"


def test_conditions_are_the_losses_conditions_and_are_validated(write_recipe):
    assert ReferenceSpec().conditions == CONDITIONS
    with pytest.raises(RecipeError, match="reference.conditions: value error, repeated conditions mw_cw_yw"):
        load_recipe(write_recipe(recipe_text() + 'conditions = ["mw_cw_yw", "mw_cw_yw"]\n'))
    with pytest.raises(RecipeError, match=r"reference.conditions.0: input should be 'mw_cw_yw'"):
        load_recipe(write_recipe(recipe_text() + 'conditions = ["mw_cw_y"]\n'))


# ---------------------------------------------------------------- the local executor


@pytest.mark.slow
def test_recipe_through_the_local_executor_resubmit_and_sigkill(write_recipe):
    recipe = load_recipe(write_recipe(recipe_text()))
    report = submit(recipe)
    assert report.ok, report
    run_dir, plan = recipe.run_dir, report.plan

    def inputs(stage: str) -> list[TaskInput]:
        out = []
        for t in plan.stage(stage).tasks:
            folder = run_dir / stage / t.task_id
            done = json.loads((folder / "DONE").read_text())
            out.append(
                TaskInput(stage, t.task_id, folder, t.params, tuple(folder / o for o in done["outputs"]))
            )
        return out

    stored = ReferenceLogprobs.from_inputs(inputs("reference"))
    shards = PreferenceShards.from_inputs(inputs("precompute"))
    stored.check_aligned(shards)
    first = stored.as_tensors()
    assert_close(first, naive_reference(model_dir(inputs("model")[0]), shards))
    assert [s.submitted for s in submit(recipe).stages] == [0, 0, 0, 0]

    # SIGKILL the whole submission (driver and jobs) mid-shard, then submit again
    for task in plan.stage("reference").tasks:
        shutil.rmtree(run_dir / "reference" / task.task_id)
    code = (
        "from mcmdpo.batch.recipe import load_recipe; from mcmdpo.batch.launch import submit; "
        f"submit(load_recipe({str(recipe.path)!r}))"
    )
    env = {**os.environ, SLOW_ENV: "4000"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, start_new_session=True)
    works = [run_dir / "reference" / t.task_id / ".work" for t in plan.stage("reference").tasks]
    deadline = time.time() + 240
    while not any(ledger_of(w) for w in works) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the submission ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for task in plan.stage("reference").tasks:
        folder = run_dir / "reference" / task.task_id
        assert not (folder / OUTPUT).exists() and not (folder / "DONE").exists()
    report = submit(recipe)
    assert report.ok and [s.submitted for s in report.stages] == [0, 0, 0, 2]
    again = ReferenceLogprobs.from_inputs(inputs("reference")).as_tensors()
    assert all(torch.equal(again[c], first[c]) for c in CONDITIONS)
    resumed = [
        json.loads((t.dir / "DONE").read_text())["summary"]["resumed_from"] for t in inputs("reference")
    ]
    assert max(resumed) == 2
