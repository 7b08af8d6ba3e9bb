"""A Bedrock Converse endpoint on 127.0.0.1 that enforces a tokens-per-minute quota as Bedrock does.

The quota is a token bucket per endpoint: it holds one window's tokens
(``tokens_per_window``) and refills continuously over ``window_seconds``
(60 in Bedrock; the bench scales the minute down). A request takes its
input tokens plus ``maxTokens`` from the bucket when it arrives and is
refused at once with ThrottlingException (HTTP 429) when the bucket holds
less; when it ends, what it did not use is given back ("How tokens are
counted in Amazon Bedrock", quotas-token-burndown.html). An optional
requests-per-window quota works the same way, one request each.

Answers fill the request's tool schema (the simulator's filler) or are a
short text; tokens are counted from the request's text, about four
characters a token. ``QuotaStats`` says what was served: requests, refused,
the net tokens (input + output of answered calls) and the most calls in
flight; :meth:`QuotaStats.floor_seconds` is the quickest any client could
have been served those tokens.

Run it on its own (a held-out style endpoint for a local run)::

    python -m tests.quota_endpoint --tokens-per-window 6000 --window-seconds 6 --latency-ms 300
    AWS_ENDPOINT_URL_BEDROCK_RUNTIME=http://127.0.0.1:PORT python -m fanout run JOB.json --model bedrock:amazon.nova-lite-v1:0
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lambdas"))

from fanout_core.providers.simulator import fill


@dataclass
class QuotaStats:
    tokens_per_window: int
    window_seconds: float
    requests: int = 0
    refused: int = 0
    answered: int = 0
    net_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    first_at: float | None = None
    last_at: float | None = None
    # the request bodies answered, by the prompt's text (a task answered twice shows here)
    answered_prompts: dict[str, int] = field(default_factory=dict)

    @property
    def refill_per_second(self) -> float:
        return self.tokens_per_window / self.window_seconds

    def floor_seconds(self) -> float:
        """(net tokens served - bucket size) / refill rate: the quickest the quota lets these tokens be served."""
        return max(0.0, (self.net_tokens - self.tokens_per_window) / self.refill_per_second)

    @property
    def refused_share(self) -> float:
        return self.refused / self.requests if self.requests else 0.0


class Bucket:
    def __init__(self, capacity: float, window_seconds: float) -> None:
        self.capacity = capacity
        self.rate = capacity / window_seconds
        self.level = capacity
        self.last = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + self.rate * (now - self.last))
        self.last = now


def count_tokens(text: str) -> int:
    return 4 + math.ceil(len(text) / 4)


def _request_text(body: dict[str, Any]) -> str:
    parts = [b.get("text", "") for b in body.get("system", [])]
    for message in body.get("messages", []):
        parts += [b.get("text", "") for b in message.get("content", []) if isinstance(b, dict)]
    tools = (body.get("toolConfig") or {}).get("tools") or []
    parts += [json.dumps(t.get("toolSpec", {}).get("inputSchema", {})) for t in tools]
    return "".join(parts)


def _handler(
    stats: QuotaStats, tokens: Bucket, requests: Bucket | None, latency_s: float, lock: threading.Lock
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            text = _request_text(body)
            tokens_in = count_tokens(text)
            reserved = tokens_in + int((body.get("inferenceConfig") or {}).get("maxTokens", 512))
            with lock:
                now = time.monotonic()
                stats.requests += 1
                stats.first_at = stats.first_at if stats.first_at is not None else now
                tokens.refill(now)
                if requests is not None:
                    requests.refill(now)
                refused = tokens.level < reserved or (requests is not None and requests.level < 1)
                if refused:
                    stats.refused += 1
                else:
                    tokens.level -= reserved
                    if requests is not None:
                        requests.level -= 1
                    stats.in_flight += 1
                    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            if refused:
                self._send(429, {"message": "Too many tokens, please wait before trying again."}, "ThrottlingException")
                return
            time.sleep(latency_s)
            output, reply_text = self._answer(body, text)
            tokens_out = count_tokens(reply_text)
            with lock:
                now = time.monotonic()
                tokens.refill(now)
                tokens.level += reserved - (tokens_in + tokens_out)
                stats.in_flight -= 1
                stats.answered += 1
                stats.net_tokens += tokens_in + tokens_out
                stats.last_at = now
                prompt = "".join(b.get("text", "") for b in body["messages"][-1]["content"] if isinstance(b, dict))
                stats.answered_prompts[prompt] = stats.answered_prompts.get(prompt, 0) + 1
            self._send(
                200,
                {
                    "output": {"message": {"role": "assistant", "content": output}},
                    "stopReason": "tool_use" if "toolConfig" in body else "end_turn",
                    "usage": {"inputTokens": tokens_in, "outputTokens": tokens_out, "totalTokens": tokens_in + tokens_out},
                    "metrics": {"latencyMs": int(latency_s * 1000)},
                },
            )

        def _answer(self, body: dict[str, Any], text: str) -> tuple[list[dict[str, Any]], str]:
            tools = (body.get("toolConfig") or {}).get("tools") or []
            if tools:
                schema = tools[0]["toolSpec"]["inputSchema"]["json"]
                value = fill(schema, random.Random(text))
                use = {"toolUse": {"toolUseId": "tooluse_1", "name": tools[0]["toolSpec"]["name"], "input": value}}
                return [use], json.dumps(value)
            return [{"text": "ok"}], "ok"

        def _send(self, status: int, payload: dict[str, Any], error: str | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if error:
                self.send_header("x-amzn-ErrorType", f"{error}:http://internal.amazon.com/coral/com.amazon.bedrock/")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def quota_endpoint(
    tokens_per_window: int,
    window_seconds: float = 60.0,
    latency_s: float = 0.3,
    requests_per_window: int | None = None,
    port: int = 0,
) -> Iterator[tuple[str, QuotaStats]]:
    """Serve the quota-enforcing Converse endpoint; yields (base URL, QuotaStats)."""
    stats = QuotaStats(tokens_per_window, window_seconds)
    tokens = Bucket(tokens_per_window, window_seconds)
    requests = Bucket(requests_per_window, window_seconds) if requests_per_window else None
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(stats, tokens, requests, latency_s, threading.Lock()))
    server.daemon_threads = True
    server.request_queue_size = 256
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.quota_endpoint", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens-per-window", type=int, default=6000)
    parser.add_argument("--window-seconds", type=float, default=60.0)
    parser.add_argument("--requests-per-window", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with quota_endpoint(
        args.tokens_per_window, args.window_seconds, args.latency_ms / 1000, args.requests_per_window, args.port
    ) as (url, stats):
        print(json.dumps({"endpoint": url}), flush=True)
        try:
            while True:
                time.sleep(5)
                print(
                    json.dumps(
                        {"requests": stats.requests, "refused": stats.refused, "net_tokens": stats.net_tokens,
                         "floor_seconds": round(stats.floor_seconds(), 2)}
                    ),
                    flush=True,
                )  # fmt: skip
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
