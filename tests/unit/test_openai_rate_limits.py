"""An OpenAI-compatible server's rate-limit headers reach the pacer: Retry-After on a 429, x-ratelimit-remaining-*."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fanout_core.pacing import Gate, Pacer, Quota
from fanout_core.providers.base import ModelError, ModelRequest
from fanout_core.providers.openai_compat import OpenAICompatibleProvider, rate_limit_headers, retry_after


@contextmanager
def limited_server() -> Iterator[str]:
    """The first chat completion is refused (429, Retry-After 2), the others answered with 40 tokens left."""
    calls = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._send(200, {"data": [{"id": "m"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            calls["n"] += 1
            if calls["n"] == 1:
                self._send(429, {"error": {"message": "slow down"}}, {"retry-after": "2"})
                return
            reply = {
                "id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }  # fmt: skip
            self._send(200, reply, {"x-ratelimit-remaining-tokens": "40", "x-ratelimit-remaining-requests": "3"})

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_retry_after_holds_the_model_and_remaining_tokens_lower_the_bucket() -> None:
    clock = Clock()
    pacer = Pacer(Quota(tokens_per_minute=100_000), clock)
    gate = Gate("openai:m", pacer)
    request = ModelRequest(task_id="t", prompt="hi", max_tokens=10)
    with limited_server() as url:
        provider = OpenAICompatibleProvider(url, "m")
        # the 429 carries Retry-After: 2, and the gate holds the next call that long
        entry = gate.enter(request)
        with pytest.raises(ModelError) as refused:
            provider.invoke(request, 1)
        assert refused.value.kind == "throttled" and refused.value.retry_after == 2.0
        gate.failed(entry, refused.value)
        entry = gate.enter(request)
        assert entry.ticket is not None and entry.ticket.waited >= 2.0
        # the answer says 40 tokens are left: the bucket holds no more than that
        reply = provider.invoke(request, 2)
        assert reply.rate_limit == {"remaining_tokens": 40.0, "remaining_requests": 3.0}
        gate.done(entry, reply)
    assert pacer.level <= 40


def test_header_values_are_read_in_every_form_and_bad_ones_ignored() -> None:
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None
    assert rate_limit_headers({"x-ratelimit-remaining-tokens": "x"}) is None
    assert rate_limit_headers({"x-ratelimit-limit-tokens": "90000"}) == {"limit_tokens": 90000.0}
