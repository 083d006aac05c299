"""Models whose repository code has its own ``chat`` method instead of an image-text-to-text class.

Loaded with ``trust_remote_code = true`` only (checked at validation), through the Auto class their
``auto_map`` names (``AutoModelForCausalLM`` / ``AutoModel``) and ``AutoTokenizer``; one item at a time
through the repository's ``chat``, greedy, as their model cards show:

- ``qwen`` (Qwen-VL-Chat): ``tokenizer.from_list_format([{"image": path}, {"text": prompt}])`` then
  ``model.chat(tokenizer, query=..., history=None, do_sample=False, max_new_tokens=...)``;
- ``minicpmv`` (MiniCPM-V 2.0, MiniCPM-Llama3-V 2.5): ``model.chat(image=..., msgs=[{"role": "user",
  "content": prompt}], context=None, tokenizer=..., sampling=False, max_new_tokens=...)`` (2.0 returns
  a tuple whose first element is the response).

The response's token count is its length under the model's tokenizer. Repository code is written for
the transformers of its day; where it no longer runs, serve the model with vLLM (which supports
these) and evaluate it as ``kind = "api"``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcmdpo.batch.errors import ConfigError
from mcmdpo.evaluation.baselines.images import item_image

if TYPE_CHECKING:
    from mcmdpo.evaluation.baselines.prompt import BaselineRun
    from mcmdpo.evaluation.benchmarks import Item


def _qwen_chat(model: Any, tokenizer: Any, item: Item, text: str, run: BaselineRun) -> Any:
    with tempfile.TemporaryDirectory(prefix="mcmdpo-image-") as folder:
        path = item.image if isinstance(item.image, Path) else Path(folder) / "image"
        if isinstance(item.image, bytes):
            path.write_bytes(item.image)
        query = tokenizer.from_list_format([{"image": str(path)}, {"text": text}])
        kwargs = {"system": run.system} if run.system else {}
        return model.chat(
            tokenizer,
            query=query,
            history=None,
            do_sample=False,
            num_beams=1,
            max_new_tokens=run.max_new_tokens,
            **kwargs,
        )


def _minicpm_chat(model: Any, tokenizer: Any, item: Item, text: str, run: BaselineRun) -> Any:
    msgs = [{"role": "user", "content": text}]
    kwargs = {"system_prompt": run.system} if run.system else {}
    return model.chat(
        image=item_image(item),
        msgs=msgs,
        context=None,
        tokenizer=tokenizer,
        sampling=False,
        max_new_tokens=run.max_new_tokens,
        **kwargs,
    )


CHATS: dict[str, Callable[..., Any]] = {"qwen": _qwen_chat, "minicpmv": _minicpm_chat}
"""``model_type`` -> how to call its repository's ``chat``."""


def load_remote_chat(model: str, config: Any, cls: Any, run: BaselineRun) -> RemoteChatGenerator:
    """Load a repository-code chat model (``trust_remote_code`` was checked at validation)."""
    import torch
    from transformers import AutoTokenizer

    chat = CHATS.get(config.model_type)
    if chat is None:
        raise ConfigError(
            f"{model}: model type {config.model_type!r} has no image-text-to-text class and no "
            f"chat adapter here (known: {', '.join(CHATS)}); serve it with vLLM and use "
            "kind = 'api'"
        )
    gpus = torch.cuda.device_count()
    placed = {"device_map": "auto"} if gpus > 1 else {}
    weights = cls.from_pretrained(
        model, revision=run.revision, dtype=getattr(torch, run.dtype), trust_remote_code=True, **placed
    )
    if gpus == 1:
        weights = weights.to("cuda")
    tokenizer = AutoTokenizer.from_pretrained(model, revision=run.revision, trust_remote_code=True)
    return RemoteChatGenerator(weights.eval().requires_grad_(False), tokenizer, chat, run)


class RemoteChatGenerator:
    """Item-by-item generation through a repository's ``chat`` method."""

    def __init__(self, model: Any, tokenizer: Any, chat: Callable[..., Any], run: BaselineRun) -> None:
        self.model, self.tokenizer, self.chat, self.run = model, tokenizer, chat, run

    def prompt(self, item: Item) -> str:
        return self.run.user_text(item.question)

    def generate(self, items: Sequence[Item]) -> list[tuple[str, int]]:
        import torch

        out = []
        for item in items:
            with torch.inference_mode():
                reply = self.chat(self.model, self.tokenizer, item, self.prompt(item), self.run)
            text = str(reply[0] if isinstance(reply, tuple) else reply).strip()
            out.append((text, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])))
        return out
