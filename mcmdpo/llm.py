"""The OpenAI-compatible chat-completions client shared by every stage that calls an LLM.

- Any endpoint that speaks ``POST {base_url}/chat/completions`` (a vLLM server on the cluster,
  Gemini's OpenAI-compatible endpoint, OpenAI) through the official ``openai`` package (async).
- The API key is read from the environment variable the recipe names (``api_key_env``) and only
  ever handed to the ``openai`` client, which sends it in the ``Authorization`` header: it is never
  logged and never written to caches, ledgers, manifests or metrics.
- Bounded concurrency (an ``asyncio.Semaphore`` of ``concurrency`` requests in flight); 429, 5xx,
  timeouts and connection errors are retried with exponential backoff and jitter (``Retry-After``
  is honoured); other 4xx fail at once (401/403 name the key variable).
- Every successful reply is cached on disk under (model, request): a re-run, or another stage
  sending the same request, costs nothing. See :class:`ReplyCache` for the layout.
- The model id the endpoint actually answered with (``response.model``) is kept with each reply.

Synchronous callers use :meth:`LLMClient.complete` / :meth:`LLMClient.complete_many`; async code
(e.g. the curation pipeline, one coroutine per record) awaits :meth:`LLMClient.acomplete` inside
:meth:`LLMClient.run`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import random
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field

from mcmdpo.batch.artifacts import canonical_json, content_hash
from mcmdpo.batch.errors import McmdpoError
from mcmdpo.batch.spec import EnvStr, Spec

if TYPE_CHECKING:
    import openai
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)

Message = Mapping[str, Any]
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 60.0
NO_KEY = "no-key"  # sent when api_key_env = "" (the openai package insists on some key)
T = TypeVar("T")


class LLMSpec(Spec):
    """An OpenAI-compatible chat-completions endpoint and how to call it (e.g. ``[curate.llm]``)."""

    base_url: EnvStr = Field(
        "https://api.openai.com/v1",
        description="endpoint base URL ending in /v1 (vLLM: http://HOST:8000/v1; Gemini: "
        "https://generativelanguage.googleapis.com/v1beta/openai)",
    )
    model: EnvStr = Field(description="model name sent with each request (the cache is keyed by it)")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="environment variable holding the API key ('' = endpoint without auth); the key "
        "itself is never stored",
    )
    concurrency: int = Field(16, ge=1, le=1024, description="requests in flight at once")
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature of every request")
    max_tokens: int | None = Field(None, ge=1, description="max_tokens sent with requests (None: not sent)")
    max_retries: int = Field(6, ge=0, description="retries of 429/5xx/timeouts (exponential backoff)")
    backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles each retry (with jitter)")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout in seconds")
    cache_dir: EnvStr | None = Field(
        None, description="reply cache folder (default: <run_dir>/llm-cache, shared by all stages)"
    )

    def environment_problems(self) -> list[tuple[str, str]]:
        if self.api_key_env and not os.environ.get(self.api_key_env):
            why = (
                f"environment variable ${self.api_key_env} (the API key) is not set; export it before "
                'submitting (jobs inherit it), or set api_key_env = "" for an endpoint without auth'
            )
            return [("api_key_env", why), *super().environment_problems()]
        return super().environment_problems()

    def public(self) -> dict[str, Any]:
        """Settings safe to write into outputs (the key's variable name, never its value)."""
        return self.model_dump(mode="json", exclude={"cache_dir"})


@dataclass(frozen=True)
class LLMReply:
    """One completion: its text, the model id the endpoint reported, and where it came from."""

    content: str
    model: str
    cached: bool
    attempts: int = 0
    usage: dict[str, Any] = field(default_factory=dict)


class LLMError(McmdpoError, RuntimeError):
    """A request that failed for good (after retries, or a non-retryable status), or a missing key."""


def request_key(body: Mapping[str, Any]) -> str:
    """Cache key of a request: hash of model, messages and sampling settings (never the API key)."""
    return content_hash(json.loads(canonical_json(body)), length=32)


def api_key(env: str, where: str = "llm") -> str | None:
    """The key from ``$env`` (None when ``env`` is ''); a clear error when the variable is unset."""
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise LLMError(
            f"{where} needs an API key in the environment variable ${env} ({where}.api_key_env); set it "
            'in the job environment, or set api_key_env = "" for an endpoint without auth'
        )
    return value


# ---------------------------------------------------------------- cache


def _safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", model)[:100] or "_"


class ReplyCache:
    """Replies on disk: ``<folder>/<model>/<host>-<pid>-<token>.jsonl``, one file per writing process.

    Each line is ``<32-hex request key> <JSON entry>\\n``. A process appends only to its own file,
    so any number of processes (array tasks on several nodes, NFS included) share a folder without
    locks or interleaved lines. The index (key -> file, offset, length) is built by reading every
    file once, without parsing JSON; a hit is one ``pread`` + ``json.loads``. A miss re-scans the
    folder for lines other processes appended since (at most every ``refresh_s`` seconds). A torn
    last line (a killed writer) is never indexed; its request is simply asked again.
    """

    KEY = re.compile(rb"^[0-9a-f]{32} ")

    def __init__(self, folder: Path, model: str, refresh_s: float = 2.0) -> None:
        self.dir = Path(folder) / _safe_name(model)
        self.refresh_s = refresh_s
        self._index: dict[bytes, tuple[int, int, int]] = {}
        self._fds: list[int] = []
        self._paths: dict[str, int] = {}
        self._read: list[int] = []
        self._own: int | None = None
        self._last_refresh = 0.0
        self.refresh()

    def __len__(self) -> int:
        return len(self._index)

    def refresh(self) -> None:
        """Index the lines appended to every file of the folder since the last refresh."""
        self._last_refresh = time.monotonic()
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.jsonl")):
            number = self._paths.get(path.name)
            if number is None:
                number = self._open(path)
            if number != self._own:
                self._scan(number)

    def _open(self, path: Path) -> int:
        self._fds.append(os.open(path, os.O_RDONLY))
        self._read.append(0)
        self._paths[path.name] = len(self._fds) - 1
        return len(self._fds) - 1

    def _scan(self, number: int) -> None:
        fd, start = self._fds[number], self._read[number]
        size = os.fstat(fd).st_size
        if size <= start:
            return
        data = os.pread(fd, size - start, start)
        end = data.rfind(b"\n") + 1  # a line without its newline is still being (or was never) written
        offset = start
        for line in data[:end].split(b"\n")[:-1]:
            if self.KEY.match(line):
                self._index[line[:32]] = (number, offset, len(line))
            offset += len(line) + 1
        self._read[number] = start + end

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached entry of ``key`` (``content``, ``model``, ``usage``, ...), or None."""
        raw = key.encode()
        where = self._index.get(raw)
        if where is None and time.monotonic() - self._last_refresh >= self.refresh_s:
            self.refresh()
            where = self._index.get(raw)
        if where is None:
            return None
        number, offset, length = where
        try:
            entry = json.loads(os.pread(self._fds[number], length, offset)[33:])
        except (OSError, ValueError):
            return None  # a damaged entry is simply asked again
        return entry if isinstance(entry, dict) and isinstance(entry.get("content"), str) else None

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` under ``key`` to this process's own file (one ``write`` per line)."""
        if self._own is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            name = f"{_safe_name(socket.gethostname())}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            path = self.dir / name
            self._own_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            self._own = self._open(path)
        line = key.encode() + b" " + json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        offset = self._read[self._own]
        os.write(self._own_fd, line)
        self._read[self._own] = offset + len(line)
        self._index[key.encode()] = (self._own, offset, len(line) - 1)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        if self._own is not None:
            os.close(self._own_fd)
        self._fds, self._paths, self._read, self._index, self._own = [], {}, [], {}, None


# ---------------------------------------------------------------- client


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LLMClient:
    """Chat completions with an on-disk cache, bounded concurrency and retries.

    ``where`` names the recipe section in error messages (``curate.llm``, ``eval.judge``).
    ``sleep`` (tests) replaces the backoff pause; it may be sync or async.
    """

    def __init__(
        self,
        spec: LLMSpec,
        *,
        cache_dir: Path | str | None = None,
        where: str = "llm",
        sleep: Callable[[float], Any] | None = None,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.spec, self.where, self.max_backoff_s = spec, where, max_backoff_s
        self.sleep: Callable[[float], Any] = sleep or asyncio.sleep
        self._key = api_key(spec.api_key_env, where)
        folder = cache_dir if cache_dir is not None else spec.cache_dir
        self.cache = ReplyCache(Path(folder), spec.model) if folder is not None else None
        self.stats: dict[str, int] = {"requests": 0, "cached": 0, "retries": 0}
        self.served: Counter[str] = Counter()
        self._session: tuple[asyncio.AbstractEventLoop, AsyncOpenAI, asyncio.Semaphore] | None = None

    # ------------------------------------------------------------ sync entry points

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` (which awaits :meth:`acomplete`) on a fresh event loop; close the HTTP pool."""

        async def main() -> T:
            try:
                return await coro
            finally:
                await self._close_session()

        return asyncio.run(main())

    def complete(self, messages: Sequence[Message], **kw: Any) -> LLMReply:
        """One chat completion (from the cache when this exact request was answered before)."""
        return self.run(self.acomplete(messages, **kw))

    def complete_many(self, conversations: Sequence[Sequence[Message]], **kw: Any) -> list[LLMReply]:
        """One reply per conversation, in order; raises :class:`LLMError` if any request fails."""
        if not conversations:
            return []
        return self.run(self.acomplete_many(conversations, **kw))

    def served_models(self) -> list[str]:
        """The model ids the endpoint answered with (fresh replies and cache hits)."""
        return sorted(self.served)

    # ------------------------------------------------------------ async

    async def acomplete_many(self, conversations: Sequence[Sequence[Message]], **kw: Any) -> list[LLMReply]:
        return list(await asyncio.gather(*(self.acomplete(c, **kw) for c in conversations)))

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        variant: Any = None,
    ) -> LLMReply:
        """One completion. ``variant`` (e.g. a sample number) joins the cache key but is not sent:
        repeated samples of one prompt at temperature > 0 are then cached separately."""
        body = self.body(messages, temperature, max_tokens)
        key = request_key(body if variant is None else {**body, "variant": variant})
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self.stats["cached"] += 1
            self.served[hit["model"]] += 1
            return LLMReply(hit["content"], hit["model"], True, 0, hit.get("usage") or {})
        _, client, limit = self._bind()
        async with limit:
            reply = await self._post_with_retries(client, body)
        if self.cache is not None:
            params = {k: v for k, v in body.items() if k != "messages"}
            entry = {"content": reply.content, "model": reply.model, "usage": reply.usage}
            self.cache.put(key, {**entry, "request": params, "variant": variant, "time": time.time()})
        self.served[reply.model] += 1
        return reply

    def body(
        self, messages: Sequence[Message], temperature: float | None = None, max_tokens: int | None = None
    ) -> dict[str, Any]:
        """The request body (what the cache key hashes): model, messages and sampling settings."""
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": [dict(m) for m in messages],
            "temperature": self.spec.temperature if temperature is None else temperature,
        }
        tokens = max_tokens if max_tokens is not None else self.spec.max_tokens
        if tokens is not None:
            body["max_tokens"] = tokens
        return body

    def _bind(self) -> tuple[asyncio.AbstractEventLoop, AsyncOpenAI, asyncio.Semaphore]:
        """The openai client and semaphore of the running event loop (made on first use)."""
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        if self._session is None or self._session[0] is not loop:
            client = AsyncOpenAI(
                api_key=self._key or NO_KEY,
                base_url=self.spec.base_url,
                timeout=self.spec.timeout_s,
                max_retries=0,  # retries are ours: counted, logged, Retry-After honoured
            )
            self._session = (loop, client, asyncio.Semaphore(self.spec.concurrency))
        return self._session

    async def _close_session(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session[1].close()

    async def _post_with_retries(self, client: AsyncOpenAI, body: Mapping[str, Any]) -> LLMReply:
        last = ""
        for attempt in range(1, self.spec.max_retries + 2):
            self.stats["requests"] += 1
            try:
                return _reply(await self._post(client, body), attempt, self.spec.model)
            except _Retryable as exc:
                last = str(exc)
                if attempt > self.spec.max_retries:
                    break
                self.stats["retries"] += 1
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                log.warning("%s request failed (%s); retry %d in %.2f s", self.where, last, attempt, delay)
                await self._pause(delay)
        raise LLMError(
            f"{self.where} {self.spec.base_url} model {self.spec.model}: gave up after "
            f"{self.spec.max_retries + 1} attempts; last error: {last}"
        )

    async def _pause(self, delay: float) -> None:
        if inspect.iscoroutinefunction(self.sleep):
            await self.sleep(delay)
        else:
            result = await asyncio.to_thread(self.sleep, delay)
            if inspect.isawaitable(result):
                await result

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.spec.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # jitter: spread the retries of concurrent requests

    async def _post(self, client: AsyncOpenAI, body: Mapping[str, Any]) -> ChatCompletion:
        import openai

        try:
            return await client.chat.completions.create(**body)
        except openai.APITimeoutError:
            raise _Retryable(f"timeout after {self.spec.timeout_s} s") from None
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection error: {exc}") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APIError as exc:  # a 200 whose body is not a completion
            raise _Retryable(f"bad reply: {type(exc).__name__}: {str(exc)[:200]}") from None
        except ValueError as exc:  # a 200 whose body is not UTF-8 JSON (UnicodeDecodeError, JSONDecodeError)
            raise _Retryable(f"bad reply: the body is not UTF-8 JSON ({type(exc).__name__})") from None

    def _status_error(self, exc: openai.APIStatusError) -> Exception:
        status = exc.status_code
        detail = (exc.response.text or "").replace("\n", " ")[:300]
        if status in RETRY_STATUS or status >= 500:
            wait = _retry_after(exc.response.headers.get("retry-after"))
            return _Retryable(f"HTTP {status} {detail}", wait)
        env = self.spec.api_key_env
        hint = f" (check the API key in ${env})" if status in (401, 403) and env else ""
        return LLMError(f"{self.where} {self.spec.base_url}: HTTP {status} {detail}{hint}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _reply(completion: ChatCompletion, attempt: int, requested: str) -> LLMReply:
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise _Retryable(f"reply without choices[0].message.content: {str(completion)[:200]}") from None
    if not isinstance(content, str):
        raise _Retryable("reply content is not a string")
    stats = getattr(completion, "usage", None)
    usage = stats.model_dump(exclude_none=True) if stats else {}
    return LLMReply(content, str(getattr(completion, "model", "") or requested), False, attempt, usage)


async def gather_limited(items: Sequence[T], worker: Callable[[T], Awaitable[Any]], limit: int) -> None:
    """Await ``worker(item)`` for every item with at most ``limit`` running at once (in order)."""
    queue = list(reversed(items))

    async def drain() -> None:
        while queue:
            await worker(queue.pop())

    await asyncio.gather(*(drain() for _ in range(max(1, min(limit, len(items))))))
