"""Generation engines by name: ``hf`` (batched transformers generation) or ``vllm``."""

from __future__ import annotations

from mcmdpo.evaluation.generate import GeneratorFactory, load_generator


def generator_loader(engine: str) -> GeneratorFactory:
    """The factory of ``engine``: ``hf`` (:func:`~mcmdpo.evaluation.generate.load_generator`) or ``vllm``.

    ``vllm`` raises :class:`mcmdpo.evaluation.vllm_engine.VllmUnavailable` (one line) right here when
    vLLM is not installed or no GPU is visible, before any model is loaded.
    """
    if engine == "hf":
        return load_generator
    if engine == "vllm":
        from mcmdpo.evaluation.vllm_engine import load_vllm_generator, require_vllm

        require_vllm()
        return load_vllm_generator
    raise ValueError(f"unknown generation engine {engine!r} (valid: hf, vllm)")
