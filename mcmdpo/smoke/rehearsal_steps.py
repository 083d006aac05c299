"""The rehearsal's models and steps: the recipe's architecture at reduced depth, one step of each GPU stage.

Models: the recipe's model section as a config dict at full depth (a shipped config for a folder that
is not here, the folder's own tokenizer when it is), built at ``(text layers, vision layers)`` on
``meta`` (shapes only: the byte counts) or on the CPU (one real step). Steps call the stages' own
library code: ``SftObjective.loss``, ``PreferenceObjective.loss`` (all the loss's conditions, the
configured engine, the offline reference replaced by zeros), ``sequence_logprobs`` under ``no_grad``
(reference) and ``BatchGenerator.generate`` (eval, CPU only: greedy search needs values).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mcmdpo.method.activations import SavedBytes, fused_attention, meta_friendly
from mcmdpo.method.memory import Activations, Tokens
from mcmdpo.method.model.architecture import CONFIG_TOKENIZER_VOCAB, Architecture, llava_config, with_depth

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16}  # fmt: skip


@dataclass
class Family:
    """The recipe's model: config dict at full depth (tokenizer ids set), processor, and notes."""

    raw: dict[str, Any]
    processor: Any
    note: str

    @property
    def arch(self) -> Architecture:
        return Architecture.from_config(self.raw)


def model_family(section: Mapping[str, Any], texts: Sequence[str]) -> Family:
    """The architecture and processor the recipe's ``[model]`` describes (module docstring)."""
    from mcmdpo.method.model.architecture import with_tokenizer
    from mcmdpo.method.model.spec import ModelSpec
    from mcmdpo.method.model.tiny import build_processor, build_tokenizer, tiny_config

    spec = ModelSpec.model_validate(dict(section))
    if spec.source == "tiny":
        tokenizer = build_tokenizer(texts, vocab_size=spec.vocab_size)
        config = tiny_config(tokenizer, spec.image_size, spec.patch_size, spec.hidden_size, spec.num_layers,
                             spec.vocab_size)  # fmt: skip
        processor = build_processor(tokenizer, spec.image_size, spec.patch_size)
        return Family(config.to_dict(), processor, "tiny model, its own BPE tokenizer")
    raw = spec.architecture_config()
    if raw is None:
        raise ValueError(f"{spec.path}: no readable config.json and no shipped config of that name")
    folder = _processor_folder(spec)
    if folder is not None:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(folder)
        return Family(raw, processor, f"tokenizer and processor of {folder}")
    vision = raw["vision_config"]
    tokenizer = build_tokenizer(texts, vocab_size=CONFIG_TOKENIZER_VOCAB)
    processor = build_processor(tokenizer, int(vision["image_size"]), int(vision["patch_size"]))
    rows = raw["text_config"]["vocab_size"]
    note = f"project BPE tokenizer ({len(tokenizer)} entries, trained on the recipe's texts), {rows}-row "
    note += "embedding: token counts differ from the real tokenizer's"
    return Family(with_tokenizer(raw, tokenizer), processor, note)


def _processor_folder(spec: Any) -> str | None:
    if spec.source != "path" or not (Path(str(spec.path)) / "tokenizer_config.json").is_file():
        return None
    return str(spec.path)


def build_model(family: Family, layers: int, vision_layers: int, device: str, dtype: torch.dtype) -> Any:
    """The family's model at ``(layers, vision_layers)``: random weights (CPU) or shapes only (meta)."""
    from transformers import LlavaNextForConditionalGeneration

    config = llava_config(with_depth(family.raw, layers, vision_layers))
    with torch.device(device):
        model = LlavaNextForConditionalGeneration._from_config(
            config, attn_implementation="sdpa", dtype=dtype
        )
    model.config.text_config.use_cache = False
    return model


def training_mode(model: Any, spec: Any) -> None:
    """Paradigm and checkpointing of a training spec, train mode."""
    from mcmdpo.method.model.load import set_gradient_checkpointing, set_paradigm

    set_paradigm(model, train_vision_tower=spec.vision_tower == "trained")
    set_gradient_checkpointing(model, spec.gradient_checkpointing)
    model.train()


def layers_of(model: Any) -> list[Any]:
    """The decoder and vision encoder layers (whose inputs a checkpoint keeps)."""
    tower = model.model.vision_tower
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    return [*model.model.language_model.layers, *encoder.layers]


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    with meta_friendly(), fused_attention():
        yield


def count_saved(family: Family, spec: Any, depth: tuple[int, int], forward: Callable[[Any], Any]) -> int:
    """Bytes kept for backward by ``forward(model)`` (returns the loss) on ``meta``; runs backward too."""
    model = build_model(family, *depth, "meta", DTYPES[spec.precision])
    training_mode(model, spec)
    layers = layers_of(model) if spec.gradient_checkpointing else []
    with on_meta():
        with SavedBytes(model, layers) as saved:
            loss = forward(model)
        total = saved.total
        loss.backward()
    return total


def measure(family: Family, spec: Any, forward: Callable[[Any], Any], tokens: Tokens) -> Activations:
    """Per-layer bytes from depths (1, 1), (2, 1), (1, 2), with and without checkpointing."""
    out: dict[str, float] = {}
    for checkpointing in (False, True):
        local = spec.model_copy(update={"gradient_checkpointing": checkpointing})
        counts = {d: count_saved(family, local, d, forward) for d in ((1, 1), (2, 1), (1, 2))}
        text = (counts[(2, 1)] - counts[(1, 1)]) / max(tokens.text, 1)
        vision = (counts[(1, 2)] - counts[(1, 1)]) / max(tokens.vision, 1)
        suffix = "_ckpt" if checkpointing else ""
        out[f"text_layer{suffix}"], out[f"vision_layer{suffix}"] = text, vision
        out[f"other{suffix}"] = counts[(1, 1)] - text * tokens.text - vision * tokens.vision
    basis = "measured (rehearsal: saved-tensor bytes on meta at depths 1 and 2, fused attention)"
    return Activations(**out, basis=basis, tokens=tokens)  # type: ignore[arg-type]


class ZeroReference:
    """The offline reference's interface with zero log-probs (the policy step's cost does not change)."""

    online = False

    def __init__(self, conditions: Sequence[str]):
        self.conditions = tuple(conditions)

    def lookup(self, indices: Any) -> dict[str, torch.Tensor]:
        return {c: torch.zeros(len(indices), dtype=torch.float64) for c in self.conditions}


def cpu_dtype(precision: str) -> tuple[torch.dtype, str]:
    """The recipe's precision when this CPU multiplies it natively, else float32 (and why)."""
    dtype = DTYPES[precision]
    if dtype == torch.float32:
        return dtype, ""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if dtype == torch.bfloat16 and ("avx512_bf16" in flags or "amx_bf16" in flags):
        return dtype, ""
    return torch.float32, f"{precision} -> float32 on this CPU (no native bf16/fp16 matrix units: too slow)"
