"""GPU memory plan of one task, per rank: model states, activations, generation KV cache (no torch).

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020, mixed-precision Adam) for
DeepSpeed as this project configures it (a torch AdamW handed to DeepSpeed, bf16 or fp32), with
``P`` parameters, ``T`` of them trainable and ``N`` ranks:

- bf16: weights 2P, gradients 2T, optimizer 16T (fp32 master weights, fp32 gradient partitions, Adam
  m and v); fp32: weights 4P, gradients 4T, optimizer 8T (m and v);
- ZeRO-1 divides the optimizer by N, ZeRO-2 also the gradients, ZeRO-3 also the weights; ZeRO-0 keeps
  everything on every rank; ``offload_optimizer`` moves the optimizer to the host, ``offload_param``
  (ZeRO-3) the weights;
- buffers: ZeRO-1/2 reduce + all-gather buckets, ZeRO-3 reduce + prefetch buckets and two gathered
  blocks (an embedding or a decoder layer), at DeepSpeed's defaults unless the recipe's ``deepspeed``
  table sets them.

Activations are what autograd keeps for backward, per micro-batch: per LM token and decoder layer,
per vision token and CLIP layer, and the rest (image projector, LM head and loss, attention mask).
The analytic model (:func:`analytic_activations`) counts the tensors HF's Llama / CLIP layers save
with a fused attention kernel (no ``L x L`` scores kept, as on a GPU): per LM token and layer
``8h + 9eh + 4eI`` bytes for ``e``-byte activations (bf16: 26h + 8I, ~195 KB at 7B); per vision token
and layer ``9e h_v + 3e I_v``. A rehearsal (``mcmdpo rehearse``) replaces these with bytes measured at
depth 1 and 2. With gradient checkpointing a layer keeps only its input (``e h`` per token) and one
layer's full activations come back during its recompute. Every figure is an estimate of
``torch.cuda.max_memory_allocated``; the CUDA context (~1 GiB) comes on top (:data:`CUDA_RESERVE_GIB`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mcmdpo.method.model.architecture import Architecture

GiB = float(2**30)
CUDA_RESERVE_GIB = 1.0
"""CUDA context and library workspaces: outside ``max_memory_allocated``, inside the GPU's memory."""
DS_DEFAULTS = {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7}
"""DeepSpeed's defaults of the buffer sizes (elements)."""
BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}


@dataclass(frozen=True)
class Tokens:
    """Token counts of one micro-batch: LM positions (rows x padded width), answer positions (where the
    LM head runs), vision tower tokens (crops x (patches + 1)) and image features (placeholders)."""

    rows: int
    width: int
    answer: int
    vision: int
    features: int

    @property
    def text(self) -> int:
        return self.rows * self.width

    def scaled(self, factor: float) -> Tokens:
        """The same micro-batch with ``factor`` times the samples (rows, answers, images)."""
        rows = max(1, round(self.rows * factor))
        k = rows / self.rows
        return Tokens(
            rows, self.width, round(self.answer * k), round(self.vision * k), round(self.features * k)
        )


@dataclass(frozen=True)
class Activations:
    """Bytes kept for backward: per LM token and layer, per vision token and layer, and the rest of one
    micro-batch (``other``), without and with gradient checkpointing; ``basis`` says where they come from."""

    text_layer: float
    vision_layer: float
    other: float
    text_layer_ckpt: float
    vision_layer_ckpt: float
    other_ckpt: float
    basis: str
    tokens: Tokens | None = None
    """The micro-batch ``other`` was counted for (scaled with the samples of another one)."""

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("text_layer", "vision_layer", "other", "text_layer_ckpt")}
        out.update(vision_layer_ckpt=self.vision_layer_ckpt, other_ckpt=self.other_ckpt, basis=self.basis)
        out["tokens"] = None if self.tokens is None else self.tokens.__dict__
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Activations:
        tokens = data.get("tokens")
        return cls(**{**data, "tokens": Tokens(**tokens) if tokens else None})


def analytic_activations(
    arch: Architecture, e: int, tokens: Tokens, loss_bytes: int, vision: bool
) -> Activations:
    """The analytic model (module docstring) for ``e``-byte activations; ``loss_bytes`` per vocabulary
    entry of an answer position (4: SFT's fp32 cross-entropy, 8: the float64 log-probs of preference
    training); ``vision``: whether the tower is trained (a frozen one keeps nothing)."""
    h, i, v = arch.hidden, arch.intermediate, arch.vision_hidden
    kv = arch.kv_heads * arch.head_dim
    text_layer = 8 * h + e * (7 * h + 2 * kv) + 4 * e * i + 4 * arch.heads
    vision_layer = (9 * e * v + 3 * e * arch.vision_intermediate) if vision else 0.0
    projector = tokens.features * (2 * e * h) + tokens.vision * e * v
    head = tokens.answer * (e * h + loss_bytes * arch.vocab)
    mask = tokens.rows * tokens.width**2
    final_norm = tokens.text * (4 + e) * h
    other = projector + head + mask + final_norm
    return Activations(
        text_layer=text_layer,
        vision_layer=vision_layer,
        other=other,
        text_layer_ckpt=e * h,
        vision_layer_ckpt=e * v if vision else 0.0,
        other_ckpt=other,
        basis="analytic (HF Llama/CLIP layers, fused attention: 8h+9eh+4eI bytes per token and layer)",
        tokens=tokens,
    )


@dataclass(frozen=True)
class TrainSetup:
    """What decides a training task's memory on one rank (the knobs :func:`fixes` turns)."""

    arch: Architecture
    trainable: int
    precision: str
    zero_stage: int
    world: int
    checkpointing: bool
    micro: int
    tokens: Tokens
    activations: Activations
    loss_bytes: int
    offload_optimizer: bool = False
    offload_param: bool = False
    buckets: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank by part; ``basis``: analytic or measured activations."""

    stage: str
    parts: dict[str, float]
    basis: str
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def gib(self) -> float:
        return self.total / GiB

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.parts.items() if v)
        return f"{self.gib:.1f} GiB ({parts}; {self.basis.split(' ')[0]})"

    def to_json(self) -> dict[str, Any]:
        gib = {k: round(v / GiB, 3) for k, v in self.parts.items()}
        return {"stage": self.stage, "total_gib": round(self.gib, 3), "gib": gib, "basis": self.basis,
                "notes": list(self.notes)}  # fmt: skip


def model_states(s: TrainSetup) -> dict[str, float]:
    """Weights, gradients, optimizer states and DeepSpeed buffers on one rank."""
    e = BYTES[s.precision]
    n = max(1, s.world)
    weights = e * s.arch.params / (n if s.zero_stage >= 3 else 1)
    grads = e * s.trainable / (n if s.zero_stage >= 2 else 1)
    optimizer = (16 if e == 2 else 8) * s.trainable / (n if s.zero_stage >= 1 else 1)
    if s.offload_optimizer:
        optimizer = 0.0
    if s.offload_param and s.zero_stage >= 3:
        weights = 0.0
    buckets = {
        k: min(v, s.arch.params) for k, v in {**DS_DEFAULTS, **s.buckets}.items()
    }  # never above the model
    if s.zero_stage >= 3:
        buffers = e * (buckets["reduce_bucket_size"] + buckets["stage3_prefetch_bucket_size"])
        buffers += 2 * e * s.arch.largest_module
    elif s.zero_stage >= 1:
        buffers = e * (buckets["reduce_bucket_size"] + buckets["allgather_bucket_size"])
    else:
        buffers = 0.0
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "buffers": buffers}


def activation_bytes(s: TrainSetup) -> dict[str, float]:
    """Kept activations of one micro-batch and the backward transients (recompute, loss gradient)."""
    a, t = s.activations, s.tokens
    base = a.tokens or t
    scale = t.text / base.text if base.text else 1.0
    text, vision = t.text * s.arch.layers, t.vision * s.arch.vision_layers
    loss_grad = t.answer * s.loss_bytes * s.arch.vocab
    if not s.checkpointing:
        kept = a.other * scale + text * a.text_layer + vision * a.vision_layer
        return {"activations": kept, "transient": loss_grad}
    kept = a.other_ckpt * scale + text * a.text_layer_ckpt + vision * a.vision_layer_ckpt
    recompute = max(t.text * a.text_layer, t.vision * a.vision_layer)
    return {"activations": kept, "transient": loss_grad + recompute}


def training_plan(stage: str, s: TrainSetup) -> MemoryPlan:
    """The memory of one training rank (see the module docstring)."""
    parts = {**model_states(s), **activation_bytes(s)}
    notes = (f"ZeRO-{s.zero_stage}, {s.precision}, world {s.world}, micro-batch {s.micro}, "
             f"checkpointing {'on' if s.checkpointing else 'off'}",)  # fmt: skip
    return MemoryPlan(stage, parts, s.activations.basis, notes)


def fixes(stage: str, s: TrainSetup, limit_bytes: float) -> list[str]:
    """The knobs that would each make ``s`` fit ``limit_bytes`` (recipe keys and values)."""
    out = []
    for micro in range(s.micro - 1, 0, -1):
        smaller = replace(s, micro=micro, tokens=s.tokens.scaled(micro / s.micro))
        if training_plan(stage, smaller).total <= limit_bytes:
            out.append(f"{stage}.micro_batch_size = {micro}")
            break
    zero = f"{stage}.deepspeed.zero_optimization"
    options = [
        (f"{stage}.gradient_checkpointing = true", not s.checkpointing, {"checkpointing": True}),
        (f"{zero}.stage = 3", s.zero_stage < 3, {"zero_stage": 3}),
        (f'{zero}.offload_optimizer.device = "cpu"', not s.offload_optimizer, {"offload_optimizer": True}),
        (f'{zero}.stage = 3 with offload_param and offload_optimizer on "cpu"', not s.offload_param,
         {"zero_stage": 3, "offload_param": True, "offload_optimizer": True}),
    ]  # fmt: skip
    for text, applies, change in options:
        if applies and training_plan(stage, replace(s, **change)).total <= limit_bytes:
            out.append(text)
    return out


def inference_plan(
    stage: str, arch: Architecture, dtype: str, tokens: Tokens, *, logit_bytes: int, kv_tokens: int = 0
) -> MemoryPlan:
    """A frozen model scoring (reference: ``logit_bytes`` per vocabulary entry of an answer position) or
    generating (``kv_tokens``: cached positions over the batch and beams)."""
    e = BYTES[dtype]
    working = tokens.text * (3 * arch.hidden + 3 * arch.intermediate) * e
    vision = tokens.vision * (3 * arch.vision_hidden + arch.vision_intermediate) * e
    parts = {
        "weights": e * arch.params,
        "kv_cache": 2.0 * arch.layers * arch.kv_heads * arch.head_dim * e * kv_tokens,
        "working": max(working, vision) + tokens.rows * tokens.width**2,
        "logits": tokens.answer * arch.vocab * logit_bytes,
    }
    return MemoryPlan(stage, parts, "analytic (inference: weights, one layer's working set, KV cache)")
