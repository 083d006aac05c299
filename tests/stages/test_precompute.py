"""The data and precompute stages end to end on small real files made here.

Covers both preprocessing modes (pad at 336 once, against an independent computation), every
rejected-image strategy, determinism across shard counts, the bad-record matrix, SIGKILL atomicity,
reuse, the data stage, and one recipe through the local executor.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mcmdpo.batch.artifacts import file_hash
from mcmdpo.batch.resumable import PAUSE_ENV as SLOW_ENV
from mcmdpo.batch.stage import TaskContext, TaskInput
from mcmdpo.method import noise
from mcmdpo.method.data.images import CLIP_MEAN, CLIP_STD, ImagePreprocessor, load_processor
from mcmdpo.method.data.records import BadRecord
from mcmdpo.method.data.shards import PreferenceShards, ShardReader, shard_content_hash
from mcmdpo.stages.data import DataSpec, run_data
from mcmdpo.stages.precompute import PrecomputeSpec, precompute_tasks, run_precompute
from tests.helpers.paths import REPO
from tests.helpers.precompute import (
    Q,
    S,
    context,
    encoded,
    make_dataset,
    picture,
    precompute,
    report_of,
    save_processor,
)
from tests.helpers.records import upstream_draw

# ---------------------------------------------------------------- preprocessing


def test_pad_mode_at_336_matches_an_independent_upstream_computation(tmp_path):
    processor = load_processor(save_processor(tmp_path / "p336", 336))
    image = picture(0, 200, 120)
    pixels = ImagePreprocessor(processor, "pad")(image)
    assert pixels.values.shape == (1, 3, 336, 336) and pixels.values.dtype == np.float32
    assert pixels.size == (120, 200)
    # upstream: expand2square with the mean colour, CLIP resize (bicubic) + crop, /255, normalise
    fill = tuple(int(x * 255) for x in CLIP_MEAN)
    canvas = Image.new("RGB", (200, 200), fill)
    canvas.paste(image, (0, 40))
    arr = np.asarray(canvas.resize((336, 336), Image.BICUBIC), dtype=np.float32) / 255.0
    expected = ((arr - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)).transpose(2, 0, 1)
    assert np.allclose(pixels.values[0], expected, atol=1e-5)
    border = (np.array(fill) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert np.allclose(pixels.values[0, :, 0, 168], border, atol=1e-5)  # top band is the mean colour


def test_anyres_mode_tiles_like_llava_next(processor_dir):
    processor = load_processor(processor_dir)
    pre = ImagePreprocessor(processor, "anyres")
    assert pre.max_patches == 5 and pre.patch_shape == (3, S, S)
    for (w, h), patches in (((90, 30), 3), ((30, 90), 3), ((60, 60), 5), ((20, 20), 2)):
        pixels = pre(picture(1, w, h))
        direct = processor(picture(1, w, h), return_tensors="np")
        assert pixels.values.shape == (patches, 3, S, S) and pixels.size == (h, w)
        assert np.array_equal(pixels.values, direct["pixel_values"][0])


# ---------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", noise.STRATEGIES)
def test_every_strategy(tmp_path, processor_dir, strategy):
    train, images = make_dataset(tmp_path / "data")
    (shard,) = precompute(tmp_path / "out", train, images, processor_dir, strategy=strategy, seed=5)
    reader = ShardReader(shard)
    pre = ImagePreprocessor(load_processor(processor_dir), "pad")
    n = len(reader)
    assert n == 7 and reader.attrs["strategy"] == strategy and reader.attrs["seed"] == 5
    for i in range(n):
        item = reader[i]
        pos = item["positions"]
        assert item["id"] == str(100 + pos) and item["rejected_context_positions"] == upstream_draw(pos, n)
        assert item["rejected_question"] == f"{Q}post number {item['rejected_context_positions']}"
        assert item["chosen"] == f"chosen {pos}" and item["rejected"] == f"rejected {pos}"
        image = Image.open(images / f"{pos:03d}.jpg").convert("RGB")
        chosen32 = pre(image).values
        assert np.array_equal(item["chosen_pixels"], chosen32.astype(np.float16))
        rejected, size = item["rejected_pixels"], tuple(item["rejected_image_size"])
        assert rejected.shape == (1, 3, S, S) and rejected.dtype == np.float16
        if strategy == "diffusion":
            rng = noise.sample_rng(5, 100 + pos, "diffusion", 700)
            expected = noise.add_diffusion_noise(chosen32, 700, rng)
            assert np.array_equal(rejected, expected.astype(np.float16)) and size == (
                image.height,
                image.width,
            )
        elif strategy == "black":  # LVUGAI/MCM-DPO llava/train/train.py (DPODataset.__getitem__), after
            # image = processor.preprocess(image, ...)['pixel_values'][0]:
            # elif self.data_args.use_image_type == 'black': diffusion_image = torch.zeros_like(image)
            assert not rejected.any() and size == (image.height, image.width)
        elif strategy == "black_rgb":  # the paper's "set all RGB values to 0", then preprocessed
            expected = pre(Image.new("RGB", image.size)).values.astype(np.float16)
            assert np.array_equal(rejected, expected) and size == (image.height, image.width)
            assert (rejected < -1).any()  # normalised black is -mean/std, not the tensor zeros of "black"
        elif strategy == "crop":  # upstream window: at most 240 wide x 320 tall (see test_parity.py)
            assert size == (min(320, image.height), min(240, image.width))
        elif strategy == "rotate":
            assert size == (image.height, image.width) and not np.array_equal(rejected, item["chosen_pixels"])
        elif strategy == "mdpo_crop":
            expected = noise.mdpo_crop(chosen32, noise.sample_rng(5, 100 + pos, "mdpo_crop"))
            assert np.array_equal(rejected, expected.astype(np.float16)) and size == (
                image.height,
                image.width,
            )
        else:  # random, coupled to the rejected context as upstream
            other = item["rejected_image_positions"]
            assert other == item["rejected_context_positions"] != pos
            assert np.array_equal(rejected, reader[other]["chosen_pixels"])


def test_anyres_shards_store_patch_counts_and_sizes(tmp_path, processor_dir):
    train, images = make_dataset(tmp_path / "data", n=4)
    (shard,) = precompute(tmp_path / "out", train, images, processor_dir, strategy="crop", mode="anyres")
    reader = ShardReader(shard)
    assert reader.attrs["max_patches"] == 5 and reader.attrs["mode"] == "anyres"
    pre = ImagePreprocessor(load_processor(processor_dir), "anyres")
    for i in range(4):
        item = reader[i]
        image = Image.open(images / f"{i:03d}.jpg").convert("RGB")
        expected = pre(image)
        assert np.array_equal(item["chosen_pixels"], expected.values.astype(np.float16))
        assert tuple(item["chosen_image_size"]) == (image.height, image.width)
        assert (
            item["rejected_pixels"].shape[0]
            == pre(noise.crop(image, noise.sample_rng(0, 100 + i, "crop"))).values.shape[0]
        )


@pytest.mark.parametrize("strategy", ["diffusion", "crop", "random"])
def test_same_tensors_whatever_the_shard_count(tmp_path, processor_dir, strategy):
    train, images = make_dataset(tmp_path / "data")
    one = PreferenceShards(
        precompute(tmp_path / "one", train, images, processor_dir, strategy=strategy, seed=3)
    )
    three = precompute(
        tmp_path / "three", train, images, processor_dir, strategy=strategy, seed=3, num_shards=3
    )
    assert [len(ShardReader(p)) for p in three] == [2, 2, 3]  # contiguous ranges [k*n//N, (k+1)*n//N)
    three_ds = PreferenceShards(three)
    assert len(one) == len(three_ds) == 7
    for i in range(7):
        a, b = one[i], three_ds[i]
        assert a["id"] == b["id"] and a["rejected_question"] == b["rejected_question"]
        assert np.array_equal(a["chosen_pixels"], b["chosen_pixels"])
        assert np.array_equal(a["rejected_pixels"], b["rejected_pixels"])
    other_seed = PreferenceShards(
        precompute(tmp_path / "s4", train, images, processor_dir, strategy=strategy, seed=4)
    )
    assert np.array_equal(other_seed[0]["chosen_pixels"], one[0]["chosen_pixels"])
    differs = [
        not np.array_equal(other_seed[i]["rejected_pixels"], one[i]["rejected_pixels"]) for i in range(7)
    ]
    # random (coupled to c_l, as upstream) draws nothing from the seed: c_l is seeded by position
    assert not any(differs) if strategy == "random" else any(differs)


# ---------------------------------------------------------------- bad records


def bad_overrides() -> dict[int, dict[str, Any]]:
    good = encoded(picture(99, 64, 48))
    return {
        1: {"bytes": None},  # missing file
        2: {"bytes": b"this is not an image"},
        3: {"bytes": good[: len(good) // 2]},
        4: {"bytes": encoded(picture(4, 500, 400))},  # 200,000 pixels > the limit below
        5: {"record": {"question": "q", "chosen": "   ", "rejected": "r", "text": None}},
        6: {"record": {"idx": 100}},  # duplicate of position 0
        7: {"record": {"image": {"path": "../outside.jpg"}}},
        8: {"record": {"text": "{broken json", "question": None, "chosen": None, "rejected": None}},
        9: {"bytes": encoded(picture(9, 64, 48).convert("CMYK"))},
        10: {"bytes": encoded(picture(10, 64, 48).convert("P"), "PNG"), "name": "010.png"},
        11: {"bytes": encoded(picture(11, 64, 48).convert("L"), "PNG"), "name": "011.png"},
        12: {"bytes": encoded(picture(12, 64, 48).convert("RGBA"), "PNG"), "name": "012.png"},
    }


def fix_records(train: Path) -> None:
    """Drop the None-valued keys the overrides used to delete fields."""
    records = json.loads(train.read_text())
    train.write_text(json.dumps([{k: v for k, v in r.items() if v is not None} for r in records]))


EXPECTED_SKIPS = {
    1: "missing_image",
    2: "unreadable_image",
    3: "truncated_image",
    4: "huge_image",
    5: "empty_text",
    6: "duplicate_id",
    7: "unsafe_path",
    8: "malformed_json",
}


@pytest.mark.parametrize("non_rgb", ["convert", "bad"])
def test_bad_record_matrix_with_skip(tmp_path, processor_dir, non_rgb):
    train, images = make_dataset(tmp_path / "data", n=14, overrides=bad_overrides())
    fix_records(train)
    (shard,) = precompute(
        tmp_path / "out",
        train,
        images,
        processor_dir,
        on_bad_record="skip",
        max_image_pixels=160_000,
        non_rgb=non_rgb,
    )
    report = report_of(shard)
    expected = dict(EXPECTED_SKIPS)
    if non_rgb == "bad":
        expected.update({9: "non_rgb", 10: "non_rgb", 11: "non_rgb", 12: "non_rgb"})
    assert {s["position"]: s["reason"] for s in report["skipped"]} == expected
    assert all(
        s["id"] == 100 + s["position"] and s["detail"] for s in report["skipped"] if s["position"] != 6
    )
    kept = sorted(set(range(14)) - set(expected))
    reader = ShardReader(shard)
    assert [reader[i]["positions"] for i in range(len(reader))] == kept
    assert report["num_samples"] == len(kept) and report["num_skipped"] == len(expected)
    assert reader.attrs["num_skipped"] == len(expected)
    if non_rgb == "convert":
        assert report["converted_modes"] == {"CMYK": 1, "P": 1, "L": 1, "RGBA": 1}
        cmyk = Image.open(images / "009.jpg").convert("RGB")
        pre = ImagePreprocessor(load_processor(processor_dir), "pad")
        assert np.array_equal(reader[kept.index(9)]["chosen_pixels"], pre(cmyk).values.astype(np.float16))


@pytest.mark.parametrize("position", [1, 3, 4, 5, 7])
def test_fail_names_the_file_the_record_and_the_cause(tmp_path, processor_dir, position):
    overrides = {position: bad_overrides()[position]}
    train, images = make_dataset(tmp_path / "data", n=8, overrides=overrides)
    fix_records(train)
    with pytest.raises(BadRecord) as info:
        precompute(tmp_path / "out", train, images, processor_dir, max_image_pixels=160_000)
    message = str(info.value)
    assert message.startswith(
        f"{train}: record {position + 1} (id={100 + position}): {EXPECTED_SKIPS[position]}: "
    )
    out = tmp_path / "out" / "shard0"
    assert not list(out.glob("shard-*")) and not list(out.glob(".*.tmp"))  # nothing half-written


def test_test_split_from_jsonl_with_a_malformed_line(tmp_path, processor_dir):
    _, images = make_dataset(tmp_path / "data", n=4)
    lines = [
        json.dumps({"image_path": f"{i:03d}.jpg", "question": f"{Q}q{i}", "chosen": f"c{i}", "idx": i})
        for i in range(4)
    ]
    lines.insert(2, '{"image_path": "002.jpg", "question": ')
    test_file = tmp_path / "data" / "test.json"
    test_file.write_text("\n".join(lines) + "\n")
    (shard,) = precompute(
        tmp_path / "out", test_file, images, processor_dir, split="test", on_bad_record="skip"
    )
    report = report_of(shard)
    assert [(s["position"], s["reason"]) for s in report["skipped"]] == [(2, "malformed_json")]
    reader = ShardReader(shard)
    assert len(reader) == 4 and reader[0]["rejected"] == "" and reader[3]["chosen"] == "c3"


# ---------------------------------------------------------------- atomicity and reuse


KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from mcmdpo.batch.stage import TaskContext
    from mcmdpo.stages.precompute import PrecomputeSpec, run_precompute
    args = json.loads(sys.argv[1])
    out = Path(args["out"])
    ctx = TaskContext(stage="precompute", task_id="t0", index=0, params={{"shard": 0, "num_shards": 1}},
                      spec=PrecomputeSpec(**args["spec"]), recipe={{"run": {{"name": "t"}}}}, seed=0,
                      run_dir=out, out_dir=out / "shard0", work_dir=out / "shard0" / ".work")
    run_precompute(ctx)
    """
)


def test_sigkill_mid_shard_leaves_no_shard_and_the_rerun_matches(tmp_path, processor_dir):
    train, images = make_dataset(tmp_path / "data", n=8)
    fields = {"data_file": str(train), "image_root": str(images), "processor_path": str(processor_dir)}
    (reference,) = precompute(tmp_path / "ref", train, images, processor_dir)
    out = tmp_path / "killed"
    env = {**os.environ, SLOW_ENV: "400"}
    args = json.dumps({"out": str(out), "spec": {**fields, "num_shards": 1}})
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(repo=str(REPO)), args], env=env)
    folder = out / "shard0"
    deadline = time.time() + 120
    while not list(folder.glob(".shard-*.tmp")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.6)  # a sample or two into the shard
    assert proc.poll() is None, "the task finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(folder.glob(".shard-*.tmp")), "the temp shard should be there (hidden)"
    assert not list(folder.glob("shard-*")), "no visible shard or report after SIGKILL"
    spec = PrecomputeSpec(**fields, num_shards=1)
    outputs = run_precompute(context(out, spec))
    assert not list(folder.glob(".*.tmp"))  # the stale temp is gone
    assert shard_content_hash(folder / outputs[0]) == shard_content_hash(reference)
    assert file_hash(folder / outputs[0]) == file_hash(reference)  # even byte-identical (no timestamps)


def test_a_complete_shard_is_reused_and_a_different_one_rebuilt(tmp_path, processor_dir):
    train, images = make_dataset(tmp_path / "data", n=3)
    (shard,) = precompute(tmp_path / "out", train, images, processor_dir)
    before = shard.stat().st_mtime_ns
    precompute(tmp_path / "out", train, images, processor_dir)
    assert shard.stat().st_mtime_ns == before
    precompute(tmp_path / "out", train, images, processor_dir, strategy="black")
    assert shard.stat().st_mtime_ns != before and ShardReader(shard).attrs["strategy"] == "black"


# ---------------------------------------------------------------- data stage, tasks, recipes


def data_context(out: Path, spec: DataSpec) -> TaskContext:
    return TaskContext(
        stage="data", task_id="d", index=0, params={}, spec=spec, recipe={}, seed=0, run_dir=out,
        out_dir=out / "data", work_dir=out / "data" / ".work",
    )  # fmt: skip


def test_demo_data_stage_feeds_precompute_with_the_model_processor(tmp_path, caplog):
    dctx = data_context(tmp_path, DataSpec(num_train=6, num_test=3, min_image_size=64, max_image_size=96))
    assert run_data(dctx) == ["data.json", "demo"] and dctx.summary == {"train": 6, "test": 3}
    manifest = json.loads((tmp_path / "data" / "data.json").read_text())
    assert manifest["splits"]["train"]["format"] == "json" and manifest["splits"]["test"]["format"] == "jsonl"
    model_dir = tmp_path / "model-task"
    save_processor(model_dir / "model")
    inputs = {
        "data": [TaskInput("data", "d", tmp_path / "data", {}, ())],
        "model": [TaskInput("model", "m", model_dir, {}, ())],
    }
    for split, count in (("train", 6), ("test", 3)):
        ctx = context(tmp_path / split, PrecomputeSpec(split=split), inputs=inputs)
        outputs = run_precompute(ctx)
        reader = ShardReader(ctx.out_dir / outputs[0])
        assert len(reader) == count
        assert ctx.summary == {"num_samples": count, "num_skipped": 0, "text_disagreements": 0}
        assert reader.attrs["processor_config"]["crop_size"] == {"height": S, "width": S}
        assert reader.attrs["source_sha256"] == manifest["splits"][split]["sha256"]
        assert reader[0]["chosen_pixels"].shape == (1, 3, S, S)
    (model_dir / "model.json").write_text(json.dumps({"path": "model", "mode": "anyres"}))
    with caplog.at_level("WARNING"):
        run_precompute(context(tmp_path / "mismatch", PrecomputeSpec(), inputs=inputs))
    assert "declares mode 'anyres'" in caplog.text


def test_demo_dataset_is_upstream_format_and_context_dependent(tmp_path):
    from mcmdpo.method.data.demo import make_demo_dataset
    from mcmdpo.method.data.records import load_records, resolve_image

    made = make_demo_dataset(tmp_path, num_train=40, num_test=5, min_size=64, max_size=96)
    train = load_records(tmp_path / made["train"]["file"])
    test = load_records(tmp_path / made["test"]["file"], split="test")
    assert len(train) == 40 and len(test) == 5 and all(r.problem is None for r in train + test)
    raw = json.loads((tmp_path / "train.json").read_text())
    assert any("question" in r for r in raw) and any("question" not in r for r in raw)  # both styles
    assert all(r.chosen != r.rejected and r.question.startswith("Given an image and context") for r in train)
    suffixes = {Path(r.image).suffix for r in train}
    assert suffixes == {".jpg", ".png"}
    for r in train[:5]:
        assert Image.open(resolve_image(tmp_path / made["train"]["images"], r.image)).size[0] >= 64
    aspects = {json.loads(r["origin_split"])["aspect"] for r in raw}
    assert {"count", "colour", "general"} <= aspects
    again = tmp_path / "again"
    make_demo_dataset(again, num_train=40, num_test=5, min_size=64, max_size=96)
    assert (again / "train.json").read_text() == (tmp_path / "train.json").read_text()  # seeded


def test_files_data_stage_records_hashes_and_checks_paths(tmp_path):
    train, images = make_dataset(tmp_path / "src", n=3)
    spec = DataSpec(source="files", train_file=str(train), train_images=str(images))
    dctx = data_context(tmp_path, spec)
    assert run_data(dctx) == ["data.json"]
    info = json.loads((tmp_path / "data" / "data.json").read_text())["splits"]["train"]
    assert info["sha256"] == file_hash(train) and info["num_records"] == 3 and info["file"] == str(train)
    with pytest.raises(ValueError, match="train_images"):
        DataSpec(source="files", train_file=str(train))
    with pytest.raises(ValueError, match="train_file\n.*file does not exist: .*nope.json"):
        DataSpec(source="files", train_file="nope.json", train_images=str(images))  # at validation
    with pytest.raises(ValueError, match="train_images\n.*folder does not exist"):
        DataSpec(source="files", train_file=str(train), train_images=str(tmp_path / "no-images"))


def test_tasks_one_per_shard(tmp_path):
    assert precompute_tasks(PrecomputeSpec(num_shards=3), {}) == [
        {"shard": k, "num_shards": 3} for k in range(3)
    ]
    assert len(precompute_tasks(PrecomputeSpec(), {})) == 1
    demo = {"data": {"source": "demo", "num_train": 10, "num_test": 4}}
    assert len(precompute_tasks(PrecomputeSpec(samples_per_shard=4), demo)) == 3
    assert len(precompute_tasks(PrecomputeSpec(samples_per_shard=4, split="test"), demo)) == 1
    train, _ = make_dataset(tmp_path, n=5)
    files = {"data": {"source": "files", "train_file": str(train)}}
    assert len(precompute_tasks(PrecomputeSpec(samples_per_shard=2), files)) == 3
    with pytest.raises(ValueError, match="num_shards"):
        precompute_tasks(PrecomputeSpec(samples_per_shard=2), {})
    with pytest.raises(ValueError, match="not both"):
        PrecomputeSpec(num_shards=2, samples_per_shard=3)


def test_demo_recipe_validates_and_plans():
    from mcmdpo.batch.plan import build_plan
    from mcmdpo.batch.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "demo.toml")
    plan = build_plan(recipe)
    assert [s.name for s in plan.stages][:6] == [
        "data",
        "model",
        "precompute",
        "sft",
        "reference",
        "preference",
    ]
    spec = recipe.stages["precompute"]
    assert len(plan.stage("precompute").tasks) == math.ceil(
        recipe.stages["data"].num_train / spec.samples_per_shard
    )


@pytest.mark.slow
def test_recipe_sweep_through_the_local_executor(write_recipe, processor_dir):
    from mcmdpo.batch.launch import submit
    from mcmdpo.batch.recipe import load_recipe

    body = f"""
    [run]
    name = "pre"
    output_root = "@RUNS@"
    plugins = ["mcmdpo.stages.data", "mcmdpo.stages.precompute"]

    [data]
    num_train = 6
    num_test = 0
    min_image_size = 64
    max_image_size = 96

    [precompute]
    num_shards = 2
    processor_path = "{processor_dir}"

    [sweep]
    "precompute.strategy" = ["diffusion", "black"]
    """
    recipe = load_recipe(write_recipe(body))
    report = submit(recipe)
    assert report.ok, report
    stage = report.plan.stage("precompute")
    assert len(stage.instances) == 2 and len({t.task_id for t in stage.tasks}) == 4
    for inst in stage.instances:
        tasks = []
        for t in inst.tasks:
            folder = recipe.run_dir / "precompute" / t.task_id
            done = json.loads((folder / "DONE").read_text())
            outputs = tuple(folder / o for o in done["outputs"])
            tasks.append(TaskInput("precompute", t.task_id, folder, t.params, outputs))
        ds = PreferenceShards.from_inputs(tasks)
        assert len(ds) == 6 and ShardReader(ds.paths[0]).attrs["strategy"] == inst.spec["strategy"]
    again = submit(recipe)
    assert [s.submitted for s in again.stages] == [0, 0]
