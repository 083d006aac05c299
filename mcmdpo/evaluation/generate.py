"""Batched generation for evaluation: settings, the generator, and a resumable loop over items.

:class:`BatchGenerator` wraps one loaded model: prompts are left-padded, images go through
:func:`mcmdpo.method.model.encode_images` and ``mm_encoder_outputs``, ``generate`` uses the KV cache, greedy
by default (``num_beams = 3`` reproduces the upstream inference setting).

Prompt (upstream ``mcmdpo_inference.py``): the ``llava_v1`` conversation template by default (the
``template`` setting; see :mod:`mcmdpo.method.model.template`) with ``"<image>\\n" + question + "\\n"`` as
the user turn (``question_suffix``), generation starts after ``"ASSISTANT:"``; the response is the
decoded new tokens, special tokens skipped, stripped. Weights in fp16 on a GPU by default (upstream:
LLaVA's ``load_pretrained_model`` loads ``torch.float16``), fp32 on CPU.

:func:`generate_items` runs the items not yet in a :class:`mcmdpo.batch.resumable.BatchLedger` batch by
batch, so a preempted or killed task resumes after its last finished batch. The generator comes from
a factory (:func:`generator_loader`): ``engine = "hf"`` (:func:`load_generator`) or ``"vllm"``
(:func:`mcmdpo.evaluation.vllm_engine.load_vllm_generator`), same prompts, ledger and resume. The
zero-shot baselines (:mod:`mcmdpo.evaluation.baselines`) run on the same loop with their own settings
(``BaselineRun``) and generators; :class:`GenerationJob` is what an eval task hands it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mcmdpo.batch.errors import InputError
from mcmdpo.evaluation.benchmarks import Item

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, ProcessorMixin

    from mcmdpo.batch.stage import TaskContext

UPSTREAM = {"template": "llava_v1", "dtype": "float16", "num_beams": 3}
"""Upstream ``mcmdpo_inference.py``'s settings (``conv_templates['llava_v1']``, fp16, ``--num_beams 3``)."""


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that changes a generated response (written into every prediction line)."""

    max_new_tokens: int = 256
    num_beams: int = 1
    batch_size: int = 8
    template: str = "llava_v1"
    question_suffix: str = "\n"
    image_mode: str = "pad"
    dtype: str = "float32"
    engine: str = "hf"

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["do_sample"] = False
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The ``[eval]`` fields that decide a generated response."""
        return tuple(f.name for f in fields(cls))

    def deviations(self) -> list[str]:
        """Where these settings differ from upstream inference (listed in the metrics JSON)."""
        return [
            f"generation {name}={getattr(self, name)} (upstream mcmdpo_inference.py: {value})"
            for name, value in UPSTREAM.items()
            if getattr(self, name) != value
        ]


def generation_config(spec: Any, declared_mode: str | None = None) -> GenerationConfig:
    """The generation settings of an ``[eval]`` spec, ``auto`` values resolved (image mode: the spec's,
    else the one the model stage declared, else ``pad``)."""
    return GenerationConfig(
        max_new_tokens=spec.max_new_tokens,
        num_beams=spec.num_beams,
        batch_size=spec.batch_size,
        template=spec.template,
        question_suffix=spec.question_suffix,
        image_mode=spec.image_mode or declared_mode or "pad",
        dtype=resolve_dtype(spec.dtype),
        engine=spec.engine,
    )


def generation_deviations(generation: Mapping[str, Any] | None) -> list[str]:
    """:meth:`GenerationConfig.deviations` of a recorded ``generation`` dict (a prediction's or
    ``generation.json``'s); fields it lacks take their defaults."""
    if not generation:
        return []
    known = {k: generation[k] for k in GenerationConfig.field_names() if k in generation}
    return GenerationConfig(**known).deviations()


def resolve_dtype(spec_dtype: str) -> str:
    """``auto`` -> float16 on GPU (upstream inference), float32 on CPU (fp16 CPU kernels are slow/partial)."""
    if spec_dtype != "auto":
        return spec_dtype
    import torch

    return "float16" if torch.cuda.is_available() else "float32"


class Generator(Protocol):
    """What :func:`generate_items` needs from an engine (``BatchGenerator``, ``VllmGenerator``)."""

    def prompt(self, item: Item) -> str: ...

    def generate(self, items: Sequence[Item]) -> list[tuple[str, int]]: ...


class RunSettings(Protocol):
    """What :func:`generate_items` needs from generation settings (``GenerationConfig``, ``BaselineRun``)."""

    batch_size: int

    def public(self) -> dict[str, Any]: ...


GeneratorFactory = Callable[[Any, Any], Generator]
"""``load(model path or id, settings) -> Generator``."""


@dataclass(frozen=True)
class GenerationJob:
    """What one eval task generates with: the model (folder or hub id), its settings, its loader."""

    model_path: str
    """The model as recorded in predictions (a folder, or a baseline's hub id)."""
    real_path: str
    """What the resume key hashes: the folder's real path (a hub id as written)."""
    settings: Any
    """A :class:`GenerationConfig` (trained models) or a baseline's ``BaselineRun``."""
    load: GeneratorFactory


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompt token ids and attention mask (on the model's device), images and sizes."""

    input_ids: Any
    attention: Any
    pixels: list[Any]
    sizes: list[Any]


class BatchGenerator:
    """Batched generation for one loaded model: left padding, pad/anyres features, KV cache."""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, config: GenerationConfig) -> None:
        self.model, self.processor, self.config = model, processor, config
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            raise InputError("the tokenizer has no pad token; batched generation needs one")

    def prompt(self, item: Item) -> str:
        """The conversation text up to ``"ASSISTANT:"`` (one ``<image>`` placeholder)."""
        from mcmdpo.method.model import format_prompt

        return format_prompt(item.question + self.config.question_suffix, template=self.config.template)

    def prompt_inputs(self, items: Sequence[Item]) -> PromptBatch:
        """The left-padded prompts of ``items`` and their preprocessed images (generation's inputs)."""
        ids, pixels, sizes = self._inputs(items)
        input_ids, attention = self._left_pad(ids)
        return PromptBatch(input_ids, attention, pixels, sizes)

    def generate(self, items: Sequence[Item]) -> list[tuple[str, int]]:
        """(response, number of generated tokens) per item, in order."""
        import torch

        from mcmdpo.method.model import encode_images, image_encoder_outputs

        batch = self.prompt_inputs(items)
        input_ids = batch.input_ids
        with torch.inference_mode():
            features = encode_images(self.model, batch.pixels, batch.sizes, self.config.image_mode)  # type: ignore[arg-type]
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=batch.attention,
                mm_encoder_outputs=image_encoder_outputs(features),
                max_new_tokens=self.config.max_new_tokens,
                num_beams=self.config.num_beams,
                do_sample=False,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        return [self._decode(row) for row in out[:, input_ids.shape[1] :].tolist()]

    def _inputs(
        self, items: Sequence[Item]
    ) -> tuple[list[list[int]], list[torch.Tensor], list[tuple[int, int]]]:
        from mcmdpo.method.data.images import ImageError, load_image
        from mcmdpo.method.model import encode_prompt, num_image_tokens, preprocess_image

        mode = self.config.image_mode
        ids, pixels, sizes = [], [], []
        for item in items:
            try:
                image, _ = load_image(item.image)
            except ImageError as exc:
                raise InputError(
                    f"image {item.describe()}: {exc.code}: {exc}", record=f"item {item.id!r}"
                ) from None
            prep = preprocess_image(self.processor, image, mode)  # type: ignore[arg-type]
            n = num_image_tokens(self.processor, mode, prep["image_size"])  # type: ignore[arg-type]
            question = item.question + self.config.question_suffix
            pieces = encode_prompt(self.tokenizer, question, None, n, self.config.template)
            ids.append(pieces.input_ids(self.processor.image_token_id))
            pixels.append(prep["pixel_values"])
            sizes.append(prep["image_size"])
        return ids, pixels, sizes

    def _left_pad(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        longest = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (longest - len(i)) + list(i) for i in ids], dtype=torch.long)
        attention = torch.tensor([[0] * (longest - len(i)) + [1] * len(i) for i in ids], dtype=torch.long)
        return input_ids.to(self.model.device), attention.to(self.model.device)

    def _decode(self, row: Sequence[int]) -> tuple[str, int]:
        eos = self.tokenizer.eos_token_id
        tokens = list(row)
        if eos in tokens:
            tokens = tokens[: tokens.index(eos)]
        pad = self.tokenizer.pad_token_id
        while tokens and tokens[-1] == pad:
            tokens.pop()
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens)


def load_generator(model_dir: Path, config: GenerationConfig) -> BatchGenerator:
    """Load the model (GPU when available) frozen, in the config's dtype, and wrap it."""
    from mcmdpo.method.model.load import load_frozen

    device = "cuda" if _cuda() else "cpu"
    model, processor = load_frozen(model_dir, config.image_mode, config.dtype, device)  # type: ignore[arg-type]
    return BatchGenerator(model, processor, config)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def generate_items(
    ctx: TaskContext,
    items: Sequence[Item],
    model_dir: Path | str,
    config: RunSettings,
    fields: Mapping[str, Any],
    key: str,
    load: GeneratorFactory,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate the items not yet in the ledger, batch by batch; return all records in item order.

    ``fields`` are added to every record (model name, benchmark ...). The ledger lives in
    ``ctx.work_dir`` under ``key``; a stop request ends the loop between batches. ``load(model_dir,
    config)`` makes the generator (default: the factory of ``config.engine``), only when items remain.
    """
    from mcmdpo.batch.resumable import BatchLedger
    from mcmdpo.evaluation.metrics.predictions import id_key

    ledger = BatchLedger.keyed(ctx.work_dir, "predictions", key)
    done = {id_key(r["id"]) for r in ledger.resume()}
    pending = [it for it in items if id_key(it.id) not in done]
    if len(pending) < len(items):
        ctx.log.info("resuming: %d of %d items already generated", len(items) - len(pending), len(items))
    started, load_s = time.time(), 0.0
    if pending:
        generator = load(model_dir, config)
        load_s = time.time() - started
        batches = [pending[s : s + config.batch_size] for s in range(0, len(pending), config.batch_size)]
        compute = lambda batch: _records(batch, generator, config, fields)  # noqa: E731
        ledger.run(ctx, batches, compute, done=len(items) - len(pending), total=len(items))
    by_id = {id_key(r["id"]): r for r in ledger.resume()}
    records = [by_id[id_key(it.id)] for it in items]
    seconds = time.time() - started - load_s
    tokens = sum(by_id[id_key(it.id)]["num_tokens"] for it in pending)
    stats = {
        "generated_items": len(pending),
        "resumed_items": len(items) - len(pending),
        "generated_tokens": tokens,
        "load_s": round(load_s, 3),
        "generate_s": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2) if pending and seconds > 0 else None,
    }
    return records, stats


def _records(
    batch: Sequence[Item], generator: Generator, config: RunSettings, fields: Mapping[str, Any]
) -> list[dict[str, Any]]:
    outputs = generator.generate(batch)
    return [
        {
            "id": item.id,
            **item.fields,
            "prompt": generator.prompt(item),
            "response": response,
            "num_tokens": n_tokens,
            **fields,
            "generation": config.public(),
        }
        for item, (response, n_tokens) in zip(batch, outputs, strict=True)
    ]
