"""Stage ``model``: the base LLaVA-1.6 checkpoint of a run, built tiny or taken from a folder.

``tiny``: a random tiny LLaVA-NeXT in ``<task>/model/`` (tokenizer trained on the ``data`` texts, or on a
built-in corpus: ``corpus = "builtin"``). ``path``: an existing HF folder (``llava-v1.6-vicuna-7b-hf``
layout; checked at validation, not copied). Both write ``model.json`` (read by ``folders.upstream_model``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mcmdpo import handoff
from mcmdpo.batch.artifacts import read_json, write_json_atomic
from mcmdpo.batch.spec import EnvStr, existing_path
from mcmdpo.batch.stage import Stage, StageSpec, TaskContext, register
from mcmdpo.method.model.folders import MODEL_DIR, model_fingerprint, visible_files
from mcmdpo.method.model.folders import MODEL_MANIFEST as MANIFEST

TINY_FIELDS = ("image_size", "patch_size", "hidden_size", "num_layers", "vocab_size")


class ModelSpec(StageSpec):
    """``[model]``: the base checkpoint (tiny random model, or an existing HF folder)."""

    source: Literal["tiny", "path"] = Field(
        "tiny", description="tiny: build a small random LLaVA-NeXT; path: use an existing HF folder"
    )
    path: EnvStr | None = Field(
        None,
        validate_default=True,
        description="path: HF LLaVA-NeXT folder with config.json (relative: to the submit directory)",
    )
    mode: Literal["pad", "anyres"] = Field(
        "pad", description="image mode used with this model: pad (upstream parity) or anyres (LLaVA-NeXT)"
    )
    image_size: int = Field(
        56, ge=14, description="tiny: vision crop side in pixels (multiple of patch_size)"
    )
    patch_size: int = Field(14, ge=1, description="tiny: vision patch side (image tokens = (side/patch)^2)")
    hidden_size: int = Field(
        32, ge=8, description="tiny: width of the vision tower and the LM (multiple of 4)"
    )
    num_layers: int = Field(2, ge=1, description="tiny: layers of the vision tower and of the LM")
    vocab_size: int = Field(512, ge=300, description="tiny: BPE vocabulary size (>= 256 bytes + specials)")
    corpus: Literal["data", "builtin"] = Field("data", description="tiny tokenizer: [data] texts or built-in")

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Resolve and check the folder now, so that a bad path fails at submit, not in a job."""
        if "source" not in info.data:  # source itself is invalid: reported on its own
            return value
        if info.data["source"] != "path":
            if value is not None:
                raise PydanticCustomError("path_unused", "only used with source = 'path'")
            return None
        if not value:
            raise PydanticCustomError(
                "path_required", "source = 'path' needs path = \"/abs/or/relative/hf-folder\""
            )
        hint = "; is it a HuggingFace LLaVA-NeXT checkpoint? (see tools/convert_llava_checkpoint.md)"
        return existing_path(value, "dir", contains="config.json", hint=hint)

    @model_validator(mode="after")
    def _check_tiny(self) -> ModelSpec:
        if self.source == "path":
            # compared with the defaults: the resolved recipe (re-validated in the job) lists them all
            fields = type(self).model_fields
            given = sorted(f for f in TINY_FIELDS if getattr(self, f) != fields[f].default)
            if given:
                raise ValueError(f"{', '.join(given)} only apply to source = 'tiny'")
            return self
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of 4 (attention heads)")
        return self


def run_model(ctx: TaskContext) -> list[str]:
    """Build the tiny model, or record the external folder; write ``model.json``."""
    spec: ModelSpec = ctx.spec
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    from mcmdpo.method.model.load import config_summary

    if spec.source == "tiny":
        texts, corpus = tokenizer_texts(ctx)
        folder = build_tiny(ctx.out_dir, texts, spec, seed=int(ctx.seed))
        info = {"source": "tiny", "path": MODEL_DIR, "tokenizer_corpus": corpus, "seed": int(ctx.seed)}
        info.update({k: getattr(spec, k) for k in TINY_FIELDS})
        outputs = [MODEL_DIR, MANIFEST]
    else:
        from mcmdpo.batch.resumable import link_atomic

        folder = Path(spec.path or "")
        link_atomic(ctx.out_dir / MODEL_DIR, folder)  # for readers of <task>/model (not an output)
        info = {"source": "path", "path": str(folder)}
        outputs = [MANIFEST]
    fingerprint = model_fingerprint(folder)
    info.update(mode=spec.mode, fingerprint=fingerprint, config=config_summary(folder))
    write_json_atomic(ctx.out_dir / MANIFEST, info)
    ctx.summary.update(size_mb=round(sum(f.stat().st_size for f in visible_files(folder)) / 2**20, 3))
    ctx.log.info("model %s (%s): %s", info["source"], info["fingerprint"][:12], folder)
    return outputs


def tokenizer_texts(ctx: TaskContext) -> tuple[list[str], str]:
    """Texts for the tiny tokenizer and a label of where they came from."""
    tasks = ctx.inputs.get("data")
    if not tasks:
        from mcmdpo.method.model.tiny import BUILTIN_CORPUS

        return list(BUILTIN_CORPUS), "builtin"
    from mcmdpo.method.data.records import load_records

    splits = read_json(tasks[0].dir / handoff.DATA_MANIFEST)["splits"]
    split = "train" if "train" in splits else "test"
    info = handoff.split_source(tasks[0], split)
    records = load_records(Path(info["file"]), split, info["format"])
    texts = [t for r in records for t in (r.question, r.chosen, r.rejected) if t]
    return texts, f"data:{split} ({len(texts)} texts)"


def build_tiny(out_dir: Path, texts: Sequence[str], spec: ModelSpec, seed: int) -> Path:
    """Build the tiny model in a hidden temp folder inside ``out_dir``, then rename it to ``model/``."""
    from transformers.utils import logging as hf_logging

    from mcmdpo.batch.resumable import atomic_dir
    from mcmdpo.method.model import build_tiny_llava

    hf_logging.disable_progress_bar()  # progress bars garble job log files
    final = out_dir / MODEL_DIR
    sizes = {k: getattr(spec, k) for k in TINY_FIELDS}
    with atomic_dir(final) as tmp:
        build_tiny_llava(tmp, texts, **sizes, seed=seed)
    return final


def model_uses(spec: ModelSpec, doc: Mapping[str, Any]) -> tuple[str, ...]:  # a tokenizer on [data] texts
    return ("data",) if spec.source == "tiny" and spec.corpus == "data" else ()


STAGE = register(Stage(name="model", spec=ModelSpec, run=run_model, after=("data",), uses=model_uses))
