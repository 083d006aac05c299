"""Paper Fig. 7: the represent stage on the tiny model, the PCA, the distances and the report's figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mcmdpo.evaluation import represent
from mcmdpo.evaluation.generate import GenerationConfig, load_generator
from mcmdpo.report.collect import MetricsFile
from mcmdpo.report.representations import ModelPoints, pca_2d, project, records
from tests.helpers.eval import talt_files


def test_sample_is_seeded_and_independent_of_order():
    ids = list(range(50))
    first = represent.sample_ids(ids, 10, seed=1)
    assert len(first) == 10 and first == sorted(first)  # in the original order
    assert represent.sample_ids(ids[::-1], 10, seed=1) == first[::-1]  # same set, their order
    assert represent.sample_ids(ids, 10, seed=2) != first and represent.sample_ids(ids, 99, 0) == ids


def test_text_and_prompt_states_do_not_depend_on_batching(tiny_model, tmp_path):  # noqa: F811
    from mcmdpo.evaluation.benchmarks import read_items

    generator = load_generator(tiny_model / "model", GenerationConfig())
    texts = ["a red bus", "a red bus on a sunny day with a long tail of words", "sunny"]
    batched = represent.embed_texts(generator.model, generator.tokenizer, texts, batch_size=3)
    single = np.concatenate([represent.embed_texts(generator.model, generator.tokenizer, [t]) for t in texts])
    assert batched.shape == (3, 32) and np.allclose(batched, single, atol=1e-5)
    items = read_items("talt", talt_files(tmp_path / "talt", 3))
    prompts = represent.embed_prompts(generator, items, batch_size=3)
    alone = np.concatenate([represent.embed_prompts(generator, [i]) for i in items])
    assert prompts.shape == (3, 32) and np.allclose(prompts, alone, atol=1e-5)
    embedded = represent.represent_prompts(tiny_model / "model", items, 2, 0, GenerationConfig(batch_size=2))
    assert embedded.model.shape == embedded.reference.shape == (2, 32)
    wanted = {i.id: i.fields["chosen"] for i in items}
    again = represent.embed_texts(generator.model, generator.tokenizer, [wanted[i] for i in embedded.ids])
    assert np.allclose(embedded.reference, again, atol=1e-5)  # the reference read as plain text


def test_pca_is_deterministic_and_explains_a_line():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(40, 1))
    points = t @ rng.normal(size=(1, 6)) + 0.01 * rng.normal(size=(40, 6))
    coords, components, shares = pca_2d(points)
    assert shares[0] > 0.99 and np.allclose(np.linalg.norm(components, axis=1), 1)
    for k in range(2):  # sign: the largest-magnitude loading is positive
        assert components[k][np.argmax(np.abs(components[k]))] > 0
    shuffled = rng.permutation(40)
    again, _, _ = pca_2d(points[shuffled])
    assert np.allclose(again, coords[shuffled])
    u, singular, _ = np.linalg.svd(points - points.mean(axis=0))
    assert np.allclose(np.abs(coords[:, 0]), np.abs(u[:, 0] * singular[0]))  # an independent SVD


def fake(model: str, points: np.ndarray, reference: np.ndarray, mode: str = "generated") -> ModelPoints:
    doc = {"model": model, "benchmark": "palt", "kind": "represent", "mode": mode, "encoder": "/m"}
    file = MetricsFile("r", Path("/r"), "t", Path("/r/represent.json"), doc, {}, "g", 0)
    return ModelPoints(file, model, points, reference)


def test_distances_per_model_against_an_independent_formula():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(20, 8))
    near, far = truth + 0.1 * rng.normal(size=truth.shape), truth + 3.0 * rng.normal(size=truth.shape)
    rows = records(project([fake("base", far, truth), fake("mcmdpo", near, truth)]))
    for row, pts in zip(rows, (far, near), strict=True):
        assert row["mean_distance"] == pytest.approx(
            np.mean([np.linalg.norm(a - b) for a, b in zip(pts, truth, strict=True)])
        )
        cos = [1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(pts, truth, strict=True)]
        assert row["mean_cosine_distance"] == pytest.approx(np.mean(cos))
    assert (
        rows[1]["mean_distance"] < rows[0]["mean_distance"]
        and rows[1]["mean_distance_2d"] < rows[0]["mean_distance_2d"]
    )
    # generated: one ground truth in the PCA; prompt: one per model
    assert len(np.concatenate(project([fake("a", near, truth)]).references)) == 20
    prompt = project([fake("a", near, truth, "prompt"), fake("b", far, truth + 1, "prompt")])
    assert not np.allclose(prompt.references[0], prompt.references[1])


RECIPE = """
[run]
name = "fig7"
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
batch_size = 3
max_new_tokens = 6
[score]
protocols = ["paper"]
[score.nltk]
tokenizer = "treebank"
data_dirs = ["{nltk}"]
[report]
resamples = 0
representations = true
"""


def test_report_draws_fig7_from_the_represent_stage(tmp_path, nltk_data):  # noqa: F811
    from PIL import Image

    from mcmdpo.batch.launch import submit
    from mcmdpo.batch.recipe import load_recipe

    (tmp_path / "r.toml").write_text(RECIPE.format(runs=tmp_path / "runs", nltk=nltk_data))
    recipe = load_recipe(tmp_path / "r.toml")
    assert recipe.doc["represent"] == {"samples": 100, "benchmark": None, "mode": "generated", "seed": 0,
                                       "batch_size": 8, "dtype": "auto"}  # fmt: skip
    report = submit(recipe)
    assert report.ok, report.blocked_by
    (task,) = report.plan.stage("represent").tasks
    assert task.params == {"model": "base", "benchmark": "test"}
    done = json.loads((recipe.run_dir / "represent" / task.task_id / "represent.json").read_text())
    assert done["n"] == 5 and done["mode"] == "generated" and len(done["texts"]) == 5
    (folder,) = (recipe.run_dir / "report").iterdir()
    rows = list(csv.DictReader(open(folder / "representations.csv")))  # noqa: SIM115
    assert [(r["label"], r["n"]) for r in rows] == [("Tiny LLaVA", "5")]
    assert float(rows[0]["mean_distance"]) > 0
    assert "Representations (paper Fig. 7" in (folder / "table.md").read_text()
    image = np.asarray(Image.open(folder / "figures" / "representations.png").convert("RGB"))
    assert image.shape[0] > 200 and (image.min(axis=2) < 200).mean() > 0.01
    again = submit(load_recipe(tmp_path / "r.toml"))  # resubmitting reuses every finished task
    assert again.ok and sum(s.submitted for s in again.stages) == 0
