"""Generation with vLLM's offline ``LLM`` API, with the interface of the eval stage's ``BatchGenerator``.

``VllmGenerator(model_dir, config)`` has ``prompt(item)`` and ``generate(items) -> [(response,
n_tokens)]`` like :class:`mcmdpo.evaluation.generate.BatchGenerator`, and produces what it produces up to
kernel rounding:

- the same prompt token ids: the config's template (:func:`mcmdpo.method.model.encode_prompt`: BOS + system
  + ``" USER: "``, the image, ``"\\n{question}{question_suffix} ASSISTANT:"``), handed to vLLM as token
  ids with one ``<image>`` id that vLLM expands to the image's feature count;
- the same image features: ``anyres`` images go to vLLM as PIL images (its LLaVA-NeXT processor
  tiles them as transformers does); ``pad`` images (upstream's expand-to-square, one 336 crop, 576
  tokens, no newline token), which vLLM's LLaVA-NeXT processor cannot produce, are encoded by the
  checkpoint's own vision tower + projector (transformers, :func:`mcmdpo.method.model.encode_images`) and
  passed as image embeddings (``enable_mm_embeds``);
- greedy decoding (``temperature = 0``), ``max_new_tokens`` new tokens at most; the response is the
  new tokens up to the first EOS, decoded with special tokens skipped and stripped, and its token
  count, as ``BatchGenerator`` returns them. Beam search (``num_beams > 1``) is refused.

vLLM is an optional extra (``pip install 'mcmdpo[vllm]'``) and needs a CUDA GPU; without either,
constructing the generator raises :class:`VllmUnavailable` with one line saying which is missing.
Nothing heavy is imported at module import.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.errors import McmdpoError

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import PreTrainedTokenizerBase, ProcessorMixin
    from vllm import LLM

    from mcmdpo.evaluation.benchmarks import Item
    from mcmdpo.evaluation.generate import GenerationConfig

INSTALL_HINT = "pip install 'mcmdpo[vllm]'"


class VllmUnavailable(McmdpoError, RuntimeError):
    """vLLM is not installed, or no CUDA GPU is visible (a user error: one line, exit 2)."""


def vllm_unavailable_reason() -> str | None:
    """Why the vLLM engine cannot run here (one line), or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed ({INSTALL_HINT}; it needs a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU, and none is visible here (torch.cuda.is_available() is False)"
    return None


def require_vllm() -> None:
    """Raise :class:`VllmUnavailable` when vLLM or a GPU is missing."""
    reason = vllm_unavailable_reason()
    if reason is not None:
        raise VllmUnavailable(f"eval engine 'vllm': {reason}")


class VllmGenerator:
    """Greedy batched generation through ``vllm.LLM`` for one model folder (see the module docstring)."""

    def __init__(
        self,
        model_dir: str | Path,
        config: GenerationConfig,
        *,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        **engine_kwargs: Any,
    ) -> None:
        if config.num_beams != 1:
            raise ValueError(
                f"the vLLM engine generates greedily: num_beams must be 1 (got {config.num_beams})"
            )
        require_vllm()
        from transformers import AutoProcessor

        self.model_dir, self.config = Path(model_dir), config
        processor = AutoProcessor.from_pretrained(self.model_dir)
        encoder = PadEncoder(self.model_dir, config.dtype) if config.image_mode == "pad" else None
        self.requests = VllmRequests(processor, config, encoder)
        self.tokenizer = processor.tokenizer
        self.llm = _make_llm(
            self.model_dir,
            dtype=config.dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            embeds=encoder is not None,
            **engine_kwargs,
        )

    def prompt(self, item: Item) -> str:
        """The conversation text up to ``"ASSISTANT:"`` (one ``<image>`` placeholder), as HF's."""
        return self.requests.prompt(item)

    def generate(self, items: Sequence[Item]) -> list[tuple[str, int]]:
        """(response, number of generated tokens) per item, in order."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.config.max_new_tokens)
        prompts = [self.requests.request(item) for item in items]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [decode_response(self.tokenizer, out.outputs[0].token_ids) for out in outputs]


class VllmRequests:
    """vLLM prompts for eval items: token ids with one image placeholder, and the image (PIL, for
    vLLM's own LLaVA-NeXT processing) or, in pad mode, its features from ``encoder``."""

    def __init__(
        self, processor: ProcessorMixin, config: GenerationConfig, encoder: PadEncoder | None
    ) -> None:
        self.processor, self.config, self.encoder = processor, config, encoder

    def prompt(self, item: Item) -> str:
        from mcmdpo.method.model import format_prompt

        return format_prompt(item.question + self.config.question_suffix, template=self.config.template)

    def request(self, item: Item) -> dict[str, Any]:
        from mcmdpo.method.model import encode_prompt

        image = open_item_image(item)
        question = item.question + self.config.question_suffix
        pieces = encode_prompt(self.processor.tokenizer, question, None, 1, self.config.template)
        data = image if self.encoder is None else self.encoder.features(image)
        return {
            "prompt_token_ids": pieces.input_ids(self.processor.image_token_id),
            "multi_modal_data": {"image": data},
        }


class PadEncoder:
    """Pad-mode image features from the checkpoint's vision tower + projector (on ``device``); the
    language model is loaded on the host and dropped (sent to the meta device) right away."""

    def __init__(self, model_dir: Path, dtype: str, device: str = "cuda") -> None:
        import torch

        from mcmdpo.method.model import load_llava

        self.model, self.processor = load_llava(model_dir, mode="pad", dtype=getattr(torch, dtype))
        self.model.eval().requires_grad_(False)
        self.model.model.language_model.to("meta")
        self.model.lm_head.to("meta")
        for name in ("vision_tower", "multi_modal_projector"):
            getattr(self.model.model, name).to(device)
        self.model.model.image_newline.data = self.model.model.image_newline.data.to(device)

    def features(self, image: Image.Image) -> torch.Tensor:
        """``[1, feature tokens, hidden]`` on the host, for one PIL image."""
        import torch

        from mcmdpo.method.model import encode_images, preprocess_image

        prep = preprocess_image(self.processor, image, "pad")
        with torch.inference_mode():
            (feats,) = encode_images(self.model, [prep["pixel_values"]], [prep["image_size"]], "pad")
        return feats.unsqueeze(0).cpu()


def _make_llm(model_dir: Path, *, embeds: bool, **kwargs: Any) -> LLM:
    """``vllm.LLM`` for one image per prompt; ``enable_mm_embeds`` where this vLLM has the switch."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    if embeds and "enable_mm_embeds" in {f.name for f in dataclasses.fields(EngineArgs)}:
        kwargs["enable_mm_embeds"] = True
    return LLM(model=str(model_dir), limit_mm_per_prompt={"image": 1}, **kwargs)


def open_item_image(item: Item) -> Image.Image:
    """The item's image as RGB PIL, or a ValueError naming the item (as the HF generator words it)."""
    from mcmdpo.method.data.images import ImageError, load_image

    try:
        image, _ = load_image(item.image)
    except ImageError as exc:
        raise ValueError(f"item {item.id!r}: image {item.describe()}: {exc.code}: {exc}") from None
    return image


def decode_response(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> tuple[str, int]:
    """New tokens up to the first EOS (pads dropped), decoded without special tokens, stripped."""
    tokens = list(token_ids)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    while tokens and tokens[-1] == tokenizer.pad_token_id:
        tokens.pop()
    return tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens)


def load_vllm_generator(model_dir: Path, config: GenerationConfig, **engine_kwargs: Any) -> VllmGenerator:
    """The vLLM counterpart of :func:`mcmdpo.evaluation.generate.load_generator`."""
    return VllmGenerator(model_dir, config, **engine_kwargs)
