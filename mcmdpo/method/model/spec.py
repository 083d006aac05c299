"""Recipe fields of ``[model]`` (:class:`ModelSpec`): a tiny random model, an HF folder, or a shipped
real architecture built with random weights at a chosen depth.

Pydantic only (the stage module imports this at import time; ``mcmdpo status`` must stay fast).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from mcmdpo.batch.spec import EnvStr, existing_path
from mcmdpo.batch.stage import StageSpec

TINY_FIELDS = ("image_size", "patch_size", "hidden_size", "num_layers", "vocab_size")
CONFIG_FIELDS = ("config", "layers", "vision_layers")
"""Fields added with ``source = "config"`` (issue 23): left out of the resolved section while unset, so
that the task ids of earlier runs (hashes of that section) stay what they were."""


class ModelSpec(StageSpec):
    """``[model]``: the base checkpoint (tiny random model, an existing HF folder, or a shipped config)."""

    source: Literal["tiny", "path", "config"] = Field(
        "tiny",
        description="tiny: build a small random LLaVA-NeXT; path: use an existing HF folder; config: build "
        "a random-weight model of a real architecture (config, layers, vision_layers)",
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
    corpus: Literal["data", "builtin"] = Field(
        "data", description="tiny / config tokenizer: [data] texts or built-in"
    )
    config: EnvStr | None = Field(
        None,
        description="config: a shipped architecture (llava-v1.6-vicuna-7b-hf, llava-v1.6-vicuna-13b-hf, "
        "llava-v1.6-34b-hf) or a path to a config.json; sizes only, weights are random",
    )
    layers: int | None = Field(None, ge=1, description="config: LM layers to build (default: as published)")
    vision_layers: int | None = Field(
        None, ge=1, description="config: vision tower layers to build (default: as published)"
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in CONFIG_FIELDS or v is not None}
        return data

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

    @field_validator("config")
    @classmethod
    def _check_config(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from mcmdpo.method.model.architecture import config_path, shipped_configs

        try:
            path = config_path(value)
        except FileNotFoundError:
            names = ", ".join(shipped_configs())
            raise PydanticCustomError(
                "config_missing",
                "{value}: not a shipped config ({names}) nor a config.json",
                {"value": value, "names": names},
            ) from None
        return value if path.parent.name == "configs" and "/" not in value else str(path.absolute())

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        fields = type(self).model_fields
        tiny_given = sorted(f for f in TINY_FIELDS if getattr(self, f) != fields[f].default)
        config_given = sorted(f for f in CONFIG_FIELDS if getattr(self, f) is not None)
        if self.source != "tiny" and tiny_given:
            raise ValueError(f"{', '.join(tiny_given)} only apply to source = 'tiny'")
        if self.source != "config" and config_given:
            raise ValueError(f"{', '.join(config_given)} only apply to source = 'config'")
        if self.source == "config":
            if self.config is None:
                raise ValueError("source = 'config' needs config = \"llava-v1.6-vicuna-7b-hf\" (or a path)")
            return self
        if self.source == "tiny":
            _check_tiny(self)
        return self

    def architecture_config(self) -> dict[str, Any] | None:
        """The config dict of the model this section builds or names, at its built depth (None when
        it cannot be known without building: a path without a readable config.json)."""
        from mcmdpo.method.model.architecture import read_config, with_depth

        if self.source == "config":
            return with_depth(read_config(str(self.config)), self.layers, self.vision_layers)
        if self.source == "path":
            return _folder_config(str(self.path))
        return tiny_architecture(self)


def _folder_config(folder: str) -> dict[str, Any] | None:
    """The folder's config.json when it has the sizes, else the shipped config of the same name (a
    folder named ``llava-v1.6-vicuna-7b-hf``), else None."""
    from mcmdpo.method.model.architecture import read_config, shipped_match

    try:
        raw = read_config(folder)
        if {"text_config", "vision_config"} <= set(raw) and "hidden_size" in raw["text_config"]:
            return raw
    except (OSError, ValueError):
        pass
    name = shipped_match(folder)
    return None if name is None else read_config(name)


def _check_tiny(spec: ModelSpec) -> None:
    if spec.image_size % spec.patch_size:
        raise ValueError(f"image_size {spec.image_size} is not a multiple of patch_size {spec.patch_size}")
    if spec.hidden_size % 4:
        raise ValueError(f"hidden_size {spec.hidden_size} must be a multiple of 4 (attention heads)")


def tiny_architecture(spec: ModelSpec) -> dict[str, Any]:
    """The sizes :func:`mcmdpo.method.model.tiny.tiny_config` builds (vocabulary at its lower bound)."""
    h, layers = spec.hidden_size, spec.num_layers
    text = {
        "hidden_size": h,
        "intermediate_size": 2 * h,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": spec.vocab_size,
    }
    vision = {
        "hidden_size": h,
        "intermediate_size": 2 * h,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
    }
    return {"text_config": text, "vision_config": vision}  # fmt: skip
