"""Training machinery without a training run: recipe fields, batch arithmetic, data order,
checkpoint folders, LR schedule, DeepSpeed config, the plan's wiring of sft/reference/preference."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mcmdpo.batch.plan import build_plan
from mcmdpo.batch.recipe import RecipeError, load_recipe
from mcmdpo.method.train import checkpoint
from mcmdpo.method.train.batches import DataOrder, Prefetcher
from mcmdpo.method.train.engine import build_scheduler, ds_config, warmup_steps
from mcmdpo.method.train.metrics import MetricsLog
from mcmdpo.method.train.spec import (
    ABLATION_NAMES,
    TERM_NAMES,
    BatchLayout,
    BatchSizeError,
    LossSpec,
    PreferenceSpec,
    SftSpec,
)

RECIPE = """\
[run]
name = "u"
output_root = "@RUNS@"

[data]
num_train = 8

[model]

[precompute]
num_shards = 2
"""


# ------------------------------------------------------------------------------------------ recipe


def test_global_batch_arithmetic_errors():
    assert SftSpec(global_batch_size=16, micro_batch_size=2).layout(4) == BatchLayout(16, 2, 2, 4)
    assert (
        SftSpec(global_batch_size=8, micro_batch_size=2, gradient_accumulation_steps=2).layout(2).accum == 2
    )
    with pytest.raises(BatchSizeError, match=r"x world size \(3\): 16 is not a multiple of 6$"):
        SftSpec(global_batch_size=16, micro_batch_size=2).layout(3)
    with pytest.raises(BatchSizeError, match=r"gradient_accumulation_steps \(2\) x world size \(1\) = 4$"):
        SftSpec(global_batch_size=8, micro_batch_size=2, gradient_accumulation_steps=2).layout(1)
    with pytest.raises(BatchSizeError, match="16 is not a multiple of 32"):
        SftSpec(global_batch_size=16, micro_batch_size=4).layout(8)  # fewer samples than devices


def test_recipe_errors_name_file_line_and_field(write_recipe):
    body = RECIPE + "[sft]\nglobal_batch_size = 6\nmicro_batch_size = 4\n"
    body += "[preference]\nreference = 'online'\ndeepspeed = {optimizer = {type = 'Adam'}}\n"
    body += "[preference.loss]\nkind = 'mcmdpo'\ndrop = ['pairs']\nweights = {rpo = 1.0}\nlambda = 2.0\n"
    path = write_recipe(body)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert f"{path}:12: sft: value error, global_batch_size (6) must equal micro_batch_size (4) x " in text
    assert "6 is not a multiple of 4" in text
    assert f"{path}:17: preference.deepspeed: value error, remove optimizer from the deepspeed table" in text
    assert f"{path}:20: preference.loss.drop: value error, unknown group or term 'pairs'" in text


def needed_conditions(spec: LossSpec) -> tuple[str, ...]:
    from mcmdpo.method.losses import PreferenceLoss

    return PreferenceLoss.from_spec(spec).conditions


def test_loss_spec_and_conditions():
    from mcmdpo.method.losses import ABLATIONS, CONDITIONS, TERMS

    assert tuple(TERMS) == TERM_NAMES and tuple(ABLATIONS) == ABLATION_NAMES
    assert LossSpec.model_validate({"lambda": 2.0}).lambda_ == 2.0
    assert LossSpec.model_validate(LossSpec(lambda_=3.0).model_dump()).lambda_ == 3.0  # as the job sees it
    assert needed_conditions(LossSpec(kind="dpo")) == ("mw_cw_yw", "mw_cw_yl")
    assert needed_conditions(LossSpec(kind="mdpo")) == ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw")
    assert needed_conditions(LossSpec()) == CONDITIONS
    dropped = needed_conditions(LossSpec(drop=("pair", "rpo")))  # rpo's condition stays: rejected reward
    assert dropped == ("mw_cw_yw", "mw_cw_yl", "ml_cw_yw", "mw_cl_yw", "ml_cl_yl")


def test_preference_loss_resolves_weights_once_and_equals_the_functions(monkeypatch):
    import torch

    from mcmdpo.method import losses

    spec = LossSpec(gamma=0.4, drop=("multi",), form="upstream")
    calls = []
    real = losses.resolve_weights
    monkeypatch.setattr(losses, "resolve_weights", lambda *a, **k: calls.append(1) or real(*a, **k))
    loss = losses.PreferenceLoss.from_spec(spec)
    g = torch.Generator().manual_seed(0)
    policy = {c: torch.randn(3, generator=g, dtype=torch.float64) for c in loss.conditions}
    reference = {c: torch.randn(3, generator=g, dtype=torch.float64) for c in loss.conditions}
    for _ in range(3):
        result = loss(policy, reference)
    assert len(calls) == 1  # resolved when built, not per micro-batch
    direct = real({}, gamma=0.4, drop=("multi",))
    expected = losses.weighted_terms(policy, reference, direct, beta=0.1, form="upstream")
    assert torch.equal(result.loss, expected.loss)
    assert torch.equal(
        result.loss, losses.mcmdpo_loss(policy, reference, gamma=0.4, drop=("multi",), form="upstream").loss
    )
    mdpo = losses.PreferenceLoss.from_spec(LossSpec(kind="mdpo", anchor_weight=0.5))
    assert torch.equal(
        mdpo(policy, reference).loss, losses.mdpo_loss(policy, reference, anchor_weight=0.5).loss
    )


def test_paper_defaults():
    sft, pref = SftSpec(), PreferenceSpec()
    assert sft.model_dump(include={"epochs", "lr", "global_batch_size", "warmup_ratio", "schedule"}) == {
        "epochs": 1,
        "lr": 2e-5,
        "global_batch_size": 128,
        "warmup_ratio": 0.03,
        "schedule": "cosine",
    }
    assert (sft.precision, sft.max_length, sft.gradient_checkpointing, sft.zero_stage) == (
        "bf16",
        2048,
        True,
        3,
    )
    assert (pref.epochs, pref.lr, pref.global_batch_size, pref.loss.beta, pref.zero_stage) == (
        3,
        5e-7,
        64,
        0.1,
        3,
    )


def test_plan_wires_sft_into_reference_and_preference(write_recipe):
    body = RECIPE + "[sft]\n[reference]\n[preference]\n"
    plan = build_plan(load_recipe(write_recipe(body)))
    (sft,) = plan.stage("sft").instances
    (ref,) = plan.stage("reference").instances
    (pref,) = plan.stage("preference").instances
    assert ref.upstream["sft"] == sft.instance_id and pref.upstream["sft"] == sft.instance_id
    assert pref.upstream["reference"] == ref.instance_id and len(ref.tasks) == 2
    assert plan.stage("preference").checkpointable and plan.stage("sft").kind == "gpu"
    online = build_plan(
        load_recipe(write_recipe(body.replace("[preference]", "[preference]\nreference = 'online'")))
    )
    assert online.stage("reference").tasks == []
    with pytest.raises(ValueError, match=r"needs a \[reference\] section in the recipe"):
        build_plan(load_recipe(write_recipe(RECIPE + "[preference]\n")))


def test_stage_modules_do_not_import_torch():
    code = "import sys, mcmdpo.stages.sft, mcmdpo.stages.preference; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -------------------------------------------------------------------------------------- data order


def test_data_order_is_a_deterministic_partition():
    layout = BatchLayout(global_batch=8, micro=2, accum=2, world=2)
    order = DataOrder(num_samples=27, layout=layout, seed=3)
    assert order.steps_per_epoch == 3 and order.position(7) == (2, 1)
    again = DataOrder(27, layout, seed=3)
    for step in range(7):
        per_rank = [order.micro_batches(step, r) for r in range(2)]
        flat = np.concatenate([m for rank in per_rank for m in rank])
        assert sorted(flat) == sorted(order.global_batch(step)) and len(set(flat)) == 8
        assert all(len(m) == 2 for rank in per_rank for m in rank)
        assert all(
            np.array_equal(a, b) for a, b in zip(per_rank[1], again.micro_batches(step, 1), strict=True)
        )
    epoch0 = np.concatenate([order.global_batch(s) for s in range(3)])
    assert len(set(epoch0)) == 24  # an epoch never repeats a sample; 27 - 24 are left out
    assert not np.array_equal(order.permutation(0), order.permutation(1))
    assert not np.array_equal(order.permutation(0), DataOrder(27, layout, seed=4).permutation(0))
    assert order.fingerprint(1) == again.fingerprint(1) != order.fingerprint(0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        DataOrder(7, layout, seed=0)


def test_prefetcher_returns_each_step_in_order():
    calls = []
    fetch = Prefetcher(lambda step: calls.append(step) or step * 10, last_step=4)
    assert [fetch.get(s) for s in range(4)] == [0, 10, 20, 30]
    fetch.close()
    assert sorted(calls) == [0, 1, 2, 3]


# -------------------------------------------------------------------------------------- checkpoints


def fake_checkpoint(root: Path, step: int, marker: bool = True) -> Path:
    folder = root / checkpoint.step_name(step)
    folder.mkdir(parents=True)
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 100)
    (folder / "trainer.json").write_text(json.dumps({"step": step}))
    if marker:
        checkpoint.write_marker(folder, step)
    return folder


def test_newest_complete_checkpoint_skips_half_written_ones(tmp_path):
    for step in (2, 4):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 6, marker=False)  # killed while saving
    truncated = fake_checkpoint(tmp_path, 8)  # damaged after its marker was written
    (truncated / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * 10)
    assert (
        checkpoint.incomplete_reason(tmp_path / "step-0000006")
        == "no COMPLETE marker (cut short while saving)"
    )
    assert (
        "zero_pp_rank_0_mp_rank_00_optim_states.pt: 10 bytes, expected 100"
        in checkpoint.incomplete_reason(truncated)
    )
    assert checkpoint.latest_complete(tmp_path) == tmp_path / "step-0000004"
    checkpoint.prune(tmp_path, keep=1)
    assert [s for s, _ in checkpoint.step_folders(tmp_path)] == [4, 6, 8]
    checkpoint.discard_after(tmp_path, 4)
    assert [s for s, _ in checkpoint.step_folders(tmp_path)] == [4]
    assert checkpoint.latest_complete(tmp_path / "missing") is None


def test_keep_last_k(tmp_path):
    for step in (1, 2, 3, 4, 5):
        fake_checkpoint(tmp_path, step)
    checkpoint.prune(tmp_path, keep=2)
    assert [s for s, _ in checkpoint.step_folders(tmp_path)] == [4, 5]
    assert not list(tmp_path.glob(".trash-*"))


def test_rng_state_round_trip():
    import random

    state = checkpoint.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    checkpoint.restore_rng(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


def test_metrics_file_is_cut_back_to_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl", enabled=True)
    log.write({"step": 1, "loss": 1.0})
    offset = log.offset
    log.write({"step": 2, "loss": float("nan")})
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[1])["loss"] is None
    log.truncate(offset)
    assert [json.loads(x)["step"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [1]


# ------------------------------------------------------------------------------- optimizer, config


def test_cosine_schedule_with_warmup_matches_the_hf_formula():
    spec = SftSpec(warmup_ratio=0.03, lr=1.0)
    total = 100
    assert warmup_steps(spec, total) == 3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, spec, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert math.isclose(lrs[50], 0.5 * (1 + math.cos(math.pi * 47 / 97)))


def test_ds_config_passes_the_table_through():
    spec = SftSpec(
        global_batch_size=8,
        micro_batch_size=2,
        precision="fp32",
        max_grad_norm=0.5,
        deepspeed={"zero_optimization": {"stage": 2, "overlap_comm": False}, "wall_clock_breakdown": True},
    )
    config = ds_config(spec, spec.layout(2))
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"]) == (8, 2)
    assert config["gradient_accumulation_steps"] == 2 and config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": False} and config["wall_clock_breakdown"] is True
    assert config["zero_allow_untested_optimizer"] is True


def test_tensorboard_is_optional_with_a_clear_error(tmp_path):
    import importlib.util

    log = MetricsLog(tmp_path / "m.jsonl", enabled=True, tensorboard=tmp_path / "tb")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RuntimeError, match=r"tensorboard = true needs the tensorboard package"):
            log.open(start_step=0, total_steps=2)
        return
    log.open(start_step=0, total_steps=2)
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
