"""Stage ``eval``: generate predictions for every (model, benchmark, shard) as GPU array tasks.

Models: ``base``, ``sft``, ``preference`` (one per sweep point) and the zero-shot ``[[eval.baselines]]``
(docs/baselines.md). A task id hashes only what decides its predictions, so a sweep evaluates the base,
SFT and baseline models once and ``[score]`` never re-queues a generation. Each task writes its shard's
``predictions.jsonl`` and ``generation.json`` (batched, resumable through a ledger under ``.work/``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from mcmdpo import handoff
from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.spec import reject_moved
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.evaluation.baselines.spec import BaselineSources
from mcmdpo.evaluation.benchmarks.sources import BenchmarkSources
from mcmdpo.evaluation.generate import GenerationConfig
from mcmdpo.evaluation.metrics.predictions import GENERATION, PREDICTIONS
from mcmdpo.method.memory_plan import memory_hook
from mcmdpo.method.model import folders

VERSION = 2  # 2: dtype auto = float16 on GPU, llava_v1 template, engine
MOVED_TO_SCORE = {"": ("protocols", "nltk", "judge"), "objhal": ("extractor", "spacy_model"),
                  "amber": ("similarity", "spacy_model", "threshold")}  # fmt: skip


class EvalSpec(StageSpec, BenchmarkSources, BaselineSources):
    """``[eval]``: which models and benchmarks, and how to generate (scoring settings: ``[score]``)."""

    models: tuple[Literal["base", "sft", "preference"], ...] | None = Field(
        None, description="models to evaluate (default: every model-producing stage in the recipe)"
    )
    shards: int = Field(1, ge=1, description="array tasks (GPU shards) per (model, benchmark)")
    batch_size: int = Field(8, ge=1, description="prompts per generate call (left-padded)")
    max_new_tokens: int = Field(256, ge=1, description="generation length limit (upstream 256)")
    num_beams: int = Field(1, ge=1, description="1 = greedy; upstream inference used 3")
    template: Literal["llava_v1", "vicuna_v1"] = Field(
        "llava_v1", description="llava_v1: upstream inference's system text; vicuna_v1: the training one"
    )
    question_suffix: str = Field("\n", description="appended to the question (upstream inference adds '\\n')")
    image_mode: Literal["pad", "anyres"] | None = Field(
        None, description="pad | anyres (default: the mode recorded by the model stage, else pad)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype for generation (auto: float16 on GPU as upstream, float32 on CPU)"
    )
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate; vllm: vLLM offline engine (extra 'vllm', GPU, greedy)"
    )
    limit: int | None = Field(None, ge=1, description="only the first N items of each benchmark (smoke runs)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return reject_moved(data, MOVED_TO_SCORE, "score")

    @model_validator(mode="after")
    def _check(self) -> EvalSpec:
        if self.engine == "vllm" and self.num_beams != 1:
            raise ValueError(f"engine 'vllm' generates greedily: num_beams must be 1 (got {self.num_beams})")
        return self


def eval_tasks(spec: EvalSpec, recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per (model, benchmark, shard); the baselines after the trained models."""
    models = handoff.eval_model_names(spec.models, [b.name for b in spec.baselines], recipe)
    if "test" in spec.benchmarks and "data" not in recipe:
        raise ConfigError(
            "benchmark 'test' reads the [data] stage's test split: add [data]", field="eval.benchmarks"
        )
    return [
        {"model": m, "benchmark": b, "shard": s, "num_shards": spec.shards}
        for m in models
        for b in spec.benchmarks
        for s in range(spec.shards)
    ]


def eval_consumes(params: Mapping[str, Any], stage: str, upstream: Mapping[str, Any]) -> bool:
    """Its model's task, the base model's ``model.json`` (image mode), the data stage for ``test``."""
    if stage == "data":
        return params["benchmark"] == "test"
    trained = folders.MODEL_STAGES.get(params["model"])
    return trained is not None and stage in ("model", trained)


def eval_key(spec: EvalSpec, params: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """What decides a shard's predictions besides its inputs: generation settings, files, limit."""
    section = doc["eval"]
    baseline = spec.baseline(params["model"])
    generation = (
        {k: section[k] for k in GenerationConfig.field_names()}
        if baseline is None
        else handoff.baseline_key(spec, baseline, params["benchmark"])
    )
    return {"generation": generation, "source": section.get(params["benchmark"]), "limit": section["limit"]}


def run_eval(ctx: TaskContext) -> list[str]:
    """Generate predictions for one (model, benchmark, shard); resumable after preemption or a kill."""
    from mcmdpo.batch.artifacts import content_hash, write_json_atomic
    from mcmdpo.batch.resumable import mark_complete, reusable
    from mcmdpo.evaluation.benchmarks import read_items, shard_items
    from mcmdpo.evaluation.generate import generate_items
    from mcmdpo.evaluation.metrics.predictions import write_predictions
    from mcmdpo.evaluation.readiness import require_assets

    spec: EvalSpec = ctx.spec
    p = ctx.params
    require_assets(spec, handoff.stage_spec(ctx.recipe, "score"), [p["benchmark"]])  # before loading a model
    job = handoff.eval_job(ctx, spec)  # vllm: one clear error here when vLLM or a GPU is missing
    source = handoff.benchmark_source(ctx, ctx.recipe["eval"], p["benchmark"])
    items = shard_items(read_items(p["benchmark"], source, spec.limit), p["shard"], p["num_shards"])
    info = {**p, "model_dir": job.model_path, "source": source, "generation": job.settings.public()}
    key = content_hash({**info, "model_dir": job.real_path, "limit": spec.limit, "version": VERSION})
    ctx.summary.update(items=len(items), generation_key=key)
    outputs = [PREDICTIONS, GENERATION]
    if (done := reusable(ctx.work_dir, ctx.out_dir, key)) is not None:
        ctx.summary.update(done["summary"])
    else:
        fields = {"model": p["model"], "model_path": job.model_path, "benchmark": p["benchmark"]}
        records, stats = generate_items(ctx, items, job.model_path, job.settings, fields, key, job.load)
        write_predictions(ctx.out_dir / PREDICTIONS, records)
        write_json_atomic(ctx.out_dir / GENERATION, {**info, "key": key, **stats})
        ctx.summary.update({k: v for k, v in stats.items() if k in ("generated_tokens", "tokens_per_s")})
        mark_complete(ctx.work_dir, key, outputs, ctx.summary)
    return outputs


STAGE = register(
    Stage(
        name="eval",
        spec=EvalSpec,
        run=run_eval,
        after=("data", "model", "sft", "preference"),
        tasks=eval_tasks,
        checkpointable=True,
        kind="gpu",
        memory=memory_hook("eval"),
        version=VERSION,
        consumes=eval_consumes,
        key=eval_key,
        task_resources=EvalSpec.placement,  # a baseline too big for one GPU gets several, or is refused
    )
)
