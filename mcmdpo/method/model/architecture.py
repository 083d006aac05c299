"""Real LLaVA-1.6 architectures as data: shipped ``config.json`` files (sizes, no weights) and their shapes.

``configs/<name>.json`` holds the published config of a checkpoint the recipes name (the HF folder
name: ``llava-v1.6-vicuna-7b-hf``, ...); its ``_provenance`` block says where each value comes from
and is dropped when the file is read. :class:`Architecture` is the arithmetic of one config (widths,
depths, parameter counts per part), with no torch import, so that recipe validation and ``--dry-run``
can plan memory from it. :func:`build_config_llava` makes a random-weight checkpoint of a config at a
chosen depth (``[model] source = "config"``): the project's small BPE tokenizer (trained like the tiny
model's) with the model's embedding and LM head at the config's full vocabulary size, and the config's
token ids (``<image>``, BOS, EOS, pad) set to the tokenizer's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).with_name("configs")
CONFIG_TOKENIZER_VOCAB = 4096
"""BPE entries of the tokenizer of a config-built model (its token counts are closer to a 32K
SentencePiece vocabulary than the tiny model's 512)."""


def shipped_configs() -> list[str]:
    """Names of the shipped configs (``llava-v1.6-vicuna-7b-hf``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def config_path(name_or_path: str | Path) -> Path:
    """A shipped config by name, or a ``config.json`` (or the folder holding one) by path."""
    text = str(name_or_path)
    shipped = CONFIG_DIR / f"{text.removesuffix('.json')}.json"
    if "/" not in text and shipped.is_file():
        return shipped
    path = Path(text)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{text}: not a shipped config ({', '.join(shipped_configs())}) nor a file")
    return path


def shipped_match(folder: str | Path) -> str | None:
    """The shipped config named like a model folder (``.../llava-v1.6-vicuna-7b-hf`` -> that name)."""
    name = Path(str(folder).rstrip("/")).name
    return name if name in shipped_configs() else None


def read_config(name_or_path: str | Path) -> dict[str, Any]:
    """The config as a dict, provenance notes (keys starting with ``_``) left out."""
    raw = json.loads(config_path(name_or_path).read_text())
    return _without_notes(raw)


def _without_notes(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_notes(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def with_depth(raw: Mapping[str, Any], layers: int | None, vision_layers: int | None) -> dict[str, Any]:
    """A copy of ``raw`` with fewer text and/or vision layers (``None``: as published)."""
    out = json.loads(json.dumps(raw))
    if layers is not None:
        out["text_config"]["num_hidden_layers"] = int(layers)
    if vision_layers is not None:
        out["vision_config"]["num_hidden_layers"] = int(vision_layers)
    return out


@dataclass(frozen=True)
class Architecture:
    """Widths, depths and parameter counts of a LLaVA-NeXT config (Llama text + CLIP vision)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    image_size: int
    patch: int
    tied: bool = False

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> Architecture:
        text, vision = raw["text_config"], raw["vision_config"]
        heads = int(text.get("num_attention_heads", 32))
        return cls(
            hidden=int(text["hidden_size"]),
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            intermediate=int(text["intermediate_size"]),
            vocab=int(text.get("vocab_size", raw.get("vocab_size", 32000))),
            vision_hidden=int(vision["hidden_size"]),
            vision_layers=int(vision["num_hidden_layers"]),
            vision_intermediate=int(vision["intermediate_size"]),
            image_size=int(vision["image_size"]),
            patch=int(vision["patch_size"]),
            tied=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def text_layer_params(self) -> int:
        """One Llama decoder layer: q, o (h x h), k, v (h x kv), gate/up/down (h x I), two RMSNorms."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h

    @property
    def vision_layer_params(self) -> int:
        """One CLIP encoder layer: q, k, v, out with biases, fc1/fc2 with biases, two LayerNorms."""
        h, i = self.vision_hidden, self.vision_intermediate
        return 4 * (h * h + h) + 2 * h * i + i + h + 4 * h

    @property
    def image_tokens(self) -> int:
        """Tokens of one crop at the vision tower (patches + CLS)."""
        return (self.image_size // self.patch) ** 2 + 1

    @property
    def vision_params(self) -> int:
        h = self.vision_hidden
        embeddings = 3 * self.patch * self.patch * h + h + self.image_tokens * h
        return embeddings + 2 * h + self.vision_layers * self.vision_layer_params + 2 * h  # pre/post LN

    @property
    def projector_params(self) -> int:
        """mlp2x_gelu: vision hidden -> hidden -> hidden, with biases; plus ``image_newline``."""
        h = self.hidden
        return self.vision_hidden * h + h + h * h + h + h

    @property
    def text_params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.text_layer_params + self.hidden

    @property
    def params(self) -> int:
        return self.text_params + self.vision_params + self.projector_params

    def trainable(self, vision_tower: str) -> int:
        """Parameters with gradients: everything, or everything but the vision tower (frozen)."""
        return self.params - (self.vision_params if vision_tower == "frozen" else 0)

    @property
    def largest_module(self) -> int:
        """The largest block ZeRO-3 gathers at once (an embedding matrix or one decoder layer)."""
        return max(self.vocab * self.hidden, self.text_layer_params)


def llava_config(raw: Mapping[str, Any]) -> Any:
    """``LlavaNextConfig`` of a config dict."""
    from transformers import LlavaNextConfig

    return LlavaNextConfig(**json.loads(json.dumps(raw)))


def build_config_llava(
    out_dir: Path, raw: Mapping[str, Any], texts: Iterable[str], *, seed: int = 0, dtype: str = "float32"
) -> Path:
    """A random-weight checkpoint of ``raw`` (already at the wanted depth) in ``out_dir``, saved like a
    real one, with the project's BPE tokenizer trained on ``texts``; returns ``out_dir``."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    from mcmdpo.method.model.tiny import build_processor, build_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size=CONFIG_TOKENIZER_VOCAB)
    config = llava_config(with_tokenizer(raw, tokenizer))
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).to(getattr(torch, dtype)).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    vision = raw["vision_config"]
    build_processor(tokenizer, int(vision["image_size"]), int(vision["patch_size"])).save_pretrained(out_dir)
    return out_dir


def with_tokenizer(raw: Mapping[str, Any], tokenizer: Any) -> dict[str, Any]:
    """``raw`` with the tokenizer's special ids (the only values that follow the tokenizer) and a
    vocabulary at least as large as it."""
    from mcmdpo.method.model.template import IMAGE_TOKEN

    out = json.loads(json.dumps(raw))
    text = out["text_config"]
    text["vocab_size"] = max(int(text["vocab_size"]), len(tokenizer))
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    text.update(ids, pad_token_id=tokenizer.pad_token_id)
    out["image_token_index"] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return out
