"""Stage ``sft``: supervised fine-tuning of LLaVA with DeepSpeed (one process per GPU).

Starts from the ``[model]`` checkpoint and trains on (question, chosen alt-text) with the chosen
image m_w of every sample of the ``[precompute]`` shards: the Vicuna v1 conversation, loss on the
answer tokens only. (The paper fine-tunes on a separate 202K SFT set; here the SFT samples are the
precomputed preference samples' chosen halves.) Sequences longer than ``max_length`` are cut at the
end. Output: ``<task>/model/`` (HF folder), ``metrics.jsonl``, ``train.json``; the ``reference`` and
``preference`` stages start from it automatically. Checkpoints, resume and preemption: see
:mod:`mcmdpo.train.loop` and :mod:`mcmdpo.train.checkpoint`.
"""

from __future__ import annotations

from typing import Any

from mcmdpo import handoff
from mcmdpo.stage import Stage, TaskContext, register
from mcmdpo.train.spec import SftSpec


def run_sft(ctx: TaskContext) -> list[str]:
    """Fine-tune the base model on the chosen answers; export ``model/``."""
    from mcmdpo.train.loop import run_training
    from mcmdpo.train.objectives import SftObjective

    spec: SftSpec = ctx.spec
    init = handoff.init_model_dir(ctx, prefer=("model",))

    def objective(source: Any, model: Any, processor: Any) -> SftObjective:
        pad = model.config.text_config.pad_token_id
        return SftObjective(source, spec.max_length, int(pad or 0), int(model.config.image_token_id))

    return run_training(ctx, spec, init, objective)


STAGE = register(
    Stage(
        name="sft",
        spec=SftSpec,
        run=run_sft,
        after=("model", "precompute"),
        checkpointable=True,
        kind="gpu",
    )
)
