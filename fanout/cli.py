"""``fanout run|validate|serve`` (or ``python -m fanout``): run a job on the real state machine locally, check it,
or serve the stack's APIs.

Exit codes: 0 complete, 3 partial, 2 invalid job (one message naming the
field; nothing written), 1 any other failure.

The Python API (``fanout.run``, ``fanout.validate``) goes through the same
``load_job`` and ``_run``; only the printing is the CLI's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import fanout  # puts lambdas/ on the path in a checkout
from fanout import commands as commands_elsewhere
from fanout.errors import FanoutError
from fanout.files import local_items_path
from fanout_core import layout
from fanout_core.contracts import PlanSummary, Result
from fanout_core.errors import InvalidJob
from fanout_core.job import Job, check_items, parse_job
from fanout_core.loading import decode_json, parse_item_file
from fanout_core.planning import expand_tasks

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
# as a shell reports a process ended by SIGINT (128 + 2) or SIGTERM (128 + 15)
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
# inline items above this go to the local input bucket and the execution gets their items_uri: Step Functions caps an
# execution's input at 256 KiB ("Step Functions service quotas"), and moto's interpreter copies the input state by state
STAGE_ITEMS_ABOVE_BYTES = 64 * 1024
SIMULATOR = "sim"
LOCAL_INPUT_BUCKET = "fanout-local-input"
SERVE_PORT = 4599


def cloud_default_model() -> str:
    """The stack's default model (cdk.json), used locally when AWS credentials are present."""
    from fanout.resources import project_file

    context = json.loads(project_file("cdk.json").read_text())["context"]
    return str(context["fanout:defaultModel"])


def quiet_handler_warnings() -> None:
    """The in-process handlers' metrics are off locally; Powertools would still warn on every invocation."""
    import warnings

    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)


def entry_point() -> None:
    """The ``fanout`` command: main(), and a reader that stops early (``| head``) ends it quietly."""
    quiet_handler_warnings()
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away: nothing more can be shown, and the interpreter must not complain at exit either
        _drop_stdout()
        code = 128 + signal.SIGPIPE
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        # the interrupted run's batches are still running in threads; its records are saved: end now, without joining them
        for stream in (sys.stdout, sys.stderr):
            with suppress(BrokenPipeError, ValueError):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _drop_stdout() -> None:
    """Point stdout at /dev/null: its reader has gone, and what is still buffered must not fail again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _echo(line: str) -> None:
    """A line for the reader of stdout, shown at once; a reader gone already (``| head -n 0``) does not stop the run,
    whose results go to --out whoever reads its output."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _drop_stdout()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanout", description="Parallel LLM jobs on Step Functions.")
    parser.add_argument("--version", action="version", version=f"fanout {fanout.__version__}")
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
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask again the requests whose earlier record is failed or invalid (they are kept otherwise)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    validate = commands.add_parser("validate", help="check a job and print its plan; calls no model")
    validate.add_argument("job", help="the job file (JSON)")
    validate.add_argument("--model", help="model spec, as for run")
    validate.add_argument("--concurrency", type=int, help="as for run")
    serve = commands.add_parser("serve", help="S3 and Step Functions on 127.0.0.1 with the stack's resources, until Ctrl-C")
    serve.add_argument("--port", type=int, default=SERVE_PORT, help=f"port on 127.0.0.1 (default {SERVE_PORT}; 0: any free port)")
    commands_elsewhere.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in commands_elsewhere.COMMANDS:
        return commands_elsewhere.dispatch(args)
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
    if getattr(args, "retry_failed", False):
        loaded = replace(loaded, data={**loaded.data, "retry_failed": True})
    if args.command == "validate":
        return _validate(loaded)
    resume = _resume_command(args)
    loaded = loaded.for_run()
    try:
        done = _run(
            loaded,
            Path(args.out),
            fresh=args.fresh,
            quiet=args.quiet,
            default_model=default_model,
            session=session,
            resume=resume,
        )
    except InvalidJob as exc:
        print(f"error: invalid job: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except FanoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"interrupted; nothing was run. To run the job: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the reader of stdout went away: not a failure of the run (entry_point ends quietly)
    except OSError as exc:
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(done, int):  # interrupted: _run said what is kept and how to resume
        return done
    _print_summary(done.result, done.figures, done.target)
    return {"complete": EXIT_OK, "partial": EXIT_PARTIAL}.get(done.result["status"], EXIT_FAILED)


def os_error_message(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")


@dataclass(frozen=True)
class LoadedJob:
    data: dict[str, Any]  # the execution input
    job: Job
    tasks: list[dict[str, Any]]
    items: list[dict[str, Any]]
    items_body: bytes | None = None  # a local items_uri file, uploaded where data["items_uri"] points
    warnings: tuple[str, ...] = ()  # Legacy models the job calls
    files: dict[str, bytes] = field(default_factory=dict)  # documents of a local folder, by key in the local input bucket
    task_count: int = 0
    models: tuple[str, ...] = ()  # every model spec the tasks call

    def for_run(self) -> LoadedJob:
        """What a run needs of the loaded job: Plan expands the tasks again, so the CLI keeps only their count.

        A million-task job's task list (every prompt rendered) is ~600 MB, and its items ~100 MB: held through
        the run they would sit on top of Plan's own, at the run's peak memory.
        """
        job = self.job.model_copy(update={"items": None}) if self.job.items is not None else self.job
        return replace(self, job=job, tasks=[], items=[])


@dataclass(frozen=True)
class LocalRun:
    """What a finished local run left in ``target``: result.json as read back, and run.json's figures."""

    result: Result
    figures: dict[str, Any]
    target: Path


def _load(path: Path, model: str | None, concurrency: int | None, default_model: str) -> LoadedJob:
    """Read, override and check a job file exactly as Plan will, so a bad job fails here with nothing written."""
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise InvalidJob(f"{path}: cannot read the job file ({exc.strerror})", "job") from None
    data = decode_json(body, str(path))
    return load_job(data, path.parent, path.stem, model, concurrency, default_model)


def load_job(data: Any, base: Path, stem: str, model: str | None, concurrency: int | None, default_model: str) -> LoadedJob:
    """Override and check a decoded job exactly as Plan will.

    A local ``items_uri`` (a path, relative to ``base``: the job file's folder)
    is read here and rewritten to the object the run uploads it to, in the
    local input bucket. ``stem`` names the job when it has no job_id.
    """
    if isinstance(data, dict):
        if model is not None:
            data = _with_model(data, model)
        if concurrency is not None:
            if concurrency < 1:
                raise InvalidJob("--concurrency: must be 1 or more", "--concurrency")
            limits = data.get("limits") if isinstance(data.get("limits"), dict) else {}
            data = {**data, "limits": {**limits, "max_concurrency": concurrency}}
    items_body: bytes | None = None
    suffix, files = "", dict[str, bytes]()
    if isinstance(data, dict) and isinstance(data.get("items_uri"), str) and not data["items_uri"].startswith("s3://"):
        local = local_items_path(base, data["items_uri"])
        items_body, suffix, files = read_local_items(local, data, f"s3://{LOCAL_INPUT_BUCKET}/{layout.items_key(stem)}/files/")
        data = {**data, "items_uri": f"s3://{LOCAL_INPUT_BUCKET}/{layout.items_key(stem)}{suffix}"}
    job = parse_job(data, job_id_default=stem)
    assert job.job_id is not None
    data = {**data, "job_id": job.job_id}
    items = job.items or []
    if job.items is not None and len(json.dumps(data["items"], ensure_ascii=False).encode()) > STAGE_ITEMS_ABOVE_BYTES:
        data, items_body = _staged(data, job.items, job.job_id)
    if job.items_uri is not None:
        if items_body is None:
            raise InvalidJob(
                "items_uri: a local run reads items from a file or a folder; give its path relative to the job file "
                "(s3:// objects are read where fanout is deployed)",
                "items_uri",
            )
        items = parse_item_file(items_body, suffix, "items_uri")
        check_items(job, items, where="items_uri")
    from fanout_core.catalog import check_job_models

    # an end-of-life model is refused here, before anything is written or called, as Plan refuses it
    warnings = tuple(check_job_models(job, default_model))
    tasks = expand_tasks(job, items, default_model)
    _check_mode(job, tasks)
    from fanout_core.tiers import choose_tier

    choose_tier(job, tasks)  # a tier the job's models do not offer is refused here, as Plan refuses it
    models = tuple(sorted({t["model"] for t in tasks}))
    return LoadedJob(data, job, tasks, items, items_body, warnings, files, len(tasks), models)


def _check_mode(job: Job, tasks: list[dict[str, Any]]) -> None:
    """The mode the job asks for must fit its batches (Plan checks the same), refused here before anything runs."""
    from fanout.runtime import LOCAL_CONCURRENCY_CAP
    from fanout_core.planning import choose_mode, item_counts, packed_batching

    choose_mode(job.limits.mode, packed_batching(job, item_counts(tasks), LOCAL_CONCURRENCY_CAP)[0])


def read_local_items(local: Path, data: dict[str, Any], files_uri: str) -> tuple[bytes, str, dict[str, bytes]]:
    """A local items_uri as the body to upload, its suffix, and the files to upload with it.

    ``local`` comes from ``local_items_path`` (checked to be inside the job file's folder). A file is taken as it
    is (JSON, JSON Lines or CSV), read without following a link or blocking on a FIFO. A folder of documents
    becomes JSON Lines of its items (one per file, read here, so an unreadable file is refused before any call), and its PDF and
    office files are uploaded under ``files_uri`` (s3://bucket/prefix/) for Bedrock's document blocks.
    """
    from fanout.files import MAX_ITEMS_FILE_BYTES
    from fanout_core.documents import MAX_DOCUMENT_BYTES, read_regular

    if local.is_dir():
        from fanout_core.documents import local_document_items
        from fanout_core.job import Limits

        try:
            limits = Limits.model_validate(data.get("limits") or {})
        except ValueError:
            limits = Limits()  # parse_job reports the bad limit
        items = local_document_items(
            local,
            max_items=limits.max_items,
            max_item_bytes=limits.max_item_bytes,
            max_job_bytes=limits.max_job_bytes,
            uri_prefix=files_uri,
        )
        prefix = files_uri.removeprefix("s3://").partition("/")[2]
        files = {
            prefix + item["id"]: read_regular(local / item["id"], MAX_DOCUMENT_BYTES) for item in items if "document" in item
        }
        return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode(), ".jsonl", files
    return read_regular(local, MAX_ITEMS_FILE_BYTES), local.suffix or ".jsonl", {}


def _staged(data: dict[str, Any], items: list[dict[str, Any]], job_id: str) -> tuple[dict[str, Any], bytes]:
    """The job with its inline items replaced by an items_uri in the local input bucket, and that object's body.

    JSON Lines with every non-ASCII character escaped, so no line separator can appear inside an item.
    """
    body = "".join(json.dumps(item, ensure_ascii=True) + "\n" for item in items).encode()
    name = hashlib.sha256(job_id.encode()).hexdigest()[:16]  # any job_id, whatever its characters, makes a plain key
    staged = {key: value for key, value in data.items() if key != "items"}
    staged["items_uri"] = f"s3://{LOCAL_INPUT_BUCKET}/{layout.items_key(f'staged-{name}.jsonl')}"
    return staged, body


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
    plan = plan_summary(loaded)
    print(json.dumps(plan, indent=2))
    print(f"ok: {plan['job_id']} is valid ({plan['tasks']} tasks in {plan['batches']} batches); no model was called")
    return EXIT_OK


def plan_summary(loaded: LoadedJob) -> dict[str, Any]:
    """The plan validate shows: tasks, batches, estimated tokens and cost; calls no model."""
    from fanout.runtime import LOCAL_CONCURRENCY_CAP
    from fanout_core.costs import plan_costs
    from fanout_core.planning import choose_mode, item_counts, packed_batching
    from fanout_core.tiers import choose_tier

    job, tasks = loaded.job, loaded.tasks
    # batches of whole items, as Plan packs them
    batching = packed_batching(job, item_counts(tasks), LOCAL_CONCURRENCY_CAP)[0]
    choice = choose_tier(job, tasks, lambda tier: plan_costs(job, tasks, tier=tier).estimated_cost)
    costs = plan_costs(job, tasks, tier=choice.tier)
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
        "tier": choice.as_plan(),
        **costs.as_plan(),
        "caching": costs.caching_notes,
    }
    return plan


def _resume_command(args: argparse.Namespace) -> str:
    """The command that runs this job again, continuing from the records it keeps (no --fresh)."""
    words = [sys.executable, "-m", "fanout", "run", args.job, "--out", args.out]
    if args.model is not None:
        words += ["--model", args.model]
    if args.concurrency is not None:
        words += ["--concurrency", str(args.concurrency)]
    if getattr(args, "retry_failed", False):
        words.append("--retry-failed")
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


def _run(
    loaded: LoadedJob,
    out: Path,
    *,
    fresh: bool,
    quiet: bool,
    default_model: str,
    session: Any,
    resume: str = "",
    echo: Any = _echo,
) -> LocalRun | int:
    """Run a loaded job on the local state machine into ``out/<job_id>/``.

    Raises InvalidJob when Plan refuses the job, FanoutError when the run
    fails; ``echo`` gets the line saying which model answers. An interrupted
    run returns its exit code, having said what it kept.
    """
    from fanout.local_records import RunLock

    target = out / str(loaded.job.job_id)
    try:
        target.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, before any model call
    except OSError as exc:
        raise FanoutError(f"--out: cannot write {target} ({exc.strerror})", "--out") from None
    _check_free_space(target, loaded.task_count)
    # one run per job_id and --out: a second one would call every task again and write a second record for each
    with RunLock(target):
        return _run_locked(
            loaded, target, fresh=fresh, quiet=quiet, default_model=default_model, session=session, resume=resume, echo=echo
        )


# what a run may write per task (its record, its results.jsonl line, its share of result.json and the reports),
# and at least: a disk with less free is refused before any model call
BYTES_PER_TASK = 4096
MIN_FREE_BYTES = 8 * 1024 * 1024


def _check_free_space(target: Path, task_count: int) -> None:
    try:
        free = shutil.disk_usage(target).free
    except OSError:
        return  # a folder whose usage cannot be read is tried; a write error is still reported whole
    needed = MIN_FREE_BYTES + BYTES_PER_TASK * task_count
    if free < needed:
        raise FanoutError(
            f"--out: {free / 1e6:.1f} MB free where {target} is, and this run may write up to {needed / 1e6:.1f} MB; "
            "free space or give another --out (no model was called)",
            "--out",
        )


def _run_locked(
    loaded: LoadedJob,
    target: Path,
    *,
    fresh: bool,
    quiet: bool,
    default_model: str,
    session: Any,
    resume: str,
    echo: Any,
) -> LocalRun | int:
    from fanout.local_records import RecordMirror
    from fanout.progress import local_view
    from fanout.runtime import ACCOUNT, RESULTS_BUCKET, local_aws

    data, job = loaded.data, loaded.job
    job_id = str(job.job_id)
    models = list(loaded.models)
    if job.model is None and not job.models and default_model == SIMULATOR:
        echo("model: sim (the built-in simulator: no model named and no AWS credentials; outputs are synthetic)")
    elif job.model is None and not job.models:
        echo(f"model: {default_model} (AWS credentials found and no model named; pass --model sim for the simulator)")
    else:
        simulated = all(m == SIMULATOR or m.startswith(SIMULATOR + ":") for m in models)
        echo(f"model: {', '.join(models)}" + (" (the built-in simulator; outputs are synthetic)" if simulated else ""))
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
        for key, body in loaded.files.items():
            s3.put_object(Bucket=LOCAL_INPUT_BUCKET, Key=key, Body=body)
        name = f"{job_id}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"[:80]
        try:
            with _sigterm_interrupts():
                execution_arn = runtime.start(data, name)
                mirror.start()
                prices = {name: price.model_dump() for name, price in (job.prices or {}).items()}
                with local_view(
                    loaded.task_count, target / "records", quiet=quiet, prices=prices, fresh=fresh, refresh=mirror.sync
                ) as progress:
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
            cause = str(execution.cause)
            raise InvalidJob(cause, cause.split(":", 1)[0] if ": " in cause else "")
        copied = _copy_outputs(s3, RESULTS_BUCKET, job_id, target)
        if not copied:
            raise FanoutError(f"the run failed: {execution.error}: {execution.cause}")
        result: Result = json.loads((target / "result.json").read_text())
        plan = s3.get_object(Bucket=RESULTS_BUCKET, Key=layout.plan_key(job_id))["Body"].read()
        plan_doc: PlanSummary = json.loads(plan)
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
            # requests answered by records of earlier runs of the job_id, not asked again (the same as tasks_skipped)
            "requests_reused": plan_doc["counts"].get("reused", plan_doc["counts"]["skipped"]),
            "lambda_invocations": dict(runtime.invocations),
            # what each function would be billed for: its handler's run time, summed over invocations
            "lambda_seconds": {k: round(v, 3) for k, v in runtime.busy_seconds.items()},
            "execution_status": execution.status,
        }
        pacing = result.get("pacing") or {}
        # pacing to the model's quota (fanout_core.pacing): refusals, the tokens served per minute, the wait
        run_figures["throttled_requests"] = pacing.get("throttled_requests", 0)
        run_figures["tokens_per_minute"] = pacing.get("tokens_per_minute")
        run_figures["quota_wait_seconds"] = pacing.get("quota_wait_seconds", 0.0)
    run_figures["total_seconds"] = round(time.monotonic() - started, 3)
    _write_output(target / "run.json", json.dumps(run_figures, indent=2) + "\n")
    return LocalRun(result, run_figures, target)


def _copy_outputs(s3: Any, bucket: str, job_id: str, target: Path) -> bool:
    """result.json, results.jsonl and the reports, from local S3 to DIR/<job_id>/ (the records are there already)."""
    try:
        bodies = {n: s3.get_object(Bucket=bucket, Key=layout.result_key(job_id, n))["Body"].read() for n in layout.RESULT_FILES}
    except s3.exceptions.NoSuchKey:
        return False
    target.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        _write_output(target / name, body)
    return True


def _write_output(path: Path, body: bytes | str) -> None:
    """A result file written whole or not at all: a full disk leaves the previous one, never a cut one."""
    from fanout.local_records import write_whole

    try:
        write_whole(path, body)
    except OSError as exc:
        raise FanoutError(
            f"--out: cannot write {path} ({exc.strerror or exc}); every task record is saved in {path.parent / 'records'}. "
            "Free space and run the same command again: it calls no model for them and writes the results",
            "--out",
        ) from None


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


def _batch_line(joined: Any) -> str:
    if not isinstance(joined, dict):
        return ""
    return f"; {joined.get('answered', 0)} tasks answered by batch jobs, {joined.get('fallback', 0)} called on-demand"


def _print_summary(result: Result, figures: dict[str, Any], target: Path) -> None:
    counts, usage = result["counts"], result["usage"]
    cost = usage.get("estimated_cost_usd")
    lines = [
        f"job {result['job_id']}: {result['status']}"
        + (" (synthetic outputs from the simulator)" if result.get("synthetic") else ""),
        f"  items {counts['items']}  tasks {counts['tasks']}  ok {counts['ok']}  invalid {counts['invalid']}  "
        f"failed {counts['failed']}  skipped {counts.get('skipped', 0)}",
        # this run's calls, tokens and cost, as result.json's usage counts them; reused requests cost nothing again
        f"  model calls {figures['model_calls']} made, {figures.get('requests_reused', 0)} requests reused  "
        f"tokens {usage['input_tokens']} in / {usage['output_tokens']} out  "
        f"cost {'unknown' if cost is None else f'${cost:.4f}'} (this run)",
        f"  {figures['batches']} batches, {figures['state_transitions']} state transitions, {figures['wall_seconds']:.2f} s",
    ]
    if figures["tasks_skipped"]:
        lines.append(
            f"  reused {figures['tasks_skipped']} requests an earlier run of this job_id answered (an unchanged request is "
            "not asked again; --retry-failed asks failed and invalid ones again, --fresh asks every one)"
        )
    tier = result.get("tier")
    # the tier a job asked for (or auto chose), and what its batch jobs answered; nothing for plain on-demand
    if isinstance(tier, dict) and (tier.get("tier") != "on_demand" or tier.get("requested") == "auto"):
        lines.append(f"  tier {tier['tier']}: {tier['reason']}{_batch_line(tier.get('batch_inference'))}")
    escalation = usage.get("escalation")
    if escalation:
        # the second pass's extra votes for the doubtful items (aggregate.escalate), as report.md lists them
        spent = escalation.get("estimated_cost_usd")
        lines.append(
            f"  escalated {escalation['items']} items: {escalation['model_calls']} second-pass calls (this run), "
            f"cost {'unknown' if spent is None else f'${spent:.4f}'}"
        )
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
    if result["pattern"] == "voting" and result.get("strategy") in ("mean", "median"):
        lines.append(_spread_line(result["items"]))
    elif result["pattern"] == "voting":
        ties = sum(1 for i in result["items"] if i.get("tie"))
        # strategies whose signal is a spread or a support (confidence None) are not "low confidence"
        low = sum(1 for i in result["items"] if i.get("confidence") is not None and i["confidence"] < 0.6)
        lines.append(f"  ties {ties}  low confidence (< 0.6) {low}")
    lines.append(f"report: {target / 'report.md'}")
    lines.append(f"view: fanout view {target}  (report.html)")
    lines.append(f"result: {target / 'result.json'}")
    print("\n".join(lines))


def _spread_line(items: list[dict[str, Any]]) -> str:
    """A mean or median has no confidence: its signal is how many votes it is over and how far they spread."""
    ns = [i["n"] for i in items if isinstance(i.get("n"), int)]
    spreads = [v for i in items for v in (i.get("spread") or {}).values() if isinstance(v, (int, float))]
    name = next((k for i in items for k in (i.get("spread") or {})), "spread")
    if not ns:
        return "  no numeric votes"
    line = f"  votes per item n {min(ns)}-{max(ns)} (median {statistics.median(ns):g})"
    if spreads:
        from fractions import Fraction

        from fanout_core.voting import short_number

        # a spread of integers too large for a float (an exact mean of huge votes) is ordered and shown exactly
        middle = statistics.median([Fraction(v) for v in spreads])
        line += f"  {name} median {short_number(middle)}, max {short_number(max(spreads))}"
    return line
