"""Fake model servers on 127.0.0.1 for tests: a Bedrock Converse endpoint and an OpenAI-compatible one.

Both answer from a script (a function of the request), inject throttling
and 503s at set rates, and record what they served: every request, the
calls in flight at most, and the token usage of successful replies.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fanout_core.contracts import FINAL_STATUSES


@dataclass
class Served:
    requests: list[dict[str, Any]] = field(default_factory=list)
    successes: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # with Script(cache=True): what each successful reply reported as read from / written to the prompt cache
    cache_reads: int = 0
    cache_writes: int = 0
    cached: set[str] = field(default_factory=set)


@dataclass
class Script:
    """What the fake answers: ``answer(body) -> output`` (a dict for tool use, or text)."""

    answer: Callable[[dict[str, Any]], Any]
    throttle_rate: float = 0.0
    unavailable_rate: float = 0.0
    latency_s: float = 0.01
    seed: int = 1
    # Converse only: a prefix up to a cachePoint is written on its first reply and read by requests after it
    cache: bool = False
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


def _handler(script: Script, served: Served, kind: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with served.lock:
                served.in_flight += 1
                served.max_in_flight = max(served.max_in_flight, served.in_flight)
                served.requests.append({"path": self.path, "body": body})
                roll = script.rng.random()
            # what the cache holds when the request arrives: a reply still being written is not there yet
            prefix = _cached_prefix(body) if script.cache and kind == "bedrock" else None
            with served.lock:
                hit = prefix is not None and prefix in served.cached
            # the call leaves the count before its reply is written: a client that reads the reply may ask again at
            # once, and that next request must not be counted alongside the one it follows
            try:
                time.sleep(script.latency_s)
                if roll < script.throttle_rate:
                    reply = self._error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
                elif roll < script.throttle_rate + script.unavailable_rate:
                    reply = self._error(503, "ServiceUnavailableException", "Service unavailable.")
                else:
                    reply = self._answer(body, prefix, hit)
            finally:
                with served.lock:
                    served.in_flight -= 1
            self._send(*reply)

        def _send(self, status: int, payload: bytes, error: str | None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if error and kind == "bedrock":
                self.send_header("x-amzn-ErrorType", f"{error}:http://internal.amazon.com/coral/com.amazon.bedrock/")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, code: str, message: str) -> tuple[int, bytes, str]:
            return status, json.dumps({"message": message}).encode(), code

        def _answer(self, body: dict[str, Any], prefix: str | None = None, hit: bool = False) -> tuple[int, bytes, str | None]:
            output = script.answer(body)
            text = output if isinstance(output, str) else json.dumps(output)
            tokens_in, tokens_out = 10 + len(json.dumps(body)) // 40, 5 + len(text) // 4
            cache_usage = _cache_usage(prefix, hit, served) if prefix is not None else {}
            if cache_usage:
                tokens_in = 10
            if kind == "bedrock":
                if isinstance(output, str):
                    content: list[dict[str, Any]] = [{"text": output}]
                else:
                    content = [{"toolUse": {"toolUseId": "tooluse_1", "name": "record_output", "input": output}}]
                reply = {
                    "output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": "tool_use" if not isinstance(output, str) else "end_turn",
                    "usage": {
                        "inputTokens": tokens_in,
                        "outputTokens": tokens_out,
                        "totalTokens": tokens_in + tokens_out,
                        **cache_usage,
                    },
                    "metrics": {"latencyMs": 10},
                }
            else:
                reply = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {
                        "prompt_tokens": tokens_in,
                        "completion_tokens": tokens_out,
                        "total_tokens": tokens_in + tokens_out,
                    },
                }
            with served.lock:
                served.successes.append(body)
                served.input_tokens += tokens_in
                served.output_tokens += tokens_out
            return 200, json.dumps(reply).encode(), None

    return Handler


def _cached_prefix(body: dict[str, Any]) -> str | None:
    """The request's blocks before its first cachePoint (system, then the message), as text; None without one."""
    blocks = [*body.get("system", []), *body["messages"][-1]["content"]]
    marks = [n for n, block in enumerate(blocks) if "cachePoint" in block]
    return json.dumps(blocks[: marks[0]]) if marks else None


def _cache_usage(prefix: str, hit: bool, served: Served) -> dict[str, int]:
    """Bedrock's cache usage of a reply: the prefix read if it was cached when the request came, else written."""
    tokens = len(prefix) // 4
    with served.lock:
        served.cached.add(prefix)
        served.cache_reads += tokens if hit else 0
        served.cache_writes += 0 if hit else tokens
    return {"cacheReadInputTokens": tokens if hit else 0, "cacheWriteInputTokens": 0 if hit else tokens}


@contextmanager
def fake_server(script: Script, kind: str = "bedrock") -> Iterator[tuple[str, Served]]:
    """Serve ``kind`` ("bedrock" or "openai") on a free port of 127.0.0.1; yields (base URL, Served)."""
    served = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script, served, kind))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def prompt_of(body: dict[str, Any]) -> str:
    """The user text of a Converse or chat-completions request."""
    if "messages" in body and body["messages"] and isinstance(body["messages"][-1].get("content"), list):
        return "".join(block.get("text", "") for block in body["messages"][-1]["content"])
    return str(body["messages"][-1]["content"])


def marker(text: str, pattern: str = r"item-(\d+)") -> int:
    found = re.search(pattern, text)
    assert found, text
    return int(found.group(1))


class MemoryRunStore:
    """What run_batch needs of a RunStore (completed tasks, a record writer), in memory."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.puts: list[tuple[str, str]] = []
        self.closed = 0

    def completed(self, batch_index: int) -> set[str]:
        return {r["task_id"] for r in self.finished_records(batch_index)}

    def finished_records(self, batch_index: int) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["status"] in FINAL_STATUSES]

    def writer(self, batch_index: int) -> MemoryRunStore:
        return self

    def add(self, record: dict[str, Any]) -> None:
        key = (record["item_id"], record["slot"])
        self.records[key] = record
        self.puts.append(key)

    def close(self) -> None:
        self.closed += 1
