"""The deployed stack from a laptop: submit a job, watch it, fetch its results, cancel it.

Where the stack is: its CloudFormation outputs (``--stack NAME``: DescribeStacks, outputs
StateMachineArn, InputBucketName and ResultsBucketName); or, for ``fanout serve`` (``--endpoint-url``,
which has no CloudFormation), the state machine named ``fanout`` on that endpoint and serve's buckets, or
serve's first JSON line (``--serve FILE``), or the three named outright. Credentials and region come
from the standard boto3 chain; a local endpoint needs none.

Progress is read from the run itself: its plan (``runs/<job_id>/plan.json``) and its task records
(``runs/<job_id>/records/``) in the results bucket.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fanout.errors import FanoutError
from fanout.files import local_items_path
from fanout.progress import ProgressView, Snapshot, Tally, read_s3_chunks
from fanout_core import layout
from fanout_core.errors import InvalidJob
from fanout_core.job import JOB_ID_PATTERN, check_items, parse_job, safe_job_id
from fanout_core.loading import decode_json, parse_item_file

# StartExecution's input is at most 262,144 bytes (Step Functions API reference, ExecutionStartedEventDetails:
# "Maximum length of 262144"), and every state's payload has the same cap: items of a larger job go to S3
INLINE_INPUT_LIMIT = 64 * 1024
# uploaded items: never under jobs/, where an upload would start an execution of its own
ITEMS_PREFIX = layout.ITEMS
RESULT_FILES = layout.RESULT_FILES
OPTIONAL_FILES = ("report.html",)
NAME_LIMIT = 80  # Step Functions' longest execution name
EXIT_INVALID = 2  # as the CLI exits for bad input
STACK_OUTPUTS = {"StateMachineArn": "state_machine_arn", "InputBucketName": "input_bucket", "ResultsBucketName": "results_bucket"}
SERVE_STATE_MACHINE = "fanout"


@dataclass(frozen=True)
class Target:
    state_machine_arn: str
    input_bucket: str
    results_bucket: str


@dataclass
class Remote:
    """Clients for the stack's state machine and buckets."""

    sfn: Any
    s3: Any
    target: Target

    @property
    def execution_prefix(self) -> str:
        """``arn:...:execution:<machine>:``, to make an execution's ARN from its name."""
        return self.target.state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":"


def connect(
    *,
    stack: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    state_machine_arn: str | None = None,
    input_bucket: str | None = None,
    results_bucket: str | None = None,
    serve_info: str | None = None,
    session: Any = None,
) -> Remote:
    """The clients and the stack's resources, from the options (see the module docstring for the order)."""
    import boto3

    if serve_info is not None:
        info = _serve_line(serve_info)
        endpoint_url = endpoint_url or info.get("endpoint")
        region = region or info.get("region")
        state_machine_arn = state_machine_arn or info.get("state_machine_arn")
        input_bucket = input_bucket or info.get("input_bucket")
        results_bucket = results_bucket or info.get("results_bucket")
    session = session or boto3.Session(region_name=region)
    region = region or session.region_name or ("us-east-1" if endpoint_url else None)
    if region is None:
        raise FanoutError("--region: no AWS region; set AWS_REGION or a profile's region, or pass --region", "--region")
    options: dict[str, Any] = {"region_name": region}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
        if session.get_credentials() is None:
            # a local endpoint (fanout serve) takes any credentials
            options.update(aws_access_key_id="local", aws_secret_access_key="local")
    sfn, s3 = session.client("stepfunctions", **options), session.client("s3", **options)
    given = (state_machine_arn, input_bucket, results_bucket)
    if all(given):
        return Remote(sfn, s3, Target(*given))  # type: ignore[arg-type]
    if stack:
        found = _stack_outputs(session.client("cloudformation", **options), stack)
    elif endpoint_url:
        found = _serve_resources(sfn)
    else:
        raise FanoutError(
            "--stack: name the deployed stack (its outputs name the state machine and buckets), "
            "or pass --endpoint-url for a local `fanout serve`",
            "--stack",
        )
    return Remote(
        sfn,
        s3,
        Target(
            state_machine_arn or found.state_machine_arn,
            input_bucket or found.input_bucket,
            results_bucket or found.results_bucket,
        ),
    )


def _serve_line(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise FanoutError(f"--serve: cannot read {path} ({exc.strerror})", "--serve") from None
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "endpoint" in doc and "state_machine_arn" in doc:
            return doc
    raise FanoutError(f"--serve: {path} holds no line of `fanout serve` naming its endpoint", "--serve")


def _stack_outputs(cloudformation: Any, stack: str) -> Target:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message", str(exc))
        raise FanoutError(f"--stack: cannot describe stack {stack!r} ({message})", "--stack") from None
    except BotoCoreError as exc:
        raise FanoutError(f"--stack: cannot describe stack {stack!r} ({exc})", "--stack") from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    missing = [key for key in STACK_OUTPUTS if key not in outputs]
    if missing:
        raise FanoutError(f"--stack: stack {stack!r} has no output {', '.join(missing)}; is it a fanout stack?", "--stack")
    return Target(**{field: outputs[key] for key, field in STACK_OUTPUTS.items()})


def _serve_resources(sfn: Any) -> Target:
    from fanout.runtime import INPUT_BUCKET, RESULTS_BUCKET

    machines = [m for page in sfn.get_paginator("list_state_machines").paginate() for m in page["stateMachines"]]
    for machine in machines:
        if machine["name"] == SERVE_STATE_MACHINE:
            return Target(machine["stateMachineArn"], INPUT_BUCKET, RESULTS_BUCKET)
    raise FanoutError(
        f"--endpoint-url: no state machine named {SERVE_STATE_MACHINE!r} there; is it `fanout serve`? "
        "Otherwise pass --state-machine-arn, --input-bucket and --results-bucket",
        "--endpoint-url",
    )


# -- submit -----------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    data: dict[str, Any]  # the execution input
    job_id: str
    uploads: dict[str, bytes]  # input bucket key -> body, put before the execution starts
    items: int


def prepare(path: Path, model: str | None, input_bucket: str) -> Submission:
    """The job file checked as Plan will check it, its items moved to the input bucket when large or local.

    Raises InvalidJob (nothing uploaded, nothing started).
    """
    from fanout.cli import _with_model, read_local_items

    try:
        body = path.read_bytes()
    except OSError as exc:
        raise InvalidJob(f"{path}: cannot read the job file ({exc.strerror})", "job") from None
    data = decode_json(body, str(path))
    if not isinstance(data, dict):
        parse_job(data)  # raises the message naming the problem
    if model is not None:
        data = _with_model(data, model)
    job_id = safe_job_id(str(data.get("job_id") or path.stem))
    data = {**data, "job_id": job_id}
    uploads: dict[str, bytes] = {}
    items: list[Any] | None = None
    if isinstance(data.get("items_uri"), str) and not data["items_uri"].startswith("s3://"):
        local = local_items_path(path.parent, data["items_uri"])
        folder = f"{ITEMS_PREFIX}{job_id}/files/"
        items_body, suffix, files = read_local_items(local, data, f"s3://{input_bucket}/{folder}")
        items = parse_item_file(items_body, suffix, "items_uri")
        key = _items_key(job_id, items_body, suffix)
        uploads.update(files)
        uploads[key] = items_body
        data = {**data, "items_uri": f"s3://{input_bucket}/{key}"}
    job = parse_job(data, job_id_default=job_id)
    if items is not None:
        check_items(job, items, where="items_uri")
    elif job.items is not None:
        items = job.items
        if len(json.dumps(data, ensure_ascii=False).encode()) > INLINE_INPUT_LIMIT:
            lines = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode()
            key = _items_key(job_id, lines, ".jsonl")
            uploads[key] = lines
            data = {**{k: v for k, v in data.items() if k != "items"}, "items_uri": f"s3://{input_bucket}/{key}"}
    return Submission(data, job_id, uploads, len(items or []))


def _items_key(job_id: str, body: bytes, suffix: str) -> str:
    # named by content: submitting the same items again reuses the object
    return f"{ITEMS_PREFIX}{job_id}/{hashlib.sha256(body).hexdigest()[:16]}{suffix}"


def start(remote: Remote, submission: Submission, name: str | None = None) -> str:
    """Upload the items, then StartExecution; returns the execution ARN."""
    for key, body in submission.uploads.items():
        remote.s3.put_object(Bucket=remote.target.input_bucket, Key=key, Body=body)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    name = name or f"{submission.job_id[: NAME_LIMIT - len(stamp) - 1]}-{stamp}"
    started = remote.sfn.start_execution(
        stateMachineArn=remote.target.state_machine_arn, name=name, input=json.dumps(submission.data, ensure_ascii=False)
    )
    return str(started["executionArn"])


# -- watching -----------------------------------------------------------------------


def job_id_of(described: dict[str, Any]) -> str:
    """The job_id an execution runs, as Plan names it: the input's job_id, the job object's stem, or the execution name."""
    try:
        given = json.loads(described.get("input") or "null")
    except ValueError:
        given = None
    if isinstance(given, dict):
        if isinstance(given.get("job_id"), str):
            # Plan refuses any other job_id, so none that could name a path outside a folder is returned as it is
            job_id = str(given["job_id"])
            return job_id if re.fullmatch(JOB_ID_PATTERN, job_id) else safe_job_id(job_id)
        detail = given.get("detail")
        key = given.get("key") or (detail.get("object", {}).get("key") if isinstance(detail, dict) else None)
        if isinstance(given.get("job_uri"), str):
            key = given["job_uri"]
        if isinstance(key, str) and key:
            return safe_job_id(PurePosixPath(key).stem)
    return safe_job_id(str(described["name"]))


class RunWatch:
    """A run's progress from the results bucket: its plan for the task count, its records for the rest."""

    def __init__(self, remote: Remote, job_id: str, started: dt.datetime) -> None:
        self.remote, self.job_id = remote, job_id
        # a second of slack between the service's clock and S3's
        self.since = started.timestamp() - 1
        self.tally = Tally(0, since=self.since, started=started.timestamp())

    def read(self) -> Snapshot:
        s3, bucket = self.remote.s3, self.remote.target.results_bucket
        if not self.tally.total:
            plan = _get(s3, bucket, layout.plan_key(self.job_id))
            if plan is not None and plan[1] >= self.since:
                self.tally.total = int(json.loads(plan[0])["counts"]["tasks"])
        read_s3_chunks(s3, bucket, layout.records_prefix(self.job_id), self.tally)
        return self.tally.snapshot()


def _get(s3: Any, bucket: str, key: str) -> tuple[bytes, float] | None:
    try:
        got = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return None
    return got["Body"].read(), got["LastModified"].timestamp()


def wait(
    remote: Remote, execution_arn: str, *, quiet: bool, poll_seconds: float = 1.0, stream: Any = None
) -> tuple[dict[str, Any], Snapshot]:
    """Until the execution ends, showing its progress; returns DescribeExecution's answer and the last figures."""
    described = remote.sfn.describe_execution(executionArn=execution_arn)
    watch = RunWatch(remote, job_id_of(described), described["startDate"])
    with ProgressView(watch.read, quiet=quiet, stream=stream) as view:
        while described["status"] == "RUNNING":
            view.update()
            time.sleep(poll_seconds)
            described = remote.sfn.describe_execution(executionArn=execution_arn)
        view.update()
    return described, watch.read()


def download(remote: Remote, job_id: str, out: Path) -> Path | None:
    """results/<job_id>/ into out/<job_id>/; None when the job has no result.json yet.

    The job_id must be one Plan accepts (no ``/``, no ``..``), and every file written must resolve inside ``out``
    (a symlink there cannot send a download elsewhere).
    """
    from fanout.local_records import write_whole

    if not isinstance(job_id, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise FanoutError(
            f"job_id: {job_id!r} is not a job_id (letters, digits, '.', '_' and '-', at most 64, starting with a letter "
            "or digit); give the job_id fanout submit printed",
            "job_id",
            EXIT_INVALID,
        )
    bodies: dict[str, bytes] = {}
    for name in RESULT_FILES:
        got = _get(remote.s3, remote.target.results_bucket, layout.result_key(job_id, name))
        if got is None:
            if name in OPTIONAL_FILES:
                continue
            return None
        bodies[name] = got[0]
    target = out / job_id
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, body in bodies.items():
            write_whole(_inside(out, target / name), body)  # whole or not at all, as every file the CLI writes
    except OSError as exc:
        raise FanoutError(f"--out: cannot write {target} ({exc.strerror})", "--out") from None
    return target


def _inside(out: Path, path: Path) -> Path:
    """``path`` when it resolves inside ``out`` (symlinks followed), else refused naming --out."""
    root, resolved = out.resolve(), path.resolve()
    if not resolved.is_relative_to(root):
        raise FanoutError(
            f"--out: {path} resolves to {resolved}, outside {root}; remove the link there or choose another --out",
            "--out",
            EXIT_INVALID,
        )
    return path


# -- finding an execution, status, cancel -------------------------------------------


def resolve(remote: Remote, ref: str) -> dict[str, Any] | None:
    """DescribeExecution of an execution ARN or name, or of the latest execution of a job_id; None when none is found."""
    sfn = remote.sfn
    candidates = [ref] if ref.startswith("arn:") else [remote.execution_prefix + ref]
    for arn in candidates:
        try:
            return dict(sfn.describe_execution(executionArn=arn))
        except (sfn.exceptions.ExecutionDoesNotExist, sfn.exceptions.InvalidArn):
            pass
    if ref.startswith("arn:"):
        return None
    # a job_id: the execution holding its lease, else its latest execution named after it
    lease = _get(remote.s3, remote.target.results_bucket, layout.lease_key(ref))
    if lease is not None:
        holder = str(json.loads(lease[0]).get("execution", ""))
        arn = holder if holder.startswith("arn:") else remote.execution_prefix + holder
        try:
            return dict(sfn.describe_execution(executionArn=arn))
        except (sfn.exceptions.ExecutionDoesNotExist, sfn.exceptions.InvalidArn):
            pass
    listed = sfn.list_executions(stateMachineArn=remote.target.state_machine_arn, maxResults=100)["executions"]
    for execution in sorted(listed, key=lambda e: e["startDate"], reverse=True):
        if execution["name"].startswith(ref + "-"):
            described = dict(sfn.describe_execution(executionArn=execution["executionArn"]))
            if job_id_of(described) == ref:
                return described
    return None


def status(remote: Remote, ref: str) -> dict[str, Any]:
    """What is known of an execution or a job_id: the execution's state, the run's figures, the result's status."""
    described = resolve(remote, ref)
    job_id = job_id_of(described) if described is not None else ref
    doc: dict[str, Any] = {"job_id": job_id}
    if described is not None:
        doc["execution"] = described["name"]
        doc["execution_arn"] = described["executionArn"]
        doc["execution_status"] = described["status"]
        doc["started"] = described["startDate"].isoformat()
        if described.get("stopDate"):
            doc["stopped"] = described["stopDate"].isoformat()
        for field in ("error", "cause"):
            if described.get(field):
                doc[field] = described[field]
        doc["progress"] = RunWatch(remote, job_id, described["startDate"]).read().as_dict()
    result = _get(remote.s3, remote.target.results_bucket, layout.result_key(job_id, "result.json"))
    if result is not None:
        summary = json.loads(result[0])
        doc["result_status"] = summary.get("status")
        doc["counts"] = summary.get("counts")
        doc["estimated_cost_usd"] = (summary.get("usage") or {}).get("estimated_cost_usd")
    if described is None and result is None:
        raise FanoutError(f"no execution or job named {ref!r} on {remote.target.state_machine_arn}", "execution")
    return doc


def cancel(remote: Remote, ref: str) -> dict[str, Any]:
    """StopExecution, then the job_id's lease deleted when that execution holds it, so the job_id can run again."""
    described = resolve(remote, ref)
    if described is None:
        raise FanoutError(f"no execution or job named {ref!r} on {remote.target.state_machine_arn}", "execution")
    arn, name = described["executionArn"], described["name"]
    stopped = False
    if described["status"] == "RUNNING":
        remote.sfn.stop_execution(executionArn=arn, error="Cancelled", cause="stopped with fanout cancel")
        stopped = True
    job_id = job_id_of(described)
    from fanout_core.lease import Lease

    # deleted only while this execution holds it (If-Match on the ETag read): a run started since keeps its lease
    freed = Lease(remote.s3, remote.target.results_bucket, layout.run_prefix(job_id)).release(arn)
    return {"execution": name, "execution_arn": arn, "job_id": job_id, "stopped": stopped, "lease_freed": freed}


def aws_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def aws_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', exc)}"
    return str(exc)


Echo = Callable[[str], None]
