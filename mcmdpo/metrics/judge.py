"""A small client for OpenAI-compatible chat-completions endpoints, built for LLM judges.

- ``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature", ...}``; the API
  key is read from the environment variable the recipe names and only ever sent in the
  ``Authorization`` header (never logged, never written to caches, manifests or metrics).
- Every successful reply is cached on disk under ``(judge model, hash of the request)``, so a re-run
  (or a second model scored with the same prompts) costs nothing.
- Requests run concurrently (a bounded thread pool); 429, 5xx, timeouts and connection errors are
  retried with exponential backoff and jitter (``Retry-After`` is honoured); other 4xx fail at once.
- The model id the endpoint actually answered with (``response["model"]``) is kept with each reply.

Only the standard library is used (``urllib``), so the client runs wherever Python does.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from mcmdpo.artifacts import canonical_json, content_hash, write_json_atomic
from mcmdpo.errors import McmdpoError
from mcmdpo.spec import Spec

log = logging.getLogger(__name__)

Message = Mapping[str, Any]
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class JudgeSpec(Spec):
    """``[score.judge]``: an OpenAI-compatible chat-completions endpoint (MMHal, LLM object extractor).

    ``api_key_env`` names the environment variable holding the key ("" for endpoints without
    authentication, e.g. a local vLLM server); the key itself is never stored.
    """

    base_url: str = Field("https://api.openai.com/v1", description="endpoint base URL (.../v1)")
    model: str = Field("gpt-4-1106-preview", description="judge model name sent with each request")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable holding the API key ('' = no auth); never stored"
    )
    temperature: float = Field(0.0, ge=0, description="sampling temperature (0: the judges' setting)")
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    max_retries: int = Field(6, ge=0, description="retries of 429/5xx/timeouts (exponential backoff)")
    backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles each retry (with jitter)")
    max_backoff_s: float = Field(60.0, gt=0, description="longest retry delay")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout")
    max_tokens: int | None = Field(None, ge=1, description="max_tokens sent to the endpoint (None: not sent)")
    cache_dir: str | None = Field(
        None, description="reply cache (default: <run_dir>/judge-cache); shared by re-runs and models"
    )

    def public(self) -> dict[str, Any]:
        """Settings safe to write into metrics (no key, only the variable's name)."""
        return self.model_dump(include={"base_url", "model", "api_key_env", "temperature", "max_tokens"})


@dataclass(frozen=True)
class JudgeReply:
    """One completion: the text, the model id the endpoint reported, and where it came from."""

    content: str
    model: str
    cached: bool
    attempts: int = 0
    usage: dict[str, Any] = field(default_factory=dict)


class JudgeError(McmdpoError, RuntimeError):
    """A request that failed for good (after retries, or a non-retryable status)."""


class JudgeClient:
    """Chat completions with an on-disk cache, bounded concurrency and retries."""

    def __init__(
        self, config: JudgeSpec, cache_dir: Path | str | None = None, sleep: Any = time.sleep
    ) -> None:
        self.config = config
        cache = cache_dir if cache_dir is not None else config.cache_dir
        self.cache_dir = Path(cache) if cache is not None else None
        self._sleep = sleep
        self._key = _api_key(config.api_key_env)
        self.stats = {"requests": 0, "cached": 0, "retries": 0}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ public

    def complete_many(self, conversations: Sequence[Sequence[Message]]) -> list[JudgeReply]:
        """One reply per conversation, in order; raises :class:`JudgeError` if any request fails."""
        if not conversations:
            return []
        workers = max(1, min(self.config.concurrency, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
            return list(pool.map(self.complete, conversations))

    def complete(self, messages: Sequence[Message]) -> JudgeReply:
        """One chat completion (from the cache when this exact request was answered before)."""
        body = self._body(messages)
        key = request_key(body)
        cached = self._read_cache(key)
        if cached is not None:
            self._count("cached")
            return JudgeReply(cached["content"], cached["model"], True, 0, cached.get("usage", {}))
        reply = self._post_with_retries(body)
        self._write_cache(key, body, reply)
        return reply

    # ------------------------------------------------------------ request

    def _body(self, messages: Sequence[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [dict(m) for m in messages],
            "temperature": self.config.temperature,
        }
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        return body

    def _post_with_retries(self, body: Mapping[str, Any]) -> JudgeReply:
        last = ""
        for attempt in range(1, self.config.max_retries + 2):
            self._count("requests")
            try:
                data = self._post(body)
                return _reply(data, attempt, self.config.model)
            except _Retryable as exc:
                last = str(exc)
                if attempt > self.config.max_retries:
                    break
                self._count("retries")
                delay = exc.retry_after or self._backoff(attempt)
                log.warning("judge request failed (%s); retry %d in %.1f s", last, attempt, delay)
                self._sleep(delay)
        raise JudgeError(
            f"judge {self.config.base_url} model {self.config.model}: gave up after "
            f"{self.config.max_retries + 1} attempts; last error: {last}"
        )

    def _backoff(self, attempt: int) -> float:
        base = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # jitter: spread retries of concurrent workers

    def _post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                return _json_body(response.read(), url)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, url, self.config.api_key_env) from None
        except TimeoutError as exc:
            raise _Retryable(f"timeout after {self.config.timeout_s} s ({exc})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"timeout after {self.config.timeout_s} s") from None
            raise _Retryable(f"connection error: {exc.reason}") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {exc}") from None

    # ------------------------------------------------------------ cache

    def _cache_file(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        model = re.sub(r"[^A-Za-z0-9_.\-]", "_", self.config.model)[:100]
        return self.cache_dir / model / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> dict[str, Any] | None:
        path = self._cache_file(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is simply asked again
        return data if isinstance(data, dict) and isinstance(data.get("content"), str) else None

    def _write_cache(self, key: str, body: Mapping[str, Any], reply: JudgeReply) -> None:
        path = self._cache_file(key)
        if path is None:
            return
        entry = {
            "content": reply.content,
            "model": reply.model,
            "usage": reply.usage,
            "request": {k: v for k, v in body.items() if k != "messages"},
            "time": time.time(),
        }
        write_json_atomic(path, entry)

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1


def request_key(body: Mapping[str, Any]) -> str:
    """Cache key of a request: hash of model, messages and sampling settings (not the key)."""
    return content_hash(json.loads(canonical_json(body)), length=32)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _http_error(exc: urllib.error.HTTPError, url: str, key_env: str) -> Exception:
    detail = _error_detail(exc)
    if exc.code in RETRY_STATUS:
        return _Retryable(f"HTTP {exc.code} {detail}", _retry_after(exc.headers.get("Retry-After")))
    hint = f" (check the API key in ${key_env})" if exc.code in (401, 403) and key_env else ""
    return JudgeError(f"judge {url}: HTTP {exc.code} {detail}{hint}")


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text.replace("\n", " ")[:300]


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _json_body(raw: bytes, url: str) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Retryable(f"{url}: reply is not JSON: {raw[:200]!r}") from None
    if not isinstance(data, dict):
        raise _Retryable(f"{url}: reply is not a JSON object")
    return data


def _reply(data: Mapping[str, Any], attempt: int, requested: str) -> JudgeReply:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Retryable(f"reply without choices[0].message.content: {str(data)[:200]}") from None
    if not isinstance(content, str):
        raise _Retryable("reply content is not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return JudgeReply(content, str(data.get("model") or requested), False, attempt, dict(usage))


def _api_key(env: str) -> str | None:
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise JudgeError(
            f"the judge needs an API key in the environment variable ${env} (eval.judge.api_key_env); "
            'set it in the job environment, or set api_key_env = "" for an endpoint without auth'
        )
    return value
