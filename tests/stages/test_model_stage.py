"""Stage ``model``: tiny build (tokenizer from the data stage), external folders, fingerprints, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import RecipeError, load_recipe
from mcmdpo.batch.stage import TaskContext, TaskInput
from mcmdpo.method.model.folders import MODEL_MANIFEST as MANIFEST
from mcmdpo.method.model.folders import model_dir, model_fingerprint, upstream_model
from mcmdpo.stages.data import DataSpec, run_data
from mcmdpo.stages.model import ModelSpec, run_model

RECIPE = """
[run]
name = "m"
output_root = "@RUNS@"

[data]
num_train = 4
num_test = 0
min_image_size = 32
max_image_size = 48

[model]
source = "tiny"
hidden_size = 16
"""


def context(out: Path, stage: str, spec, inputs: dict | None = None, seed: int = 0) -> TaskContext:
    return TaskContext(
        stage=stage, task_id=stage[0], index=0, params={}, spec=spec, recipe={}, seed=seed, run_dir=out,
        out_dir=out / stage, work_dir=out / stage / ".work", inputs=inputs or {},
    )  # fmt: skip


def done_input(stage: str, folder: Path, outputs: list[str]) -> TaskInput:
    return TaskInput(stage, folder.name, folder, {}, tuple(folder / o for o in outputs))


@pytest.fixture(scope="module")
def data_task(tmp_path_factory) -> TaskInput:
    root = tmp_path_factory.mktemp("data")
    ctx = context(root, "data", DataSpec(num_train=8, num_test=0, min_image_size=32, max_image_size=48))
    return done_input("data", ctx.out_dir, run_data(ctx))


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory, data_task) -> TaskInput:
    root = tmp_path_factory.mktemp("tiny")
    ctx = context(root, "model", ModelSpec(hidden_size=16), {"data": [data_task]})
    return done_input("model", ctx.out_dir, run_model(ctx))


def test_tiny_model_is_built_atomically_with_a_data_trained_tokenizer(tmp_path, data_task, tiny_task):
    from mcmdpo.method.data.records import load_records
    from mcmdpo.method.model import load_llava

    folder = tiny_task.dir
    assert sorted(p.name for p in folder.iterdir()) == ["model", MANIFEST]  # no temp left
    info = json.loads((folder / MANIFEST).read_text())
    assert (info["source"], info["path"], info["config"]["text_hidden_size"]) == ("tiny", "model", 16)
    assert info["tokenizer_corpus"].startswith("data:train")
    assert info["fingerprint"] == model_fingerprint(folder / "model")
    model, processor = load_llava(model_dir(tiny_task))
    assert model.config.text_config.hidden_size == 16
    # the same model without a data stage: the built-in corpus tokenizes the demo texts worse
    builtin_ctx = context(tmp_path, "model", ModelSpec(hidden_size=16))
    run_model(builtin_ctx)
    assert json.loads((builtin_ctx.out_dir / MANIFEST).read_text())["tokenizer_corpus"] == "builtin"
    _, builtin = load_llava(builtin_ctx.out_dir / "model")
    train = data_task.dir / json.loads((data_task.dir / "data.json").read_text())["splits"]["train"]["file"]
    texts = [r.chosen for r in load_records(train)]
    ours = sum(len(processor.tokenizer(t)["input_ids"]) for t in texts)
    theirs = sum(len(builtin.tokenizer(t)["input_ids"]) for t in texts)
    assert ours < theirs


def test_rebuild_replaces_a_finished_folder_and_is_deterministic(tmp_path):
    ctx = context(tmp_path, "model", ModelSpec(hidden_size=16, num_layers=1))
    run_model(ctx)
    first = json.loads((ctx.out_dir / MANIFEST).read_text())["fingerprint"]
    (ctx.out_dir / ".model.999.tmp").mkdir()  # a killed attempt's temp folder
    run_model(ctx)  # the task died after the rename but before DONE: built again, same bytes
    assert json.loads((ctx.out_dir / MANIFEST).read_text())["fingerprint"] == first
    assert not list(ctx.out_dir.glob(".model.*"))
    other = context(tmp_path / "seed", "model", ModelSpec(hidden_size=16, num_layers=1), seed=1)
    run_model(other)
    assert json.loads((other.out_dir / MANIFEST).read_text())["fingerprint"] != first


def test_path_source_records_the_folder_and_upstream_model_finds_it(tmp_path, tiny_task):
    external = model_dir(tiny_task)
    spec = ModelSpec(source="path", path=str(external))
    ctx = context(tmp_path, "model", spec)
    assert run_model(ctx) == [MANIFEST]
    info = json.loads((ctx.out_dir / MANIFEST).read_text())
    assert info == {**info, "source": "path", "path": str(external), "mode": "pad"}
    assert info["fingerprint"] == model_fingerprint(external)
    assert (ctx.out_dir / "model").resolve() == external.resolve()  # link for direct readers
    task = done_input("model", ctx.out_dir, [MANIFEST])
    assert model_dir(task) == external
    sft = done_input("sft", tiny_task.dir, ["model"])
    consumer = context(tmp_path, "reference", None, {"model": [task], "sft": [sft]})
    assert upstream_model(consumer) == tiny_task.dir / "model"  # sft first
    assert upstream_model(consumer, prefer=("model",)) == external
    with pytest.raises(ValueError, match=r"add one of the sections \[sft\], \[model\]"):
        upstream_model(context(tmp_path, "reference", None))


def test_fingerprint_reads_small_files_and_only_sizes_of_large_ones(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llava_next"}')
    big = folder / "model-00001-of-00002.safetensors"
    big.write_bytes(b"\0" * (9 << 20))
    base = model_fingerprint(folder)
    big.write_bytes(b"\1" * (9 << 20))  # same size: weights are not read
    assert model_fingerprint(folder) == base
    big.write_bytes(b"\1" * ((9 << 20) + 1))
    sized = model_fingerprint(folder)
    assert sized != base
    (folder / "config.json").write_text('{"model_type": "llava"}')
    changed = model_fingerprint(folder)
    assert changed not in (base, sized)
    (folder / ".cache").mkdir()  # hub download metadata, temp files: not part of the model
    (folder / ".cache" / "lock").write_text("x")
    assert model_fingerprint(folder) == changed


def problems(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return [str(p) for p in info.value.problems]


def test_path_errors_name_the_file_line_and_field(write_recipe, tmp_path):
    missing = tmp_path / "no-such-model"
    body = RECIPE.replace('source = "tiny"\nhidden_size = 16', f'source = "path"\npath = "{missing}"')
    path = write_recipe(body)
    line = body.splitlines().index(f'path = "{missing}"') + 1
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line}: model.path: folder does not exist")
    missing.mkdir()
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line}: model.path: no config.json in the folder")
    (problem,) = problems(write_recipe(RECIPE.replace('source = "tiny"', 'source = "path"')))
    assert "model.path: source = 'path' needs path" in problem
    (problem,) = problems(write_recipe(RECIPE.replace("hidden_size = 16", 'path = "/x"')))
    assert "model.path: only used with source = 'path'" in problem
    (missing / "config.json").write_text("{}")
    (problem,) = problems(write_recipe(body + "hidden_size = 64\n"))
    assert "model: value error, hidden_size only apply to source = 'tiny'" in problem


def test_tiny_size_errors(write_recipe):
    (problem,) = problems(write_recipe(RECIPE.replace("hidden_size = 16", "image_size = 50")))
    assert "model: value error, image_size 50 is not a multiple of patch_size 14" in problem
    (problem,) = problems(write_recipe(RECIPE.replace("hidden_size = 16", "hidden_size = 18")))
    assert "hidden_size 18 must be a multiple of 4" in problem


def test_recipe_through_the_local_executor_and_resubmit_skips(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(RECIPE))
    report = submit(recipe)
    assert report.ok, report
    (task,) = report.plan.stage("model").tasks
    folder = recipe.run_dir / "model" / task.task_id
    done = json.loads((folder / "DONE").read_text())
    assert done["outputs"] == ["model", MANIFEST] and done["summary"]["size_mb"] > 0
    again = submit(recipe)
    assert [s.submitted for s in again.stages] == [0, 0]
    # the built folder as an external checkpoint, relative to the submit directory
    external = tmp_path / "copy"
    external.symlink_to(folder / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        body = RECIPE.replace('source = "tiny"\nhidden_size = 16', 'source = "path"\npath = "copy"')
        path_recipe = load_recipe(write_recipe(body.replace('name = "m"', 'name = "p"'), "p.toml"))
        assert path_recipe.doc["model"]["path"] == str(external)  # made absolute at validation
        report = submit(path_recipe)
    assert report.ok, report
    (task,) = report.plan.stage("model").tasks
    info = json.loads((path_recipe.run_dir / "model" / task.task_id / MANIFEST).read_text())
    assert info["path"] == str(external) and info["fingerprint"] == model_fingerprint(folder / "model")
