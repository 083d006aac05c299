"""Zero-shot baselines: tiny models of six transformers families through the real eval stage, the
few-shot prompt, remote-code refusal, sizing on the meta device, GPU placement, and an API endpoint
(a fake server on 127.0.0.1: 429, 500, timeouts, the image payloads, the cache, the key)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mcmdpo.batch.stage import TaskContext
from mcmdpo.evaluation.baselines.checkpoints import count_parameters, memory_gb, placement
from mcmdpo.evaluation.baselines.prompt import pick_examples, render_prompt
from mcmdpo.evaluation.baselines.spec import BaselineSpec
from mcmdpo.smoke.families import FAMILIES, build_family
from mcmdpo.stages.eval import EvalSpec, run_eval
from tests.helpers.eval import talt_files
from tests.helpers.judge import JudgeServer, completion

ALT_TEXTS = ["A red bus on a street.", "Two dogs on a beach.", "A poster that says SALE.", "A cat asleep."]
CHAT_ENDS = {
    "llava_next": " ASSISTANT:",
    "vipllava": "###Assistant:",
    "qwen2_vl": "<|im_start|>assistant\n",
    "qwen2_5_vl": "<|im_start|>assistant\n",
    "idefics3": "\nAssistant:",
    "instructblip": "Alt-text for this image:",  # no chat template: the text alone
    "chameleon": "Alt-text for this image:<image>",  # no chat template: text, then the image
}


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_family(family, root / family, seed=1)
        return built[family]

    return get


def examples_file(folder: Path) -> Path:
    """A training file (upstream preference JSON) whose chosen texts are :data:`ALT_TEXTS`."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"idx": i, "image": "x.png", "question": "q", "chosen": t, "rejected": "r"}
               for i, t in enumerate(ALT_TEXTS)]  # fmt: skip
    path = folder / "train.json"
    path.write_text(json.dumps(records))
    return path


def baseline_context(
    root: Path, source: dict[str, str], baselines: list[dict[str, Any]], **spec: Any
) -> TaskContext:
    settings = EvalSpec.model_validate(
        {"benchmarks": ["talt"], "talt": source, "examples": {"talt": str(examples_file(root / "ex"))},
         "baselines": baselines, "max_new_tokens": 5, "batch_size": 2, **spec}
    )  # fmt: skip
    out = root / "eval" / "task"
    (out / ".work").mkdir(parents=True, exist_ok=True)
    name = baselines[0]["name"]
    return TaskContext(
        stage="eval", task_id="task", index=0,
        params={"model": name, "benchmark": "talt", "shard": 0, "num_shards": 1},
        spec=settings, recipe={"eval": settings.model_dump(mode="json"), "score": SCORE},
        seed=7, run_dir=root, out_dir=out, work_dir=out / ".work",
    )  # fmt: skip


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- every family through the eval stage


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_generates_through_the_eval_stage(family, family_dir, tmp_path):
    source = talt_files(tmp_path / "talt", 3)
    entry = {"name": f"tiny-{family}", "model": str(family_dir(family)), "label": family}
    ctx = baseline_context(tmp_path, source, [entry])
    assert run_eval(ctx) == ["predictions.jsonl", "generation.json"]
    records = read_lines(ctx.out_dir / "predictions.jsonl")
    assert [r["id"] for r in records] == [100, 101, 102] and all(
        r["model"] == f"tiny-{family}" for r in records
    )
    expected = pick_examples(Path(ctx.spec.examples["talt"]), 2, seed=7)
    for record in records:
        assert record["prompt"].endswith(CHAT_ENDS[family]), record["prompt"]
        assert f"1. {expected[0]}\n2. {expected[1]}\n" in record["prompt"]
        assert 0 <= record["num_tokens"] <= 5 and isinstance(record["response"], str)
        generation = record["generation"]
        assert generation["examples"] == list(expected) and generation["do_sample"] is False
        assert generation["dtype"] == "float32" and generation["model"] == str(family_dir(family))
    info = json.loads((ctx.out_dir / "generation.json").read_text())
    assert info["generated_items"] == 3 and info["model_dir"] == str(family_dir(family))
    again = baseline_context(tmp_path, source, [entry])  # same key: reused, nothing generated
    run_eval(again)
    assert json.loads((again.out_dir / "generation.json").read_text())["key"] == info["key"]


def test_batches_equal_one_by_one(family_dir, tmp_path):
    """Left padding through the processor keeps each item's greedy output (LLaVA-NeXT, Qwen2-VL)."""
    from mcmdpo.evaluation.baselines.hf import load_hf_generator
    from mcmdpo.evaluation.baselines.prompt import BaselineRun
    from mcmdpo.evaluation.benchmarks import read_items

    items = read_items("talt", talt_files(tmp_path / "talt", 3))
    for family in ("llava_next", "qwen2_vl", "instructblip"):
        run = BaselineRun(
            name="b",
            kind="hf",
            model=str(family_dir(family)),
            revision=None,
            dtype="float32",
            max_new_tokens=6,
            batch_size=3,
            prompt="{question}",
            system=None,
            examples=(),
        )
        generator = load_hf_generator(run.model, run)
        assert generator.generate(items) == [generator.generate([it])[0] for it in items], family


def test_parameters_counted_on_the_meta_device(family_dir):
    from transformers import AutoModelForImageTextToText

    for family in ("llava_next", "qwen2_vl"):
        folder = str(family_dir(family))
        real = AutoModelForImageTextToText.from_pretrained(folder)
        assert count_parameters(folder) == sum(p.numel() for p in real.parameters())
    assert count_parameters("nobody/not-in-the-cache") is None


# ---------------------------------------------------------------- prompt, validation, placement


def test_few_shot_examples_are_deterministic_per_seed(tmp_path):
    file = examples_file(tmp_path)
    first = pick_examples(file, 2, seed=0)
    assert first == pick_examples(file, 2, seed=0) and set(first) <= set(ALT_TEXTS) and len(set(first)) == 2
    assert {pick_examples(file, 2, seed=s) for s in range(8)} != {first}  # other seeds, other examples
    assert (
        render_prompt("{question}\nE:\n{examples}\nA:", "Q?", first)
        == f"Q?\nE:\n1. {first[0]}\n2. {first[1]}\nA:"
    )
    assert render_prompt("{question} {examples}", "Q?", ()) == "Q?"
    with pytest.raises(ValueError, match="few_shot = 5 needs 5 usable alt-texts, the file has 4"):
        pick_examples(file, 5, seed=0)


def test_entries_are_checked_at_validation(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "qwen", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(ValueError, match="runs code from its repository; set trust_remote_code = true"):
        BaselineSpec(name="q", model=str(remote))
    assert BaselineSpec(name="q", model=str(remote), trust_remote_code=True).trust_remote_code
    with pytest.raises(ValueError, match="Qwen/Qwen-VL-Chat runs code from its repository"):
        BaselineSpec(name="q", model="Qwen/Qwen-VL-Chat")  # not in the cache: known to need remote code
    BaselineSpec(name="l", model="llava-hf/llava-v1.6-vicuna-13b-hf")
    with pytest.raises(ValueError, match=r"prompt must contain \{question\} and \{examples\}"):
        BaselineSpec(name="l", model="m/m", prompt="{question} only")
    with pytest.raises(ValueError, match="kind = 'api' needs an \\[eval.baselines.api\\] table"):
        BaselineSpec(name="a", model="gpt", kind="api")
    talt = talt_files(tmp_path / "talt", 1)
    with pytest.raises(ValueError, match=r"name\(s\) \['sft'\] repeated or taken by a trained model"):
        EvalSpec(benchmarks=("talt",), talt=talt, baselines=[{"name": "sft", "model": "m/m", "few_shot": 0}])
    with pytest.raises(
        ValueError, match="examples.talt: baselines \\['b'\\] take few-shot alt-texts on talt"
    ):
        EvalSpec(benchmarks=("talt",), talt=talt, baselines=[{"name": "b", "model": "m/m"}])


SCORE = {"protocols": ["paper"], "nltk": {"tokenizer": "treebank", "tagger": "wordnet"}}
A100 = {"gpus_per_node": 1, "tasks_per_node": 1, "gpu_mem_gb": 80, "node_gpus": 8}


def test_placement_from_size_dtype_and_the_profiles_gpus(family_dir):
    def entry(**kw: Any) -> BaselineSpec:
        return BaselineSpec(**{"name": "b", "model": "org/not-cached", "few_shot": 0, **kw})

    assert placement(entry(params_b=13), A100) == {}  # 13e9 x 2 bytes x 1.2 = 29 GiB: one GPU
    assert placement(entry(params_b=34.8), A100) == {}  # LLaVA-NeXT 34B: 78 GiB, one 80 GiB GPU
    assert placement(entry(params_b=40), A100) == {"gpus_per_node": 2, "tasks_per_node": 1}  # 89 GiB
    assert placement(entry(params_b=40, dtype="float32"), A100) == {"gpus_per_node": 4, "tasks_per_node": 1}
    with pytest.raises(
        ValueError, match=r"needs ~1006 GiB in bfloat16 .* more than a node's 8 x 80 GiB GPUs"
    ):
        placement(entry(params_b=450, dtype="bfloat16"), A100)
    with pytest.raises(ValueError, match="cannot size org/not-cached: .* set params_b"):
        placement(entry(), A100)
    assert placement(entry(), {"gpus_per_node": 0}) == {}  # a profile without GPU facts: no placement
    assert placement(entry(kind="api", api={"base_url": "http://x/v1"}, params_b=900), A100) == {}
    tiny = entry(model=str(family_dir("llava_next")), params_b=500)  # a readable config wins over params_b
    assert memory_gb(tiny) == count_parameters(tiny.model) * 2 * 1.2 / 2**30


# ---------------------------------------------------------------- an API endpoint


def image_of(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_api_baseline_retries_and_sends_the_images(tmp_path, monkeypatch):
    monkeypatch.setenv("MCMDPO_TEST_VLM_KEY", "sk-vlm-secret-456")
    source = talt_files(tmp_path / "talt", 4)

    def behave(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, str], Any, float]:
        content = body["messages"][-1]["content"]
        size = image_of(content[0]["image_url"]["url"]).size
        if size[0] == 40 and attempt == 1:
            return 429, {"Retry-After": "0.01"}, {"error": "slow down"}, 0
        if size[0] == 49 and attempt <= 2:
            return 500, {}, {"error": "oops"}, 0
        if size[0] == 58 and attempt == 1:
            return 200, {}, completion("late"), 1.0  # past timeout_s: retried
        return 200, {}, completion(f"an image {size[0]}x{size[1]}", model="vlm-2025"), 0

    api = {"base_url": "", "api_key_env": "MCMDPO_TEST_VLM_KEY", "backoff_s": 0.01, "timeout_s": 0.4,
           "concurrency": 2, "image_detail": "low"}  # fmt: skip
    with JudgeServer(behave) as server:
        entry = {
            "name": "vlm",
            "kind": "api",
            "model": "vlm-x",
            "label": "VLM",
            "api": {**api, "base_url": server.url},
        }
        ctx = baseline_context(tmp_path, source, [entry], batch_size=8)
        run_eval(ctx)
        requests = [r["body"] for r in server.requests]
        assert server.max_in_flight <= 2
    records = read_lines(ctx.out_dir / "predictions.jsonl")
    for k, record in enumerate(records):
        original = Image.open(Path(source["images"]) / f"{k}.png")
        assert record["response"] == f"an image {original.size[0]}x{original.size[1]}"
    assert len(requests) == 4 + 1 + 2 + 1  # 429 once, 500 twice, one timeout
    body = requests[-1]
    assert body["model"] == "vlm-x" and body["temperature"] == 0.0 and body["max_tokens"] == 5
    text, image = body["messages"][0]["content"][1], body["messages"][0]["content"][0]
    assert image["image_url"]["detail"] == "low" and text["type"] == "text"
    assert text["text"] in {r["prompt"] for r in records}
    sent = image_of(image["image_url"]["url"])
    assert any(sent.tobytes() == Image.open(Path(source["images"]) / f"{k}.png").tobytes() for k in range(4))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(
        "sk-vlm-secret" in p.read_text(errors="ignore") for p in written
    )  # the key is never written
    assert list((tmp_path / "llm-cache").rglob("*.jsonl"))  # replies cached under the run dir

    with JudgeServer(behave) as server:  # a re-run with another output folder: every reply from the cache
        entry["api"]["base_url"] = server.url
        fresh = baseline_context(tmp_path / "again", source, [entry], batch_size=8)
        fresh.run_dir = tmp_path
        run_eval(fresh)
        assert server.requests == []


# ---------------------------------------------------------------- recipes: tasks, placement, refusal


BASELINES_ONLY = """
[run]
name = "bl"
output_root = "@RUNS@"
[cluster]
profile = "a100"
[eval]
benchmarks = ["talt"]
shards = 2
[eval.talt]
file = "@FILE@"
images = "@IMAGES@"
[[eval.baselines]]
name = "small"
model = "org/small"
few_shot = 0
params_b = 7
[[eval.baselines]]
name = "big"
model = "org/big"
few_shot = 0
params_b = @BIG@
"""


def test_a_recipe_of_baselines_alone_plans_tasks_with_their_gpus(write_recipe, tmp_path):
    from mcmdpo.batch.launch import _resource_groups
    from mcmdpo.batch.plan import build_plan
    from mcmdpo.batch.recipe import RecipeError, load_recipe

    source = talt_files(tmp_path / "talt", 2)
    body = BASELINES_ONLY.replace("@FILE@", source["file"]).replace("@IMAGES@", source["images"])
    plan = build_plan(load_recipe(write_recipe(body.replace("@BIG@", "70"))))
    assert [s.name for s in plan.stages] == ["eval", "score", "report"]
    tasks = plan.stage("eval").tasks
    assert [(t.params["model"], t.params["shard"]) for t in tasks] == [
        ("small", 0),
        ("small", 1),
        ("big", 0),
        ("big", 1),
    ]
    assert [t.resources for t in tasks] == [
        {},
        {},
        *[{"gpus_per_node": 2, "tasks_per_node": 1}] * 2,
    ]  # 156 GiB
    assert tasks[2].resources_in(plan.stage("eval"))["gpus_per_node"] == 2
    assert [len(g) for g in _resource_groups(tasks)] == [2, 2]  # one array per GPU count
    assert [t.params for t in plan.stage("score").tasks] == [{"model": "small", "benchmark": "talt"},
                                                           {"model": "big", "benchmark": "talt"}]  # fmt: skip
    path = write_recipe(body.replace("@BIG@", "400"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    line = [n for n, text in enumerate(path.read_text().splitlines(), 1) if text == "[[eval.baselines]]"][1]
    assert str(info.value) == (
        f"{path}:{line}: eval.baselines.1: org/big needs ~894 GiB in 16-bit (dtype auto) (parameters x "
        "dtype + 20%), more than a node's 8 x 80 GiB GPUs"
    )


# ---------------------------------------------------------------- repository code (chat-style models)

REMOTE_CODE = '''
import torch
from transformers import PreTrainedConfig, PreTrainedModel


class TinyChatConfig(PreTrainedConfig):
    model_type = "minicpmv"

    def __init__(self, hidden=4, **kwargs):
        self.hidden = hidden
        super().__init__(**kwargs)


class TinyChat(PreTrainedModel):
    """MiniCPM-V's interface: chat(image, msgs, context, tokenizer, sampling, ...) -> (text, ...)."""

    config_class = TinyChatConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.hidden, config.hidden)
        self.post_init()

    def chat(self, image, msgs, context, tokenizer, sampling=True, max_new_tokens=8, **kwargs):
        assert sampling is False and context is None and msgs[0]["role"] == "user"
        return (f"{image.size[0]}x{image.size[1]} " + " ".join(msgs[0]["content"].split()[:2]), None, None)
'''


def remote_chat_model(folder: Path) -> Path:
    """A local model whose repository code (``modeling_tiny.py``) has a MiniCPM-V style ``chat``."""
    from transformers import AutoConfig, AutoModel

    from mcmdpo.smoke.families import _tokenizer

    folder.mkdir(parents=True)
    (folder / "modeling_tiny.py").write_text(REMOTE_CODE)
    auto_map = {"AutoConfig": "modeling_tiny.TinyChatConfig", "AutoModel": "modeling_tiny.TinyChat"}
    (folder / "config.json").write_text(
        json.dumps({"model_type": "minicpmv", "auto_map": auto_map, "hidden": 4})
    )
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    AutoModel.from_config(config, trust_remote_code=True).save_pretrained(folder)
    _tokenizer(()).save_pretrained(folder)
    return folder


def test_repository_code_chat_model_needs_trust_and_generates(tmp_path):
    folder = remote_chat_model(tmp_path / "remote-chat")
    source = talt_files(tmp_path / "talt", 2)
    entry = {"name": "chatty", "model": str(folder), "few_shot": 0}
    with pytest.raises(ValueError, match="runs code from its repository; set trust_remote_code = true"):
        baseline_context(tmp_path, source, [entry])
    ctx = baseline_context(tmp_path, source, [{**entry, "trust_remote_code": True}])
    run_eval(ctx)
    records = read_lines(ctx.out_dir / "predictions.jsonl")
    assert [r["response"] for r in records] == ["40x30 Given an", "49x35 Describe this"]
    assert all(r["num_tokens"] > 0 and r["generation"]["trust_remote_code"] for r in records)


# ---------------------------------------------------------------- the whole pipeline and its report

PIPELINE = """
[run]
name = "zs"
output_root = "@RUNS@"
[cluster]
executor = "debug"
[data]
source = "demo"
num_train = 6
num_test = 3
min_image_size = 32
max_image_size = 48
[model]
source = "tiny"
[eval]
benchmarks = ["test"]
batch_size = 2
max_new_tokens = 4
[[eval.baselines]]
name = "vip"
label = "VIP-LLaVA (13B)"
model = "@VIP@"
[[eval.baselines]]
name = "served"
label = "InstructBLIP (13B)"
kind = "api"
model = "served-vlm"
[eval.baselines.api]
base_url = "@URL@"
api_key_env = ""
[score]
protocols = ["paper"]
[score.nltk]
tokenizer = "treebank"
tagger = "wordnet"
[report]
resamples = 0
figures = false
"""
PAPER_FILE = """
[[tables]]
id = "t2"
title = "test"
source = "a test"
protocol = "paper"
columns = ["test.rouge_l", "test.bleu_4"]
rows = [
  { label = "InstructBLIP (13B)", model = "zero-shot", values = [5.99, 0.05] },
  { label = "Chameleon", model = "zero-shot", values = [13.69, 0.74] },
  { label = "+SFT", model = "sft", values = [1.0, 2.0] },
]
"""


def test_pipeline_reports_baselines_above_the_llava_rows(family_dir, write_recipe, tmp_path):
    from mcmdpo.batch.launch import submit
    from mcmdpo.batch.recipe import load_recipe
    from mcmdpo.report.collect import collect
    from mcmdpo.report.outputs import build_from
    from mcmdpo.report.paper import load_paper_results
    from mcmdpo.report.spec import ReportSpec
    from mcmdpo.report.tables import build_table
    from mcmdpo.smoke.fixtures import FixedJudge

    with FixedJudge(reply="A short alt-text.") as server:
        body = PIPELINE.replace("@VIP@", str(family_dir("vipllava"))).replace("@URL@", server.url)
        recipe = load_recipe(write_recipe(body))
        report = submit(recipe)
    assert report.ok, report.blocked_by
    eval_tasks = report.plan.stage("eval").tasks
    assert [t.params["model"] for t in eval_tasks] == ["base", "vip", "served"]
    assert [t.inputs for t in eval_tasks][1:] == [{"data": [report.plan.stage("data").tasks[0].task_id]}] * 2
    table = next((recipe.run_dir / "report").glob("*/table.md")).read_text()
    rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["VIP-LLaVA (13B)", "InstructBLIP (13B)", "Tiny LLaVA"]
    metrics = collect([recipe.run_dir]).files
    served = next(f for f in metrics if f.model == "served")
    assert served.model_stage == "baseline" and served.doc["model_spec"]["label"] == "InstructBLIP (13B)"
    assert not [d for d in served.doc["deviations"] if d.startswith("generation")]  # not LLaVA's inference
    assert served.doc["generation"]["model"] == "served-vlm"
    assert len(served.doc["generation"]["examples"]) == 2  # from the data stage's train split
    (tmp_path / "paper.toml").write_text(PAPER_FILE)
    built = build_from(collect([recipe.run_dir]), ReportSpec(resamples=0))
    with_paper = build_table(built.results, "all", paper=load_paper_results(tmp_path / "paper.toml"))
    labels = [(r.label, r.kind) for r in with_paper.rows]
    published = ("InstructBLIP (13B) (paper, Table t2)", "paper")
    assert labels[1:4] == [("InstructBLIP (13B)", "result"), published, ("Δ vs paper", "delta")]
    assert ("Chameleon (paper, Table t2)", "paper") in labels[4:]  # a published row no baseline of ours ran
    assert ("VIP-LLaVA (13B) (paper, Table t2)", "paper") not in labels  # no such published row here
    delta = with_paper.rows[3].cells[("test", "paper", "rouge_l")].mean
    assert delta == pytest.approx(with_paper.rows[1].cells[("test", "paper", "rouge_l")].mean - 5.99)
