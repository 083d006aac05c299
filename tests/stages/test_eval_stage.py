"""The eval stage: batched generation, resume after SIGKILL, shard merge, metrics JSON, task fan-out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mcmdpo.batch.launch import submit
from mcmdpo.batch.recipe import load_recipe
from mcmdpo.evaluation.benchmarks import Item, read_items, shard_items
from mcmdpo.evaluation.generate import GenerationConfig, load_generator
from mcmdpo.stages.eval import EvalSpec, eval_tasks, run_eval
from mcmdpo.stages.score import ScoreSpec, score_tasks
from tests.helpers.eval import make_context, talt_files
from tests.helpers.paths import REPO


def test_batched_generation_equals_one_by_one(tiny_model, tmp_path):
    items = read_items("talt", talt_files(tmp_path, 5))
    for beams in (1, 3):
        config = GenerationConfig(max_new_tokens=12, num_beams=beams, batch_size=5)
        generator = load_generator(tiny_model / "model", config)
        batched = generator.generate(items)
        single = [generator.generate([item])[0] for item in items]
        assert batched == single, f"num_beams={beams}"
        assert all(n == 12 or n < 12 for _, n in batched)
    assert generator.prompt(items[1]).endswith("USER: <image>\nDescribe this image.\n ASSISTANT:")


def test_decode_stops_at_eos_and_drops_padding(tiny_model):
    generator = load_generator(tiny_model / "model", GenerationConfig())
    tok = generator.tokenizer
    words = tok("a red bus", add_special_tokens=False)["input_ids"]
    text, n = generator._decode([*words, tok.eos_token_id, *words, tok.pad_token_id])
    assert (text, n) == ("a red bus", len(words))


def test_shards_cover_items_once():
    items = [Item(i, "q", Path("x")) for i in range(10)]
    shards = [shard_items(items, s, 3) for s in range(3)]
    assert [len(s) for s in shards] == [3, 3, 4]
    assert [it.id for s in shards for it in s] == list(range(10))
    assert shard_items(items[:1], 1, 3) == []


def test_tasks_fan_out_over_models_benchmarks_shards(tmp_path):
    spec = EvalSpec(benchmarks=("test",), shards=2)
    doc = {"data": {}, "model": {}, "sft": {}, "preference": {}}
    tasks = eval_tasks(spec, doc)
    assert len(tasks) == 3 * 2 and tasks[0] == {
        "model": "base",
        "benchmark": "test",
        "shard": 0,
        "num_shards": 2,
    }
    assert [t["model"] for t in tasks[::2]] == ["base", "sft", "preference"]
    with pytest.raises(ValueError, match=r"eval.models: lists \['sft'\] but the recipe has no \[sft\]"):
        eval_tasks(EvalSpec(models=("sft",)), {"data": {}, "model": {}})
    with pytest.raises(ValueError, match="benchmark 'test' reads the \\[data\\] stage"):
        eval_tasks(EvalSpec(), {"model": {}})
    with pytest.raises(ValueError, match=r"benchmark 'objhal' needs its section \[eval.objhal\]"):
        EvalSpec(benchmarks=("objhal",))
    with pytest.raises(ValueError, match="unknown benchmark"):
        EvalSpec(benchmarks=("pope",))
    with pytest.raises(ValueError, match=r"protocols, nltk moved to the \[score\] section"):
        EvalSpec(protocols=["paper"], nltk={})
    mmhal = EvalSpec(benchmarks=("mmhal",), mmhal={"file": "x.json"}).model_dump(mode="json")
    with pytest.raises(ValueError, match=r"mmhal need\(s\) an LLM judge: add \[score.judge\]"):
        score_tasks(ScoreSpec(), {"eval": mmhal, "model": {}})
    judged = ScoreSpec(judge={"base_url": "http://127.0.0.1:1/v1"})
    assert score_tasks(judged, {"eval": mmhal, "model": {}}) == [{"model": "base", "benchmark": "mmhal"}]


# ---------------------------------------------------------------- resume after SIGKILL


def test_resume_after_sigkill_mid_shard(tiny_model, tmp_path, nltk_data):
    source = talt_files(tmp_path / "talt", 8)
    spec = {"batch_size": 1, "max_new_tokens": 48}
    args = {
        "root": str(tmp_path / "killed"),
        "model": str(tiny_model),
        "source": source,
        "nltk": nltk_data,
        "spec": spec,
    }
    code = f"from tests.helpers.eval import child_main; child_main({json.dumps(json.dumps(args))})"
    work = tmp_path / "killed" / "eval" / "task" / ".work"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ledger = next(work.glob("predictions.*.jsonl"), None)
        if ledger is not None and ledger.read_text().count("\n") >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the child finished before it could be killed"
    written = ledger.read_text().count("\n")
    assert 2 <= written < 8 and not (tmp_path / "killed" / "eval" / "task" / "predictions.jsonl").exists()
    with open(ledger, "a") as f:
        f.write('{"id": 999, "response": "torn wri')  # what a kill during a write leaves behind
    resumed = make_context(tmp_path / "killed", tiny_model, source, nltk_data, **spec)
    assert run_eval(resumed) == ["predictions.jsonl", "generation.json"]
    generation = json.loads((resumed.out_dir / "generation.json").read_text())
    assert generation["resumed_items"] == written and generation["generated_items"] == 8 - written
    fresh = make_context(tmp_path / "fresh", tiny_model, source, nltk_data, **spec)
    run_eval(fresh)
    killed_lines = (resumed.out_dir / "predictions.jsonl").read_text().splitlines()
    assert killed_lines == (fresh.out_dir / "predictions.jsonl").read_text().splitlines()
    record = json.loads(killed_lines[0])
    assert record["id"] == 100 and record["chosen"] == "ref 0" and record["model"] == "base"
    assert record["generation"]["max_new_tokens"] == 48 and record["prompt"].endswith(" ASSISTANT:")


# ---------------------------------------------------------------- the pipeline


RECIPE = """
[run]
name = "ev"
output_root = "{runs}"
[cluster]
executor = "debug"
[data]
source = "demo"
num_train = 4
num_test = 5
min_image_size = 32
max_image_size = 48
[model]
source = "tiny"
[eval]
benchmarks = ["test"]
shards = 2
batch_size = 2
max_new_tokens = 8
[score]
protocols = ["paper"]
[score.nltk]
tokenizer = "treebank"
tagger = "{tagger}"
data_dirs = ["{nltk}"]
"""


def test_pipeline_writes_metrics_and_rescoring_keeps_generations(tmp_path, nltk_data):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(runs=tmp_path / "runs", nltk=nltk_data, tagger="perceptron"))
    recipe = load_recipe(path)
    report = submit(recipe)
    assert report.ok, report.blocked_by
    assert [s.stage for s in report.stages] == ["data", "model", "eval", "score", "report"]
    (score_task,) = report.plan.stage("score").tasks
    folder = recipe.run_dir / "score" / score_task.task_id
    metrics = json.loads((folder / "metrics" / "base" / "test.json").read_text())
    assert metrics["model"] == "base" and metrics["benchmark"] == "test" and metrics["kind"] == "altext"
    assert metrics["num_predictions"] == 5 and len(metrics["eval_tasks"]) == 2
    assert set(metrics["metrics"]) == {"paper"} and metrics["metrics"]["paper"]["num_samples"] == 5
    assert metrics["generation"]["max_new_tokens"] == 8 and metrics["deviations"]
    generation = metrics["generation"]  # the inference settings as run (issue 11: template, dtype)
    assert [generation[k] for k in ("template", "dtype", "engine")] == ["llava_v1", "float32", "hf"]
    assert "generation dtype=float32 (upstream mcmdpo_inference.py: float16)" in metrics["deviations"]
    merged = [
        json.loads(x) for x in (folder / "predictions" / "base" / "test.jsonl").read_text().splitlines()
    ]
    test_file = next((recipe.run_dir / "data").glob("*/demo/test.jsonl"))
    assert [r["id"] for r in merged] == [json.loads(x)["idx"] for x in test_file.read_text().splitlines()]
    samples = (folder / "metrics" / "base" / "test.samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in samples] == [r["id"] for r in merged]
    done = json.loads((folder / "DONE").read_text())
    assert "metrics/base/test.json" in done["outputs"] and "predictions/base/test.jsonl" in done["outputs"]

    # A scoring-only change keeps every eval task (same ids, nothing generated) and re-scores.
    path.write_text(RECIPE.format(runs=tmp_path / "runs", nltk=nltk_data, tagger="wordnet"))
    again = submit(load_recipe(path))
    assert again.ok and again.stages[2].submitted == 0 and again.stages[3].submitted == 1
    assert [t.task_id for t in again.plan.stage("eval").tasks] == [
        t.task_id for t in report.plan.stage("eval").tasks
    ]
    (score2,) = again.plan.stage("score").tasks
    assert score2.task_id != score_task.task_id
    metrics2 = json.loads(
        (recipe.run_dir / "score" / score2.task_id / "metrics" / "base" / "test.json").read_text()
    )
    assert metrics2["metrics"]["paper"] == metrics["metrics"]["paper"]  # same predictions, same scores


def test_pipeline_hallucination_benchmarks(tmp_path, nltk_data, monkeypatch):
    """objhal + mmhal + amber in their file formats: generated by a tiny model, judged on 127.0.0.1."""
    from tests.helpers.amber import ANNOTATIONS, METRICS_TXT, RELATION
    from tests.helpers.judge import JudgeServer, completion
    from tests.helpers.objhal import SYNONYMS, png_b64, write_coco

    monkeypatch.setenv("MCMDPO_TEST_JUDGE_KEY", "secret-key-value")
    (tmp_path / "syn.txt").write_text(SYNONYMS)
    objhal = [
        {"image_id": i, "question": "Describe this image in detail.", "image": png_b64((9 * i, 0, 0))}
        for i in (1, 2, 3)
    ]
    (tmp_path / "obj.jsonl").write_text("".join(json.dumps(x) + "\n" for x in objhal))
    write_coco(tmp_path / "coco")
    mm_images = tmp_path / "mmhal_images"
    mm_images.mkdir()
    template = []
    for i, kind in enumerate(
        ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic", "other")
    ):
        Image.new("RGB", (30 + i, 20), (i * 20, 50, 50)).save(mm_images / f"img{i}.jpg")
        template.append({"question_type": kind, "question_topic": "t", "image_id": f"id{i}",
                         "image_src": f"https://example.invalid/x/img{i}.jpg", "image_content": ["Cat"],
                         "question": f"What is {i}?", "gt_answer": "A cat.", "model_answer": ""})  # fmt: skip
    (tmp_path / "mmhal.json").write_text(json.dumps(template, indent=2))
    amber = tmp_path / "amber"
    (amber / "query").mkdir(parents=True)
    (amber / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (amber / "relation.json").write_text(json.dumps(RELATION))
    (amber / "safe_words.txt").write_text("orange\nlight")
    (amber / "metrics.txt").write_text(METRICS_TXT)
    queries = [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in (1, 2, 3)]
    (amber / "query" / "query_generative.json").write_text(json.dumps(queries))
    (tmp_path / "amber_images").mkdir()
    for i in (1, 2, 3):
        Image.new("RGB", (24, 24 + i), (0, 0, 60 * i)).save(tmp_path / "amber_images" / f"AMBER_{i}.jpg")
    with JudgeServer(lambda body, attempt: (200, {}, completion("Fine.\nRating: 4"), 0)) as server:
        recipe_text = f"""
        [run]
        name = "hal"
        output_root = "{tmp_path / "runs"}"
        [cluster]
        executor = "debug"
        [model]
        source = "tiny"
        [eval]
        benchmarks = ["objhal", "mmhal", "amber"]
        max_new_tokens = 6
        batch_size = 4
        [eval.objhal]
        file = "{tmp_path / "obj.jsonl"}"
        coco_dir = "{tmp_path / "coco"}"
        synonyms = "{tmp_path / "syn.txt"}"
        [eval.mmhal]
        file = "{tmp_path / "mmhal.json"}"
        images = "{mm_images}"
        [eval.amber]
        data_dir = "{amber}"
        images = "{tmp_path / "amber_images"}"
        [score.nltk]
        tokenizer = "treebank"
        tagger = "wordnet"
        data_dirs = ["{nltk_data}"]
        [score.amber]
        similarity = "exact"
        [score.judge]
        base_url = "{server.url}"
        model = "judge-x"
        api_key_env = "MCMDPO_TEST_JUDGE_KEY"
        """
        (tmp_path / "r.toml").write_text("\n".join(line.strip() for line in recipe_text.splitlines()))
        recipe = load_recipe(tmp_path / "r.toml")
        report = submit(recipe)
        assert report.ok, report.blocked_by
        assert len(server.requests) == 8
    docs = {}
    for task in report.plan.stage("score").tasks:
        bench = task.params["benchmark"]
        docs[bench] = json.loads(
            (recipe.run_dir / "score" / task.task_id / "metrics" / "base" / f"{bench}.json").read_text()
        )
    assert {b: d["num_predictions"] for b, d in docs.items()} == {"objhal": 3, "mmhal": 8, "amber": 3}
    assert docs["mmhal"]["metrics"]["score"] == 4.0 and docs["mmhal"]["metrics"]["hallucination_rate"] == 0.0
    assert docs["mmhal"]["metrics"]["judge"]["returned_models"] == ["judge-2024-01-01"]
    assert set(docs["mmhal"]["metrics"]["per_type"]) == set(mmhal_types())
    assert {"response_level", "response_level_all", "mention_level", "recall", "mean_length"} <= set(
        docs["objhal"]["metrics"]
    )
    assert {"chair", "cover", "hal", "cog"} <= set(docs["amber"]["metrics"])
    assert any("similarity=exact" in d for d in docs["amber"]["deviations"])
    assert any("tagger=wordnet" in d for d in docs["amber"]["deviations"])
    for path in recipe.run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".pkl", ".out", ".err"):
            assert b"secret-key-value" not in path.read_bytes(), path


def mmhal_types() -> tuple[str, ...]:
    from mcmdpo.evaluation.metrics.mmhal import QUESTION_TYPES

    return QUESTION_TYPES


def test_bad_alt_text_records_are_named(tmp_path):
    source = talt_files(tmp_path, 2)
    lines = Path(source["file"]).read_text().splitlines()
    bad = json.loads(lines[1])
    bad["image_path"] = bad["image"]["path"] = "../outside.png"
    Path(source["file"]).write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(
        ValueError, match=r"t_test.json: record 2 \(id=101\): image_path: image path .* contains '..'"
    ):
        read_items("talt", source)
    del bad["chosen"]
    bad["image_path"] = bad["image"]["path"] = "1.png"
    Path(source["file"]).write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"record 2 \(id=101\): missing_field: missing chosen"):
        read_items("talt", source)
