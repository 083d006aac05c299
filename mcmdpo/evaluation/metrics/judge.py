"""The LLM judge client (MMHal, the LLM object extractor): a thin wrapper over :mod:`mcmdpo.llm`.

:class:`JudgeClient` keeps the judge's public API (``complete``, ``complete_many``, ``stats``,
:class:`JudgeReply`, :class:`JudgeError`, :func:`request_key`) while every request goes through
:class:`mcmdpo.llm.LLMClient`: the official ``openai`` package (async, bounded concurrency), retries
of 429/5xx/timeouts with backoff (``Retry-After`` honoured), the key read from the environment
variable the recipe names (never stored), the served model id kept with each reply, and the reply
cache shared with every other stage that calls an LLM (keyed by model and request).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from mcmdpo.llm import LLMClient, LLMError, LLMReply, LLMSpec, request_key

Message = Mapping[str, Any]
JudgeReply = LLMReply
"""One completion: ``content``, ``model`` (the id the endpoint answered with), ``cached``, ``attempts``."""
JudgeError = LLMError
"""A request that failed for good (after retries, or a non-retryable status), or a missing key."""

__all__ = ["JudgeClient", "JudgeError", "JudgeReply", "JudgeSpec", "request_key"]


class JudgeSpec(LLMSpec):
    """``[score.judge]``: the judge endpoint (MMHal, the LLM object extractor); an :class:`LLMSpec`.

    ``api_key_env`` names the environment variable holding the key ("" for endpoints without
    authentication, e.g. a local vLLM server); the key itself is never stored.
    """

    model: str = Field("gpt-4-1106-preview", description="judge model name sent with each request")
    concurrency: int = Field(4, ge=1, le=1024, description="requests in flight at once")
    cache_dir: str | None = Field(
        None, description="reply cache (default: <run_dir>/llm-cache, shared by every stage calling an LLM)"
    )

    def public(self) -> dict[str, Any]:
        """Settings safe to write into metrics (no key, only the variable's name)."""
        return self.model_dump(include={"base_url", "model", "api_key_env", "temperature", "max_tokens"})


class JudgeClient:
    """Chat completions for a judge: cache, bounded concurrency and retries (see :mod:`mcmdpo.llm`)."""

    def __init__(
        self,
        config: JudgeSpec,
        cache_dir: Path | str | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.config = config
        self._client = LLMClient(config, cache_dir=cache_dir, where="score.judge", sleep=sleep)

    @property
    def stats(self) -> dict[str, int]:
        """``requests`` sent (retries included), ``cached`` hits and ``retries``."""
        return self._client.stats

    @property
    def _sleep(self) -> Callable[[float], Any]:  # test hook: the backoff pause (sync or async)
        return self._client.sleep

    @_sleep.setter
    def _sleep(self, value: Callable[[float], Any]) -> None:
        self._client.sleep = value

    def complete(self, messages: Sequence[Message]) -> JudgeReply:
        """One chat completion (from the cache when this exact request was answered before)."""
        return self._client.complete(messages)

    def complete_many(self, conversations: Sequence[Sequence[Message]]) -> list[JudgeReply]:
        """One reply per conversation, in order; raises :class:`JudgeError` if any request fails."""
        return self._client.complete_many(conversations)
