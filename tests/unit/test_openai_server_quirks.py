"""What a real llama.cpp server showed, against a stand-in on 127.0.0.1: a model name it ignores, a schema it cannot
compile, and a server that is down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import _print_summary, main
from fanout_core.providers.base import ModelError, ModelRequest
from fanout_core.providers.openai_compat import OpenAICompatibleProvider
from fanout_core.runner import run_batch
from tests.factories import batch_for, vote_tasks
from tests.fakes import MemoryRunStore

SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["positive", "negative"]}}}
# what llama.cpp answers when it cannot turn the schema into a grammar
PARSER_ERROR = (
    "Unable to generate parser for this template. Automatic parser generation failed: JSON schema error at "
    "#/properties/label: cannot resolve $ref #/$defs/missing, $defs not found"
)


@contextmanager
def llama_like(reject_schema: bool = False) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for llama.cpp's server: one model listed by its file path, whatever model is asked for."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": [{"id": "/models/qwen2.5-coder.gguf", "object": "model"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            seen.append(body)
            if reject_schema and "response_format" in body:
                self._send(400, {"error": {"code": 400, "message": PARSER_ERROR, "type": "invalid_request_error"}})
                return
            message = {"role": "assistant", "content": '{"label": "positive"}'}
            usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
            self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "x", "usage": usage,
                             "choices": [{"index": 0, "finish_reason": "stop", "message": message}]})  # fmt: skip

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe closes


def request(n: int = 1) -> ModelRequest:
    return ModelRequest(task_id=f"a#v{n}", prompt="Classify: great", output_schema=SCHEMA, max_tokens=16)


def test_a_server_that_ignores_the_model_name_is_warned_about_once() -> None:
    with llama_like() as (url, _):
        provider = OpenAICompatibleProvider(url, "qwen-typo", timeout=5)
        warnings: list[str] = []
        provider.warn = warnings.append

        provider.invoke(request(1), attempt=1)
        provider.invoke(request(2), attempt=1)

    assert len(warnings) == 1
    assert "serves /models/qwen2.5-coder.gguf and ignores the model name 'qwen-typo'" in warnings[0]


def test_no_warning_when_the_server_lists_the_model() -> None:
    with llama_like() as (url, _):
        assert OpenAICompatibleProvider(url, "/models/qwen2.5-coder.gguf", timeout=5).check() == []


def test_a_schema_the_server_cannot_compile_goes_into_the_prompt() -> None:
    # Given a server that answers 400 "Unable to generate parser ... JSON schema error" to a response format
    with llama_like(reject_schema=True) as (url, seen):
        provider = OpenAICompatibleProvider(url, "m", timeout=5)

        # When two calls are made
        first = provider.invoke(request(1), attempt=1)
        second = provider.invoke(request(2), attempt=1)

    # Then both are answered: the first retried with the schema in the system prompt, the second sent that way at once
    assert first.output == second.output == {"label": "positive"}
    assert ["response_format" in body for body in seen] == [True, False, False]
    assert all("JSON Schema" in body["messages"][0]["content"] for body in seen[1:])


def test_a_server_that_is_down_fails_at_once_naming_its_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    provider = OpenAICompatibleProvider(url, "m", timeout=5)

    started = time.monotonic()
    with pytest.raises(ModelError) as raised:
        provider.invoke(request(), attempt=1)

    assert raised.value.kind == "permanent" and raised.value.code == "ServerUnreachable"
    assert url in raised.value.message
    assert time.monotonic() - started < 3


def test_a_batch_against_a_server_that_is_down_makes_one_attempt_per_task() -> None:
    # Given 20 tasks for a server that is down
    provider = OpenAICompatibleProvider(f"http://127.0.0.1:{closed_port()}/v1", "m", timeout=5)
    batch = dict(batch_for(vote_tasks(20, "openai", prompt="p"), output_schema=SCHEMA, answer_field="label"))
    store = MemoryRunStore()

    # When the batch runs, with retry sleeps that would add up to minutes
    slept: list[float] = []
    started = time.monotonic()
    outcome = run_batch(batch, store=store, provider_for=lambda _: provider, threads=4, sleep=slept.append)

    # Then every task failed at once, without retries, and says where the server was expected
    assert outcome.counts["failed"] == 20 and not slept
    assert all(r["attempts"] <= 1 and "cannot reach the OpenAI-compatible server at http://127.0.0.1:" in r["error"]
               for r in store.records.values())  # fmt: skip
    assert time.monotonic() - started < 5


def test_run_stops_before_any_task_when_the_server_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    job = {
        "job_id": "down",
        "pattern": "voting",
        "votes": 3,
        "prompt": "{text}",
        "items": [{"id": f"i{n}", "text": "t", "expected": "positive"} for n in range(10)],
        "output_schema": SCHEMA,
        "aggregate": {"field": "label"},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))

    started = time.monotonic()
    code = main(["run", str(path), "--out", str(tmp_path), "--quiet", "--model", f"openai:{url}#m"])

    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot reach the OpenAI-compatible server at {url}" in err
    assert not (tmp_path / "down" / "result.json").exists()
    assert time.monotonic() - started < 10


def test_the_summary_does_not_claim_an_accuracy_when_no_item_got_an_answer(capsys: pytest.CaptureFixture[str]) -> None:
    error = {"slot": "v1", "status": "failed", "error": "ServerUnreachable: cannot reach ... at http://127.0.0.1:9/v1"}
    result = {
        "job_id": "j",
        "status": "failed",
        "pattern": "voting",
        "counts": {"items": 1, "tasks": 1, "ok": 0, "invalid": 0, "failed": 1},
        "usage": {"model_calls": 1, "input_tokens": 0, "output_tokens": 0, "estimated_cost_usd": None},
        "items": [{"id": "a", "answer": None, "confidence": 0.0, "tie": False, "errors": [error]}],
        "evaluation": {"items_with_expected": 1, "accuracy": 0.0, "single_call_accuracy": 0.0},
    }
    figures = {"batches": 1, "state_transitions": 9, "wall_seconds": 0.1, "tasks_skipped": 0, "model_calls": 1}

    _print_summary(result, figures, Path("out/j"))

    out = capsys.readouterr().out
    assert "accuracy 0.0%" not in out
    assert "accuracy not measured: no item got an answer: ServerUnreachable" in out
