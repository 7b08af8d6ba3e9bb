"""llama.cpp's OpenAI-compatible server, started in this process from the ``xllamacpp`` wheel (local side only).

For running a real model behind fanout's ``openai:`` provider on one
machine: ``make eval-local`` and the real-server test use it. The server
listens on 127.0.0.1 only and stops when the context manager exits.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Served:
    base_url: str  # what an openai: spec names, e.g. http://127.0.0.1:8181/v1
    alias: str  # the model name the server lists (and ignores in requests)

    def spec(self) -> str:
        return f"openai:{self.base_url}#{self.alias}"


@contextmanager
def llama_server(
    model_path: Path,
    *,
    port: int,
    alias: str,
    n_parallel: int = 2,
    n_ctx: int = 4096,
    threads: int = 2,
    ready_seconds: float = 120.0,
) -> Iterator[Served]:
    """Serve ``model_path`` (a GGUF file) on 127.0.0.1:``port`` with ``n_parallel`` slots sharing ``n_ctx`` tokens."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.model_alias = {alias}  # a set: the server may answer to several names
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_parallel = n_parallel
    params.n_ctx = n_ctx
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.offline = True  # never reach a model hub
    server: Any = xllamacpp.Server(params)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, ready_seconds)
        yield Served(base_url=f"{base}/v1", alias=alias)
    finally:
        del server  # the server stops when its object goes


def _wait_ready(base: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                if json.loads(reply.read()).get("status") == "ok":
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"llama.cpp's server at {base} was not ready after {seconds:.0f} s")
        time.sleep(0.2)
