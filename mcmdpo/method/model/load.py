"""Load an HF-format LLaVA-1.6 checkpoint (tiny or real) and set its training paradigm.

One code path for every checkpoint with the layout of ``llava-hf/llava-v1.6-vicuna-7b-hf``:
``AutoModelForImageTextToText`` + ``AutoProcessor`` from a local folder.

Paradigms (paper Table 3): the projector and the LLM are always trained; the vision encoder is
frozen or trained per stage (P1-P4 = frozen/trained in SFT x frozen/trained in preference), so one
switch, ``train_vision_tower``, covers them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from mcmdpo.method.model.images import ImageMode, check_mode

log = logging.getLogger(__name__)


def load_llava(
    path: str | Path,
    *,
    mode: ImageMode = "pad",
    train_vision_tower: bool = False,
    gradient_checkpointing: bool = False,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load model and processor from a local HF-format LLaVA-NeXT folder.

    ``mode`` is validated here and must be passed on to the image and log-prob functions (it is a
    property of how inputs are built, not of the weights). ``attn_implementation`` must stay
    ``"sdpa"`` (or ``"eager"``) for the shared log-prob engine's 4-D boolean tree masks.
    """
    check_mode(mode)
    model = AutoModelForImageTextToText.from_pretrained(
        Path(path), dtype=dtype, attn_implementation=attn_implementation
    )
    if device is not None:
        model = model.to(device)
    processor = AutoProcessor.from_pretrained(Path(path))
    align_processor(processor, model)
    set_paradigm(model, train_vision_tower=train_vision_tower)
    set_gradient_checkpointing(model, gradient_checkpointing)
    return model, processor


def load_frozen(
    path: str | Path, mode: ImageMode = "pad", dtype: str | torch.dtype = "float32", device: str = "auto"
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A model for inference only (reference scoring, generation): eval mode, no gradients.

    ``dtype`` is a torch dtype or its name; ``device = "auto"`` picks ``cuda:<LOCAL_RANK>`` when a GPU
    is visible, else the CPU.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars garble job log files
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model, processor = load_llava(path, mode=mode, dtype=dtype, device=resolve_device(device))
    model.eval().requires_grad_(False)
    return model, processor


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda:<LOCAL_RANK>`` when CUDA is available, else ``cpu``; others unchanged."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return "cpu"


def align_processor(processor: ProcessorMixin, model: PreTrainedModel) -> None:
    """Make the processor's image-token arithmetic match the model (older hub configs lack fields)."""
    config = model.config
    wanted = {
        "patch_size": config.vision_config.patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": 1 if config.vision_config.model_type.startswith("clip") else 0,
    }
    for name, value in wanted.items():
        if getattr(processor, name, None) != value:
            log.info(
                "processor.%s: %r -> %r (from the model config)", name, getattr(processor, name, None), value
            )
            setattr(processor, name, value)


def set_paradigm(model: PreTrainedModel, *, train_vision_tower: bool) -> None:
    """Freeze or unfreeze the vision tower; projector, newline embedding and LLM always trainable."""
    for param in model.parameters():
        param.requires_grad_(True)
    for param in model.model.vision_tower.parameters():
        param.requires_grad_(train_vision_tower)


def set_gradient_checkpointing(model: PreTrainedModel, enabled: bool) -> None:
    """Non-reentrant checkpointing, which also works when the inputs (frozen tower) need no grad."""
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.text_config.use_cache = False  # caches are useless (and wasteful) in training
    elif model.is_activation_checkpointing:
        model.activation_checkpointing_disable()


def trainable_parameter_count(model: PreTrainedModel) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def config_summary(folder: Path) -> dict[str, Any]:
    """A few facts from ``config.json`` (model type and widths), for humans reading model.json."""
    config = json.loads((Path(folder) / "config.json").read_text())
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    return {
        "model_type": config.get("model_type"),
        "text_hidden_size": text.get("hidden_size"),
        "text_layers": text.get("num_hidden_layers"),
        "vocab_size": text.get("vocab_size"),
        "vision_image_size": vision.get("image_size"),
        "vision_patch_size": vision.get("patch_size"),
    }
