"""Stage ``sft``: supervised fine-tuning of LLaVA with DeepSpeed (one process per GPU).

Starts from the ``[model]`` checkpoint; answer-only loss on the Vicuna v1 conversation. The data
(``[sft] data``): ``preference`` = (question, chosen alt-text) with the chosen image m_w of every
``[precompute]`` sample; ``files`` / ``curate`` = a separate SFT set (the paper's 202K TAlt + PAlt,
or the curation's ``sft.json``) that the ``sft_data`` stage stores as shards of encoded images,
decoded in DataLoader workers here (multi-turn conversations: every answer is supervised).
Sequences longer than ``max_length`` are cut at the end. Output: ``<task>/model/`` (HF folder),
``metrics.jsonl``, ``train.json``; the ``reference`` and ``preference`` stages start from it
automatically. Checkpoints, resume and preemption: :mod:`mcmdpo.method.train.loop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.stage import Stage, TaskContext, register
from mcmdpo.method.memory_plan import memory_hook
from mcmdpo.method.model import folders
from mcmdpo.method.train.spec import SftSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

    from mcmdpo.method.samples import ConversationSource, SampleSource


def sft_uses(spec: SftSpec, doc: Mapping[str, Any]) -> tuple[str, ...]:
    """``preference``: the precompute shards; ``files`` / ``curate``: the sft_data shards."""
    return ("model", "precompute") if spec.data == "preference" else ("model", "sft_data")


def sft_tasks(spec: SftSpec, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task; ``files`` / ``curate`` data without an ``[sft_data]`` section is refused at planning."""
    if spec.data != "preference" and "sft_data" not in doc:
        raise ConfigError(
            f"data = {spec.data!r} trains on the sft_data shards: add an [sft_data] section "
            "(num_shards = array tasks that store the images)",
            field="sft.data",
        )
    return [{}]


def run_sft(ctx: TaskContext) -> list[str]:
    """Fine-tune the base model on the SFT data; export ``model/``."""
    from mcmdpo.method.train.loop import conversation_data, run_training
    from mcmdpo.method.train.objectives import SftObjective

    spec: SftSpec = ctx.spec
    init = folders.init_model_dir(ctx, prefer=("model",))
    files = spec.data != "preference"

    def objective(
        source: SampleSource | ConversationSource, model: PreTrainedModel, processor: ProcessorMixin
    ) -> SftObjective:
        pad = model.config.text_config.pad_token_id
        workers = spec.data_workers if files else 0
        return SftObjective(
            source, spec.max_length, int(pad or 0), int(model.config.image_token_id), workers=workers
        )

    return run_training(ctx, spec, init, objective, conversation_data(ctx) if files else None)


STAGE = register(
    Stage(
        name="sft",
        spec=SftSpec,
        run=run_sft,
        after=("model", "precompute", "sft_data"),
        tasks=sft_tasks,
        checkpointable=True,
        kind="gpu",
        memory=memory_hook("sft"),
        uses=sft_uses,
    )
)
