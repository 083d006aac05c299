"""Zero-shot generation through an OpenAI-compatible chat endpoint with image input.

One request per item through :class:`mcmdpo.llm.LLMClient` (bounded concurrency, retries of
429/5xx/timeouts with backoff, the on-disk reply cache under the run dir, the key read from the
environment variable the entry names and never written). The message::

    [{"role": "system", "content": <system>}]            # only when the entry sets one
    {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/<fmt>;base64,<bytes>"}},  # + "detail"
        {"type": "text", "text": <the prompt>}]}

The image is sent as the file's own bytes when it is a JPEG, PNG, WebP or GIF, else re-encoded as
PNG. ``temperature = 0``; ``max_tokens`` = the entry's ``max_new_tokens``. The token count of a
response is the endpoint's ``usage.completion_tokens`` (its word count when the endpoint reports none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mcmdpo.evaluation.baselines.images import data_url, item_image

if TYPE_CHECKING:
    from mcmdpo.evaluation.baselines.prompt import BaselineRun
    from mcmdpo.evaluation.benchmarks import Item

ENDPOINT_KEYS = (
    "base_url",
    "api_key_env",
    "concurrency",
    "max_retries",
    "backoff_s",
    "timeout_s",
    "cache_dir",
)


class ApiGenerator:
    """Greedy chat completions for a batch of items, one request each, ``concurrency`` in flight."""

    def __init__(self, run: BaselineRun) -> None:
        from mcmdpo.llm import LLMClient, LLMSpec

        api = dict(run.api or {})
        self.run, self.detail = run, api.get("image_detail")
        endpoint = {k: api[k] for k in ENDPOINT_KEYS if k in api}
        spec = LLMSpec(model=run.model, temperature=0.0, max_tokens=run.max_new_tokens, **endpoint)
        self.client = LLMClient(spec, where=f"eval.baselines {run.name}")

    def prompt(self, item: Item) -> str:
        """The text part of the user message."""
        return self.run.user_text(item.question)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        """The chat messages of one item (see the module docstring)."""
        item_image(item)  # an unusable image is a one-line error naming the item, before any request
        image: dict[str, Any] = {"url": data_url(item.image)}
        if self.detail:
            image["detail"] = self.detail
        content = [{"type": "image_url", "image_url": image}, {"type": "text", "text": self.prompt(item)}]
        system = [{"role": "system", "content": self.run.system}] if self.run.system else []
        return [*system, {"role": "user", "content": content}]

    def generate(self, items: Sequence[Item]) -> list[tuple[str, int]]:
        """(response, generated tokens) per item, in order."""
        replies = self.client.complete_many([self.messages(item) for item in items])
        out = []
        for reply in replies:
            text = reply.content.strip()
            out.append((text, int(reply.usage.get("completion_tokens") or len(text.split()))))
        return out
