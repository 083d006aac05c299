"""Model folders handed from stage to stage: where a ``model`` / ``sft`` / ``preference`` task's HF
folder is (``model.json`` may point outside the run dir), which upstream model a task starts from,
cheap fingerprints, and the image mode the model stage declared."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import file_hash, read_json
from mcmdpo.batch.errors import ConfigError, MissingInput
from mcmdpo.batch.stage import TaskContext, TaskInput

MODEL_DIR = "model"
MODEL_MANIFEST = "model.json"
MODEL_STAGES: dict[str, str] = {"base": "model", "sft": "sft", "preference": "preference"}
"""Evaluated model name -> the stage whose ``model/`` folder it is."""
SMALL_FILE_BYTES = 8 << 20
"""Files up to this size are fingerprinted by content; larger ones (weights) by name and size."""


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
