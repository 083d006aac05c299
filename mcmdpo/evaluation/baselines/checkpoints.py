"""What a baseline checkpoint is, read without its weights: config, remote code, size, GPU placement.

Configs are read from a local HF folder or from the local HF cache only (never the network, so that
validation is fast and works offline). With a config:

- remote code: a config with ``auto_map`` or a ``model_type`` transformers does not know runs code
  from the model's repository; refused unless ``trust_remote_code = true``. Without a config, a short
  list of hub ids known to need it (:data:`KNOWN_REMOTE_CODE`) is refused the same way;
- size: the model is built from its config on the meta device (no memory, no weights) and its
  parameters counted; without a config, the entry's ``params_b``.

Placement (:func:`placement`): weights x dtype bytes x :data:`HEADROOM` (activations, KV cache) against
the profile's ``gpu_mem_gb``: the smallest power of two of GPUs that holds it, up to ``node_gpus``
(one process drives them: transformers ``device_map = "auto"``). Beyond a node: refused in one line.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from mcmdpo.batch.errors import ConfigError

log = logging.getLogger(__name__)

KNOWN_REMOTE_CODE = frozenset(
    {
        "qwen/qwen-vl-chat",
        "qwen/qwen-vl",
        "openbmb/minicpm-v-2",
        "openbmb/minicpm-llama3-v-2_5",
        "openbmb/minicpm-v",
        "opengvlab/internvl-chat-v1-5",
        "thudm/cogvlm-chat-hf",
    }
)
"""Hub ids whose loading runs repository code (used when their config is not in the local cache)."""
HEADROOM = 1.2
"""GPU memory per weight byte: 20% on top of the weights for activations and the KV cache."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
"""``auto`` is a 16-bit dtype on GPU (the config's ``torch_dtype`` when it is one, else bfloat16)."""


class Checkpoint(Protocol):
    """What sizing and the remote-code check read of a baseline entry (``BaselineSpec``)."""

    kind: str
    model: str
    revision: str | None
    trust_remote_code: bool
    dtype: str
    params_b: float | None


def is_local(model: str) -> bool:
    """True when ``model`` names an existing folder (else it is a hub id)."""
    return Path(model).expanduser().is_dir()


@functools.lru_cache(maxsize=64)
def read_config(model: str, revision: str | None = None) -> dict[str, Any] | None:
    """``config.json`` of a local folder or of the local HF cache; None when neither has it."""
    if is_local(model):
        path = Path(model).expanduser() / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json", revision=revision)
    except ValueError:  # not a valid repo id either
        return None
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def needs_remote_code(model: str, revision: str | None = None) -> bool:
    """Whether loading ``model`` runs code from its repository (see the module docstring)."""
    config = read_config(model, revision)
    if config is None:
        return model.lower() in KNOWN_REMOTE_CODE
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return "auto_map" in config or config.get("model_type") not in CONFIG_MAPPING_NAMES


def remote_code_problem(baseline: Checkpoint) -> str | None:
    """Why ``baseline`` is refused for its remote code (None when it is not)."""
    if baseline.kind != "hf" or baseline.trust_remote_code:
        return None
    if not needs_remote_code(baseline.model, baseline.revision):
        return None
    return (
        f"{baseline.model} runs code from its repository; set trust_remote_code = true to allow it "
        "(or serve it with vLLM and use kind = 'api')"
    )


@functools.lru_cache(maxsize=64)
def count_parameters(model: str, revision: str | None = None, trust_remote_code: bool = False) -> int | None:
    """Parameters of the model built from its config on the meta device; None without a config."""
    if read_config(model, revision) is None:
        return None
    import torch
    from transformers import AutoConfig

    from mcmdpo.evaluation.baselines.hf import model_class

    try:
        config = AutoConfig.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code, local_files_only=True
        )
        with torch.device("meta"):
            built = model_class(config, trust_remote_code).from_config(
                config, trust_remote_code=trust_remote_code
            )
    except Exception as exc:  # repository code (or its missing files) may not build: params_b decides
        if not trust_remote_code:
            raise
        log.warning("cannot build %s on the meta device (%s); sizing it by params_b", model, exc)
        return None
    return sum(p.numel() for p in built.parameters())


def memory_gb(baseline: Checkpoint) -> float:
    """GPU memory (GiB) the baseline needs: parameters x dtype bytes x :data:`HEADROOM`."""
    params = count_parameters(baseline.model, baseline.revision, baseline.trust_remote_code)
    if params is None:
        if baseline.params_b is None:
            raise ConfigError(
                f"cannot size {baseline.model}: its config.json is neither a local folder nor in the HF "
                "cache; download it (huggingface-cli download MODEL config.json) or set params_b"
            )
        params = int(baseline.params_b * 1e9)
    return params * DTYPE_BYTES[baseline.dtype] * HEADROOM / 2**30


def placement(baseline: Checkpoint, resources: Mapping[str, Any]) -> dict[str, Any]:
    """Resource overrides for one task of ``baseline`` (``{}``: the stage's own resources fit)."""
    gpu_gb, node_gpus = resources.get("gpu_mem_gb"), resources.get("node_gpus")
    if baseline.kind != "hf" or not gpu_gb or not resources.get("gpus_per_node"):
        return {}  # an endpoint, or a profile that does not describe its GPUs (local runs)
    need = memory_gb(baseline)
    gpus = 2 ** max(0, math.ceil(math.log2(need / gpu_gb))) if need > gpu_gb else 1
    if gpus > (node_gpus or resources["gpus_per_node"]):
        have = node_gpus or resources["gpus_per_node"]
        raise ConfigError(
            f"{baseline.model} needs ~{need:.0f} GiB in {_dtype_text(baseline.dtype)} (parameters x dtype "
            f"+ {HEADROOM - 1:.0%}), more than a node's {have} x {gpu_gb:g} GiB GPUs"
        )
    if gpus <= int(resources["gpus_per_node"]):
        return {}
    return {"gpus_per_node": gpus, "tasks_per_node": 1}


def _dtype_text(dtype: str) -> str:
    return "16-bit (dtype auto)" if dtype == "auto" else dtype
