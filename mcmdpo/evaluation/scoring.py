"""Scoring one (model, benchmark): merge the eval shards, score, write the metrics JSON.

Files, relative to the score task's folder::

    predictions/<model>/<benchmark>.jsonl        the merged shards, in benchmark order
    metrics/<model>/<benchmark>.json             aggregate metrics + provenance (below)
    metrics/<model>/<benchmark>.samples.jsonl    per-sample scores, one line per item

The metrics JSON::

    {"model": "sft", "model_stage": "sft", "model_path": ..., "model_spec": {...}, "benchmark": "talt",
     "kind": "altext", "num_predictions": 1688, "generation": {...}, "eval_tasks": [...], "limit": null,
     "points": [{...sweep values}], "metrics": {...}, "deviations": [...], "versions": {...},
     "samples": "<benchmark>.samples.jsonl"}

A zero-shot baseline's JSON has ``"model_stage": "baseline"`` and its ``[[eval.baselines]]`` entry as
``model_spec`` (whose ``label`` names its report row); its ``generation`` is the baseline's settings
(prompt, examples, model id) and its ``deviations`` are the scorer's only.
``generation`` holds the eval settings as run (``template``, resolved ``dtype``, ``engine``, beams ...);
``deviations`` lists the scorer's and the generation's differences from upstream.
``metrics`` by kind: alt-text ``{"paper": {...}, "coco": {...}}`` (see
:mod:`mcmdpo.evaluation.metrics.altext`); objhal / amber / mmhal: the aggregate of
:mod:`~mcmdpo.evaluation.metrics.chair`, :mod:`~mcmdpo.evaluation.metrics.amber`,
:mod:`~mcmdpo.evaluation.metrics.mmhal`. Reports read only these files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import read_json, write_json_atomic
from mcmdpo.batch.stage import TaskInput
from mcmdpo.evaluation.metrics.predictions import GENERATION, PREDICTIONS
from mcmdpo.method.model.folders import MODEL_STAGES

BASELINE_STAGE = "baseline"
"""``model_stage`` of a zero-shot baseline's metrics (no stage produced its weights)."""

if TYPE_CHECKING:
    from mcmdpo.evaluation.metrics.judge import JudgeClient


@dataclass(frozen=True)
class ScoreJob:
    """One (model, benchmark) to score and where its pieces come from."""

    model: str
    benchmark: str
    source: dict[str, Any]
    limit: int | None
    shards: list[TaskInput]

    @property
    def rel(self) -> str:
        return f"{self.model}/{self.benchmark}"


def predictions_file(model: str, benchmark: str) -> str:
    """Where a score task keeps the merged predictions of (model, benchmark), relative to its folder."""
    return f"predictions/{model}/{benchmark}.jsonl"


def merge_shards(job: ScoreJob, out_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """Concatenate the shard predictions (checked against the benchmark's item ids)."""
    from mcmdpo.evaluation.benchmarks import read_items
    from mcmdpo.evaluation.metrics.predictions import merge_predictions, read_predictions

    expected = [item.id for item in read_items(job.benchmark, job.source, job.limit)]
    rel = predictions_file(job.model, job.benchmark)
    merge_predictions([t.dir / PREDICTIONS for t in job.shards], out_dir / rel, expected)
    return read_predictions(out_dir / rel), rel


def judge_factory(settings: Any, cache_dir: Path) -> Callable[[], JudgeClient] | None:
    """Builds the ``[score.judge]`` client with its reply cache (None without a judge)."""
    if settings.judge is None:
        return None

    def build() -> JudgeClient:
        from mcmdpo.evaluation.metrics.judge import JudgeClient

        return JudgeClient(settings.judge, cache_dir=settings.judge.cache_dir or cache_dir)

    return build


def score_job(job: ScoreJob, settings: Any, out_dir: Path, run_dir: Path, recipe: Mapping[str, Any],
              points: Sequence[Mapping[str, Any]]) -> tuple[list[str], int]:  # fmt: skip
    """Merge, score and write one (model, benchmark); return the outputs (relative to ``out_dir``) and
    the number of predictions."""
    from mcmdpo.evaluation.benchmarks import ScoreEnv, get_benchmark
    from mcmdpo.evaluation.metrics.predictions import write_predictions

    records, merged = merge_shards(job, out_dir)
    benchmark = get_benchmark(job.benchmark)
    env = ScoreEnv(
        settings, job.source, out_dir.parent / ".cache", judge_factory(settings, run_dir / "llm-cache")
    )
    metrics, samples, deviations = benchmark.score(records, env)
    rel = f"metrics/{job.rel}"
    write_predictions(out_dir / f"{rel}.samples.jsonl", samples)
    doc = document(job, benchmark.kind, records, metrics, deviations, recipe, points)
    write_json_atomic(out_dir / f"{rel}.json", doc)
    return [merged, f"{rel}.json", f"{rel}.samples.jsonl"], len(records)


def document(job: ScoreJob, kind: str, records: Sequence[Mapping[str, Any]], metrics: Any,
             deviations: Sequence[str], recipe: Mapping[str, Any],
             points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The metrics JSON of one (model, benchmark) (see the module docstring)."""
    from mcmdpo.evaluation.generate import generation_deviations
    from mcmdpo.evaluation.metrics.nlp import versions

    first = job.shards[0].dir / GENERATION
    generation = read_json(first) if first.is_file() else {}
    stage, spec = model_stage(job.model, recipe)
    settings = generation.get("generation")
    trained_deviations = generation_deviations(settings) if stage != BASELINE_STAGE else []
    return {
        "model": job.model,
        "model_stage": stage,
        "model_path": generation.get("model_dir"),
        "model_spec": spec,
        "benchmark": job.benchmark,
        "kind": kind,
        "num_predictions": len(records),
        "generation": settings,
        "eval_tasks": [t.task_id for t in job.shards],
        "limit": job.limit,
        "points": list(points),
        "metrics": metrics,
        "deviations": sorted({*deviations, *trained_deviations}),
        "versions": versions(),
        "samples": f"{job.benchmark}.samples.jsonl",
    }


def model_stage(model: str, recipe: Mapping[str, Any]) -> tuple[str, Any]:
    """(stage, spec) of an evaluated model: a trained model's stage and section, or ``baseline`` and
    its ``[[eval.baselines]]`` entry (whose ``label`` names its report row)."""
    if model in MODEL_STAGES:
        return MODEL_STAGES[model], recipe.get(MODEL_STAGES[model])
    entries = (recipe.get("eval") or {}).get("baselines") or ()
    return BASELINE_STAGE, next((b for b in entries if b.get("name") == model), None)


def task_points(run_dir: Path, stage: str, task_id: str) -> list[dict[str, Any]]:
    """The sweep points a task serves, from the run's ``plan.json`` (empty without one)."""
    from mcmdpo.batch.paths import RunPaths
    from mcmdpo.batch.plan import load_plan

    if not RunPaths(run_dir).plan.is_file():
        return []
    plan = load_plan(run_dir)
    return plan.task_points(stage, task_id) if any(s.name == stage for s in plan.stages) else []
