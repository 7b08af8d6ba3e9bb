"""The job file contract: good jobs parse, bad jobs fail with one message that names the field and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fanout_core.errors import InvalidJob
from fanout_core.job import Job, parse_job
from fanout_core.templating import render, template_fields

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# the two job files of DESIGN.md, as written there
DESIGN_SECTIONING = {
    "job_id": "launch-review",
    "pattern": "sectioning",
    "model": "bedrock:us.anthropic.claude-haiku-5-5",
    "system": "You are a market analyst.",
    "items": [{"id": "q3-launch", "text": "Product brief ..."}],
    "sections": [
        {"name": "competitors", "prompt": "Evaluate competitors' pricing and positioning for: {text}"},
        {"name": "customers", "prompt": "Analyse customer preferences and behaviours for: {text}"},
        {"name": "regions", "prompt": "Study market potential across regions for: {text}"},
    ],
    "output_schema": {
        "type": "object",
        "required": ["findings"],
        "properties": {
            "findings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["title"],
                    "properties": {"title": {"type": "string"}, "severity": {"enum": ["low", "medium", "high"]}},
                },
            }
        },
    },
    "aggregate": {"strategy": "merge", "dedupe": {"field": "findings", "key": "title", "threshold": 85}},
    "synthesis": {"prompt": "Combine these findings into one launch report."},
}

DESIGN_VOTING = {
    "job_id": "ticket-triage",
    "pattern": "voting",
    "votes": 5,
    "prompt": "Classify the sentiment of this ticket: {text}",
    "inference": {"temperature": 0.8, "max_tokens": 64},
    "items": [{"id": "t-1", "text": "Refund took three weeks.", "expected": "negative"}],
    "output_schema": {
        "type": "object",
        "required": ["label"],
        "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
    },
    "aggregate": {"strategy": "majority", "field": "label"},
    "limits": {"max_concurrency": 20},
}

# a key set to _DROP is removed from the base job
_DROP = object()

LABEL_SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}


def voting(**changes: Any) -> dict[str, Any]:
    job = {"pattern": "voting", "votes": 3, "prompt": "Classify: {text}", "items": [{"id": "a", "text": "hello"}]}
    return _changed(job, changes)


def sectioning(**changes: Any) -> dict[str, Any]:
    job = {
        "pattern": "sectioning",
        "sections": [{"name": "risks", "prompt": "Risks in: {text}"}, {"name": "upside", "prompt": "Upside of: {text}"}],
        "items": [{"id": "a", "text": "hello"}],
    }
    return _changed(job, changes)


def _changed(job: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    job = {**job, **{k: copy.deepcopy(v) for k, v in changes.items()}}
    return {k: v for k, v in job.items() if k not in changes or changes[k] is not _DROP}


def items(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"text of {i}"} for i in ids]


def test_design_sectioning_example_parses() -> None:
    job = parse_job(DESIGN_SECTIONING)

    assert job.pattern == "sectioning"
    assert [s.name for s in job.sections or []] == ["competitors", "customers", "regions"]
    assert job.strategy == "merge"
    assert job.aggregate.dedupe is not None and job.aggregate.dedupe.threshold == 85
    assert job.synthesis is not None


def test_design_voting_example_parses() -> None:
    job = parse_job(DESIGN_VOTING)

    assert job.pattern == "voting"
    assert job.vote_count == 5
    assert job.aggregate.field == "label"
    assert job.inference.temperature == 0.8 and job.inference.max_tokens == 64
    assert job.limits.max_concurrency == 20


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_example_files_parse(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))

    job = parse_job(data)

    assert job.job_id == data["job_id"]
    assert len(job.items or []) == len(data["items"])


def test_examples_folder_is_not_empty() -> None:
    # guards the parametrized test above against silently running zero cases
    assert len(list(EXAMPLES.glob("*.json"))) >= 2


def test_job_id_defaults_to_a_safe_form_of_the_given_name() -> None:
    job = parse_job(voting(), job_id_default="jobs/My Job (1).json")

    assert job.job_id == "jobs-My-Job-1-.json"


def test_an_explicit_job_id_wins_over_the_default() -> None:
    assert parse_job(voting(job_id="mine"), job_id_default="other").job_id == "mine"


def test_a_parsed_job_is_immutable() -> None:
    job = parse_job(voting())

    with pytest.raises(ValidationError):
        job.votes = 9  # type: ignore[misc]
    assert isinstance(job, Job) and job.votes == 3


BAD_JOBS: list[tuple[str, Any, str, str]] = [
    # (case, job document, message starts with, the message also says)
    ("not an object", [voting()], "job:", "JSON object"),
    ("empty object", {}, "job:", "'pattern' and 'items'"),
    ("missing pattern", voting(pattern=_DROP), "pattern:", "'voting'"),
    ("unknown pattern", voting(pattern="mapreduce"), "pattern:", "'sectioning' or 'voting'"),
    ("pattern null", voting(pattern=None), "pattern:", "'sectioning' or 'voting'"),
    ("unknown top-level key", sectioning(sectoins=[]), "sectoins:", "did you mean 'sections'"),
    ("unknown nested key", voting(limits={"max_concurency": 4}), "limits.max_concurency:", "did you mean 'max_concurrency'"),
    (
        "unknown key in a list entry",
        sectioning(sections=[{"name": "a", "prompt": "{text}", "promt": "x"}]),
        "sections[0].promt:",
        "did you mean 'prompt'",
    ),
    ("items missing", voting(items=_DROP), "items:", "'items_uri'"),
    ("items not a list", voting(items="a,b"), "items:", "valid list"),
    ("items empty", voting(items=[]), "items:", "at least one item"),
    ("item not an object", voting(items=["just text"]), "items[0]:", "must be an object with an 'id'"),
    ("item without id", voting(items=[{"text": "x"}]), "items[0].id:", "unique string id"),
    ("numeric id", voting(items=[{"id": 7, "text": "x"}]), "items[0].id:", "quote it"),
    ("empty id", voting(items=[{"id": "", "text": "x"}]), "items[0].id:", "unique string id"),
    ("blank id", voting(items=[{"id": " ", "text": "x"}]), "items[0].id:", "unique string id"),
    ("duplicate id", voting(items=items("a", "b", "c", "a")), "items[3].id: duplicate id 'a'", "first at items[0]"),
    ("template field missing", voting(items=[{"id": "a", "body": "x"}]), "items[0].text:", "lacks field 'text'"),
    (
        "nested template field missing",
        voting(prompt="In {meta.lang}: {text}", items=[{"id": "a", "text": "x", "meta": {"country": "fr"}}]),
        "items[0].meta.lang:",
        "lacks field 'meta.lang'",
    ),
    ("sectioning without sections", sectioning(sections=_DROP), "sections:", "list of {name, prompt}"),
    ("sectioning with empty sections", sectioning(sections=[]), "sections:", "list of {name, prompt}"),
    (
        "duplicate section names",
        sectioning(sections=[{"name": "risks", "prompt": "{text}"}, {"name": "risks", "prompt": "again {text}"}]),
        "sections[1].name:",
        "first at sections[0]",
    ),
    ("bad section name", sectioning(sections=[{"name": "a#b", "prompt": "{text}"}]), "sections[0].name:", "letters, digits"),
    ("sectioning with votes", sectioning(votes=3), "votes:", "uses 'sections'"),
    ("voting with sections", voting(sections=[{"name": "a", "prompt": "x"}]), "sections:", "uses 'prompt'"),
    ("voting without prompt", voting(prompt=_DROP), "prompt:", "template"),
    ("voting without votes or models", voting(votes=_DROP), "votes:", "'models'"),
    ("votes = 1", voting(votes=1), "votes:", "greater than or equal to 2"),
    ("votes as a string", voting(votes="5"), "votes:", "valid integer"),
    ("one model and no votes", voting(votes=_DROP, models=["sim"]), "models:", "2 or more models"),
    ("votes over limits.max_votes", voting(votes=30), "votes:", "ask for fewer or raise the limit"),
    ("votes over a lowered max_votes", voting(votes=5, limits={"max_votes": 4}), "votes:", "limits.max_votes (4)"),
    (
        "invalid output_schema",
        voting(output_schema={"type": "object", "properties": {"label": {"enum": "x"}}}, aggregate={"field": "label"}),
        "output_schema.properties.label.enum:",
        "not a valid JSON Schema",
    ),
    (
        "output_schema top type not object",
        voting(output_schema={"type": "string"}, aggregate={"field": "label"}),
        "output_schema.type:",
        "wrap single values in a property",
    ),
    (
        "aggregate.field not in the schema",
        voting(output_schema=LABEL_SCHEMA, aggregate={"field": "lable"}),
        "aggregate.field:",
        "['label']",
    ),
    ("voting with schema but no aggregate.field", voting(output_schema=LABEL_SCHEMA), "aggregate.field:", "e.g. 'label'"),
    ("aggregate.field without schema", voting(aggregate={"field": "label"}), "aggregate.field:", "output_schema"),
    ("unknown voting strategy", voting(aggregate={"strategy": "plurality"}), "aggregate.strategy:", "majority"),
    ("unknown sectioning strategy", sectioning(aggregate={"strategy": "majority"}), "aggregate.strategy:", "['merge']"),
    (
        "dedupe field not in schema",
        sectioning(output_schema=LABEL_SCHEMA, aggregate={"dedupe": {"field": "findings", "key": "title"}}),
        "aggregate.dedupe.field:",
        "['label']",
    ),
    ("unknown model provider", voting(model="gpt:foo"), "model:", "'bedrock:<model-id>'"),
    ("unknown provider in models", voting(votes=_DROP, models=["sim", "gpt:foo"]), "models[1]:", "'sim'"),
    ("bad sim option value", voting(model="sim:accuracy=2"), "model:", "between 0 and 1"),
    ("unknown sim option", voting(model="sim:speed=2"), "model:", "a key from"),
    ("sim difficulty not positive", voting(model="sim:difficulty=0"), "model:", "Beta concentration K, above 0"),
    ("bedrock without a model id", voting(model="bedrock:"), "model:", "needs a model id"),
    (
        "item over limits.max_item_bytes",
        voting(limits={"max_item_bytes": 60}, items=[{"id": "small", "text": "x"}, {"id": "big-one", "text": "y" * 100}]),
        "items[1]:",
        "item 'big-one'",
    ),
    ("bad job_id characters", voting(job_id="my job/1"), "job_id:", "letters, digits"),
    ("job_id starting with a dot", voting(job_id=".hidden"), "job_id:", "starting with a letter or digit"),
    ("items and items_uri both", voting(items_uri="s3://bucket/items.jsonl"), "items_uri:", "not both"),
    ("items_uri not s3", voting(items=_DROP, items_uri="https://example.com/x.jsonl"), "items_uri:", "s3://bucket/key"),
    ("temperature over 1", voting(inference={"temperature": 1.5}), "inference.temperature:", "less than or equal to 1"),
    ("temperature below 0", voting(inference={"temperature": -0.1}), "inference.temperature:", "greater than or equal to 0"),
    ("max_concurrency 0", voting(limits={"max_concurrency": 0}), "limits.max_concurrency:", "greater than or equal to 1"),
]


@pytest.mark.parametrize(("job", "starts", "hint"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS])
def test_bad_job_is_refused_with_the_field_and_the_fix(job: Any, starts: str, hint: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        parse_job(job)

    message = str(caught.value)
    assert message.startswith(starts), message
    assert hint in message, message
    assert "\n" not in message
    # the field attribute carries the same path the message starts with
    assert caught.value.field == starts.split(":")[0]


def test_the_catalogue_starts_from_valid_jobs() -> None:
    # each bad job is a small change to one of these; if they were invalid the catalogue would prove nothing
    assert parse_job(voting()).pattern == "voting"
    assert parse_job(sectioning()).pattern == "sectioning"
    assert parse_job(voting(output_schema=LABEL_SCHEMA, aggregate={"field": "label"})).aggregate.field == "label"


def test_the_first_problem_is_reported_in_item_order() -> None:
    # Given two bad items, the earlier one missing a field and the later one duplicated
    job = voting(items=[{"id": "a", "text": "x"}, {"id": "b"}, {"id": "a", "text": "y"}])

    # When the job is parsed
    with pytest.raises(InvalidJob) as caught:
        parse_job(job)

    # Then the message is about the earlier item
    assert str(caught.value).startswith("items[1].text:")


NASTY_TEXT = "He said \"50%s off\" {other_field} {{x}} }{ 'quoted' 🎉 \\n {text}"


def test_item_text_is_inserted_verbatim_never_reparsed() -> None:
    item = {"id": "a", "text": NASTY_TEXT, "other_field": "LEAKED"}

    rendered = render("Classify: {text}", item)

    assert rendered == "Classify: " + NASTY_TEXT
    assert "LEAKED" not in rendered


def test_a_job_whose_item_text_has_braces_and_percent_parses() -> None:
    job = parse_job(voting(items=[{"id": "a", "text": NASTY_TEXT}]))

    assert job.items == [{"id": "a", "text": NASTY_TEXT}]


def test_double_braces_around_a_name_write_it_literally() -> None:
    rendered = render("{{text}} is {text}; {{ and }} stay as written", {"id": "a", "text": "T"})

    assert rendered == "{text} is T; {{ and }} stay as written"
    assert template_fields("{{text}} and {{ {name} }}") == {"name"}


def test_a_nested_json_example_in_a_prompt_stays_literal() -> None:
    template = 'Reply like {"a": {"b": [1, {"c": 2}]}} about {text}'

    assert render(template, {"id": "a", "text": "T"}) == 'Reply like {"a": {"b": [1, {"c": 2}]}} about T'
    assert template_fields(template) == {"text"}


def test_a_json_example_in_a_prompt_stays_literal() -> None:
    template = 'Answer as JSON like {"label": "x"}. Ticket: {text}'

    rendered = render(template, {"id": "a", "text": "late"})

    assert rendered == 'Answer as JSON like {"label": "x"}. Ticket: late'
    assert template_fields(template) == {"text"}
    # and a job using it does not ask items for a field named '"label": "x"'
    assert parse_job(voting(prompt=template)).prompt == template


def test_nested_fields_and_non_string_values_render_as_json() -> None:
    item = {"id": "a", "meta": {"lang": "fr", "tags": ["x", "é"]}, "n": 3}

    assert render("{meta.lang}/{meta.tags}/{n}", item) == 'fr/["x", "é"]/3'


def test_max_tasks_is_checked_on_the_count_before_any_task_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given items x 25 votes just over the default limits.max_tasks
    from fanout import cli
    from fanout_core import planning
    from fanout_core.job import Limits

    rendered: list[str] = []
    real_render = planning.render
    monkeypatch.setattr(planning, "render", lambda t, i: rendered.append(i["id"]) or real_render(t, i))
    count = Limits().max_tasks // 25 + 1
    data = voting(votes=25, items=[{"id": f"i{n}", "text": "x"} for n in range(count)])

    # When the CLI loads it, Then it is refused by the count, and no prompt was rendered
    with pytest.raises(InvalidJob, match=rf"^limits.max_tasks: the job expands to {count * 25} tasks"):
        cli.load_job(data, Path("."), "job", None, None, "sim")
    assert rendered == []


def test_a_check_that_trips_over_an_unforeseen_value_still_refuses_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a cross-field check that meets a type it did not foresee (as `"items": true` once did)
    from fanout_core import job as job_module

    def trips(job: Job) -> None:
        raise AttributeError("'bool' object has no attribute 'get'")

    monkeypatch.setattr(job_module, "_check_voting", trips)

    # Then the job is refused as InvalidJob, with no exception name in the message
    with pytest.raises(InvalidJob) as caught:
        parse_job(voting())
    assert str(caught.value).startswith(f"job: {job_module.UNCHECKED}") and "AttributeError" not in str(caught.value)
