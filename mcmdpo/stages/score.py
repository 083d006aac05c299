"""Stage ``score``: merge the ``eval`` shards per (model, benchmark) and write its metrics JSON.

It runs wherever ``[eval]`` does (``implied_by``) and owns the scoring settings: alt-text
``protocols``, ``[score.nltk]`` modes, the ``[score.judge]`` endpoint, ``[score.objhal]`` (object
extractor) and ``[score.amber]`` (noun matching). Benchmark files come from ``[eval.<name>]``. One CPU
task per (model, benchmark) reads exactly the eval shards of that pair, so changing a scoring setting
re-runs only scoring, and a base model shared by sweep points is scored once. Outputs and the metrics
JSON format: :mod:`mcmdpo.evaluation.scoring`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from mcmdpo import handoff
from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.evaluation.benchmarks.amber import AmberScoring
from mcmdpo.evaluation.benchmarks.objhal import ObjHalScoring
from mcmdpo.evaluation.metrics.judge import JudgeSpec
from mcmdpo.evaluation.metrics.nlp import NltkSpec

VERSION = 1


class ScoreSpec(StageSpec):
    """``[score]`` (optional: implied by ``[eval]``): how predictions are scored."""

    protocols: tuple[Literal["paper", "coco"], ...] = Field(
        ("paper", "coco"), min_length=1, description="alt-text metric protocols, each reported separately"
    )
    nltk: NltkSpec = Field(NltkSpec(), description="NLTK data and text-processing modes")
    judge: JudgeSpec | None = Field(None, description="LLM judge endpoint (MMHal; objhal extractor = 'llm')")
    objhal: ObjHalScoring = Field(ObjHalScoring(), description="Object HalBench object extraction")
    amber: AmberScoring = Field(AmberScoring(), description="AMBER noun matching")


def score_tasks(spec: ScoreSpec, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per (model, benchmark) of the recipe's ``[eval]`` section."""
    from mcmdpo.evaluation.benchmarks import get_benchmark

    section = doc.get("eval")
    if not isinstance(section, Mapping):
        raise ConfigError("[score] needs an [eval] section", field="score")
    needing = [b for b in section["benchmarks"] if get_benchmark(b).needs_judge(spec)]
    if needing and spec.judge is None:
        raise ConfigError(
            f"{', '.join(needing)} need(s) an LLM judge: add [score.judge]", field="score.judge"
        )
    baselines = [b["name"] for b in section.get("baselines") or ()]
    models = handoff.eval_model_names(section.get("models"), baselines, doc)
    return [{"model": m, "benchmark": b} for m in models for b in section["benchmarks"]]


def score_consumes(params: Mapping[str, Any], stage: str, upstream: Mapping[str, Any]) -> bool:
    """The eval shards of its (model, benchmark); the data stage for ``test``."""
    if stage == "data":
        return params["benchmark"] == "test"
    return upstream.get("model") == params["model"] and upstream.get("benchmark") == params["benchmark"]


def score_key(spec: ScoreSpec, params: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """Scoring settings, the benchmark's files and the item limit."""
    section = doc["eval"]
    return {"score": doc["score"], "source": section.get(params["benchmark"]), "limit": section["limit"]}


def run_score(ctx: TaskContext) -> list[str]:
    """Merge one (model, benchmark)'s shards and compute its metrics."""
    from mcmdpo.evaluation.readiness import require_assets
    from mcmdpo.evaluation.scoring import ScoreJob, score_job, task_points

    model, benchmark = ctx.params["model"], ctx.params["benchmark"]
    require_assets(handoff.stage_spec(ctx.recipe, "eval"), ctx.spec, [benchmark])
    job = ScoreJob(
        model,
        benchmark,
        handoff.benchmark_source(ctx, ctx.recipe["eval"], benchmark),
        ctx.recipe["eval"]["limit"],
        handoff.eval_shards(ctx.inputs.get("eval", []), model, benchmark),
    )
    points = task_points(ctx.run_dir, ctx.stage, ctx.task_id)
    outputs, count = score_job(job, ctx.spec, ctx.out_dir, ctx.run_dir, ctx.recipe, points)
    ctx.summary.update(predictions=count)
    return outputs


STAGE = register(
    Stage(
        name="score",
        spec=ScoreSpec,
        run=run_score,
        after=("data", "eval"),
        reads=("eval",),
        tasks=score_tasks,
        kind="cpu",
        version=VERSION,
        implied_by=("eval",),
        consumes=score_consumes,
        key=score_key,
    )
)
