"""The LLM judge client (MMHal, the LLM object extractor): a thin wrapper over :mod:`mcmdpo.llm`.

:class:`JudgeClient` keeps the judge's public API (``complete``, ``complete_many``, ``stats``,
:class:`JudgeReply`, :class:`JudgeError`, :func:`request_key`) while every request goes through
:class:`mcmdpo.llm.LLMClient`: the official ``openai`` package (async, bounded concurrency), retries
of 429/5xx/timeouts with backoff (``Retry-After`` honoured), the key read from the environment
variable the recipe names (never stored), the served model id kept with each reply, and the reply
cache shared with every other stage that calls an LLM (keyed by model and request).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcmdpo.llm import LLMClient, LLMError, LLMReply, LLMSpec, request_key

Message = Mapping[str, Any]
JudgeReply = LLMReply
"""One completion: ``content``, ``model`` (the id the endpoint answered with), ``cached``, ``attempts``."""
JudgeError = LLMError
"""A request that failed for good (after retries, or a non-retryable status), or a missing key."""

__all__ = ["JudgeClient", "JudgeConfig", "JudgeError", "JudgeReply", "request_key"]


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to call the judge.

    ``api_key_env`` names the environment variable holding the key ("" for endpoints without
    authentication, e.g. a local vLLM server); the key itself is never stored in this object.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int | None = None
    concurrency: int = 4
    max_retries: int = 6
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    cache_dir: Path | None = None

    def public(self) -> dict[str, Any]:
        """Settings safe to write into metrics (no key, only the variable's name)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def llm_spec(self) -> LLMSpec:
        """The same settings as an :class:`~mcmdpo.llm.LLMSpec`."""
        fields = ("base_url", "model", "api_key_env", "temperature", "max_tokens", "concurrency")
        retry = ("max_retries", "backoff_s", "timeout_s")
        return LLMSpec(**{k: getattr(self, k) for k in (*fields, *retry)})


class JudgeClient:
    """Chat completions for a judge: cache, bounded concurrency and retries (see :mod:`mcmdpo.llm`)."""

    def __init__(self, config: JudgeConfig, sleep: Any = None) -> None:
        self.config = config
        self._client = LLMClient(
            config.llm_spec(),
            cache_dir=config.cache_dir,
            where="eval.judge",
            sleep=sleep,
            max_backoff_s=config.max_backoff_s,
        )

    @property
    def stats(self) -> dict[str, int]:
        """``requests`` sent (retries included), ``cached`` hits and ``retries``."""
        return self._client.stats

    @property
    def _sleep(self) -> Any:  # test hook: the backoff pause (sync or async)
        return self._client.sleep

    @_sleep.setter
    def _sleep(self, value: Any) -> None:
        self._client.sleep = value

    def complete(self, messages: Sequence[Message]) -> JudgeReply:
        """One chat completion (from the cache when this exact request was answered before)."""
        return self._client.complete(messages)

    def complete_many(self, conversations: Sequence[Sequence[Message]]) -> list[JudgeReply]:
        """One reply per conversation, in order; raises :class:`JudgeError` if any request fails."""
        return self._client.complete_many(conversations)
