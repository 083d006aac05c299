"""How a stage finds what an upstream stage produced, where that crosses the wings.

Stages never import each other; they meet here. A finished upstream task arrives as a
:class:`~mcmdpo.batch.stage.TaskInput` in ``ctx.inputs[stage]``; these functions turn it into what the
consumer needs:

- data: :func:`split_source` (a split of the ``data`` manifest with absolute paths),
  :func:`planned_records` (record counts at planning time), :func:`precompute_shard_params`;
- curation: the file names :data:`CURATE_DEDUPE`, :data:`CURATED`, :data:`CURATE_REPORT`,
  :func:`curated_files` (the outputs of ``curate_split``), :func:`sft_sources` (the SFT files);
- evaluation: :func:`eval_models`, :func:`benchmark_source`, :func:`eval_shards`,
  :func:`eval_model_dir`, :func:`stage_spec`.

Hand-offs inside one wing live with their writer: model folders in
:mod:`mcmdpo.method.model.folders` (``model_dir``, ``upstream_model``, ``model_fingerprint``,
``declared_mode``, ``MODEL_STAGES``), shard inputs in :mod:`mcmdpo.method.data.shards`
(``shard_input``), prediction file names in :mod:`mcmdpo.evaluation.metrics.predictions`.

Imports stay light (no torch); heavy modules are imported inside functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.artifacts import read_json
from mcmdpo.batch.errors import ConfigError, MissingInput, StateError
from mcmdpo.batch.stage import StageSpec, TaskContext, TaskInput
from mcmdpo.method.model.folders import MODEL_STAGES, model_dir

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
        if count is not None and n > count:
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
            raise ConfigError("eval needs a model: add [model] (base), [sft] or [preference]")
        return present
    missing = [m for m in models if m not in present]
    if missing:
        stages = ", ".join(f"[{MODEL_STAGES[m]}]" for m in missing)
        raise ConfigError(f"lists {missing} but the recipe has no {stages}", field="eval.models")
    return list(models)


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
