"""GPU-hour estimates of a plan (``mcmdpo submit --dry-run``): sample counts x epochs x throughput.

Throughput comes from the cluster profile's ``[throughput]`` table (``slurm/profiles/a100.toml``), or
the built-in A100 numbers below. The calibration is the paper's: MCM-DPO (8 scored conditions) 5.0 h
and DPO (2) 4.6 h on 4 x A100-80GB for 8,212 samples x 3 epochs, with the authors' code (policy
forward + backward and an online reference forward every step). A linear fit in the number of scored
conditions gives GPU-seconds per sample and epoch ``a + b * conditions`` (a = 2.6108, b = 0.03897);
in sequence units (forward = 1, forward + backward = 3) DPO is 2 x 3 + 2 x 1 = 8 units, of which the
reference forward is 2 (``reference_share`` = 0.25) and an SFT sample 3 (``sft_share`` = 0.375).

Per task: ``sft``: samples x epochs x (a + 2b) x sft_share; ``preference``: samples x epochs x
(a + b c) (x (1 - reference_share) with the offline reference); ``reference``: the shard's samples x
(a + b c) x reference_share; ``eval``: items x ``eval_gpu_s_per_item`` x beams x max_new_tokens / 256
(an assumption, not calibrated; a zero-shot baseline: greedy, x the GPUs its task holds; an
endpoint: 0). CPU stages count 0. The shared log-prob engine and the offline
reference make this project's steps cheaper than the authors' (``bench/logprobs.py``: 0.25 of the
FLOPs for MCM-DPO), so the estimates are upper bounds until measured throughput (``bench/gpu_suite.py``
on the cluster's GPUs) replaces the table. Record counts: demo sizes, files counted when they are
readable (``[run] expected_records`` by file name first), the benchmarks' published sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcmdpo.batch.plan import Plan, PlannedInstance, PlannedTask

DEFAULT_THROUGHPUT: dict[str, Any] = {
    "calibration": "built-in: paper MCM-DPO 5.0 h / DPO 4.6 h on 4 x A100-80GB, 8,212 samples x 3 epochs",
    "preference_gpu_s": 2.6108,
    "preference_condition_gpu_s": 0.03897,
    "reference_share": 0.25,
    "sft_share": 0.375,
    "eval_gpu_s_per_item": 1.0,
}
BENCHMARK_ITEMS = {"objhal": 300, "mmhal": 96, "amber": 1004}
"""Published sizes of the hallucination benchmarks (Object HalBench, MMHal-Bench, AMBER generative)."""


@dataclass
class CostEstimate:
    """GPU-hours per stage (None: a count was unknown; see ``notes``) and the calibration used."""

    calibration: str
    stages: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float | None:
        values = list(self.stages.values())
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def to_json(self) -> dict[str, Any]:
        return {"calibration": self.calibration, "total_gpu_hours": _round(self.total),
                "gpu_hours": {k: _round(v) for k, v in self.stages.items()}, "notes": self.notes}  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class _Unknown(Exception):
    """A record count the plan cannot know."""


def estimate_cost(plan: Plan, profile: Mapping[str, Any]) -> CostEstimate:
    """GPU-hours of every stage of ``plan`` (each distinct task counted once)."""
    rates = {**DEFAULT_THROUGHPUT, **(profile.get("throughput") or {})}
    estimate = CostEstimate(str(rates["calibration"]))
    for stage in plan.stages:
        if stage.kind != "gpu" or stage.name not in TASK_COST:
            estimate.stages[stage.name] = 0.0
            continue
        seconds: float | None = 0.0
        seen: set[str] = set()
        for inst in stage.instances:
            for task in inst.tasks:
                if task.task_id in seen:
                    continue
                seen.add(task.task_id)
                try:
                    seconds = None if seconds is None else seconds + TASK_COST[stage.name](inst, task, rates)
                except _Unknown as exc:
                    seconds = None
                    estimate.notes.append(f"{stage.name}: {exc}")
        estimate.stages[stage.name] = None if seconds is None else seconds / 3600
    estimate.notes = sorted(set(estimate.notes))
    return estimate


# ---------------------------------------------------------------- record counts


def file_records(name: Any, doc: Mapping[str, Any]) -> int:
    """Records of a data file: ``[run] expected_records[basename]`` when listed (counting a 100K-record
    file at every dry run costs seconds), else counted when the file is readable."""
    from mcmdpo.method.data.records import count_records

    if not name:
        raise _Unknown("no file")
    path = Path(str(name))
    expected = (doc.get("run") or {}).get("expected_records") or {}
    if path.name in expected:
        return int(expected[path.name])
    if path.is_file():
        return count_records(path)
    raise _Unknown(f"{path.name} is not readable here and not in [run] expected_records")


def split_records(doc: Mapping[str, Any], split: str) -> int:
    data = doc.get("data") or {}
    if data.get("source", "demo") == "demo":
        return int(data.get(f"num_{split}", 64 if split == "train" else 16))
    if data.get("source") == "curate":
        raise _Unknown("the curated split sizes are known only after curation")
    return file_records(data.get(f"{split}_file"), doc)


def trained_samples(spec: Mapping[str, Any], n: int) -> int:
    """Samples the trainer processes: whole global batches x epochs, or ``max_steps`` batches."""
    n = min(n, spec.get("max_samples") or n)
    batch = int(spec["global_batch_size"])
    steps = (n // batch) * int(spec["epochs"])
    if spec.get("max_steps"):
        steps = min(steps, int(spec["max_steps"]))
    return steps * batch


# ---------------------------------------------------------------- per task


def _per_sample(rates: Mapping[str, Any], conditions: int) -> float:
    return float(rates["preference_gpu_s"]) + float(rates["preference_condition_gpu_s"]) * conditions


def _sft(inst: PlannedInstance, task: PlannedTask, rates: Mapping[str, Any]) -> float:
    doc, spec = inst.recipe, inst.spec
    if spec.get("data", "preference") == "preference":
        n = split_records(doc, (doc.get("precompute") or {}).get("split", "train"))
    elif spec["data"] == "files":
        n = sum(min(f.get("limit") or 1 << 62, file_records(f["file"], doc)) for f in spec["files"])
    else:
        raise _Unknown("the curated SFT set's size is known only after curation")
    return trained_samples(spec, n) * _per_sample(rates, 2) * float(rates["sft_share"])


def _loss_conditions(loss: Mapping[str, Any]) -> int:
    from mcmdpo.method.losses import PreferenceLoss
    from mcmdpo.method.train.spec import LossSpec

    return len(PreferenceLoss.from_spec(LossSpec.model_validate(loss)).conditions)


def _preference(inst: PlannedInstance, task: PlannedTask, rates: Mapping[str, Any]) -> float:
    doc, spec = inst.recipe, inst.spec
    n = split_records(doc, (doc.get("precompute") or {}).get("split", "train"))
    per_sample = _per_sample(rates, _loss_conditions(spec.get("loss") or {}))
    if spec.get("reference", "offline") == "offline":
        per_sample *= 1 - float(rates["reference_share"])
    return trained_samples(spec, n) * per_sample


def _reference(inst: PlannedInstance, task: PlannedTask, rates: Mapping[str, Any]) -> float:
    doc, spec = inst.recipe, inst.spec
    n = split_records(doc, (doc.get("precompute") or {}).get("split", "train"))
    share = n / int(task.params.get("num_shards", 1))
    return share * _per_sample(rates, len(spec["conditions"])) * float(rates["reference_share"])


def _eval(inst: PlannedInstance, task: PlannedTask, rates: Mapping[str, Any]) -> float:
    doc, spec, benchmark = inst.recipe, inst.spec, task.params["benchmark"]
    if benchmark == "test":
        items = split_records(doc, "test")
    elif benchmark in BENCHMARK_ITEMS:
        items = BENCHMARK_ITEMS[benchmark]
    else:
        items = file_records((spec.get(benchmark) or {}).get("file"), doc)
    items = min(items, spec.get("limit") or items) / int(task.params.get("num_shards", 1))
    baseline = next((b for b in spec.get("baselines") or () if b["name"] == task.params["model"]), None)
    if baseline is None:
        length = int(spec["max_new_tokens"]) / 256 * int(spec["num_beams"])
    else:  # greedy; an endpoint costs no GPU; a big model holds several GPUs
        tokens = baseline.get("max_new_tokens") or spec["max_new_tokens"]
        gpus = 0 if baseline["kind"] == "api" else int((task.resources or {}).get("gpus_per_node", 1))
        length = int(tokens) / 256 * gpus
    return items * float(rates["eval_gpu_s_per_item"]) * length


TASK_COST = {"sft": _sft, "preference": _preference, "reference": _reference, "eval": _eval}


def with_cost(plan_json: dict[str, Any], estimate: CostEstimate) -> dict[str, Any]:
    """The plan JSON with ``gpu_hours`` on every stage and the ``cost`` summary (calibration, notes)."""
    for stage in plan_json["stages"]:
        stage["gpu_hours"] = _round(estimate.stages.get(stage["name"]))
    plan_json["cost"] = estimate.to_json()
    return plan_json
