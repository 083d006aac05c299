"""How a stage finds what an upstream stage produced, where that crosses the wings.

Stages never import each other; they meet here. A finished upstream task arrives as a
:class:`~mcmdpo.batch.stage.TaskInput` in ``ctx.inputs[stage]``; these functions turn it into what the
consumer needs:

- data: :func:`split_source` (a split of the ``data`` manifest with absolute paths),
  :func:`planned_records` (record counts at planning time), :func:`precompute_shard_params`;
- curation: the file names :data:`CURATE_DEDUPE`, :data:`CURATED`, :data:`CURATE_REPORT`,
  :func:`curated_files` (the outputs of ``curate_split``), :func:`sft_sources` (the SFT files);
- evaluation: :data:`MODEL_STAGES`, :func:`eval_models`, :func:`eval_model_names` (with the
  baselines), :func:`eval_job` (what an eval task generates with), :func:`baseline_key`,
  :func:`benchmark_source`, :func:`eval_shards`.

Hand-offs inside one wing live with their writer: model folders in
:mod:`mcmdpo.method.model.folders` (``model_dir``, ``upstream_model``, ``model_fingerprint``,
``declared_mode``, ``MODEL_STAGES``), shard inputs in :mod:`mcmdpo.method.data.shards`
(``shard_input``), prediction file names in :mod:`mcmdpo.evaluation.metrics.predictions`.

Imports stay light (no torch); heavy modules are imported inside functions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import read_json
from mcmdpo.batch.errors import ConfigError, MissingInput, StateError
from mcmdpo.batch.stage import StageSpec, TaskContext, TaskInput
from mcmdpo.method.model.folders import MODEL_STAGES, declared_mode, model_dir

if TYPE_CHECKING:
    from mcmdpo.evaluation.baselines.spec import BaselineSpec
    from mcmdpo.evaluation.generate import GenerationJob

if TYPE_CHECKING:
    from mcmdpo.method.data.sft_shards import SftSource

DATA_MANIFEST = "data.json"
CURATE_DEDUPE = "dedupe.json"
"""The ``curate_dedupe`` task's clusters and kept records."""
CURATED, CURATE_REPORT = "curated.jsonl", "curate.json"
"""A ``curate`` task's curated records and its counts."""


# ---------------------------------------------------------------- data


def split_source(task: TaskInput, split: str) -> dict[str, Any]:
    """One split of a finished data task: absolute ``file``/``images`` plus the manifest's fields."""
    manifest = read_json(task.dir / DATA_MANIFEST)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"])
        raise ConfigError(f"the data stage has no {split!r} split (have: {have})")
    info = dict(manifest["splits"][split])
    info["file"] = str(task.dir / info["file"])  # absolute paths stay absolute under '/'
    info["images"] = str(task.dir / info["images"])
    return info


def planned_records(doc: Mapping[str, Any], split: str) -> int | None:
    """Record count of ``split`` known at planning time (demo sizes, or counting the file)."""
    data = doc.get("data")
    if not isinstance(data, Mapping):
        return None
    if data.get("source", "demo") == "demo":
        return int(data.get(f"num_{split}", 64 if split == "train" else 16))
    name = data.get(f"{split}_file")
    if not name or not Path(name).is_file():
        return None
    from mcmdpo.method.data.records import count_records

    return count_records(Path(name))


def precompute_shard_params(
    doc: Mapping[str, Any], section: Mapping[str, Any] | None = None
) -> list[dict[str, int]]:
    """The ``{"shard": k, "num_shards": N}`` of the recipe's precompute tasks (known at planning).

    ``section`` is the ``[precompute]`` section (default: ``doc["precompute"]``).
    """
    section = section if section is not None else doc.get("precompute")
    if not isinstance(section, Mapping):
        raise ConfigError("the recipe needs a [precompute] section", field="precompute")
    n = section.get("num_shards") or 1
    per_shard = section.get("samples_per_shard")
    if per_shard is None and n > 1:
        count = planned_records(doc, section.get("split", "train"))
        if count and n > count:  # 0: an empty or placeholder file, nothing to compare with
            raise ConfigError(
                f"{n} shards for {count} records would plan {n - count} empty tasks; at most {count}",
                field="precompute.num_shards",
            )
    if per_shard is not None:
        count = planned_records(doc, section.get("split", "train"))
        data_file = section.get("data_file")
        if count is None and data_file and Path(data_file).is_file():
            from mcmdpo.method.data.records import count_records

            count = count_records(Path(data_file))
        if count is None:
            raise ConfigError(
                "the record count is unknown at planning time; set num_shards",
                field="precompute.samples_per_shard",
            )
        n = max(1, math.ceil(count / per_shard))
    return [{"shard": k, "num_shards": n} for k in range(n)]


def curated_files(task: TaskInput) -> dict[str, Path]:
    """The data files of a finished ``curate_split`` task: ``sft``, ``preference``, ``test``, ``images``."""
    from mcmdpo.curate.outputs import IMAGES, PREFERENCE, SFT, TEST

    names = {"sft": SFT, "preference": PREFERENCE, "test": TEST, "images": IMAGES}
    return {key: Path(task.dir) / name for key, name in names.items()}


def sft_sources(ctx: TaskContext, sft: Mapping[str, Any]) -> list[SftSource]:
    """The SFT sources of the ``[sft]`` section: its ``files``, or the curation's ``sft.json``."""
    from mcmdpo.method.data.sft_shards import SftSource

    if sft.get("data") == "curate":
        tasks = ctx.inputs.get("curate_split")
        if not tasks:
            raise ConfigError("sft.data = 'curate' needs the [curate] stages in the recipe", field="sft.data")
        files = curated_files(tasks[0])
        return [SftSource("curated", files["sft"], files["images"])]
    return [
        SftSource(
            f.get("name") or Path(f["file"]).stem,
            Path(f["file"]).absolute(),
            Path(f["images"]).absolute() if f.get("images") else None,
            f.get("limit"),
        )
        for f in sft.get("files", [])
    ]


# ---------------------------------------------------------------- shards


# ---------------------------------------------------------------- evaluation


def eval_models(models: Sequence[str] | None, doc: Mapping[str, Any]) -> list[str]:
    """The models to evaluate: ``models`` or every model-producing stage in ``doc``."""
    present = [m for m, stage in MODEL_STAGES.items() if stage in doc]
    if models is None:
        if not present:
            raise ConfigError(
                "eval needs a model: add [model] (base), [sft], [preference] or [[eval.baselines]]"
            )
        return present
    missing = [m for m in models if m not in present]
    if missing:
        stages = ", ".join(f"[{MODEL_STAGES[m]}]" for m in missing)
        raise ConfigError(f"lists {missing} but the recipe has no {stages}", field="eval.models")
    return list(models)


def eval_model_names(
    models: Sequence[str] | None, baselines: Sequence[str], doc: Mapping[str, Any]
) -> list[str]:
    """:func:`eval_models`, then the baselines; a recipe of baselines alone needs no trained model."""
    trained_in_doc = any(stage in doc for stage in MODEL_STAGES.values())
    trained = [] if models is None and baselines and not trained_in_doc else eval_models(models, doc)
    return [*trained, *baselines]


def baseline_key(spec: Any, baseline: BaselineSpec, benchmark: str) -> dict[str, Any]:
    """What decides a baseline's responses on ``benchmark`` (an eval task key's ``generation``)."""
    from mcmdpo.evaluation.baselines.spec import few_shot_applies

    settings = _baseline_sizes(spec, baseline)
    examples = spec.examples.get(benchmark) if few_shot_applies(baseline, benchmark) else None
    return {**baseline.key(), **settings, "examples": examples}


def _baseline_sizes(spec: Any, baseline: BaselineSpec) -> dict[str, int]:
    default_batch = baseline.api.concurrency if baseline.api is not None else spec.batch_size
    return {
        "max_new_tokens": baseline.max_new_tokens or spec.max_new_tokens,
        "batch_size": baseline.batch_size or default_batch,
    }


def eval_job(ctx: TaskContext, spec: Any) -> GenerationJob:
    """The model, settings and loader of one eval task: a trained model's folder, or a baseline."""
    from mcmdpo.evaluation.generate import GenerationJob

    model = ctx.params["model"]
    if model not in MODEL_STAGES:
        return _baseline_job(ctx, spec, spec.baseline(model))
    from mcmdpo.evaluation.engines import generator_loader
    from mcmdpo.evaluation.generate import generation_config

    folder = eval_model_dir(ctx, model)
    config = generation_config(spec, declared_mode(ctx))
    load = generator_loader(config.engine)  # vllm: one clear error here when vLLM or a GPU is missing
    return GenerationJob(str(folder), os.path.realpath(folder), config, load)


def _baseline_job(ctx: TaskContext, spec: Any, baseline: BaselineSpec) -> GenerationJob:
    import torch

    from mcmdpo.evaluation.baselines import load_baseline
    from mcmdpo.evaluation.baselines.checkpoints import is_local
    from mcmdpo.evaluation.baselines.hf import resolve_dtype
    from mcmdpo.evaluation.baselines.prompt import BaselineRun, pick_examples
    from mcmdpo.evaluation.baselines.spec import few_shot_applies
    from mcmdpo.evaluation.generate import GenerationJob

    benchmark = ctx.params["benchmark"]
    examples = ()
    if few_shot_applies(baseline, benchmark):
        examples = pick_examples(_examples_file(ctx, spec, benchmark), baseline.few_shot, ctx.seed)
    api = baseline.api.model_dump() if baseline.api is not None else None
    if api is not None and api["cache_dir"] is None:
        api["cache_dir"] = str(ctx.run_dir / "llm-cache")  # shared with the judge and curation
    cuda = torch.cuda.is_available()
    dtype = resolve_dtype(baseline.dtype, cuda) if baseline.kind == "hf" else "n/a"
    run = BaselineRun(
        name=baseline.name,
        kind=baseline.kind,
        model=baseline.model,
        revision=baseline.revision,
        dtype=dtype,
        prompt=baseline.prompt,
        system=baseline.system,
        examples=examples,
        trust_remote_code=baseline.trust_remote_code,
        api=api,
        **_baseline_sizes(spec, baseline),
    )
    real = os.path.realpath(baseline.model) if is_local(baseline.model) else baseline.model
    return GenerationJob(baseline.model, real, run, load_baseline)


def _examples_file(ctx: TaskContext, spec: Any, benchmark: str) -> Path:
    """The training file of ``benchmark``'s few-shot alt-texts (``test``: the data stage's train split)."""
    if benchmark == "test" and benchmark not in spec.examples:
        tasks = ctx.inputs.get("data")
        if not tasks:
            raise ConfigError("few-shot examples for benchmark 'test' come from the [data] stage")
        return Path(split_source(tasks[0], "train")["file"])
    return Path(spec.examples[benchmark])


def benchmark_source(ctx: TaskContext, eval_section: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The reader's source for benchmark ``name``: the data stage's test split or ``[eval.<name>]``."""
    from mcmdpo.evaluation.benchmarks import source_paths

    if name == "test":
        tasks = ctx.inputs.get("data")
        if not tasks:
            raise ConfigError("benchmark 'test' needs the [data] stage")
        info = split_source(tasks[0], "test")
        return {"file": info["file"], "images": info["images"]}
    return source_paths(name, dict(eval_section[name]))


def eval_shards(tasks: Sequence[TaskInput], model: str, benchmark: str) -> list[TaskInput]:
    """The eval tasks of (model, benchmark), in shard order; all shards must be there."""
    mine = [t for t in tasks if t.params.get("model") == model and t.params.get("benchmark") == benchmark]
    mine.sort(key=lambda t: t.params["shard"])
    expected = mine[0].params["num_shards"] if mine else 0
    if not mine or [t.params["shard"] for t in mine] != list(range(expected)):
        got = [t.params.get("shard") for t in mine]
        raise StateError(f"{model}/{benchmark}: eval shards {got} found, expected 0..{expected - 1}")
    return mine


def eval_model_dir(ctx: TaskContext, model: str) -> Path:
    """The HF folder of evaluated model ``model`` (base / sft / preference) consumed by this task."""
    stage = MODEL_STAGES[model]
    tasks = ctx.inputs.get(stage)
    if not tasks:
        raise ConfigError(f"eval model {model!r} needs the [{stage}] stage, which this task does not consume")
    folder = model_dir(tasks[0])
    if not (folder / "config.json").is_file():
        raise MissingInput(f"{folder}: no HF model folder (config.json) from stage {stage}")
    return folder


def stage_spec(doc: Mapping[str, Any], stage: str) -> StageSpec:
    """The validated spec of ``doc[stage]`` (its defaults when absent), through the stage registry."""
    from mcmdpo.batch.stage import get_stage

    return get_stage(stage).spec.model_validate(doc.get(stage) or {})
