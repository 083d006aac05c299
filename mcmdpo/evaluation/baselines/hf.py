"""Zero-shot generation with any transformers image-text-to-text model: one common path, small adapters.

Loading: ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a local folder or a hub id (GPU when
there is one; several visible GPUs: ``device_map = "auto"``). Prompt: the model's own chat template
(``processor.apply_chat_template`` with one user turn: the image, then the text; the entry's
``system`` message first when set). Generation: the processor turns a batch of (prompt, image) into
left-padded inputs, ``generate`` decodes greedily; the response is the new tokens up to the first EOS
(the generation config's and the tokenizer's), special tokens skipped, stripped.

Adapters (:data:`ADAPTERS`, by ``model_type``) cover what transformers does not make common:

- ``instructblip``: no chat template on the hub, the prompt is the text alone (the processor prepends
  the Q-Former query tokens itself); its batching puts the padding between the queries and the text
  and left-pads the Q-Former's instruction (absolute positions), so it generates item by item;
- ``chameleon``: no chat template; the prompt is ``{text}<image>`` (transformers' documented order;
  the processor adds the separator of chat mode);
- any other processor without a chat template: ``<image token>\\n{text}``.

Without torchvision (a CPU-only install), transformers cannot build the video processor that some
image processors come with (Qwen2-VL, Qwen2.5-VL, InternVL, LLaVA-OneVision): their processor is then
loaded without its video part (:func:`images_only`), which image prompts never use.

Models whose repository code does not provide an image-text-to-text class (Qwen-VL-Chat, MiniCPM-V)
go through :mod:`mcmdpo.evaluation.baselines.remote` (``trust_remote_code = true``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.errors import ConfigError
from mcmdpo.evaluation.baselines.images import item_image

if TYPE_CHECKING:
    from mcmdpo.evaluation.baselines.prompt import BaselineRun
    from mcmdpo.evaluation.benchmarks import Item

IMAGE_TEXT_CLASS = "AutoModelForImageTextToText"


@dataclass(frozen=True)
class Adapter:
    """What one family needs beyond the common path."""

    plain: str = "{image}\n{text}"
    """The prompt when the processor has no chat template (``{image}``: the processor's image token)."""
    one_by_one: bool = False
    """Generate item by item: the processor's batching is not position-safe for this family."""


ADAPTERS: dict[str, Adapter] = {
    "instructblip": Adapter(plain="{text}", one_by_one=True),
    "chameleon": Adapter(plain="{text}{image}"),
}


def model_class(config: Any, trust_remote_code: bool = False) -> Any:
    """The Auto class that loads ``config``'s model (remote chat models: their own Auto class)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    auto_map = (getattr(config, "auto_map", None) or {}) if trust_remote_code else {}
    native = not auto_map and config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    if native or IMAGE_TEXT_CLASS in auto_map:
        return transformers.AutoModelForImageTextToText
    for name in ("AutoModelForCausalLM", "AutoModel"):
        if name in auto_map:
            return getattr(transformers, name)
    raise ConfigError(
        f"model type {config.model_type!r} is not an image-text-to-text model in transformers "
        f"{transformers.__version__} (and its repository maps no class to it)"
    )


def images_only(cls: type) -> type:
    """``cls`` (a processor class) without its video sub-processor, under the same name."""
    attributes = [a for a in cls.get_attributes() if "video" not in a]
    return type(
        cls.__name__,
        (cls,),
        {"get_attributes": classmethod(lambda _: list(attributes)), "__module__": cls.__module__},
    )


def load_processor(
    path: str, config: Any, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """``AutoProcessor``; without torchvision, the image-only variant of a video-carrying processor."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import is_torchvision_available

    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is not None and not is_torchvision_available() and "video_processor" in cls.get_attributes():
        return images_only(cls).from_pretrained(path, **kwargs)
    return transformers.AutoProcessor.from_pretrained(path, **kwargs)


def resolve_dtype(dtype: str, cuda: bool) -> str:
    """``auto`` -> bfloat16 on GPU, float32 on CPU (fp16/bf16 CPU kernels are slow or partial)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if cuda else "float32"


def load_hf_generator(model: str, run: BaselineRun) -> Any:
    """Load ``model`` (folder or hub id) for generation with ``run``'s settings."""
    import torch
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars garble job log files
    trust = run.trust_remote_code
    config = AutoConfig.from_pretrained(model, revision=run.revision, trust_remote_code=trust)
    cls = model_class(config, trust)
    if cls.__name__ != IMAGE_TEXT_CLASS:
        from mcmdpo.evaluation.baselines.remote import load_remote_chat

        return load_remote_chat(model, config, cls, run)
    gpus = torch.cuda.device_count()
    placed = {"device_map": "auto"} if gpus > 1 else {}
    weights = cls.from_pretrained(
        model, revision=run.revision, dtype=getattr(torch, run.dtype), trust_remote_code=trust, **placed
    )
    if gpus == 1:
        weights = weights.to("cuda")
    processor = load_processor(model, config, run.revision, trust)
    return HfGenerator(weights.eval().requires_grad_(False), processor, run)


class HfGenerator:
    """Batched greedy generation through the model's processor and chat template."""

    def __init__(self, model: Any, processor: Any, run: BaselineRun) -> None:
        self.model, self.processor, self.run = model, processor, run
        self.adapter = ADAPTERS.get(model.config.model_type, Adapter())
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop = _stop_ids(model, self.tokenizer)

    def prompt(self, item: Item) -> str:
        """The text handed to the processor with the image (chat template applied)."""
        text = self.run.user_text(item.question)
        if getattr(self.processor, "chat_template", None):
            system = [{"role": "system", "content": [{"type": "text", "text": self.run.system}]}]
            user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            messages = (system if self.run.system else []) + user
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        token = getattr(self.processor, "image_token", "<image>")
        image = str(getattr(token, "content", token))  # InstructBLIP keeps an AddedToken
        return self.adapter.plain.replace("{image}", image).replace("{text}", text)

    def generate(self, items: Sequence[Item]) -> list[tuple[str, int]]:
        """(response, number of generated tokens) per item, in order."""
        if self.adapter.one_by_one and len(items) > 1:
            return [self._generate([item])[0] for item in items]
        return self._generate(items)

    def _generate(self, items: Sequence[Item]) -> list[tuple[str, int]]:
        import torch

        texts = [self.prompt(item) for item in items]
        inputs = self.processor(
            text=texts, images=[item_image(i) for i in items], padding=True, return_tensors="pt"
        ).to(self.model.device)
        inputs = {k: v.to(self.model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.run.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return [self._decode(row) for row in out[:, inputs["input_ids"].shape[1] :].tolist()]

    def _decode(self, row: Sequence[int]) -> tuple[str, int]:
        tokens = list(row)
        cut = next((k for k, t in enumerate(tokens) if t in self.stop), len(tokens))
        tokens = tokens[:cut]
        while tokens and tokens[-1] == self.tokenizer.pad_token_id:
            tokens.pop()
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None}
