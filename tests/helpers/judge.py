"""A local OpenAI-compatible chat-completions server for the judge, curation and pipeline tests.

:class:`JudgeServer` runs on 127.0.0.1; its behaviour per request is a Python function (good ratings,
malformed ratings, 429/500 before success, slow replies); it records every request (headers, body)
and the highest number of requests in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from mcmdpo.evaluation.metrics.judge import JudgeClient, JudgeSpec
from mcmdpo.smoke import fixtures
from mcmdpo.smoke.fixtures import LocalServer

Reply = tuple[int, dict[str, str], Any, float]  # status, headers, JSON body (or raw bytes), delay s


def completion(content: str, model: str = "judge-2024-01-01") -> dict[str, Any]:
    return fixtures.completion(content, model)


class JudgeServer(LocalServer):
    """A chat-completions server on 127.0.0.1; ``behave(body, attempt) -> Reply`` decides each answer."""

    def __init__(self, behave: Callable[[dict[str, Any], int], Reply]) -> None:
        self.behave = behave
        self.requests: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = json.dumps(body["messages"], sort_keys=True)
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    server.attempts[key] = server.attempts.get(key, 0) + 1
                    attempt = server.attempts[key]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, payload, delay = server.behave(body, attempt)
                    time.sleep(delay)
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler)


def client(url: str, cache: Path | None, **kw: Any) -> JudgeClient:
    defaults = {"api_key_env": "MCMDPO_TEST_JUDGE_KEY", "backoff_s": 0.01, "timeout_s": 5.0}
    return JudgeClient(JudgeSpec(base_url=url, model="judge-x", **{**defaults, **kw}), cache_dir=cache)
