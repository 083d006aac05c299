"""Stage ``represent``: the paper's Fig. 7, final-token representations of N test items per model.

Implied by ``[report] representations = true`` (with these defaults) or written as ``[represent]``.
One GPU task per evaluated model (base, SFT, every preference model): it samples ``samples`` items
of an alt-text test set (seeded, the same items for every model), embeds the model's output for
them and the ground-truth alt-texts (how, per ``mode``: :mod:`mcmdpo.evaluation.represent`) and
writes ``embeddings.npz`` + ``represent.json``. The report projects every task's points with one PCA
and draws the figure and the distances (:mod:`mcmdpo.report.representations`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from mcmdpo import handoff
from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.method.model import folders

VERSION = 1


class RepresentSpec(StageSpec):
    """``[represent]`` (optional: implied by ``[report] representations = true``): paper Fig. 7."""

    samples: int = Field(100, ge=2, description="test items drawn (seeded; all of them when there are fewer)")
    benchmark: str | None = Field(
        None, description="alt-text test set (default: palt when evaluated, else the first alt-text one)"
    )
    mode: Literal["generated", "prompt"] = Field(
        "generated",
        description="generated: the base model's LM reads each model's generated alt-text (paper Sec. 6.4); "
        "prompt: each model's LM reads the image + context prompt (see mcmdpo.evaluation.represent)",
    )
    seed: int = Field(0, ge=0, description="seed of the item sample")
    batch_size: int = Field(8, ge=1, description="texts or prompts per forward pass")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype (auto: float16 on GPU, float32 on CPU, as generation)"
    )


def represent_benchmark(spec: RepresentSpec, doc: Mapping[str, Any]) -> str:
    """The test set: ``spec.benchmark``, else ``palt`` when evaluated, else the first alt-text one."""
    from mcmdpo.evaluation.benchmarks import get_benchmark

    section = doc.get("eval")
    if not isinstance(section, Mapping):
        raise ConfigError("[represent] embeds evaluated models: add [eval]", field="represent")
    evaluated = list(section["benchmarks"])
    altext = [b for b in evaluated if get_benchmark(b).kind == "altext"]
    if spec.benchmark is not None and spec.benchmark not in altext:
        raise ConfigError(
            f"must be an evaluated alt-text benchmark (have: {altext})", field="represent.benchmark"
        )
    if not altext:
        raise ConfigError(f"no alt-text benchmark among {evaluated}", field="represent.benchmark")
    return spec.benchmark or ("palt" if "palt" in altext else altext[0])


def represent_tasks(spec: RepresentSpec, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task per evaluated model, on the chosen test set."""
    benchmark = represent_benchmark(spec, doc)
    if spec.mode == "generated" and "model" not in doc:
        raise ConfigError("mode 'generated' encodes with the base model: add [model]", field="represent.mode")
    return [{"model": m, "benchmark": benchmark} for m in handoff.eval_models(doc["eval"].get("models"), doc)]


def represent_consumes(params: Mapping[str, Any], stage: str, upstream: Mapping[str, Any]) -> bool:
    """Its model's eval tasks on the benchmark, the base model (encoder, image mode), its model."""
    if stage == "eval":
        return upstream.get("model") == params["model"] and upstream.get("benchmark") == params["benchmark"]
    if stage == "data":
        return params["benchmark"] == "test"
    return stage in ("model", folders.MODEL_STAGES[params["model"]])


def represent_key(spec: RepresentSpec, params: Mapping[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """Its settings, the benchmark's files and item limit, the prompt settings of ``[eval]``."""
    section = doc["eval"]
    prompt = {k: section.get(k) for k in ("template", "question_suffix", "image_mode")}
    return {"represent": doc["represent"], "source": section.get(params["benchmark"]),
            "limit": section["limit"], "prompt": prompt}  # fmt: skip


def run_represent(ctx: TaskContext) -> list[str]:
    """Embed one model's items and their references (``embeddings.npz``, ``represent.json``)."""
    import dataclasses

    from mcmdpo.evaluation import represent
    from mcmdpo.evaluation.benchmarks import read_items
    from mcmdpo.evaluation.generate import generation_config, resolve_dtype
    from mcmdpo.evaluation.metrics.predictions import PREDICTIONS, read_predictions

    spec: RepresentSpec = ctx.spec
    model, benchmark = ctx.params["model"], ctx.params["benchmark"]
    eval_spec = handoff.stage_spec(ctx.recipe, "eval")
    config = dataclasses.replace(generation_config(eval_spec, folders.declared_mode(ctx)),
                                 batch_size=spec.batch_size, dtype=resolve_dtype(spec.dtype))  # fmt: skip
    if spec.mode == "generated":
        shards = handoff.eval_shards(ctx.inputs.get("eval", []), model, benchmark)
        records = [r for t in shards for r in read_predictions(t.dir / PREDICTIONS)]
        encoder = handoff.eval_model_dir(ctx, "base")
        embedded = represent.represent_generated(encoder, records, spec.samples, spec.seed, config)
    else:
        source = handoff.benchmark_source(ctx, ctx.recipe["eval"], benchmark)
        items = read_items(benchmark, source, eval_spec.limit)
        encoder = handoff.eval_model_dir(ctx, model)
        embedded = represent.represent_prompts(encoder, items, spec.samples, spec.seed, config)
    stage = folders.MODEL_STAGES[model]
    info = {"model": model, "model_stage": stage, "model_spec": ctx.recipe.get(stage), "benchmark": benchmark,
            "kind": "represent", "mode": spec.mode, "encoder": str(encoder), "seed": spec.seed}  # fmt: skip
    ctx.summary.update(items=len(embedded.ids), hidden_size=int(embedded.model.shape[1]))
    return represent.write_embedded(ctx.out_dir, embedded, info)


STAGE = register(
    Stage(
        name="represent",
        spec=RepresentSpec,
        run=run_represent,
        after=("data", "model", "sft", "preference", "eval"),
        tasks=represent_tasks,
        kind="gpu",
        version=VERSION,
        implied_by=("report.representations",),
        consumes=represent_consumes,
        key=represent_key,
    )
)
