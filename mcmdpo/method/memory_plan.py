"""A recipe's GPU tasks -> memory plans (:mod:`mcmdpo.method.memory`), and the rehearsal file they use.

Without a rehearsal, token counts are assumed (analytic): every answer :data:`ANSWER_TOKENS` long and
every context (instruction + post) :data:`CONTEXT_TOKENS` long, both cut to what ``max_length``
leaves after the prefix and the image; images at the mode's largest (one crop in ``pad`` mode, the
largest anyres grid otherwise); eval prompts of that image and a context. SFT rows are cut at
``max_length``; a preference row holds the prefix, the loss's images, contexts and answers (shared
engine) or one sequence per condition (naive). ``mcmdpo rehearse`` writes ``<run dir>/rehearsal.json``
with the longest sample's real token counts and the activation bytes measured per layer; a task whose
settings match an entry is planned from it (``basis`` measured).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mcmdpo.batch.artifacts import content_hash
from mcmdpo.batch.memory import MemoryNeed
from mcmdpo.method.memory import (
    BYTES,
    CUDA_RESERVE_GIB,
    Activations,
    GiB,
    MemoryPlan,
    Tokens,
    TrainSetup,
    analytic_activations,
    fixes,
    inference_plan,
    training_plan,
)
from mcmdpo.method.model.architecture import Architecture

PREFIX_TOKENS = 48
"""System text and ``USER:`` of the Vicuna template (~40 Llama tokens), rounded up."""
ANSWER_TOKENS = 256
"""Analytic answer length (upstream inference's generation cap; alt-texts are mostly far shorter)."""
CONTEXT_TOKENS = 512
"""Analytic context length: the instruction and the post (a long social-media post)."""
REHEARSAL_FILE = "rehearsal.json"
TRAINING = ("sft", "preference")


def model_architecture(doc: Mapping[str, Any]) -> tuple[Architecture, dict[str, Any]] | None:
    """The recipe's model (at the depth it is built) and its config dict, or None when unknown."""
    from mcmdpo.method.model.spec import ModelSpec

    section = doc.get("model")
    if not isinstance(section, Mapping):
        return None
    raw = ModelSpec.model_validate(section).architecture_config()
    return None if raw is None else (Architecture.from_config(raw), raw)


def image_tokens(arch: Architecture, raw: Mapping[str, Any], mode: str) -> tuple[int, int]:
    """(placeholders, vision tower tokens) of the largest image in ``mode``."""
    grid = arch.image_size // arch.patch
    base = grid * grid
    if mode == "pad":
        return base, arch.image_tokens
    best = (base, arch.image_tokens)
    for height, width in raw.get("image_grid_pinpoints") or []:
        rows, cols = height // arch.image_size, width // arch.image_size
        features = base + rows * grid * cols * grid + rows * grid  # tiles + one newline per feature row
        best = max(best, (features, (1 + rows * cols) * arch.image_tokens))
    return best


def stage_mode(doc: Mapping[str, Any]) -> str:
    for section in ("precompute", "model"):
        if isinstance(doc.get(section), Mapping) and doc[section].get("mode"):
            return str(doc[section]["mode"])
    return "pad"


def tree_shape(conditions: tuple[str, ...], engine: str) -> tuple[int, int, int, int]:
    """(rows per sample, images, contexts, answers) of a sample's sequences for ``engine``."""
    if engine == "naive":
        return len(conditions), len(conditions), len(conditions), len(conditions)
    images = {c.split("_")[0] for c in conditions}
    contexts = {tuple(c.split("_")[:2]) for c in conditions}
    return 1, len(images), len(contexts), len(conditions)


def analytic_tokens(stage: str, spec: Any, doc: Mapping[str, Any], arch: Architecture, raw: Any) -> Tokens:
    """Assumed token counts of one micro-batch (module docstring)."""
    features, vision = image_tokens(arch, raw, stage_mode(doc))
    if stage == "eval":
        rows, prompt = spec.batch_size * spec.num_beams, PREFIX_TOKENS + features + CONTEXT_TOKENS
        return Tokens(rows, prompt, rows, spec.batch_size * vision, rows * features)
    preference = doc.get("preference") or {}
    max_length = int(spec.max_length if stage != "reference" else preference.get("max_length", 2048))
    room = max(2, max_length - PREFIX_TOKENS - features)
    answer = min(ANSWER_TOKENS, room - 1)
    context = max(1, min(CONTEXT_TOKENS, room - answer))
    if stage == "sft":
        m, width = spec.micro_batch_size, PREFIX_TOKENS + features + context + answer
        return Tokens(m, width, m * answer, m * vision, m * features)
    conditions, engine, batch = _scored(stage, spec, doc)
    per_row, images, contexts, answers = tree_shape(conditions, engine)
    tree = PREFIX_TOKENS + images * features + contexts * context + answers * answer
    width = PREFIX_TOKENS + features + context + answer if engine == "naive" else tree
    rows = batch * per_row
    return Tokens(rows, width, batch * answers * answer, batch * images * vision, batch * images * features)


def _scored(stage: str, spec: Any, doc: Mapping[str, Any]) -> tuple[tuple[str, ...], str, int]:
    """(conditions, engine, samples per forward) of a preference or reference task."""
    if stage == "reference":
        return tuple(spec.conditions), spec.engine, spec.batch_size
    from mcmdpo.method.losses import PreferenceLoss

    conditions = PreferenceLoss.from_spec(spec.loss).conditions
    return tuple(conditions), spec.engine, spec.micro_batch_size


def task_memory(
    stage: str, spec: Any, doc: Mapping[str, Any], world: int, measured: Mapping[str, Any] | None = None
) -> MemoryPlan | None:
    """The memory plan of one task of ``stage`` on a rank of a ``world``-rank job (None: unknown model)."""
    found = model_architecture(doc)
    if found is None:
        return None
    arch, raw = found
    entry = (measured or {}).get(rehearsal_key(stage, doc, world))
    tokens = Tokens(**entry["tokens"]) if entry else analytic_tokens(stage, spec, doc, arch, raw)
    if stage in TRAINING:
        return training_plan(stage, train_setup(stage, spec, arch, world, tokens, entry))
    if stage == "reference":
        dtype = spec.dtype
        return inference_plan(stage, arch, dtype, tokens, logit_bytes=BYTES[dtype] + 16)
    dtype = "float16" if spec.dtype == "auto" else spec.dtype
    kv = tokens.rows * (tokens.width + spec.max_new_tokens)
    return inference_plan(stage, arch, dtype, tokens, logit_bytes=4, kv_tokens=kv)


def train_setup(
    stage: str, spec: Any, arch: Architecture, world: int, tokens: Tokens, entry: Mapping[str, Any] | None
) -> TrainSetup:
    e, loss_bytes = BYTES[spec.precision], 4 if stage == "sft" else 8
    trained = spec.vision_tower == "trained"
    activations = (
        Activations.from_json(entry["activations"])
        if entry
        else analytic_activations(arch, e, tokens, loss_bytes, trained)
    )
    zero = spec.deepspeed.get("zero_optimization", {})
    return TrainSetup(
        arch=arch,
        trainable=arch.trainable(spec.vision_tower),
        precision=spec.precision,
        zero_stage=spec.zero_stage,
        world=world,
        checkpointing=spec.gradient_checkpointing,
        micro=spec.micro_batch_size,
        tokens=tokens,
        activations=activations,
        loss_bytes=loss_bytes,
        offload_optimizer=_offloaded(zero.get("offload_optimizer")),
        offload_param=_offloaded(zero.get("offload_param")),
        buckets={k: float(v) for k, v in zero.items() if k.endswith("bucket_size") and _number(v)},
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _offloaded(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("device", "none") not in ("none", None)


# ---------------------------------------------------------------- the rehearsal file


def rehearsal_key(stage: str, doc: Mapping[str, Any], world: int) -> str:
    """What a measured entry must agree with: the stage's section, the model, the data, the world."""
    sections = {s: doc.get(s) for s in (stage, "model", "data", "precompute", "sft_data")}
    if stage == "reference":
        sections["preference"] = doc.get("preference")
    return content_hash({"stage": stage, "sections": sections, "world": world})


def run_dir_of(doc: Mapping[str, Any]) -> Path:
    run = doc.get("run") or {}
    return (Path(str(run.get("output_root", "runs"))) / str(run.get("name", "run"))).absolute()


def read_rehearsal(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The measured entries of the recipe's run dir (``{}`` without a rehearsal)."""
    path = run_dir_of(doc) / REHEARSAL_FILE
    try:
        return dict(json.loads(path.read_text()).get("entries", {}))
    except (OSError, ValueError):
        return {}


def write_rehearsal(doc: Mapping[str, Any], entries: Mapping[str, Any], report: Mapping[str, Any]) -> Path:
    """Add ``entries`` (key -> tokens + activations) to the run dir's rehearsal file; keep ``report``."""
    from mcmdpo.batch.artifacts import write_json_atomic

    path = run_dir_of(doc) / REHEARSAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    known = read_rehearsal(doc)
    write_json_atomic(path, {"entries": {**known, **entries}, "report": dict(report)})
    return path


# ---------------------------------------------------------------- the stages' hook


def memory_hook(stage: str) -> Callable[[Any, Mapping[str, Any], int], MemoryNeed | None]:
    """``Stage.memory`` of ``stage``: its task's plan as a :class:`~mcmdpo.batch.memory.MemoryNeed`."""

    def hook(spec: Any, doc: Mapping[str, Any], world: int) -> MemoryNeed | None:
        measured = read_rehearsal(doc)
        plan = task_memory(stage, spec, doc, world if stage in TRAINING else 1, measured)
        if plan is None:
            return None
        knob = "micro_batch_size" if stage in TRAINING else "batch_size"

        def fixes(limit_gib: float) -> list[str]:
            return memory_fixes(stage, spec, doc, world, measured, limit_gib * GiB)

        return MemoryNeed(plan.gib, plan.summary(), f"{stage}.{knob}", fixes, CUDA_RESERVE_GIB)

    return hook


def memory_fixes(
    stage: str, spec: Any, doc: Mapping[str, Any], world: int, measured: Mapping[str, Any], limit: float
) -> list[str]:
    """Settings that would each make the task fit ``limit`` bytes."""
    found = model_architecture(doc)
    if found is None:
        return []
    if stage in TRAINING:
        arch, raw = found
        entry = measured.get(rehearsal_key(stage, doc, world))
        tokens = Tokens(**entry["tokens"]) if entry else analytic_tokens(stage, spec, doc, arch, raw)
        return fixes(stage, train_setup(stage, spec, arch, world, tokens, entry), limit)
    for size in range(spec.batch_size - 1, 0, -1):
        smaller = spec.model_copy(update={"batch_size": size})
        plan = task_memory(stage, smaller, doc, 1)
        if plan is not None and plan.total <= limit:
            return [f"{stage}.batch_size = {size}"]
    return []
