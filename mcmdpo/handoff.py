"""How a stage finds what an upstream stage produced: the one home of every file name and lookup.

Stages never import each other; they meet here. A finished upstream task arrives as a
:class:`~mcmdpo.stage.TaskInput` in ``ctx.inputs[stage]``; these functions turn it into what the
consumer needs:

- models: :func:`model_dir` (the HF folder of a ``model`` / ``sft`` / ``preference`` task, following
  ``model.json`` to an external folder), :func:`upstream_model` / :func:`init_model_dir` (the first
  consumed stage of a preference order), :func:`upstream_model_info`, :func:`model_fingerprint`;
- data: :func:`split_source` (a split of the ``data`` manifest with absolute paths),
  :func:`planned_records` (record counts at planning time), :func:`precompute_shard_params`;
- shards: :func:`shard_input` (this task's precompute ``.h5``), :func:`check_geometry`;
- curation: the file names :data:`CURATE_DEDUPE`, :data:`CURATED`, :data:`CURATE_REPORT`,
  :func:`curated_files` (the outputs of ``curate_split``), :func:`sft_sources` (the SFT files);
- evaluation: :data:`MODEL_STAGES`, :func:`eval_models`, :func:`benchmark_source`,
  :func:`eval_shards` and the file names :data:`PREDICTIONS`, :data:`GENERATION`.

Imports stay light (no torch); heavy modules are imported inside functions.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcmdpo.artifacts import file_hash, read_json
from mcmdpo.errors import ConfigError, MissingInput, StateError
from mcmdpo.stage import TaskContext, TaskInput

MODEL_DIR = "model"
MODEL_MANIFEST = "model.json"
DATA_MANIFEST = "data.json"
PREDICTIONS = "predictions.jsonl"
GENERATION = "generation.json"
CURATE_DEDUPE = "dedupe.json"
"""The ``curate_dedupe`` task's clusters and kept records."""
CURATED, CURATE_REPORT = "curated.jsonl", "curate.json"
"""A ``curate`` task's curated records and its counts."""
MODEL_STAGES: dict[str, str] = {"base": "model", "sft": "sft", "preference": "preference"}
"""Evaluated model name -> the stage whose ``model/`` folder it is."""
SMALL_FILE_BYTES = 8 << 20
"""Files up to this size are fingerprinted by content; larger ones (weights) by name and size."""


# ---------------------------------------------------------------- models


def model_dir(task: TaskInput | Path | str) -> Path:
    """The HF folder of a finished model-producing task (model, sft, preference).

    ``model.json`` (written by the model stage) wins when present, so ``source = "path"`` resolves to
    the external folder; otherwise ``<task>/model``.
    """
    folder = Path(task.dir if isinstance(task, TaskInput) else task)
    manifest = folder / MODEL_MANIFEST
    if manifest.is_file():
        path = Path(read_json(manifest)["path"])
        return path if path.is_absolute() else folder / path
    return folder / MODEL_DIR


def upstream_model(ctx: TaskContext, prefer: Sequence[str] = ("sft", "model")) -> Path:
    """The HF folder of the first stage in ``prefer`` that this task consumes."""
    for stage in prefer:
        tasks = ctx.inputs.get(stage)
        if tasks:
            return model_dir(tasks[0])
    sections = ", ".join(f"[{s}]" for s in prefer)
    raise ConfigError(f"stage {ctx.stage} needs a model: add one of the sections {sections}")


def init_model_dir(ctx: TaskContext, prefer: Sequence[str]) -> Path:
    """:func:`upstream_model`, checked to be an HF folder (``config.json``)."""
    folder = upstream_model(ctx, prefer=prefer)
    if not (folder / "config.json").is_file():
        stage = next(s for s in prefer if ctx.inputs.get(s))
        raise MissingInput(
            f"{ctx.stage}: the {stage} output {folder} has no config.json (deleted or never written); "
            f"re-run that stage: delete {ctx.inputs[stage][0].dir / 'DONE'} and submit again"
        )
    return folder


def upstream_model_info(ctx: TaskContext, prefer: Sequence[str] = ("sft", "model")) -> dict[str, Any]:
    """``model.json`` of the first consumed stage in ``prefer`` that has one (else ``{}``)."""
    for stage in prefer:
        for task in ctx.inputs.get(stage, [])[:1]:
            if (task.dir / MODEL_MANIFEST).is_file():
                return dict(read_json(task.dir / MODEL_MANIFEST))
    return {}


def model_fingerprint(path: Path | str) -> str:
    """A cheap content hash of an HF folder (sha256 hex).

    Every file's relative name and size, plus the content of files up to ``SMALL_FILE_BYTES``
    (config, tokenizer and processor files; the weights of tiny models). Multi-GB weight shards are
    never read. Hidden files and folders (``.cache``, temp files) are ignored.
    """
    folder = Path(path)
    digest = hashlib.sha256()
    for file in visible_files(folder):
        rel = file.relative_to(folder).as_posix()
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        if size <= SMALL_FILE_BYTES:
            digest.update(file_hash(file).encode())
    return digest.hexdigest()


def visible_files(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder`` (links followed), sorted by relative path."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in names if not n.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


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
    from mcmdpo.data.records import count_records

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
    if per_shard is not None:
        count = planned_records(doc, section.get("split", "train"))
        data_file = section.get("data_file")
        if count is None and data_file and Path(data_file).is_file():
            from mcmdpo.data.records import count_records

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


def sft_sources(ctx: TaskContext, sft: Mapping[str, Any]) -> list[Any]:
    """The SFT sources of the ``[sft]`` section: its ``files``, or the curation's ``sft.json``."""
    from mcmdpo.data.sft_shards import SftSource

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


def task_h5_output(task: TaskInput) -> Path:
    """The one ``.h5`` output of a finished shard task (precompute or reference)."""
    h5 = [Path(p) for p in task.outputs if str(p).endswith(".h5")]
    if len(h5) != 1:
        raise StateError(f"{task.stage} task {task.task_id}: expected one .h5 output, got {h5}")
    return h5[0] if h5[0].is_absolute() else Path(task.dir) / h5[0]


def shard_input(ctx: TaskContext, stage: str = "precompute") -> Path:
    """The ``.h5`` of the ``stage`` task with this task's ``shard`` / ``num_shards``."""
    want = (int(ctx.params["shard"]), int(ctx.params["num_shards"]))
    for task in ctx.inputs.get(stage, []):
        if (int(task.params["shard"]), int(task.params["num_shards"])) == want:
            return task_h5_output(task)
    raise StateError(f"{ctx.stage}: no finished {stage} task for shard {want[0]} of {want[1]}")


def check_geometry(processor: Any, patch_shape: Any, path: Path | str, who: str) -> None:
    """Shard pixel tensors must have the crop size of ``who``'s processor (the model that reads them)."""
    from mcmdpo.model.images import crop_side

    side = crop_side(processor)
    if patch_shape is not None and int(list(patch_shape)[-1]) != side:
        raise ConfigError(
            f"{path}: pixel tensors are {int(list(patch_shape)[-1])}px but {who}'s processor expects "
            f"{side}px crops; precompute with this model's processor (a [model] stage in the recipe)"
        )


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
    from mcmdpo.benchmarks import source_paths

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


def stage_spec(doc: Mapping[str, Any], stage: str) -> Any:
    """The validated spec of ``doc[stage]`` (its defaults when absent), through the stage registry."""
    from mcmdpo.stage import get_stage

    return get_stage(stage).spec.model_validate(doc.get(stage) or {})


def processor_dir(ctx: TaskContext, mode: str, fallback: str | None) -> Path | None:
    """The image processor's folder: the ``model`` stage's HF folder, else ``fallback``, else None
    (the built-in LLaVA-1.6 processor). A model stage that declares another image ``mode`` gets a
    warning (the weights work in both modes, but training should use the mode of the shards)."""
    tasks = ctx.inputs.get("model")
    if not tasks:
        return Path(fallback) if fallback else None
    declared = declared_mode(ctx)
    if declared is not None and declared != mode:
        ctx.log.warning("precompute.mode = %r but the model stage declares mode %r", mode, declared)
    return model_dir(tasks[0])


def declared_mode(ctx: TaskContext) -> str | None:
    """The image mode the ``model`` stage recorded in ``model.json`` (None without one)."""
    return upstream_model_info(ctx, prefer=("model",)).get("mode")
