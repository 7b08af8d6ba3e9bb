"""Output schemas as data: checked once in Plan, then used to check model outputs, fast when outputs repeat.

A job's ``output_schema`` comes from whoever wrote the job, so it is data
that must never reach out, hang or crash: :func:`check_output_schema`
refuses (with the path of the offending keyword) a ``$ref`` that points
outside the schema (nothing is ever fetched: the registry's retrieve
refuses every URI), a reference that does not resolve, a ``$dynamicRef``
without its ``$dynamicAnchor``, references that loop without descending
into the output, schemas nested too deep or that multiply into too many
checks per value, and every ``pattern`` (and ``patternProperties`` key)
that the bounded matcher cannot compile.

Patterns are matched with RE2 (``google-re2``): its run time is linear in
the text whatever the pattern, so no backtracking pattern can hang a batch;
what it cannot do (look-around, back-references) is refused in Plan
rather than run slowly. :class:`SchemaCheck` applies the same limits at run
time and raises :class:`SchemaUnusable` instead of crashing the batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import re2
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError
from referencing.jsonschema import DRAFT202012

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# output schemas nest far less than this; deeper ones would be checked by deep recursion
MAX_SCHEMA_DEPTH = 64
# in-place checks (references, allOf/anyOf/oneOf, not, if/then/else) one value can go through
MAX_CHECKS_PER_VALUE = 10_000
# model outputs nest far less than this; deeper ones are refused before the recursive check
MAX_OUTPUT_DEPTH = 128
# RE2's memory for one compiled pattern (its default is 8 MiB)
PATTERN_MEMORY = 1 << 20

_SINGLE = (
    "additionalProperties",
    "propertyNames",
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
# applicators that check the same value again (the others descend into a part of it)
_IN_PLACE_SINGLE = ("not", "if", "then", "else")
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")


class SchemaRefused(Exception):
    """An output schema fanout will not use; ``where`` is the path of the keyword (``output_schema.properties.x.$ref``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class SchemaUnusable(Exception):
    """The output schema could not check an output (a schema Plan would have refused): the task fails, the batch goes on."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # re2 would print a line to stderr for each pattern it refuses
    options.max_mem = PATTERN_MEMORY
    return options


_PATTERN_OPTIONS = _options()
_PATTERNS: dict[str, Any] = {}
_PATTERNS_LOCK = threading.Lock()


def compile_pattern(pattern: str) -> Any:
    """The RE2 program of a schema pattern (cached); raises ValueError with RE2's reason when it cannot be used."""
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        try:
            compiled = re2.compile(pattern, _PATTERN_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ValueError(reason) from None
        with _PATTERNS_LOCK:
            if len(_PATTERNS) > 10_000:
                _PATTERNS.clear()
            _PATTERNS[pattern] = compiled
    return compiled


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    if compile_pattern(pattern).search(instance) is None:
        shown = repr(instance) if len(instance) <= 80 else repr(instance[:80]) + "..."
        yield ValidationError(f"{shown} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        program = compile_pattern(pattern)
        for key, value in instance.items():
            if program.search(key) is not None:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


# the 2020-12 validator with its two regular-expression keywords matched by RE2 instead of Python's re
BoundedValidator = validators.extend(Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties})


def _refuse_retrieval(uri: str) -> referencing.Resource[Any]:
    # the registry's only way to reach beyond the schema: refused for every URI, so nothing is ever fetched
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


def _registry() -> referencing.Registry[Any]:
    return referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def bounded_validator(schema: Any) -> Any:
    """A validator of ``schema`` that resolves references only inside it and matches patterns with RE2."""
    resolver = _registry().resolver_with_root(DRAFT202012.create_resource(schema))
    return BoundedValidator(schema, _resolver=resolver)


def check_output_schema(schema: Any, where: str = "output_schema") -> None:
    """Refuse a schema that could fetch, hang or crash when outputs are checked; SchemaRefused names the keyword."""
    _check_depth(schema, where)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise SchemaRefused(where + _suffix(exc.path), f"not a valid JSON Schema: {exc.message}") from None
    except RecursionError:
        raise SchemaRefused(where, f"nested too deep (at most {MAX_SCHEMA_DEPTH} levels)") from None
    if isinstance(schema, dict) and "$schema" in schema and schema["$schema"] != DIALECT:
        raise SchemaRefused(
            f"{where}.$schema",
            f"fanout checks outputs with JSON Schema 2020-12; remove '$schema' or set it to {DIALECT!r}",
        )
    _SchemaGraph(schema, where).check()


def _check_depth(value: Any, where: str) -> None:
    stack: list[tuple[Any, int, str]] = [(value, 0, where)]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaRefused(path, f"nested deeper than {MAX_SCHEMA_DEPTH} levels; flatten the schema (use $defs)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node))


class _SchemaGraph:
    """Every subschema of an output schema (and what its references reach), with the in-place edges between them."""

    def __init__(self, schema: Any, where: str) -> None:
        self.root = schema
        self.where = where
        self.resolver = _registry().resolver_with_root(DRAFT202012.create_resource(schema))
        self.paths: dict[int, str] = {}
        self.nodes: dict[int, Any] = {}
        self.edges: dict[int, list[tuple[int, str]]] = {}  # node -> [(target, path of the keyword)]
        self.dynamic_anchors: set[str] = set()

    def check(self) -> None:
        self._collect_anchors(self.root)
        pending: list[tuple[Any, str, Any]] = [(self.root, self.where, self.resolver)]
        # what references reach is walked after the schema's own tree, so each subschema is named by its place
        referred: list[tuple[Any, str, Any]] = []
        while pending or referred:
            node, path, resolver = pending.pop() if pending else referred.pop()
            if id(node) in self.nodes or not isinstance(node, dict):
                self.nodes.setdefault(id(node), node)
                continue
            self.nodes[id(node)] = node
            self.paths[id(node)] = path
            if isinstance(node.get("$id"), str):
                resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
            edges = self.edges.setdefault(id(node), [])
            for keyword in ("$ref", "$dynamicRef"):
                if keyword in node:
                    target, target_resolver = self._resolve(node, keyword, f"{path}.{keyword}", resolver)
                    edges.append((id(target), f"{path}.{keyword}"))
                    referred.append((target, f"{path}.{keyword}", target_resolver))
            for child, child_path, in_place in _children(node, path):
                if in_place:
                    edges.append((id(child), child_path))
                pending.append((child, child_path, resolver))
            self._check_patterns(node, path)
        self._check_loops()

    def _collect_anchors(self, schema: Any) -> None:
        stack = [schema]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("$dynamicAnchor"), str):
                    self.dynamic_anchors.add(node["$dynamicAnchor"])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)

    def _resolve(self, node: dict[str, Any], keyword: str, path: str, resolver: Any) -> tuple[Any, Any]:
        ref = node[keyword]
        if not isinstance(ref, str):
            raise SchemaRefused(path, "must be a string")
        if keyword == "$dynamicRef":
            anchor = ref.partition("#")[2]
            if anchor not in self.dynamic_anchors:
                raise SchemaRefused(
                    path, f'{ref!r} has no matching "$dynamicAnchor": {anchor!r} in the schema; add the anchor or use $ref'
                )
        try:
            resolved = resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            if ref.partition("#")[0]:
                raise SchemaRefused(
                    path,
                    f"refers outside the schema ({ref[:200]!r}); fanout never fetches a schema: put the definition "
                    "under $defs and refer to it as '#/$defs/<name>'",
                ) from None
            raise SchemaRefused(path, f"{ref[:200]!r} does not resolve to a part of the schema") from None
        except Exception:
            raise SchemaRefused(path, f"{ref[:200]!r} does not resolve to a part of the schema") from None
        target = resolved.contents
        if not isinstance(target, (dict, bool)):
            raise SchemaRefused(path, f"{ref[:200]!r} points at {type(target).__name__}, not at a schema")
        if id(target) not in self.nodes:
            try:
                Draft202012Validator.check_schema(target)
            except SchemaError as exc:
                raise SchemaRefused(path, f"{ref[:200]!r} points at an invalid schema: {exc.message}") from None
        return target, resolved.resolver

    def _check_patterns(self, node: dict[str, Any], path: str) -> None:
        found: list[tuple[str, str]] = []
        if isinstance(node.get("pattern"), str):
            found.append((node["pattern"], f"{path}.pattern"))
        if isinstance(node.get("patternProperties"), dict):
            found += [(key, f"{path}.patternProperties") for key in node["patternProperties"]]
        for pattern, where in found:
            try:
                compile_pattern(pattern)
            except ValueError as exc:
                raise SchemaRefused(
                    where,
                    f"pattern {pattern[:80]!r} cannot be checked safely ({exc}); fanout matches patterns with RE2, "
                    "which has no look-around or back-references",
                ) from None

    def _check_loops(self) -> None:
        """Refuse in-place cycles (a reference loop never reaches a leaf) and fan-outs that multiply checks."""
        checks: dict[int, int] = {}
        state: dict[int, int] = {}  # 1: on the current path, 2: done
        for start in list(self.edges):
            if state.get(start):
                continue
            stack: list[tuple[int, Iterator[tuple[int, str]]]] = [(start, iter(self.edges.get(start, [])))]
            state[start] = 1
            while stack:
                node, children = stack[-1]
                step = next(children, None)
                if step is None:
                    stack.pop()
                    state[node] = 2
                    total = 1 + sum(checks.get(child, 1) for child, _ in self.edges.get(node, []))
                    if total > MAX_CHECKS_PER_VALUE:
                        raise SchemaRefused(
                            self.paths.get(node, self.where),
                            f"expands to more than {MAX_CHECKS_PER_VALUE} checks of one value (references and "
                            "allOf/anyOf/oneOf multiply); simplify the schema",
                        )
                    checks[node] = total
                    continue
                child, via = step
                if state.get(child) == 1:
                    raise SchemaRefused(
                        via,
                        "makes a reference loop that never descends into the output (it would recurse without end); "
                        "a schema may refer to itself only below properties or items",
                    )
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(self.edges.get(child, []))))


def _children(node: dict[str, Any], path: str) -> Iterator[tuple[Any, str, bool]]:
    """(subschema, its path, whether it checks the same value) for every applicator of a schema object."""
    for key in _SINGLE:
        if key in node:
            yield node[key], f"{path}.{key}", key in _IN_PLACE_SINGLE
    for key in _MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                yield sub, f"{path}.{key}.{name}", key == "dependentSchemas"
    for key in _LISTS:
        value = node.get(key)
        if isinstance(value, list):
            for index, sub in enumerate(value):
                yield sub, f"{path}.{key}[{index}]", key in _IN_PLACE_LISTS


def _suffix(parts: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


class SchemaCheck:
    """The first way an output misses the schema (with its path), or None; memoised and thread-safe.

    Never raises for a bad output; raises :class:`SchemaUnusable` when the
    schema itself cannot check it (a schema Plan refuses never gets here).
    """

    _LIMIT = 100_000

    def __init__(self, schema: dict[str, Any]) -> None:
        # records carry the digest of the schema their output was checked against, so a check is not repeated
        self.digest = hashlib.sha256(canonical(schema).encode()).hexdigest()[:16]
        self.unusable: str | None = None
        try:
            check_output_schema(schema)
            self.validator = bounded_validator(schema)
        except SchemaRefused as exc:
            self.unusable = str(exc)
        except Exception as exc:  # a schema no check foresaw still fails its tasks, not the batch
            self.unusable = f"output_schema: cannot be used ({type(exc).__name__})"
        self.seen: dict[Any, str | None] = {}
        self._lock = threading.Lock()

    def __call__(self, output: Any) -> str | None:
        if self.unusable is not None:
            raise SchemaUnusable(self.unusable)
        if not isinstance(output, dict):
            return "output: is not a JSON object"
        try:
            key = _memo_key(output)
        except (ValueError, TypeError, RecursionError):
            key = None
        if key is not None and key in self.seen:
            return self.seen[key]
        found = _odd_value(output)
        if found is None:
            try:
                problem = next(iter(self.validator.iter_errors(output)), None)
            except RecursionError:
                raise SchemaUnusable("output_schema: checking the output recursed too deep") from None
            except Exception as exc:  # an unresolvable reference, an unknown type: the schema's fault, not the output's
                raise SchemaUnusable(f"output_schema: cannot check the output: {str(exc)[:300]}") from None
            if problem is not None:
                found = f"output{_suffix(problem.absolute_path)}: {problem.message[:500]}"
        if key is not None:
            with self._lock:
                if len(self.seen) >= self._LIMIT:
                    self.seen.clear()
                self.seen[key] = found
        return found


def _odd_value(output: Any) -> str | None:
    """What strict JSON cannot carry (NaN, Infinity) or is nested too deep to check: refused before the schema."""
    stack: list[tuple[Any, int, str]] = [(output, 0, "output")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_OUTPUT_DEPTH:
            return f"{path}: nested deeper than {MAX_OUTPUT_DEPTH} levels"
        if isinstance(node, float) and not math.isfinite(node):
            return f"{path}: {node} is not a JSON number"
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node))
    return None


def _memo_key(output: Any) -> Any:
    """A cheap exact key for an output: flat objects of strings (the usual vote) skip JSON encoding."""
    if isinstance(output, dict) and all(isinstance(v, str) for v in output.values()):
        return tuple(sorted(output.items()))
    return canonical(output)


def canonical(value: Any) -> str:
    """One text per JSON value: sorted keys, unescaped unicode."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def strict_json(value: Any, **options: Any) -> str:
    """JSON text with no NaN or Infinity (not JSON, refused by strict readers): such numbers become null."""
    encoder = _strict_encoder(tuple(sorted(options.items())))
    try:
        return encoder.encode(value)
    except ValueError:
        return encoder.encode(_finite(value))


@functools.lru_cache(maxsize=16)
def _strict_encoder(options: tuple[tuple[str, Any], ...]) -> json.JSONEncoder:
    """The encoder ``json.dumps(..., allow_nan=False, **options)`` builds, built once per set of options (it keeps no
    state between calls): Aggregate encodes every result item with one."""
    return json.JSONEncoder(allow_nan=False, **dict(options))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
