"""Issue 23: real architectures as data, the memory plan, its refusal at validation, the length audit,
and the rehearsal (``mcmdpo rehearse``; the demo and table 2 in smoke mode are marked slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from mcmdpo.batch.recipe import RecipeError, load_recipe
from mcmdpo.method.memory import Tokens, analytic_activations
from mcmdpo.method.model.architecture import (
    Architecture,
    llava_config,
    read_config,
    shipped_configs,
    with_depth,
)

REPO = Path(__file__).resolve().parents[2]
SEVEN_B = "llava-v1.6-vicuna-7b-hf"


# ---------------------------------------------------------------- configs


def test_shipped_configs_hold_the_published_7b_values_and_agree_with_transformers_defaults():
    from transformers import LlavaNextConfig

    assert set(shipped_configs()) == {SEVEN_B, "llava-v1.6-vicuna-13b-hf", "llava-v1.6-34b-hf"}
    raw = read_config(SEVEN_B)
    assert not any(k.startswith("_") for k in raw)  # provenance notes are dropped on reading
    text, vision = raw["text_config"], raw["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (4096, 32, 32)
    assert (text["intermediate_size"], text["vocab_size"], text["max_position_embeddings"]) == (
        11008,
        32064,
        4096,
    )
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"]) == (
        1024,
        24,
        16,
    )
    assert (vision["image_size"], vision["patch_size"], vision["projection_dim"]) == (336, 14, 768)
    defaults = LlavaNextConfig().to_dict()
    for key in ("image_token_index", "vision_feature_layer", "vision_feature_select_strategy",
                "image_grid_pinpoints", "projector_hidden_act", "image_seq_length"):  # fmt: skip
        assert raw[key] == defaults[key], key
    clip = defaults["vision_config"]  # CLIP ViT-L/14-336
    assert all(vision[k] == clip[k] for k in vision), "vision values = LlavaNextConfig's default tower"
    notes = json.loads((REPO / "mcmdpo/method/model/configs" / f"{SEVEN_B}.json").read_text())["_provenance"]
    assert "32064" in notes["differs_from_transformers_defaults"]


@pytest.mark.parametrize("name", [SEVEN_B, "llava-v1.6-vicuna-13b-hf", "llava-v1.6-34b-hf"])
def test_parameter_arithmetic_matches_the_model_built_on_meta(name):
    from transformers import LlavaNextForConditionalGeneration

    raw = with_depth(read_config(name), 1, 2)
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration._from_config(llava_config(raw))
    assert sum(p.numel() for p in model.parameters()) == Architecture.from_config(raw).params
    full = Architecture.from_config(read_config(name)).params / 1e9
    assert (
        round(full, 2) == {SEVEN_B: 7.06, "llava-v1.6-vicuna-13b-hf": 13.35, "llava-v1.6-34b-hf": 34.75}[name]
    )


def test_model_source_config_validates_and_keeps_old_task_ids(write_recipe):
    from mcmdpo.method.model.spec import ModelSpec

    assert "config" not in ModelSpec().model_dump(mode="json")  # old [model] sections hash as before
    spec = ModelSpec(source="config", config=SEVEN_B, layers=2, vision_layers=2)
    arch = Architecture.from_config(spec.architecture_config())
    assert (arch.layers, arch.vision_layers, arch.hidden, arch.vocab) == (2, 2, 4096, 32064)
    with pytest.raises(ValueError, match="only apply to source = 'config'"):
        ModelSpec(layers=2)
    with pytest.raises(ValueError, match="not a shipped config"):
        ModelSpec(source="config", config="llava-v9")


def test_a_config_model_is_built_with_the_project_tokenizer_at_the_chosen_depth(tmp_path):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from mcmdpo.method.model.architecture import build_config_llava

    raw = read_config(SEVEN_B)  # full vision tower and vocabulary, a narrow LM: a small checkpoint
    raw["text_config"].update(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                              num_key_value_heads=4, num_hidden_layers=1)  # fmt: skip
    raw = with_depth(raw, 1, 1)
    folder = build_config_llava(tmp_path / "m", raw, ["a red bus", "two dogs"])
    model = LlavaNextForConditionalGeneration.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert model.config.text_config.vocab_size == 32064 and len(processor.tokenizer) <= 4096
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.image_processor.crop_size["height"] == 336


# ---------------------------------------------------------------- memory plan


def test_analytic_activations_count_the_llama_and_clip_layers():
    arch = Architecture.from_config(read_config(SEVEN_B))
    tokens = Tokens(rows=1, width=1000, answer=10, vision=577, features=576)
    a = analytic_activations(arch, 2, tokens, 8, vision=True)
    # per LM token and layer in bf16: fp32 RMSNorm copies (8h), q/k/v/out/norm outputs (18h), SwiGLU (8I)
    assert a.text_layer == 26 * 4096 + 8 * 11008 + 4 * 32
    assert a.vision_layer == 18 * 1024 + 6 * 4096 and a.text_layer_ckpt == 2 * 4096
    assert analytic_activations(arch, 2, tokens, 8, vision=False).vision_layer == 0


def test_zero_stages_partition_the_model_states():
    from mcmdpo.method.memory import TrainSetup, model_states

    arch = Architecture.from_config(read_config(SEVEN_B))
    tokens = Tokens(1, 10, 1, 577, 576)
    activations = analytic_activations(arch, 2, tokens, 8, True)
    base = dict(arch=arch, trainable=arch.params, precision="bf16", world=8, checkpointing=True, micro=1,
                tokens=tokens, activations=activations, loss_bytes=8)  # fmt: skip
    states = {z: model_states(TrainSetup(zero_stage=z, **base)) for z in (0, 1, 2, 3)}
    p = arch.params
    assert states[0]["optimizer"] == 16 * p and states[1]["optimizer"] == 2 * p
    assert states[1]["gradients"] == 2 * p and states[2]["gradients"] == 2 * p / 8
    assert states[2]["weights"] == 2 * p and states[3]["weights"] == 2 * p / 8
    offloaded = model_states(TrainSetup(zero_stage=3, offload_optimizer=True, **base))
    assert offloaded["optimizer"] == 0


OVERSIZED = """
[run]
name = "big"
output_root = "@RUNS@"

[cluster]
profile = "a100"

[data]
num_train = 64

[model]
source = "config"
config = "llava-v1.6-vicuna-7b-hf"

[precompute]

[reference]

[preference]
global_batch_size = 64
micro_batch_size = 8
gradient_checkpointing = false
"""


def test_an_oversized_micro_batch_is_refused_at_validation_naming_the_knobs(write_recipe):
    path = write_recipe(OVERSIZED)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    (problem,) = [str(p) for p in info.value.problems]
    line = OVERSIZED.splitlines().index("micro_batch_size = 8") + 1
    assert problem.startswith(f"{path}:{line}: preference.micro_batch_size: preference needs ")
    fixes = "would fit with preference.micro_batch_size = 1 or preference.gradient_checkpointing = true"
    assert f"profile 'a100' has 80 GiB GPUs: {fixes} [" in problem and "analytic)]" in problem
    fits = load_recipe(path, ["preference.micro_batch_size=2", "preference.gradient_checkpointing=true"])
    assert fits.stages["preference"].micro_batch_size == 2


@pytest.mark.slow
def test_dry_run_prints_the_memory_of_every_gpu_task(write_recipe):
    import subprocess

    body = OVERSIZED.replace("micro_batch_size = 8", "micro_batch_size = 2")
    path = write_recipe(body.replace("gradient_checkpointing = false", "gradient_checkpointing = true"))
    out = subprocess.run([sys.executable, "-m", "mcmdpo", "submit", str(path), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "GPU memory per task and rank, GiB" in out.stdout
    assert "  preference: " in out.stdout and "analytic)" in out.stdout and "  reference: " in out.stdout


# ---------------------------------------------------------------- length audit


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from mcmdpo.method.model.tiny import build_tiny_llava

    folder = tmp_path_factory.mktemp("tiny")
    return build_tiny_llava(folder, ["Given an image and context", "a red bus"], image_size=28, num_layers=1)


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_the_length_audit_catches_a_hidden_over_long_sample(tmp_path, tiny_model, policy):
    from mcmdpo.method.data.records import BadRecord
    from mcmdpo.stages.precompute import PrecomputeSpec, run_precompute
    from tests.helpers.precompute import context, make_dataset, report_of

    long_answer = " ".join(["the long answer goes on"] * 120)
    train, images = make_dataset(tmp_path / "data", n=6, overrides={2: {"record": {"chosen": long_answer}}})
    spec = PrecomputeSpec(data_file=str(train), image_root=str(images), processor_path=str(tiny_model),
                          on_bad_record=policy)  # fmt: skip
    recipe = {"run": {"name": "t"}, "preference": {"max_length": 200}}
    ctx = context(tmp_path / "out", spec, recipe=recipe)
    if policy == "fail":
        with pytest.raises(BadRecord, match="too_long.*max_length 200"):
            run_precompute(ctx)
        return
    (shard, _) = run_precompute(ctx)
    report = report_of(ctx.out_dir / shard)
    assert [(s["position"], s["reason"]) for s in report["skipped"]] == [(2, "too_long")]
    lengths = report["lengths"]
    assert lengths["too_long"] == 1 and lengths["max_length"] == 200 and lengths["sequence"]["n"] == 5
    assert set(lengths["by_condition"]) == {"mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "ml_cw_yl", "mw_cl_yw",
                                            "mw_cl_yl", "ml_cl_yw", "ml_cl_yl"}  # fmt: skip
    assert lengths["sequence"]["max"] <= 200 < lengths["tree_row"]["max"] + 1000
    assert ctx.summary["too_long"] == 1 and ctx.summary["tokens_max"] == lengths["sequence"]["max"]


def test_status_sums_over_long_samples_and_takes_the_longest_of_the_shards():
    from mcmdpo.batch.status import stage_notes

    rows = [{"state": "done", "summary": {"too_long": 1, "tokens_max": 180, "num_samples": 5}},
            {"state": "done", "summary": {"too_long": 2, "tokens_max": 150, "num_samples": 4}}]  # fmt: skip
    assert stage_notes(rows) == {"too_long": 3, "num_samples": 9, "tokens_max": 180}


# ---------------------------------------------------------------- the rehearsal


def test_saved_bytes_count_live_distinct_storages_only():
    from mcmdpo.method.activations import SavedBytes

    layer = torch.nn.Linear(8, 8, device="meta")
    x = torch.empty(4, 8, device="meta", requires_grad=True)
    with SavedBytes(layer) as saved:
        hidden = layer(x)  # saves x (the weight is a parameter: not counted)
        out = torch.tanh(hidden) * torch.tanh(hidden)  # tanh saves its output; mul saves both (one storage)
        torch.mul(x, torch.empty(4, 8, device="meta"))  # a dead branch: the saved operand is freed
    assert saved.total == 3 * 4 * 8 * 4  # x and the two tanh outputs, float32
    assert out.shape == (4, 8)


@pytest.mark.slow
def test_rehearsal_of_the_demo_passes_with_cpu_steps(tmp_path):
    from mcmdpo.smoke.rehearsal import rehearse_recipe

    report = rehearse_recipe(REPO / "recipes" / "demo.toml", [f"run.output_root={tmp_path}"], False, True,
                             log=lambda line: None)  # fmt: skip
    assert report["ok"], [r["error"] for r in report["results"]]
    stages = [r["stage"] for r in report["results"]]
    assert stages == ["sft", "reference", "preference", "eval"]
    assert all(r["cpu"]["passed"] for r in report["results"])
    preference = report["results"][2]
    assert preference["measured"]["text_layer_ckpt_bytes_per_token"] == 4 * 32  # fp32 layer input, h = 32
    entries = json.loads(Path(report["file"]).read_text())["entries"]
    assert len(entries) == 4 and all("tokens" in e for e in entries.values())


@pytest.mark.slow
def test_rehearsal_of_table2_in_smoke_mode_measures_the_7b_layers(tmp_path):
    from mcmdpo.smoke.rehearsal import rehearse_recipe

    report = rehearse_recipe(REPO / "recipes" / "paper" / "table2.toml", [f"run.output_root={tmp_path}"],
                             True, False, log=lambda line: None)  # fmt: skip
    assert report["ok"], [r["error"] for r in report["results"]]
    preference = [r for r in report["results"] if r["stage"] == "preference"]
    assert len(preference) == 6 and all(r["gpu_gib"] == 80 for r in preference)
    measured = preference[0]["measured"]
    assert measured["text_layer_bytes_per_token"] == 26 * 4096 + 8 * 11008 + 4 * 32 + 8  # + 2 fp32 rsqrt
    assert measured["text_layer_ckpt_bytes_per_token"] == 2 * 4096
    assert all(r["plans"]["checkpointing"]["total_gib"] < 80 for r in preference)
    # the dry run of the smoke recipe now reads the measured entries
    from mcmdpo.method.memory_plan import read_rehearsal

    recipe_doc = {"run": {"name": "paper-table2-smoke", "output_root": str(tmp_path)}}
    assert len(read_rehearsal(recipe_doc)) == len({r["stage"] + r["point"] for r in report["results"]})
