"""Stage ``model``: the base LLaVA-1.6 checkpoint of a run, built tiny or taken from a folder.

``tiny``: a random tiny LLaVA-NeXT in ``<task>/model/`` (tokenizer trained on the ``data`` texts, or on a
built-in corpus: ``corpus = "builtin"``). ``config``: a random-weight model of a shipped real architecture
(``config = "llava-v1.6-vicuna-7b-hf"``) at ``layers`` / ``vision_layers`` depth, full width, with the
same kind of tokenizer (:mod:`mcmdpo.method.model.architecture`). ``path``: an existing HF folder
(``llava-v1.6-vicuna-7b-hf`` layout; checked at validation, not copied). All write ``model.json`` (read
by ``folders.upstream_model``). The fields are :class:`ModelSpec` (:mod:`mcmdpo.method.model.spec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcmdpo import handoff
from mcmdpo.batch.artifacts import read_json, write_json_atomic
from mcmdpo.batch.stage import Stage, TaskContext, register
from mcmdpo.method.model.folders import MODEL_DIR, model_fingerprint, visible_files
from mcmdpo.method.model.folders import MODEL_MANIFEST as MANIFEST
from mcmdpo.method.model.spec import CONFIG_FIELDS, TINY_FIELDS, ModelSpec

__all__ = ["ModelSpec", "run_model"]


def run_model(ctx: TaskContext) -> list[str]:
    """Build the tiny model, or record the external folder; write ``model.json``."""
    spec: ModelSpec = ctx.spec
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    from mcmdpo.method.model.load import config_summary

    if spec.source in ("tiny", "config"):
        texts, corpus = tokenizer_texts(ctx)
        folder = build_random(ctx.out_dir, texts, spec, seed=int(ctx.seed))
        info = {"source": spec.source, "path": MODEL_DIR, "tokenizer_corpus": corpus, "seed": int(ctx.seed)}
        info.update({k: getattr(spec, k) for k in (TINY_FIELDS if spec.source == "tiny" else CONFIG_FIELDS)})
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


def build_random(out_dir: Path, texts: Sequence[str], spec: ModelSpec, seed: int) -> Path:
    """Build the tiny (or config) model in a hidden temp folder inside ``out_dir``, then rename it."""
    from transformers.utils import logging as hf_logging

    from mcmdpo.batch.resumable import atomic_dir
    from mcmdpo.method.model import build_tiny_llava

    hf_logging.disable_progress_bar()  # progress bars garble job log files
    final = out_dir / MODEL_DIR
    sizes = {k: getattr(spec, k) for k in TINY_FIELDS}
    with atomic_dir(final) as tmp:
        if spec.source == "config":
            from mcmdpo.method.model.architecture import build_config_llava

            build_config_llava(tmp, spec.architecture_config() or {}, texts, seed=seed)
        else:
            build_tiny_llava(tmp, texts, **sizes, seed=seed)
    return final


def model_uses(spec: ModelSpec, doc: Mapping[str, Any]) -> tuple[str, ...]:  # a tokenizer on [data] texts
    return ("data",) if spec.source in ("tiny", "config") and spec.corpus == "data" else ()


STAGE = register(Stage(name="model", spec=ModelSpec, run=run_model, after=("data",), uses=model_uses))
