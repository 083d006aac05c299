"""Zero-shot baselines (paper Table 2's MLLM rows): recipe entries, prompts, and their generators.

- :mod:`~mcmdpo.evaluation.baselines.spec`: ``[[eval.baselines]]`` entries and their checks;
- :mod:`~mcmdpo.evaluation.baselines.prompt`: few-shot example alt-texts and the prompt text;
- :mod:`~mcmdpo.evaluation.baselines.hf`: any transformers image-text-to-text model (adapters per family);
- :mod:`~mcmdpo.evaluation.baselines.remote`: repository-code chat models (Qwen-VL-Chat, MiniCPM-V);
- :mod:`~mcmdpo.evaluation.baselines.api`: OpenAI-compatible endpoints with image input;
- :mod:`~mcmdpo.evaluation.baselines.checkpoints`: config, remote code, size and GPU placement.

Generators have the eval stage's interface (``prompt(item)``, ``generate(items)``) and run on its
sharded, resumable ledger (:func:`mcmdpo.evaluation.generate.generate_items`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcmdpo.evaluation.baselines.prompt import BaselineRun


def load_baseline(model: str, run: BaselineRun) -> Any:
    """The generator of one baseline run (a :class:`~mcmdpo.evaluation.generate.GeneratorFactory`)."""
    if run.kind == "api":
        from mcmdpo.evaluation.baselines.api import ApiGenerator

        return ApiGenerator(run)
    from mcmdpo.evaluation.baselines.hf import load_hf_generator

    return load_hf_generator(model, run)
