"""Recipe fields of the training stages: ``[sft]`` and ``[preference]`` (with ``[preference.loss]``).

Pydantic only (stage modules import this at import time; ``mcmdpo status`` must stay fast). The
batch arithmetic that needs the job's world size lives here too (:meth:`TrainSpec.layout`), so that
the error reads the same wherever it is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import AliasChoices, Field, field_validator, model_validator

from mcmdpo.batch.spec import EnvStr, Spec
from mcmdpo.batch.stage import StageSpec
from mcmdpo.method.conditions import ABLATIONS, DEFAULT_GROUP_WEIGHTS, Term, ablation_key

# DeepSpeed keys the recipe sets through its own fields (one source of truth for each value).
MANAGED_DS_KEYS: dict[str, str] = {
    "train_batch_size": "global_batch_size",
    "train_micro_batch_size_per_gpu": "micro_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "max_grad_norm",
    "bf16": "precision",
    "fp16": "precision",
    "optimizer": "lr / weight_decay / adam_betas / adam_epsilon (a torch AdamW, for exact resume)",
    "scheduler": "schedule / warmup_ratio",
}

TERM_NAMES: tuple[str, ...] = get_args(Term)
ABLATION_NAMES: tuple[str, ...] = tuple(ABLATIONS)


def _default_deepspeed() -> dict[str, Any]:
    return {"zero_optimization": {"stage": 3}}


class BatchSizeError(ValueError):
    """The global batch is not micro-batch x accumulation x world size."""


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's ``global_batch`` samples are split: ``micro x accum x world``."""

    global_batch: int
    micro: int
    accum: int
    world: int


class TrainSpec(StageSpec):
    """Fields shared by ``[sft]`` and ``[preference]`` (defaults: the paper's SFT settings)."""

    epochs: int = Field(1, ge=1, description="passes over the training samples")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (smoke runs); default: all epochs"
    )
    max_samples: int | None = Field(
        None, ge=1, description="train on the first N precomputed samples only (smoke runs, tests)"
    )
    lr: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    vision_tower_lr: float | None = Field(
        None, gt=0, description="learning rate of the vision tower when it is trained (default: lr)"
    )
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="learning-rate decay after warmup (HF get_scheduler semantics)"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the steps with linear warmup")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and norms)")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping by global norm (0: off)")
    global_batch_size: int = Field(
        128, ge=1, description="samples per optimizer step = micro_batch_size x accumulation x world size"
    )
    micro_batch_size: int = Field(4, ge=1, description="samples per forward/backward on one device")
    gradient_accumulation_steps: int | None = Field(
        None, ge=1, description="micro-batches per step on each device (default: derived from the above)"
    )
    max_length: int = Field(
        2048, ge=8, description="longest token sequence (image placeholders included); see the docs"
    )
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 mixed precision or plain fp32")
    gradient_checkpointing: bool = Field(True, description="recompute activations in backward")
    vision_tower: Literal["trained", "frozen"] = Field(
        "trained", description="paradigm (paper Table 3): train or freeze the vision encoder in this stage"
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=_default_deepspeed,
        description="DeepSpeed config table passed through (ZeRO-2 or ZeRO-3; batch/optimizer keys come "
        "from the fields above)",
    )
    seed: int | None = Field(None, ge=0, description="data order seed (default: run.seed)")
    data_order: Literal["random", "length_grouped"] = Field(
        "random",
        description="random: a permutation per epoch; length_grouped: upstream LLaVA's "
        "group_by_modality_length sampler (megabatches sorted by length, balanced micro-batches)",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="save a checkpoint every N optimizer steps"
    )
    checkpoint_every_minutes: float | None = Field(
        30.0, gt=0, description="save a checkpoint when this long has passed since the last save"
    )
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept (older ones are deleted)")
    keep_checkpoints: bool = Field(
        False, description="keep the step folders after the final model is exported (default: delete)"
    )
    log_every_steps: int = Field(1, ge=1, description="steps between log lines (metrics JSONL: every step)")
    tensorboard: bool = Field(False, description="also write TensorBoard events (needs `tensorboard`)")

    @field_validator("deepspeed")
    @classmethod
    def _check_deepspeed(cls, table: dict[str, Any]) -> dict[str, Any]:
        managed = sorted(set(table) & set(MANAGED_DS_KEYS))
        if managed:
            hints = "; ".join(f"{k} comes from {MANAGED_DS_KEYS[k]}" for k in managed)
            raise ValueError(f"remove {', '.join(managed)} from the deepspeed table ({hints})")
        zero = table.get("zero_optimization", {})
        if not isinstance(zero, dict):
            raise ValueError("deepspeed.zero_optimization must be a table")
        if zero.get("stage", 0) not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_optimization.stage must be 0-3 (got {zero.get('stage')!r})")
        return table

    @model_validator(mode="after")
    def _check_batch(self) -> TrainSpec:
        per_device = self.micro_batch_size * (self.gradient_accumulation_steps or 1)
        if self.global_batch_size % per_device:
            raise ValueError(self._batch_message(None))
        if self.vision_tower_lr is not None and self.vision_tower == "frozen":
            raise ValueError("vision_tower_lr applies only with vision_tower = 'trained'")
        return self

    @property
    def zero_stage(self) -> int:
        return int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))

    def layout(self, world_size: int) -> BatchLayout:
        """Micro-batch, accumulation and world size of a job with ``world_size`` processes.

        Raises :class:`BatchSizeError` when ``global_batch_size`` is not their product.
        """
        per_step = self.micro_batch_size * world_size
        accum = self.gradient_accumulation_steps or self.global_batch_size // per_step
        if accum < 1 or accum * per_step != self.global_batch_size:
            raise BatchSizeError(self._batch_message(world_size))
        return BatchLayout(self.global_batch_size, self.micro_batch_size, accum, world_size)

    def _batch_message(self, world_size: int | None) -> str:
        accum = self.gradient_accumulation_steps
        factors = [
            f"micro_batch_size ({self.micro_batch_size})",
            "accumulation" if accum is None else f"gradient_accumulation_steps ({accum})",
            "world size" if world_size is None else f"world size ({world_size})",
        ]
        known = self.micro_batch_size * (accum or 1) * (world_size or 1)
        head = f"global_batch_size ({self.global_batch_size}) must equal {' x '.join(factors)}"
        if accum is not None and world_size is not None:
            return f"{head} = {known}"
        return f"{head}: {self.global_batch_size} is not a multiple of {known}"


class SftFile(Spec):
    """``[[sft.files]]``: one SFT source file (several mix into one set, e.g. TAlt + PAlt)."""

    file: EnvStr = Field(
        description="LLaVA conversation JSON (id, image, conversations), or JSON / JSONL / parquet "
        "records with question + chosen (top level or a `text` JSON string) and an image path or bytes"
    )
    images: EnvStr | None = Field(None, description="folder the image paths are relative to (None: bytes)")
    name: str | None = Field(None, description="the source's name in ids and summaries (default: file stem)")
    limit: int | None = Field(None, ge=1, description="use only the first N records of the file")

    @property
    def label(self) -> str:
        return self.name or Path(self.file).stem


class SftSpec(TrainSpec):
    """``[sft]``: supervised fine-tuning; answer-only loss (token mean per micro-batch).

    ``data = "preference"``: (question, chosen alt-text) with the chosen image of the precompute
    shards. ``files`` / ``curate``: a separate SFT set (the paper's 202K TAlt + PAlt), made into
    shards of encoded images by the ``sft_data`` stage and decoded in DataLoader workers.
    """

    data: Literal["preference", "files", "curate"] = Field(
        "preference",
        description="preference: chosen halves of the [precompute] shards; files: [[sft.files]]; "
        "curate: sft.json of the [curate] stages",
    )
    files: tuple[SftFile, ...] = Field((), description="data = 'files': the source files, mixed in order")
    data_workers: int = Field(
        4, ge=0, description="files / curate: DataLoader workers decoding images (0: a background thread)"
    )

    @model_validator(mode="after")
    def _check_files(self) -> SftSpec:
        if (self.data == "files") != bool(self.files):
            raise ValueError("data = 'files' needs [[sft.files]] entries, and only it uses them")
        names = [f.label for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"[[sft.files]] names must be unique (got {names}); set name = ...")
        return self


class LossSpec(StageSpec):
    """``[preference.loss]``: which preference loss and its weights (see ``mcmdpo.method.losses``)."""

    kind: Literal["dpo", "mdpo", "mcmdpo"] = Field("mcmdpo", description="dpo | mdpo | mcmdpo")
    beta: float = Field(0.1, gt=0, description="inverse temperature of every sigmoid term")
    form: Literal["paper", "upstream"] = Field(
        "paper", description="mcmdpo: paper Eq. 2 (sum of terms) or the authors' code (one fused sigmoid)"
    )
    norm: float | None = Field(
        None,
        gt=0,
        description="form upstream: the fixed divisor of the weighted margins (default 2.8, upstream's "
        "para_norm, unchanged by drop or gamma); refused with form paper",
    )
    lambda_: float = Field(
        DEFAULT_GROUP_WEIGHTS["lambda"],
        ge=0,
        validation_alias=AliasChoices("lambda", "lambda_"),
        description="mcmdpo: weight of the response term (RPO); written `lambda` in recipes",
    )
    alpha: float = Field(
        DEFAULT_GROUP_WEIGHTS["alpha"],
        ge=0,
        description="mcmdpo: weight of the single-modality terms (VPO, CPO)",
    )
    gamma: float = Field(
        DEFAULT_GROUP_WEIGHTS["gamma"], ge=0, description="mcmdpo: weight of the pair and multi terms"
    )
    weights: dict[Term, float] = Field(
        default_factory=dict, description="mcmdpo: per-term weights overriding lambda/alpha/gamma"
    )
    drop: tuple[str, ...] = Field(
        (), description="mcmdpo: ablation groups (single, pair, multi, pair+cpo) or term names to drop"
    )
    image_weight: float = Field(1.0, ge=0, description="mdpo: weight of the conditional image term")
    anchor_weight: float = Field(1.0, ge=0, description="mdpo: weight of the anchor term")
    anchor_delta: float = Field(0.0, description="mdpo: anchor offset delta")

    @field_validator("drop")
    @classmethod
    def _check_drop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        valid = (*ABLATION_NAMES, *TERM_NAMES)
        for name in value:
            if ablation_key(name) not in valid:
                raise ValueError(f"unknown group or term {name!r} (valid: {', '.join(valid)})")
        return value

    @model_validator(mode="after")
    def _check_norm(self) -> LossSpec:
        if self.norm is not None and self.form != "upstream":
            raise ValueError("norm applies only to form = 'upstream' (the paper form has no divisor)")
        return self


class PreferenceSpec(TrainSpec):
    """``[preference]``: DPO / mDPO / MCM-DPO on the precomputed preference shards.

    Defaults: the paper's preference settings (3 epochs, lr 5e-7, global batch 64) and the authors' scripts'
    beta 0.1 (the paper states no beta).
    """

    epochs: int = Field(3, ge=1, description="passes over the preference samples (upstream script: 2)")
    lr: float = Field(5e-7, gt=0, description="peak learning rate (AdamW)")
    global_batch_size: int = Field(
        64, ge=1, description="samples per optimizer step = micro_batch_size x accumulation x world size"
    )
    micro_batch_size: int = Field(
        2, ge=1, description="samples (x their conditions) per forward on one device"
    )
    loss: LossSpec = Field(default_factory=LossSpec, description="the loss ([preference.loss] table)")
    reference: Literal["offline", "online"] = Field(
        "offline",
        description="offline: log-probs of the [reference] stage; online: a frozen copy of the initial "
        "policy scores each batch",
    )
    engine: Literal["shared", "naive"] = Field(
        "shared", description="policy log-probs: shared (vision once + prefix tree) or naive (upstream)"
    )
