"""``python -m fanout run|validate|serve``: run a job on the real state machine locally, check it, or serve the stack's APIs.

Exit codes: 0 complete, 3 partial, 2 invalid job (one message naming the
field; nothing written), 1 any other failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fanout  # noqa: F401 - puts lambdas/ on the path
from fanout_core.errors import InvalidJob
from fanout_core.job import Job, check_items, parse_job
from fanout_core.loading import decode_json, parse_items
from fanout_core.planning import expand_tasks

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
# as a shell reports a process ended by SIGINT (128 + 2) or SIGTERM (128 + 15)
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
SIMULATOR = "sim"
LOCAL_INPUT_BUCKET = "fanout-local-input"
SERVE_PORT = 4599


def cloud_default_model() -> str:
    """The stack's default model (cdk.json), used locally when AWS credentials are present."""
    from fanout.runtime import ROOT

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    return str(context["fanout:defaultModel"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fanout", description="Parallel LLM jobs on Step Functions.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job locally on the real state machine")
    run.add_argument("job", help="the job file (JSON)")
    run.add_argument("--model", help="model spec for every task: sim[:k=v,...], bedrock:<id>, openai:<url>#<model>")
    run.add_argument("--out", default="out", help="output folder (default: out)")
    run.add_argument("--concurrency", type=int, help="calls in flight at most (limits.max_concurrency)")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="call the model for every task again; earlier records and results of this job_id stay until the run has its own",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    validate = commands.add_parser("validate", help="check a job and print its plan; calls no model")
    validate.add_argument("job", help="the job file (JSON)")
    validate.add_argument("--model", help="model spec, as for run")
    validate.add_argument("--concurrency", type=int, help="as for run")
    serve = commands.add_parser("serve", help="S3 and Step Functions on 127.0.0.1 with the stack's resources, until Ctrl-C")
    serve.add_argument("--port", type=int, default=SERVE_PORT, help=f"port on 127.0.0.1 (default {SERVE_PORT}; 0: any free port)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from fanout.serve import serve as serve_endpoint

        return serve_endpoint(args.port)
    from fanout.runtime import caller_session

    session = caller_session()
    default_model = cloud_default_model() if session is not None else SIMULATOR
    try:
        loaded = _load(Path(args.job), args.model, args.concurrency, default_model)
    except InvalidJob as exc:
        print(f"error: invalid job: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.command == "validate":
        return _validate(loaded)
    resume = _resume_command(args)
    try:
        return _run(
            loaded,
            Path(args.out),
            fresh=args.fresh,
            quiet=args.quiet,
            default_model=default_model,
            session=session,
            resume=resume,
        )
    except KeyboardInterrupt:
        print(f"interrupted; nothing was run. To run the job: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAILED


@dataclass(frozen=True)
class LoadedJob:
    data: dict[str, Any]  # the execution input
    job: Job
    tasks: list[dict[str, Any]]
    items: list[dict[str, Any]]
    items_body: bytes | None = None  # a local items_uri file, uploaded where data["items_uri"] points
    warnings: tuple[str, ...] = ()  # Legacy models the job calls


def _load(path: Path, model: str | None, concurrency: int | None, default_model: str) -> LoadedJob:
    """Read, override and check a job file exactly as Plan will, so a bad job fails here with nothing written.

    A local ``items_uri`` (a path, relative to the job file) is read here and
    rewritten to the object the run uploads it to, in the local input bucket.
    """
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise InvalidJob(f"{path}: cannot read the job file ({exc.strerror})", "job") from None
    data = decode_json(body, str(path))
    if isinstance(data, dict):
        if model is not None:
            data = _with_model(data, model)
        if concurrency is not None:
            if concurrency < 1:
                raise InvalidJob("--concurrency: must be 1 or more", "--concurrency")
            limits = data.get("limits") if isinstance(data.get("limits"), dict) else {}
            data = {**data, "limits": {**limits, "max_concurrency": concurrency}}
    items_body = None
    if isinstance(data, dict) and isinstance(data.get("items_uri"), str) and not data["items_uri"].startswith("s3://"):
        local = path.parent / data["items_uri"].removeprefix("file://")
        try:
            items_body = local.read_bytes()
        except OSError as exc:
            raise InvalidJob(f"items_uri: cannot read {local} ({exc.strerror})", "items_uri") from None
        data = {**data, "items_uri": f"s3://{LOCAL_INPUT_BUCKET}/items/{path.stem}{local.suffix or '.jsonl'}"}
    job = parse_job(data, job_id_default=path.stem)
    assert job.job_id is not None
    data = {**data, "job_id": job.job_id}
    items = job.items or []
    if job.items_uri is not None:
        if items_body is None:
            raise InvalidJob(
                "items_uri: a local run reads items from a file; give its path relative to the job file "
                "(s3:// objects are read where fanout is deployed)",
                "items_uri",
            )
        items = parse_items(items_body, "items_uri")
        check_items(job, items, where="items_uri")
    from fanout_core.catalog import check_job_models

    # an end-of-life model is refused here, before anything is written or called, as Plan refuses it
    warnings = tuple(check_job_models(job, default_model))
    tasks = expand_tasks(job, items, default_model)
    _check_mode(job, len(tasks))
    return LoadedJob(data, job, tasks, items, items_body, warnings)


def _check_mode(job: Job, task_count: int) -> None:
    """The mode the job asks for must fit its batches (Plan checks the same), refused here before anything runs."""
    from fanout.runtime import LOCAL_CONCURRENCY_CAP
    from fanout_core.planning import batching_for, choose_mode

    choose_mode(job.limits.mode, batching_for(job, task_count, LOCAL_CONCURRENCY_CAP))


def _with_model(data: dict[str, Any], model: str) -> dict[str, Any]:
    """--model replaces every model the job names (a multi-model vote keeps its number of votes)."""
    out = {**data, "model": model}
    models = out.pop("models", None)
    stop = (out.get("aggregate") or {}).get("stop") if isinstance(out.get("aggregate"), dict) else None
    # a stopping rule's max_votes already says how many votes there are
    if isinstance(models, list) and "votes" not in out and not (isinstance(stop, dict) and "max_votes" in stop):
        out["votes"] = len(models)
    return out


def _validate(loaded: LoadedJob) -> int:
    from fanout.runtime import LOCAL_CONCURRENCY_CAP
    from fanout_core.costs import plan_costs
    from fanout_core.planning import batching_for, choose_mode

    job, tasks = loaded.job, loaded.tasks
    batching = batching_for(job, len(tasks), LOCAL_CONCURRENCY_CAP)
    costs = plan_costs(job, tasks)
    plan = {
        "job_id": job.job_id,
        "pattern": job.pattern,
        "items": len(loaded.items),
        "mode": choose_mode(job.limits.mode, batching),
        "tasks": len(tasks),
        "batches": batching.batch_count,
        "batch_size": batching.batch_size,
        "threads_per_batch": batching.threads,
        "parallel_batches": batching.map_concurrency,
        "models": sorted({t["model"] for t in tasks}),
        **costs.as_plan(),
        "caching": costs.caching_notes,
    }
    print(json.dumps(plan, indent=2))
    print(f"ok: {job.job_id} is valid ({len(tasks)} tasks in {batching.batch_count} batches); no model was called")
    return EXIT_OK


def _resume_command(args: argparse.Namespace) -> str:
    """The command that runs this job again, continuing from the records it keeps (no --fresh)."""
    words = [sys.executable, "-m", "fanout", "run", args.job, "--out", args.out]
    if args.model is not None:
        words += ["--model", args.model]
    if args.concurrency is not None:
        words += ["--concurrency", str(args.concurrency)]
    if args.quiet:
        words.append("--quiet")
    return shlex.join(words)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the records so far are kept and the resume command printed."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(*_: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(loaded: LoadedJob, out: Path, *, fresh: bool, quiet: bool, default_model: str, session: Any, resume: str = "") -> int:
    from fanout.local_records import RecordMirror
    from fanout.runtime import ACCOUNT, RESULTS_BUCKET, local_aws

    data, job, tasks = loaded.data, loaded.job, loaded.tasks
    job_id = str(job.job_id)
    target = out / job_id
    try:
        target.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, before any model call
    except OSError as exc:
        print(f"error: --out: cannot write {target} ({exc.strerror})", file=sys.stderr)
        return EXIT_FAILED
    models = sorted({t["model"] for t in tasks})
    if job.model is None and not job.models and default_model == SIMULATOR:
        print("model: sim (the built-in simulator: no model named and no AWS credentials; outputs are synthetic)")
    elif job.model is None and not job.models:
        print(f"model: {default_model} (AWS credentials found and no model named; pass --model sim for the simulator)")
    else:
        simulated = all(m == SIMULATOR or m.startswith(SIMULATOR + ":") for m in models)
        print(f"model: {', '.join(models)}" + (" (the built-in simulator; outputs are synthetic)" if simulated else ""))
    if not _servers_reachable(models):
        return EXIT_FAILED
    started = time.monotonic()
    with local_aws(default_model, bedrock_session=session) as runtime:
        import boto3

        startup = time.monotonic() - started

        s3 = boto3.client("s3")
        # records reach target/records/ as they are written; --fresh replaces the old ones once there are new ones
        mirror = RecordMirror(ACCOUNT, RESULTS_BUCKET, job_id, target, replace_previous=fresh)
        mirror.restore(s3)
        if loaded.items_body is not None:
            bucket, key = data["items_uri"][5:].split("/", 1)
            s3.put_object(Bucket=bucket, Key=key, Body=loaded.items_body)
        name = f"{job_id}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"[:80]
        try:
            with _sigterm_interrupts():
                execution_arn = runtime.start(data, name)
                mirror.start()
                with _Progress(len(tasks), quiet, lambda: mirror.count) as progress:
                    execution = runtime.wait(execution_arn, on_poll=progress.update)
        except KeyboardInterrupt as exc:
            kept = mirror.stop()
            print(
                f"interrupted: {kept} task records are kept in {target / 'records'}; the calls in flight are lost.\n"
                f"resume (finished tasks are not called again): {resume}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
        mirror.stop()
        if execution.status != "SUCCEEDED" and execution.error == "InvalidJob":
            print(f"error: invalid job: {execution.cause}", file=sys.stderr)
            return EXIT_INVALID
        copied = _copy_outputs(s3, RESULTS_BUCKET, job_id, target)
        if not copied:
            print(f"error: the run failed: {execution.error}: {execution.cause}", file=sys.stderr)
            return EXIT_FAILED
        result = json.loads((target / "result.json").read_text())
        plan = s3.get_object(Bucket=RESULTS_BUCKET, Key=f"runs/{job_id}/plan.json")["Body"].read()
        plan_doc = json.loads(plan)
        run_figures = {
            "mode": plan_doc["mode"],
            "batches": plan_doc["counts"]["batches"],
            "threads_per_batch": plan_doc["threads"],
            "parallel_batches": plan_doc["map_concurrency"],
            "state_transitions": execution.state_transitions,
            # the job's run, from the execution's start to its end: what a thread pool doing the same calls is compared to
            "wall_seconds": round(execution.wall_seconds, 3),
            # starting the local runtime (moto, the ASL parser, a warm container) before the job; not in wall_seconds
            "startup_seconds": round(startup, 3),
            # calls made by this run (result.json's usage also counts records kept from earlier runs)
            "model_calls": sum(runtime.model_calls.values()),
            "tasks_skipped": plan_doc["counts"]["skipped"],
            "lambda_invocations": dict(runtime.invocations),
            # what each function would be billed for: its handler's run time, summed over invocations
            "lambda_seconds": {k: round(v, 3) for k, v in runtime.busy_seconds.items()},
            "execution_status": execution.status,
        }
    run_figures["total_seconds"] = round(time.monotonic() - started, 3)
    (target / "run.json").write_text(json.dumps(run_figures, indent=2) + "\n")
    _print_summary(result, run_figures, target)
    return {"complete": EXIT_OK, "partial": EXIT_PARTIAL}.get(result["status"], EXIT_FAILED)


def _copy_outputs(s3: Any, bucket: str, job_id: str, target: Path) -> bool:
    """result.json, results.jsonl and report.md, from local S3 to DIR/<job_id>/ (the records are there already)."""
    names = ("result.json", "results.jsonl", "report.md")
    try:
        bodies = {n: s3.get_object(Bucket=bucket, Key=f"results/{job_id}/{n}")["Body"].read() for n in names}
    except s3.exceptions.NoSuchKey:
        return False
    target.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        (target / name).write_bytes(body)
    return True


class _Progress:
    """A progress bar of tasks done, polled from the record count."""

    def __init__(self, total: int, quiet: bool, done: Any) -> None:
        self.total, self.quiet, self.done = total, quiet or not sys.stderr.isatty(), done
        self._bar: Any = None

    def __enter__(self) -> _Progress:
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("tasks", total=self.total)
        return self

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done(), self.total))

    def __exit__(self, *_: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def _servers_reachable(models: list[str]) -> bool:
    """Ask each OpenAI-compatible server what it serves before any task: one clear error when it is down."""
    from fanout_core.providers.base import ModelError
    from fanout_core.providers.openai_compat import OpenAICompatibleProvider
    from fanout_core.providers.spec import parse_model_spec

    for spec in models:
        parsed = parse_model_spec(spec)
        if parsed.provider != "openai":
            continue
        try:
            warnings = OpenAICompatibleProvider(parsed.base_url, parsed.model_id, timeout=10.0).check()
        except ModelError as exc:
            print(f"error: model {spec}: {exc.message}", file=sys.stderr)
            return False
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return True


def _print_summary(result: dict[str, Any], figures: dict[str, Any], target: Path) -> None:
    counts, usage = result["counts"], result["usage"]
    cost = usage.get("estimated_cost_usd")
    lines = [
        f"job {result['job_id']}: {result['status']}"
        + (" (synthetic outputs from the simulator)" if result.get("synthetic") else ""),
        f"  items {counts['items']}  tasks {counts['tasks']}  ok {counts['ok']}  invalid {counts['invalid']}  "
        f"failed {counts['failed']}",
        f"  model calls {usage['model_calls']}  tokens {usage['input_tokens']} in / {usage['output_tokens']} out  "
        f"cost {'unknown' if cost is None else f'${cost:.4f}'}",
        f"  {figures['batches']} batches, {figures['state_transitions']} state transitions, {figures['wall_seconds']:.2f} s",
    ]
    if figures["tasks_skipped"]:
        lines.append(f"  skipped {figures['tasks_skipped']} tasks that already had an ok record from an earlier run")
    answered = any(i.get("answer") is not None for i in result["items"])
    if "evaluation" in result and not answered:
        first = next((e for i in result["items"] for e in i.get("errors", [])), None)
        reason = f": {first['error']}" if first else ""
        lines.append(f"  accuracy not measured: no item got an answer{reason}")
    elif "evaluation" in result:
        ev = result["evaluation"]
        lines.append(
            f"  accuracy {ev['accuracy']:.1%} aggregated vs {ev['single_call_accuracy']:.1%} single call "
            f"({ev['items_with_expected']} items with expected answers)"
        )
    if result["pattern"] == "voting":
        ties = sum(1 for i in result["items"] if i.get("tie"))
        # strategies whose signal is a spread or a support (confidence None) are not "low confidence"
        low = sum(1 for i in result["items"] if i.get("confidence") is not None and i["confidence"] < 0.6)
        lines.append(f"  ties {ties}  low confidence (< 0.6) {low}")
    lines.append(f"report: {target / 'report.md'}")
    lines.append(f"result: {target / 'result.json'}")
    print("\n".join(lines))
