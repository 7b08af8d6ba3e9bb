"""``fanout submit|status|results|cancel|view``: the deployed stack (or ``fanout serve``) from the command line.

Exit codes as for ``run``: 0 complete (or done), 3 partial, 2 invalid job, 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fanout.errors import FanoutError
from fanout_core import layout
from fanout_core.contracts import Result
from fanout_core.errors import InvalidJob

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
COMMANDS = ("submit", "status", "results", "cancel", "view")


def add_commands(commands: Any) -> None:
    submit = commands.add_parser("submit", help="start a job on the deployed stack (or fanout serve)")
    submit.add_argument("job", help="the job file (JSON); a local items_uri, or items too large to inline, are uploaded")
    submit.add_argument("--model", help="model spec for every task, as for run")
    submit.add_argument("--name", help="the execution's name (default: <job_id>-<UTC time>)")
    submit.add_argument("--wait", action="store_true", help="show progress until it ends, then download the results")
    submit.add_argument("--out", default="out", help="with --wait: where the results go (default: out)")
    submit.add_argument("--quiet", action="store_true", help="with --wait: no progress")
    _target_options(submit)
    status = commands.add_parser("status", help="an execution's (or a job_id's) state, progress and result")
    status.add_argument("ref", metavar="EXECUTION_OR_JOB_ID", help="execution ARN or name, or a job_id")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    _target_options(status)
    results = commands.add_parser("results", help="download a job's result.json, results.jsonl and reports")
    results.add_argument("job_id")
    results.add_argument("--out", default="out", help="output folder (default: out): writes OUT/<job_id>/")
    _target_options(results)
    cancel = commands.add_parser("cancel", help="stop an execution and free its job_id")
    cancel.add_argument("ref", metavar="EXECUTION", help="execution ARN or name (or a job_id: its running execution)")
    _target_options(cancel)
    view = commands.add_parser("view", help="open a run's report.html (prints its path when no browser is there)")
    view.add_argument("dir", metavar="DIR/<job_id>", help="the folder run, submit --wait or results wrote")


def _target_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the stack is")
    where.add_argument("--stack", default=os.environ.get("FANOUT_STACK"), help="the deployed stack's name (env FANOUT_STACK)")
    where.add_argument("--region", help="AWS region (default: the boto3 chain: AWS_REGION, the profile)")
    where.add_argument("--endpoint-url", help="a local endpoint, e.g. http://127.0.0.1:4599 from `fanout serve`")
    where.add_argument("--serve", metavar="FILE", help="a file holding `fanout serve`'s output: endpoint and resources")
    where.add_argument("--state-machine-arn", help="instead of --stack")
    where.add_argument("--input-bucket", help="instead of --stack")
    where.add_argument("--results-bucket", help="instead of --stack")


def dispatch(args: argparse.Namespace) -> int:
    from fanout import remote

    try:
        if args.command == "view":
            return _view(Path(args.dir))
        connection = remote.connect(
            stack=args.stack,
            endpoint_url=args.endpoint_url,
            region=args.region,
            state_machine_arn=args.state_machine_arn,
            input_bucket=args.input_bucket,
            results_bucket=args.results_bucket,
            serve_info=args.serve,
        )
        handler = {"submit": _submit, "status": _status, "results": _results, "cancel": _cancel}[args.command]
        return handler(connection, args)
    except InvalidJob as exc:
        print(f"error: invalid job: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except FanoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except remote.aws_errors() as exc:
        print(f"error: {remote.aws_message(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted (the execution goes on; `fanout cancel` stops it)", file=sys.stderr)
        return EXIT_FAILED


def _submit(connection: Any, args: argparse.Namespace) -> int:
    from fanout import remote

    submission = remote.prepare(Path(args.job), args.model, connection.target.input_bucket)
    arn = remote.start(connection, submission, args.name)
    lines = [f"items: s3://{connection.target.input_bucket}/{key}" for key in submission.uploads]
    lines += [f"started: {arn}", f"job_id: {submission.job_id}"]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:
        # the reader has gone (| head -n 0): the wait goes on, and the results still reach --out
        from fanout.cli import _drop_stdout

        _drop_stdout()
    if not args.wait:
        return EXIT_OK
    described, snapshot = remote.wait(connection, arn, quiet=args.quiet)
    return _finished(connection, described, submission.job_id, Path(args.out), snapshot.line())


def _finished(connection: Any, described: dict[str, Any], job_id: str, out: Path, figures: str) -> int:
    from fanout import remote

    state = described["status"]
    if state == "FAILED" and described.get("error") == "InvalidJob":
        print(f"error: invalid job: {described.get('cause')}", file=sys.stderr)
        return EXIT_INVALID
    target = remote.download(connection, job_id, out)
    if target is None:
        print(f"error: the execution ended {state}: {described.get('error')}: {described.get('cause')}", file=sys.stderr)
        return EXIT_FAILED
    result: Result = json.loads((target / "result.json").read_text())
    _print_result(result, target, f"execution {described['name']}: {state}; {figures}")
    return {"complete": EXIT_OK, "partial": EXIT_PARTIAL}.get(result.get("status", "failed"), EXIT_FAILED)


def _print_result(result: Result, target: Path, first: str) -> None:
    counts, usage = result["counts"], result["usage"]
    cost = usage.get("estimated_cost_usd")
    print(first)
    print(
        f"job {result['job_id']}: {result['status']}\n"
        f"  items {counts['items']}  tasks {counts['tasks']}  ok {counts['ok']}  invalid {counts['invalid']}  "
        f"failed {counts['failed']}  skipped {counts.get('skipped', 0)}\n"
        # result.json's usage is the run's own: what it called, and the requests earlier runs' records answered
        f"  model calls {usage['model_calls']} made, {usage.get('requests_reused', 0)} requests reused  "
        f"tokens {usage['input_tokens']} in / {usage['output_tokens']} out  "
        f"cost {'unknown' if cost is None else f'${cost:.4f}'}"
    )
    print(f"report: {target / 'report.md'}")
    if (target / "report.html").exists():
        print(f"view: fanout view {target}")
    print(f"result: {target / 'result.json'}")


def _status(connection: Any, args: argparse.Namespace) -> int:
    from fanout import remote

    doc = remote.status(connection, args.ref)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    if "execution" in doc:
        line = f"execution {doc['execution']}: {doc['execution_status']} (started {doc['started']})"
        if doc.get("error"):
            line += f"; {doc['error']}: {doc.get('cause')}"
        print(line)
        p = doc["progress"]
        cost = "unknown" if p["cost_usd"] is None else f"${p['cost_usd']:.4f}"
        eta = "" if p["eta_seconds"] is None or doc["execution_status"] != "RUNNING" else f"  eta {p['eta_seconds']:.0f} s"
        print(
            f"  tasks {p['done']}/{p['tasks']} done  failed {p['failed']}  invalid {p['invalid']}  "
            f"throttled {p['throttled']}  retried {p['retried']}  cost {cost}{eta}"
        )
    print(f"job_id: {doc['job_id']}" + (f"  result: {doc['result_status']}" if "result_status" in doc else "  result: none yet"))
    return EXIT_OK


def _results(connection: Any, args: argparse.Namespace) -> int:
    from fanout import remote

    target = remote.download(connection, args.job_id, Path(args.out))
    if target is None:
        raise FanoutError(
            f"job_id: no results for {args.job_id!r} yet (fanout status {args.job_id} says how the run is going)", "job_id"
        )
    result: Result = json.loads((target / "result.json").read_text())
    _print_result(result, target, f"downloaded s3://{connection.target.results_bucket}/{layout.result_prefix(args.job_id)}")
    return EXIT_OK


def _cancel(connection: Any, args: argparse.Namespace) -> int:
    from fanout import remote

    done = remote.cancel(connection, args.ref)
    if done["stopped"]:
        print(f"stopped: {done['execution_arn']}")
    else:
        print(f"execution {done['execution']} had already ended")
    if done["lease_freed"]:
        print(f"job_id {done['job_id']} is free to run again")
    return EXIT_OK


def _view(path: Path) -> int:
    page = path / "report.html" if path.is_dir() else path
    if not page.is_file():
        raise FanoutError(f"{path}: no report.html there; give the folder a run wrote (OUT/<job_id>)", "dir")
    import webbrowser

    url = page.resolve().as_uri()
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    print(f"{'opened' if opened else 'report'}: {page.resolve()}")
    return EXIT_OK
