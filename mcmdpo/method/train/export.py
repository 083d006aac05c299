"""The final model as a plain HuggingFace folder (safetensors + processor), loadable without mcmdpo.

Under ZeRO-3 the weights are partitioned across ranks: every rank takes part in gathering them
(``engine._zero3_consolidated_16bit_state_dict``, layer by layer, to rank 0's CPU), then rank 0
alone writes. Weights are saved in the training dtype (bf16 under ``precision = "bf16"``, as the HF
Trainer does with DeepSpeed; fp32 otherwise). The folder is written under a hidden temporary name
and renamed into place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from deepspeed import DeepSpeedEngine
    from transformers import PreTrainedModel, ProcessorMixin


def gathered_state_dict(engine: DeepSpeedEngine) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (None elsewhere). Collective under ZeRO-3."""
    import torch.distributed as dist

    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    if dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def export_model(
    engine: DeepSpeedEngine, processor: ProcessorMixin, final: Path, *, use_cache: bool | None = None
) -> None:
    """Write ``final`` (rank 0) with ``save_pretrained`` + the processor; every rank must call it."""
    import torch.distributed as dist

    state = gathered_state_dict(engine)
    if dist.get_rank() == 0:
        write_folder(engine.module, processor, state, final, use_cache)
    dist.barrier()


def write_folder(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    state: dict[str, torch.Tensor] | None,
    final: Path,
    use_cache: bool | None,
) -> None:
    """``save_pretrained`` into a hidden temp folder next to ``final``, then rename it to ``final``."""
    from mcmdpo.batch.resumable import atomic_dir

    if use_cache is not None:  # training turned the KV cache off (gradient checkpointing)
        model.config.text_config.use_cache = use_cache
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        processor.save_pretrained(tmp)
