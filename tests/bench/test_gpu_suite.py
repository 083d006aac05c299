"""bench/gpu_suite.py: the CPU smoke run of every part, the time guard and the micro-batch search.

The numbers of a real run need a GPU (``make bench-gpu``); here the smoke run must produce one JSON
line per part with the right structure, token counts that follow from the tiny geometry, and the
skip lines for what a CPU cannot do."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import REPO

sys.path.insert(0, str(REPO))

from bench import gpu_suite  # noqa: E402
from bench.gpu.memory import search_micro_batch  # noqa: E402

# tiny geometry (bench/gpu/common.py TINY): prefix 12, image (56/14)^2 = 16, contexts 24, answers 8
PREFIX, IMAGE, CONTEXT, ANSWER = 12, 16, 24, 8
SEQUENCE = PREFIX + IMAGE + CONTEXT + ANSWER
TREE_8 = PREFIX + 2 * IMAGE + 4 * CONTEXT + 8 * ANSWER  # prefix, 2 images, 2 contexts each, 2 answers each
TREE_4 = PREFIX + 2 * IMAGE + 2 * CONTEXT + 4 * ANSWER  # c_w only
FED_PER_SAMPLE = {
    "upstream_mcmdpo": 8 * SEQUENCE,
    "upstream_dpo": 2 * SEQUENCE,
    "ours_sdpa": TREE_8,
    "upstream_hal": 4 * SEQUENCE,
    "ours_hal_sdpa": TREE_4,
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    final = gpu_suite.main(["--cpu-smoke", "--out", str(out)])
    return final, out


def lines(out: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (out / "gpu_suite.jsonl").read_text().splitlines()]
    assert all(r["bench"] == "gpu_suite" for r in records)
    return {r["part"]: r for r in records}


def test_smoke_writes_one_line_per_part_and_a_final_line(smoke, capsys):
    final, out = smoke
    records = lines(out)
    assert list(records) == list(gpu_suite.PARTS)
    assert final["mode"] == "cpu-smoke" and final["device"] == "cpu"
    expected = {"setup": "ok", "logprob": "ok", "flex_check": "skipped", "memory": "ok", "plan": "ok",
                "generation": "ok"}  # fmt: skip
    assert {p: final["parts"][p] for p in expected} == expected
    assert final["parts"]["train"] == "ok", records["train"]
    assert "CUDA" in records["flex_check"]["skipped"]
    if importlib.util.find_spec("vllm") is None:
        assert final["parts"]["vllm"] == "skipped" and "vLLM is not installed" in records["vllm"]["skipped"]
    table = (out / "gpu_suite.md").read_text()
    assert table.startswith("| figure | measured | target | met |")
    assert "| MFU of the tree forward+backward (flex) | - | >= 0.4 | - |" in table  # not measured on CPU


def test_smoke_logprob_rows_count_the_tokens_of_each_step(smoke):
    _, out = smoke
    rows = {r["step"]: r for r in lines(out)["logprob"]["rows"]}
    for step in ("ours_flex", "ours_hal_flex"):
        assert "no backward on CPU" in rows[step]["skipped"]
    batch = 2
    for step, per_sample in FED_PER_SAMPLE.items():
        row = rows[step]
        weight = 1 / 3 if step.startswith("ours") else 1.0
        assert row["step_s"] == pytest.approx(row["policy_s"] + weight * row["reference_s"], abs=2e-5)
        assert row["wall_per_sample_s"] == pytest.approx(row["step_s"] / batch, abs=2e-5)
        fed = row["tokens_per_s"] * row["step_s"] / (1 + weight)
        assert fed == pytest.approx(batch * per_sample, rel=1e-3), step
        assert row["tflop_per_step"] > 0 and row["mfu"] is None  # no peak for a CPU
    assert rows["upstream_mcmdpo"]["ratio_vs_naive"] == 1.0 and rows["upstream_hal"]["ratio_vs_naive"] == 1.0
    naive_equivalent = rows["ours_sdpa"]["equiv_tokens_per_s"] * rows["ours_sdpa"]["step_s"]
    assert naive_equivalent == pytest.approx(2 * batch * 8 * SEQUENCE, rel=1e-3)


def test_smoke_memory_generation_and_training_parts(smoke):
    _, out = smoke
    records = lines(out)
    search = records["memory"]["micro_batch"]
    for name in ("sft", "mcmdpo"):
        assert search[name]["largest"] == 2 and "search limit 2" in search[name]["stopped"]
    assert set(records["memory"]["per_sample"]) == {"naive", "shared_sdpa"}
    generation = records["generation"]
    assert generation["tokens_per_s_batch1"] > 0 and generation["tokens_per_s_batched"] > 0
    assert generation["batch1_responses_reproduced"].endswith("/2")
    train = records["train"]
    assert train["steps"] == 3 and train["compute_ms"] > 0 and train["wall_ms"] >= train["compute_ms"]
    assert 0 <= train["share_outside_fwd_bwd_update"] < 1


def test_smoke_plan_part_plans_every_stage_without_a_measured_side(smoke):
    _, out = smoke
    plan = lines(out)["plan"]
    for stage in ("sft", "preference", "reference"):
        row = plan[stage]
        assert row["planned_gb"] > 0 and row["measured_gb"] is None and row["error"] is None
        assert row["planned_gb"] == pytest.approx(sum(row["parts"].values()), abs=2e-3)
    assert plan["preference"]["parts"]["activations"] > 0 and plan["max_abs_error"] is None


def test_a_part_that_would_not_fit_is_skipped_and_a_late_one_stopped(monkeypatch, tmp_path):
    def slow(suite: gpu_suite.Suite) -> dict:
        time.sleep(5)
        return {"never": True}

    monkeypatch.setitem(gpu_suite.PART_FUNCTIONS, "setup", slow)
    settings = gpu_suite.smoke_settings(budget_s=0.5)
    settings = dataclasses.replace(settings, estimates={**settings.estimates, "setup": 0.1, "logprob": 60})
    started = time.perf_counter()
    final = gpu_suite.Suite(settings, ["setup", "logprob"], tmp_path, None).run()
    assert time.perf_counter() - started < 3
    records = lines(tmp_path)
    assert records["setup"]["error"].startswith("stopped: the suite's time budget ran out")
    assert records["logprob"]["skipped"].startswith("would not fit: needs ~60 s")
    assert final["parts"] == {"setup": "error", "logprob": "skipped"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_without_cuda_the_gpu_run_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_suite.main([])
    assert exit_info.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_unknown_parts_are_refused():
    with pytest.raises(SystemExit, match="unknown part"):
        gpu_suite.main(["--cpu-smoke", "--parts", "logprob,warp"])


def test_micro_batch_search_stops_at_the_first_out_of_memory():
    cleaned = []

    def attempt(size: int) -> float:
        if size >= 16:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return 3.0 * size

    result = search_micro_batch(attempt, lambda: cleaned.append(True), limit=64, seconds_left=lambda: 100.0)
    assert result["largest"] == 8 and result["stopped"] == "out of memory at 16"
    assert [t["micro_batch"] for t in result["tried"]] == [1, 2, 4, 8, 16] and result["tried"][-1]["oom"]
    assert cleaned == [True]


def test_micro_batch_search_does_not_start_a_size_it_has_no_time_for():
    clock = {"left": 10.0}

    def attempt(size: int) -> float:
        time.sleep(0.02 * size)
        clock["left"] -= 0.5 * size
        return float(size)

    result = search_micro_batch(attempt, lambda: None, limit=1024, seconds_left=lambda: clock["left"])
    assert result["largest"] is not None and result["largest"] < 1024
    assert result["stopped"].startswith("no time left for micro-batch")


def test_flex_checks_run_on_cpu_with_sdpa_on_both_sides():
    """``flex_check`` compares flex with SDPA on a GPU; on CPU (no flex backward) the same code with
    SDPA on both sides must run through and find no difference at all."""
    from bench.gpu.common import build_model, make_shape
    from bench.gpu.logprob import check_flex_bf16, check_flex_fp32

    shape = make_shape("tiny")
    fp32 = check_flex_fp32(shape, "cpu", pair=("sdpa", "sdpa"))
    assert fp32["passed"] and fp32["max_abs_logp_diff"] == 0 and fp32["max_abs_grad_diff"] == 0
    assert fp32["max_abs_grad"] > 0 and max(fp32["rows_tokens"]) > 2 * 128  # multi-block rows
    assert len(set(fp32["rows_tokens"])) == 3  # padded rows
    model = build_model(shape.config, "cpu", torch.float32, checkpointing=False)
    bf16 = check_flex_bf16(model, shape, 2, pair=("sdpa", "sdpa"))
    assert bf16["passed"] and bf16["rel_logp_diff"] == 0 and bf16["rel_grad_diff"] == 0
    assert 0 < bf16["rel_logp_naive_vs_sdpa"] < 1e-5  # fp32 here: naive and shared agree closely
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.gpu
def test_flex_matches_sdpa_with_gradients_on_cuda():
    """On CUDA flex has a backward: the suite's fp32 check (TF32 off, multi-block padded rows) must find
    the log-probs and every parameter gradient within 1e-5 of SDPA's."""
    from bench.gpu.common import make_shape
    from bench.gpu.logprob import check_flex_fp32

    fp32 = check_flex_fp32(make_shape("tiny"), "cuda")
    assert fp32["passed"], fp32
    assert fp32["max_abs_grad"] > 0 and max(fp32["rows_tokens"]) > 2 * 128
