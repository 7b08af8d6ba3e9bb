"""Checking model outputs against the job's output_schema, fast when outputs repeat (they do, in votes)."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from jsonschema import Draft202012Validator


class SchemaCheck:
    """The first way an output misses the schema (with its path), or None; memoised and thread-safe."""

    _LIMIT = 100_000

    def __init__(self, schema: dict[str, Any]) -> None:
        self.validator = Draft202012Validator(schema)
        # records carry the digest of the schema their output was checked against, so a check is not repeated
        self.digest = hashlib.sha256(canonical(schema).encode()).hexdigest()[:16]
        self.seen: dict[Any, str | None] = {}
        self._lock = threading.Lock()

    def __call__(self, output: Any) -> str | None:
        if not isinstance(output, dict):
            return "output: is not a JSON object"
        key = _memo_key(output)
        if key in self.seen:
            return self.seen[key]
        problem = next(iter(self.validator.iter_errors(output)), None)
        found = None
        if problem is not None:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.absolute_path)
            found = f"output{path}: {problem.message}"
        with self._lock:
            if len(self.seen) >= self._LIMIT:
                self.seen.clear()
            self.seen[key] = found
        return found


def _memo_key(output: Any) -> Any:
    """A cheap exact key for an output: flat objects of strings (the usual vote) skip JSON encoding."""
    if isinstance(output, dict) and all(isinstance(v, str) for v in output.values()):
        return tuple(sorted(output.items()))
    return canonical(output)


def canonical(value: Any) -> str:
    """One text per JSON value: sorted keys, unescaped unicode."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
