"""The GPU benchmark suite: one command measures everything issue 15 asks of a lent GPU.

Parts, in this order (each prints one JSON line as soon as it is done; see ``bench/gpu/*.py``):

- ``setup``: the 7B-shaped random LLaVA-1.6 (bf16, built on the GPU) and the device;
- ``logprob``: one preference step, upstream naive MCM-DPO (8 + 8 sequences), upstream DPO (2 + 2) and
  the shared engine (offline reference) with SDPA and with flex tree attention, plus the 4-condition
  hallucination variant: wall per sample, ratios, tokens/s, MFU, peak memory;
- ``flex_check``: flex vs SDPA, fp32 log-probs and gradients (<= 1e-5) and bf16 relative error;
- ``memory``: memory per sample, shared vs naive, and the largest SFT / MCM-DPO micro-batch under an
  A100-80GB cap (gradient checkpointing);
- ``plan``: the memory plan of ``mcmdpo rehearse`` / ``--dry-run`` (activations measured on meta)
  against ``torch.cuda.max_memory_allocated`` of one SFT, preference and reference step (target 15%);
- ``generation``: the eval stage's HF generation, batch 1 (upstream's loop) vs batched;
- ``train``: real MCM-DPO steps through the project's trainer (DeepSpeed ZeRO-2, ~1.25B model);
- ``vllm``: HF vs vLLM on 50 items (skipped, with the reason, where vLLM is not installed).

Every part has a time estimate; a part that would not fit the time left of ``--budget-s`` is skipped
and reported, and a part still running when the budget runs out is stopped and reported. A failing
part is reported and the suite goes on. At the end: a Markdown table (paste it into BENCHMARKS.md)
and one JSON line with every figure and target. ``--out DIR`` also writes ``gpu_suite.jsonl`` (line
by line, as the parts finish) and ``gpu_suite.md`` there.

    make bench-gpu                                   # = python bench/gpu_suite.py (CUDA; < 8 min on an H200)
    python bench/gpu_suite.py --parts logprob,memory --budget-s 200
    python bench/gpu_suite.py --cpu-smoke            # every part at tiny shapes on CPU (< 1 min)

Without CUDA (and without ``--cpu-smoke``) it exits with code 2 and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench import logprobs as _flops_bench  # noqa: E402,F401
from bench.gpu import common  # noqa: E402

EXIT_NO_CUDA = 2
PARTS = ("setup", "logprob", "flex_check", "memory", "plan", "generation", "train", "vllm")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the GPU defaults, or tiny ones for ``--cpu-smoke``."""

    device: str
    shape: str
    budget_s: float
    batch_size: int = 2
    warmup: int = 1
    repeats: int = 3
    gen_items: int = 32
    gen_batch1_items: int = 8
    gen_batch: int = 32
    max_new_tokens: int = 64
    train_steps: int = 8
    train_warmup: int = 3
    train_micro: int = 4
    micro_limits: dict[str, int] = field(default_factory=lambda: {"sft": 128, "mcmdpo": 64})
    vllm_items: int = 50
    # rough seconds on one H200 (compilation of the flex kernels included), for the time guard
    estimates: dict[str, float] = field(
        default_factory=lambda: {
            "setup": 30,
            "logprob": 90,
            "flex_check": 60,
            "memory": 90,
            "plan": 60,
            "generation": 40,
            "train": 120,
            "vllm": 150,
        }
    )


def smoke_settings(budget_s: float) -> Settings:
    return Settings(
        device="cpu",
        shape="tiny",
        budget_s=budget_s,
        warmup=0,
        repeats=1,
        gen_items=4,
        gen_batch1_items=2,
        gen_batch=4,
        max_new_tokens=4,
        train_steps=3,
        train_warmup=1,
        train_micro=2,
        micro_limits={"sft": 2, "mcmdpo": 2},
        vllm_items=4,
        estimates={p: 1.0 for p in PARTS},
    )


# ---------------------------------------------------------------- the run


class Suite:
    """Runs the parts in order under the time budget; collects and writes their lines."""

    def __init__(
        self, settings: Settings, parts: Sequence[str], out: Path | None, peak_override: float | None
    ):
        self.settings, self.parts, self.out = settings, list(parts), out
        self.started = time.perf_counter()
        self.records: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] = {"peak": common.peak_tflops(settings.device, peak_override)}
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "gpu_suite.jsonl").write_text("")

    def seconds_left(self) -> float:
        return self.settings.budget_s - (time.perf_counter() - self.started)

    def emit(self, part: str, record: dict[str, Any]) -> None:
        line = {"bench": "gpu_suite", "part": part, **record}
        self.records[part] = line
        text = json.dumps(line, sort_keys=True, default=str)
        print(text, flush=True)
        if self.out is not None:
            with open(self.out / "gpu_suite.jsonl", "a") as fh:
                fh.write(text + "\n")

    def run(self) -> dict[str, Any]:
        try:
            for part in PARTS:
                if part in self.parts:
                    self.run_part(part)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)  # saved models: GBs on a GPU run
        table = summary_table(self.records, self.settings.device != "cpu")
        print(table)
        if self.out is not None:
            (self.out / "gpu_suite.md").write_text(table + "\n")
        final = final_line(self.records, self.settings, time.perf_counter() - self.started)
        print(json.dumps(final, sort_keys=True, default=str), flush=True)
        return final

    def run_part(self, part: str) -> None:
        estimate, left = self.settings.estimates[part], self.seconds_left()
        if estimate > left:
            self.emit(part, {"skipped": f"would not fit: needs ~{estimate:.0f} s, {max(left, 0):.0f} s left"})
            return
        started = time.perf_counter()
        try:
            with deadline(left):
                record = PART_FUNCTIONS[part](self)
        except PartTimeout:
            record = {"error": f"stopped: the suite's time budget ran out after {left:.0f} s"}
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            record = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.emit(part, record)

    # ------------------------------------------------------------ shared objects

    def shape(self) -> common.Shape:
        if "shape" not in self.state:
            self.state["shape"] = common.make_shape(self.settings.shape)
        return self.state["shape"]

    def model(self) -> Any:
        """The suite's 7B-shaped (or tiny) model, built once: bf16 on CUDA, fp32 on CPU."""
        if self.state.get("model") is None:
            dtype = torch.bfloat16 if self.settings.device.startswith("cuda") else torch.float32
            self.state["model"] = common.build_model(self.shape().config, self.settings.device, dtype, True)
        return self.state["model"]

    def drop_model(self) -> None:
        self.state["model"] = None
        gc.collect()
        common.reset_memory(self.settings.device)


class PartTimeout(Exception):
    """The suite's time budget ran out while a part was running."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in this (main) thread after ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise PartTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- parts


def part_setup(suite: Suite) -> dict[str, Any]:
    s = suite.settings
    started = time.perf_counter()
    model = suite.model()
    common.sync(s.device)
    return {
        "device": common.device_name(s.device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "shape": s.shape,
        "parameters": common.parameter_count(model),
        "model_build_s": round(time.perf_counter() - started, 2),
        "peak_tflops": suite.state["peak"],
        "memory_gb": common.peak_gb(s.device),
    }


def part_logprob(suite: Suite) -> dict[str, Any]:
    from bench.gpu.logprob import measure_steps

    s = suite.settings
    rows = measure_steps(
        suite.model(), suite.shape(), s.device, s.batch_size, s.warmup, s.repeats, suite.state["peak"]
    )
    return {"batch_size": s.batch_size, "warmup": s.warmup, "repeats": s.repeats, "rows": rows}


def part_flex_check(suite: Suite) -> dict[str, Any]:
    from bench.gpu.logprob import check_flex_bf16, check_flex_fp32

    s = suite.settings
    if not s.device.startswith("cuda"):
        return {
            "skipped": "needs CUDA (flex has no backward on CPU; its fp32 forward on CPU is tested in tests)"
        }
    fp32 = check_flex_fp32(suite.shape(), s.device)
    bf16 = check_flex_bf16(suite.model(), suite.shape(), s.batch_size)
    return {"fp32": fp32, "bf16": bf16, "passed": fp32["passed"] and bf16["passed"]}


def part_memory(suite: Suite) -> dict[str, Any]:
    from bench.gpu.memory import largest_micro_batches, per_sample_memory

    s = suite.settings
    per_sample = per_sample_memory(suite.model(), suite.shape(), s.device)
    search = largest_micro_batches(suite.model(), suite.shape(), s.device, s.micro_limits, suite.seconds_left)
    return {"per_sample": per_sample, "micro_batch": search}


def part_plan(suite: Suite) -> dict[str, Any]:
    from bench.gpu.plan import plan_vs_measured

    s = suite.settings
    reference_batch = 8 if s.device.startswith("cuda") else 2
    return plan_vs_measured(suite.model(), suite.shape(), s.device, s.batch_size, reference_batch)


def part_generation(suite: Suite) -> dict[str, Any]:
    from bench.gpu.generation import measure_generation

    s = suite.settings
    record = measure_generation(
        suite.model(), suite.shape(), s.device, suite.tmp / "items", s.gen_items, s.gen_batch1_items,
        s.gen_batch, s.max_new_tokens,
    )  # fmt: skip
    suite.state["batch1_rate"] = record["tokens_per_s_batch1"]
    return record


def part_train(suite: Suite) -> dict[str, Any]:
    from bench.gpu.train import measure_training

    s = suite.settings
    suite.drop_model()  # the 7B model is not needed any more; the trainer loads its own
    shape = common.make_shape("1b" if s.shape == "7b" else "tiny")
    folder = suite.tmp / "train"
    folder.mkdir()
    return measure_training(shape, s.device, folder, s.train_steps, s.train_warmup, s.train_micro)


def part_vllm(suite: Suite) -> dict[str, Any]:
    from mcmdpo.evaluation.vllm_engine import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is not None:
        return {"skipped": reason}
    from bench.gpu.generation import compare_vllm

    s = suite.settings
    suite.drop_model()
    folder = suite.tmp / "vllm"
    folder.mkdir()
    return compare_vllm(
        suite.shape(), s.device, folder, s.vllm_items, s.max_new_tokens, suite.state.get("batch1_rate")
    )


PART_FUNCTIONS: dict[str, Callable[[Suite], dict[str, Any]]] = {
    "setup": part_setup,
    "logprob": part_logprob,
    "flex_check": part_flex_check,
    "memory": part_memory,
    "plan": part_plan,
    "generation": part_generation,
    "train": part_train,
    "vllm": part_vllm,
}


# ---------------------------------------------------------------- summary


TARGETS: dict[str, tuple[str, str, float]] = {
    # figure -> (label, comparison, target)
    "flex_vs_upstream_mcmdpo": ("MCM-DPO step wall, shared (flex) / upstream naive", "<=", 0.30),
    "flex_vs_upstream_dpo": ("MCM-DPO step wall, shared (flex) / upstream DPO", "<=", 1.15),
    "sdpa_vs_upstream_mcmdpo": ("MCM-DPO step wall, shared (sdpa) / upstream naive", "<=", 0.30),
    "hal_flex_vs_upstream_hal": ("4-condition step wall, shared (flex) / upstream naive", "<=", 0.30),
    "policy_mfu_flex": ("MFU of the tree forward+backward (flex)", ">=", 0.40),
    "flex_fp32_max_abs_diff": ("flex vs sdpa fp32, max abs diff (log-probs, gradients)", "<=", 1e-5),
    "flex_bf16_rel_logp_diff": ("flex vs sdpa bf16, relative log-prob diff", "<=", 1e-2),
    "memory_per_sample_ratio": ("memory per sample, shared (flex) / naive", "<=", 0.40),
    "plan_max_abs_error": ("memory plan vs max_memory_allocated, largest relative error", "<=", 0.15),
    "generation_speedup": ("HF batched / batch-1 generation, tokens/s", ">=", 8.0),
    "vllm_speedup": ("vLLM / HF batch-1 generation, tokens/s", ">=", 20.0),
    "train_outside_share": ("trainer step share outside fwd+bwd+update", "<=", 0.10),
}


def figures(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of the parts that ran (None where a part did not)."""
    rows = {r["step"]: r for r in records.get("logprob", {}).get("rows", []) if "step_s" in r}
    check = records.get("flex_check", {})
    memory = records.get("memory", {})
    shared = (
        memory.get("per_sample", {}).get("shared_flex")
        or memory.get("per_sample", {}).get("shared_sdpa")
        or {}
    )
    fp32 = check.get("fp32", {})
    return {
        "flex_vs_upstream_mcmdpo": rows.get("ours_flex", {}).get("ratio_vs_naive"),
        "flex_vs_upstream_dpo": rows.get("ours_flex", {}).get("ratio_vs_upstream_dpo"),
        "sdpa_vs_upstream_mcmdpo": rows.get("ours_sdpa", {}).get("ratio_vs_naive"),
        "sdpa_vs_upstream_dpo": rows.get("ours_sdpa", {}).get("ratio_vs_upstream_dpo"),
        "hal_flex_vs_upstream_hal": rows.get("ours_hal_flex", {}).get("ratio_vs_naive"),
        "hal_sdpa_vs_upstream_hal": rows.get("ours_hal_sdpa", {}).get("ratio_vs_naive"),
        "policy_mfu_flex": rows.get("ours_flex", {}).get("policy_mfu"),
        "policy_mfu_upstream": rows.get("upstream_mcmdpo", {}).get("policy_mfu"),
        "flex_fp32_max_abs_diff": max(fp32["max_abs_logp_diff"], fp32["max_abs_grad_diff"]) if fp32 else None,
        "flex_bf16_rel_logp_diff": check.get("bf16", {}).get("rel_logp_diff"),
        "memory_per_sample_ratio": shared.get("ratio_vs_naive"),
        "plan_max_abs_error": records.get("plan", {}).get("max_abs_error"),
        "largest_micro_batch_sft": memory.get("micro_batch", {}).get("sft", {}).get("largest"),
        "largest_micro_batch_mcmdpo": memory.get("micro_batch", {}).get("mcmdpo", {}).get("largest"),
        "generation_speedup": records.get("generation", {}).get("speedup_batched_vs_batch1"),
        "vllm_speedup": records.get("vllm", {}).get("speedup_vllm_vs_batch1"),
        "vllm_token_identical": records.get("vllm", {}).get("token_identical"),
        "train_step_ms": records.get("train", {}).get("wall_ms"),
        "train_outside_share": records.get("train", {}).get("share_outside_fwd_bwd_update"),
    }


def target_status(values: dict[str, Any], gpu: bool) -> dict[str, dict[str, Any]]:
    """Each target with its value and whether it is met (None: not measured, or a CPU smoke run,
    whose tiny shapes say nothing about the targets)."""
    out = {}
    for key, (_, op, target) in TARGETS.items():
        value = values.get(key)
        met = None if value is None or not gpu else (value <= target if op == "<=" else value >= target)
        out[key] = {"value": value, "target": f"{op} {target:g}", "met": met}
    return out


def summary_table(records: dict[str, dict[str, Any]], gpu: bool) -> str:
    """Markdown: every target with its measured value, then the other headline figures."""
    values = figures(records)
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    for key, status in target_status(values, gpu).items():
        met = {True: "yes", False: "no", None: "-"}[status["met"]]
        lines.append(f"| {TARGETS[key][0]} | {_fmt(status['value'])} | {status['target']} | {met} |")
    for key in (
        "largest_micro_batch_sft",
        "largest_micro_batch_mcmdpo",
        "train_step_ms",
        "vllm_token_identical",
    ):
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(values[key])} | | |")
    skipped = [
        f"{p}: {r.get('skipped') or r.get('error')}"
        for p, r in records.items()
        if "skipped" in r or "error" in r
    ]
    lines += [f"\nnot measured: {s}" for s in skipped]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def final_line(records: dict[str, dict[str, Any]], settings: Settings, elapsed: float) -> dict[str, Any]:
    values = figures(records)
    status = {
        p: ("skipped" if "skipped" in r else "error" if "error" in r else "ok") for p, r in records.items()
    }
    return {
        "bench": "gpu_suite",
        "device": records.get("setup", {}).get("device", common.device_name(settings.device)),
        "mode": "cpu-smoke" if settings.device == "cpu" else "gpu",
        "elapsed_s": round(elapsed, 1),
        "budget_s": settings.budget_s,
        "parts": status,
        "figures": values,
        "targets": target_status(values, settings.device != "cpu"),
    }


# ---------------------------------------------------------------- main


def allow_recompiles(limit: int = 64) -> None:
    """The compiled flex kernel sees many shapes here (batch sizes, condition sets, fp32 and bf16);
    past dynamo's recompile limit (8) it would fall back to the unfused flex, which materialises the
    scores: slower and far bigger than anything measured."""
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), limit))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="every part at tiny shapes on CPU")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--budget-s", type=float, default=None, help="time budget (default 450 on GPU, 300 smoke)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="also write gpu_suite.jsonl and gpu_suite.md here"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by name)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suite; print one JSON line per part, the table and one final JSON line."""
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"bench/gpu_suite.py: unknown part(s) {unknown}; valid: {', '.join(PARTS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            "bench/gpu_suite.py: CUDA is not available on this machine. Run it on a GPU node "
            "(`make bench-gpu`), or use `--cpu-smoke` to run every part at tiny shapes on CPU.",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_CUDA)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    allow_recompiles()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = (
        smoke_settings(args.budget_s or 300)
        if args.cpu_smoke
        else Settings("cuda", "7b", args.budget_s or 450)
    )
    return Suite(settings, parts, args.out, args.peak_tflops).run()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
