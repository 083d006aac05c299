"""Stage ``preference``: DPO, mDPO or MCM-DPO training of LLaVA with DeepSpeed.

The policy starts from the ``[sft]`` output when the recipe has one, else from ``[model]``. The
reference log-probs come from the ``[reference]`` stage (``reference = "offline"``, default; computed
once from the same starting model, checked by fingerprint) or from a frozen copy of the starting
model that scores every micro-batch (``reference = "online"``). Samples are the ``[precompute]``
shards; the loss is ``[preference.loss]`` (:class:`mcmdpo.method.losses.PreferenceLoss`). Policy log-probs use
the shared engine (vision once + prefix tree) unless ``engine = "naive"``. Sequences longer than
``max_length`` are refused before training (no truncation: the offline reference scores the full
answers). Checkpoints, resume and preemption: :mod:`mcmdpo.method.train.loop`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.errors import ConfigError
from mcmdpo.batch.stage import Stage, TaskContext, register
from mcmdpo.method.memory_plan import memory_hook
from mcmdpo.method.model import folders
from mcmdpo.method.train.spec import PreferenceSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

    from mcmdpo.method.samples import SampleSource
    from mcmdpo.method.train.objectives import OfflineReference, OnlineReference


def preference_tasks(spec: PreferenceSpec, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One task; an offline reference without a ``[reference]`` section is refused at planning time."""
    if spec.reference == "offline" and "reference" not in doc:
        raise ConfigError(
            "'offline' needs a [reference] section in the recipe (or set preference.reference = 'online')",
            field="preference.reference",
        )
    return [{}]


def run_preference(ctx: TaskContext) -> list[str]:
    """Preference-train the starting model; export ``model/``."""
    from mcmdpo.method.losses import PreferenceLoss
    from mcmdpo.method.train.loop import run_training
    from mcmdpo.method.train.objectives import PreferenceObjective

    spec: PreferenceSpec = ctx.spec
    init = folders.init_model_dir(ctx, prefer=("sft", "model"))
    loss = PreferenceLoss.from_spec(spec.loss)

    def objective(
        source: SampleSource, model: PreTrainedModel, processor: ProcessorMixin
    ) -> PreferenceObjective:
        reference: OfflineReference | OnlineReference
        if spec.reference == "online":
            reference = online_reference(init, spec, source.mode, loss.conditions)
        else:
            reference = offline_reference(ctx, source, init, loss.conditions)
        return PreferenceObjective(source, loss, reference, spec.engine, spec.max_length)

    return run_training(ctx, spec, init, objective)


def offline_reference(
    ctx: TaskContext, source: SampleSource, init: Path, conditions: tuple[str, ...]
) -> OfflineReference:
    """The ``reference`` stage's log-probs, checked against the shards and the starting model."""
    from mcmdpo.method.data.reference_logprobs import ReferenceLogprobs
    from mcmdpo.method.train.objectives import OfflineReference

    tasks = ctx.inputs.get("reference")
    if not tasks:
        raise ConfigError("preference.reference = 'offline' needs the [reference] stage's log-probs")
    table = ReferenceLogprobs.from_inputs(tasks)
    table.check_serves(source.shards, folders.model_fingerprint(init), source.mode, conditions, init)
    return OfflineReference(table, conditions)


def online_reference(
    init: Path, spec: PreferenceSpec, mode: str, conditions: tuple[str, ...]
) -> OnlineReference:
    """A frozen copy of the starting model on this rank's device, in the training dtype."""
    from mcmdpo.method.model.load import load_frozen
    from mcmdpo.method.train.objectives import OnlineReference

    dtype = "bfloat16" if spec.precision == "bf16" else "float32"
    model, _ = load_frozen(init, mode, dtype)  # type: ignore[arg-type]
    return OnlineReference(model, spec.engine, mode, conditions)


STAGE = register(
    Stage(
        name="preference",
        spec=PreferenceSpec,
        run=run_preference,
        after=("model", "precompute", "sft", "reference"),
        tasks=preference_tasks,
        checkpointable=True,
        kind="gpu",
        memory=memory_hook("preference"),
    )
)
