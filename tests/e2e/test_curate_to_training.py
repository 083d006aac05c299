"""Curated data all the way through: curate -> data (source = "curate") -> precompute -> sft (data =
"curate", through sft_data) -> reference -> preference -> eval -> score, on the tiny model, against
the local OpenAI-compatible server of the curation tests (in-process debug executor: small and fast)."""

from __future__ import annotations

import json

import pytest

from mcmdpo.batch.launch import submit
from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import load_recipe
from tests.helpers import curate as fx
from tests.helpers.judge import JudgeServer

pytestmark = pytest.mark.usefixtures("_release_process_group")  # in-process training: a gloo group

RECIPE = """
[run]
name = "curated"
output_root = "{runs}"

[cluster]
executor = "debug"

[curate]
raw_file = "{raw}"
images = "{images}"
shards = 2
on_bad_record = "skip"

[curate.llm]
base_url = "{url}"
model = "curator"
api_key_env = ""
timeout_s = 10.0
backoff_s = 0.01
cache_dir = "{cache}"

[curate.split]
sft = 0.5
preference = 0.3
test = 0.2

[data]
source = "curate"

[model]

[precompute]

[sft_data]

[sft]
data = "curate"
epochs = 1
global_batch_size = 2
micro_batch_size = 1
precision = "fp32"
gradient_checkpointing = false
data_workers = 1
deepspeed = {{ zero_optimization = {{ stage = 2 }} }}

[reference]

[preference]
epochs = 1
global_batch_size = 2
micro_batch_size = 1
precision = "fp32"
gradient_checkpointing = false
deepspeed = {{ zero_optimization = {{ stage = 2 }} }}

[eval]
benchmarks = ["test"]
max_new_tokens = 4

[score]
protocols = ["paper"]

[score.nltk]
tokenizer = "treebank"
data_dirs = ["{nltk}"]

[report]
resamples = 0
figures = false
"""


def test_curated_files_feed_sft_preference_and_evaluation(tmp_path, nltk_data):
    raw, images, _ = fx.make_raw(tmp_path / "raw")
    with JudgeServer(fx.CurationRules()) as server:
        path = tmp_path / "r.toml"
        fields = {"runs": tmp_path / "runs", "raw": raw, "images": images, "url": server.url}
        path.write_text(RECIPE.format(**fields, cache=tmp_path / "cache", nltk=nltk_data))
        recipe = load_recipe(path)
        plan = build_plan(recipe)
        after = {s: plan.stage(s).after for s in ("data", "sft_data", "sft")}
        assert after == {"data": ["curate_split"], "sft_data": ["curate_split"], "sft": ["model", "sft_data"]}
        report = submit(recipe)
    assert report.ok, report.blocked_by
    run = recipe.run_dir
    (data,) = [json.loads((d / "data.json").read_text()) for d in (run / "data").iterdir()]
    assert data["source"] == "curate"
    assert {s: data["splits"][s]["num_records"] for s in ("train", "test")} == {"train": 4, "test": 2}
    (shard,) = [json.loads((d / "DONE").read_text())["summary"] for d in (run / "sft_data").iterdir()]
    assert shard["num_samples"] == shard["kept_curated"] == 7  # the curation's sft.json
    (sft,) = [json.loads((d / "train.json").read_text()) for d in (run / "sft").iterdir()]
    assert sft["num_samples"] == 7 and sft["steps"] == 3
    (pref,) = [json.loads((d / "train.json").read_text()) for d in (run / "preference").iterdir()]
    assert pref["num_samples"] == 4 and pref["steps"] == 2
    metrics = sorted(p.relative_to(run / "score") for p in (run / "score").glob("*/metrics/*/test.json"))
    assert sorted(p.parts[-2] for p in metrics) == ["base", "preference", "sft"]
    assert all(json.loads((run / "score" / p).read_text())["num_predictions"] == 2 for p in metrics)
    (folder,) = [d for d in (run / "report").iterdir() if d.is_dir()]
    outputs = json.loads((folder / "DONE").read_text())["outputs"]
    assert {"table.md", "funnel.md", "funnel.csv"} <= set(outputs)  # figures = false: no PNG
    assert "| no verified rejected text |" in (folder / "funnel.md").read_text()


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCMDPO_TEST_PAUSE_MS", raising=False)
