"""The Python API: run and check jobs from a script or a notebook, on the same code path as the CLI.

    import fanout
    result = fanout.run("examples/ticket-triage.json", model="sim", out="out")
    result.status, result.counts.ok, result.items[0].answer
    import pandas; pandas.DataFrame(result.rows())  # fanout itself does not need pandas

A job is a dict (as the job file would hold), a path to a job file, or a ``fanout.Job``. Every problem is
a ``FanoutError`` whose message is the line the CLI prints after ``error:`` and whose ``field`` names
what to fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fanout import cli
from fanout.errors import FanoutError
from fanout_core.errors import InvalidJob
from fanout_core.job import Job

JobLike = dict[str, Any] | str | Path | Job

__all__ = ["FanoutError", "ItemResult", "Job", "Plan", "RunResult", "run", "validate"]


class _Open(BaseModel):
    # result.json may gain fields (it promises never to lose any): they are kept, not refused
    model_config = ConfigDict(extra="allow")


class Counts(_Open):
    items: int
    tasks: int
    ok: int
    invalid: int
    failed: int


class Usage(_Open):
    model_calls: int
    input_tokens: int
    output_tokens: int
    estimated_cost_usd: float | None = None
    by_model: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Evaluation(_Open):
    items_with_expected: int
    accuracy: float | None = None
    single_call_accuracy: float | None = None


class ItemResult(_Open):
    """One input item's outcome: the vote fields (voting) or ``sections`` (sectioning), and its errors."""

    id: str
    status: str | None = None
    answer: Any = None
    confidence: float | None = None
    votes: dict[str, int] | None = None
    valid_votes: int | None = None
    tie: bool | None = None
    sections: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
    expected: Any = None
    correct: bool | None = None


class Paths(BaseModel):
    """Where the run left its files: ``dir`` is ``OUT/<job_id>``."""

    dir: Path
    result: Path
    results: Path
    report: Path
    run: Path
    report_html: Path | None = None


class RunResult(_Open):
    """result.json, typed, with where it was written and the run's figures (run.json)."""

    job_id: str
    pattern: str
    status: str
    counts: Counts
    items: list[ItemResult]
    usage: Usage
    evaluation: Evaluation | None = None
    synthetic: bool = False
    paths: Paths
    figures: dict[str, Any] = Field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per item, in input order: ``pandas.DataFrame(result.rows())`` makes a table of it."""
        return [_row(item) for item in self.items]


class Plan(_Open):
    """What ``fanout validate`` prints: tasks, batches and the estimated tokens and cost; no model was called."""

    job_id: str
    pattern: str
    items: int
    mode: str
    tasks: int
    batches: int
    models: list[str]


def validate(job: JobLike, *, model: str | None = None, concurrency: int | None = None) -> Plan:
    """Check a job as Plan will and return its plan; raises FanoutError naming the field when it is invalid."""
    loaded = _load(job, model, concurrency, _default_model(_session()))
    return Plan.model_validate(cli.plan_summary(loaded))


def run(
    job: JobLike,
    *,
    model: str | None = None,
    out: str | Path = "out",
    concurrency: int | None = None,
    fresh: bool = False,
    progress: bool = False,
) -> RunResult:
    """Run a job locally on the real state machine, as ``fanout run`` does, and return its result.

    Writes ``out/<job_id>/`` (result.json, results.jsonl, report.md, run.json, records/). A run that
    ends ``partial`` or ``failed`` still returns its result (see ``status``); a job that cannot run,
    or a run that produced no result, raises FanoutError.
    """
    session = _session()
    default_model = _default_model(session)
    loaded = _load(job, model, concurrency, default_model).for_run()
    cli.quiet_handler_warnings()
    try:
        done = cli._run(
            loaded,
            Path(out),
            fresh=fresh,
            quiet=not progress,
            default_model=default_model,
            session=session,
            echo=print if progress else _silent,
        )
    except InvalidJob as exc:
        raise _invalid(exc) from None
    except OSError as exc:
        raise FanoutError(cli.os_error_message(exc)) from None
    if isinstance(done, int):  # interrupted: the records so far are kept under out/<job_id>/records/
        raise KeyboardInterrupt
    return _result(done)


def _load(job: JobLike, model: str | None, concurrency: int | None, default_model: str) -> cli.LoadedJob:
    try:
        if isinstance(job, str | Path):
            return cli._load(Path(job), model, concurrency, default_model)
        if isinstance(job, Job):
            data: Any = job.model_dump(mode="json", exclude_unset=True)
        elif isinstance(job, dict):
            data = job
        else:
            raise InvalidJob(f"job: must be a dict, a path to a job file or a fanout.Job, got {type(job).__name__}", "job")
        # a job without a job_id is named after its content, so running the same dict again resumes it
        stem = "job-" + hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return cli.load_job(data, Path.cwd(), stem, model, concurrency, default_model)
    except InvalidJob as exc:
        raise _invalid(exc) from None


def _invalid(exc: InvalidJob) -> FanoutError:
    return FanoutError(f"invalid job: {exc}", exc.field, cli.EXIT_INVALID)


def _session() -> Any:
    from fanout.runtime import caller_session

    return caller_session()


def _default_model(session: Any) -> str:
    return cli.cloud_default_model() if session is not None else cli.SIMULATOR


def _silent(_line: str) -> None:
    pass


def _result(done: cli.LocalRun) -> RunResult:
    target = done.target
    html = target / "report.html"
    paths = Paths(
        dir=target,
        result=target / "result.json",
        results=target / "results.jsonl",
        report=target / "report.md",
        run=target / "run.json",
        report_html=html if html.exists() else None,
    )
    return RunResult.model_validate({**done.result, "paths": paths, "figures": done.figures})


def _row(item: ItemResult) -> dict[str, Any]:
    data = item.model_dump(exclude_none=True)
    row: dict[str, Any] = {"id": data.pop("id")}
    for section, output in (data.pop("sections", None) or {}).items():
        row[f"sections.{section}"] = output
    for field, entries in (data.pop("merged", None) or {}).items():
        row[f"merged.{field}"] = entries
    errors = data.pop("errors", None)
    row.update(data)
    if errors:
        row["errors"] = "; ".join(f"{e.get('slot')}: {e.get('status')}: {e.get('error')}" for e in errors)
    return row
