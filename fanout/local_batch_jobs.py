"""Bedrock model invocation jobs answered in this process, as the local runtime answers Lambda (moto has none).

The state machine's ``aws-sdk:bedrock:createModelInvocationJob`` /
``getModelInvocationJob`` / ``stopModelInvocationJob`` tasks reach botocore
through moto's interpreter, and Plan's ``list_model_invocation_jobs`` /
``stop_model_invocation_job`` (an earlier run's jobs still running) and the
join step's (its own run's jobs the state machine did not see end, and
``get_model_invocation_job`` while they stop) go through boto3; a
``before-send`` hook on the default session answers them here. A created
job runs its records at once through the job's provider (the simulator by
default, or Bedrock's Converse for a ``bedrock:`` model) and writes
Bedrock's output layout to (moto) S3: under the job's output URI, a folder
named by the job id holding ``<input file>.out`` (``recordId``,
``modelInput``, and ``modelOutput`` as a Converse response body, or
``error``) and ``manifest.json.out`` ("View the results of a batch
inference job", batch-inference-results.html). Its first
GetModelInvocationJob says ``InProgress``, the next its end.

Settings (environment), to rehearse what Bedrock can do to a job:

- ``FANOUT_LOCAL_BATCH_JOB_STATUS``: ``Failed`` (no output at all),
  ``Expired`` or ``Stopped`` (the first half of the records answered, the
  rest not), ``InProgress`` (the job writes nothing and does not end while
  the setting says so, until StopModelInvocationJob stops it; looked at
  once the setting is gone, it runs its records then: a slow job); unset:
  ``Completed``, or ``PartiallyCompleted`` when some records failed;
- ``FANOUT_LOCAL_BATCH_STOPPED_SHARE``: the share of a held job's records it
  had processed when StopModelInvocationJob stopped it (default 0). A
  stopped held job is ``Stopping`` until GetModelInvocationJob looks at it,
  and then ``Stopped`` with the output of that share written (each line a
  billed call), as a Bedrock job that is stopped while it runs;
- ``FANOUT_LOCAL_BATCH_RECORD_ERROR_RATE``: the share of records (picked by
  recordId, the same in every run) answered with an error line.

The simulator needs hints Bedrock does not take (the task id that seeds
its answer, the expected answer it is accurate about): they are read from
the tasks file fanout writes next to each job's input
(fanout_core.batch_inference), so a record gets the answer the same task
gets on-demand.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.awsrequest import AWSResponse

from fanout.raw_body import RawBody
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest, Provider
from fanout_core.providers.bedrock import TOOL_NAME

STATUS_SETTING = "FANOUT_LOCAL_BATCH_JOB_STATUS"
RECORD_ERRORS_SETTING = "FANOUT_LOCAL_BATCH_RECORD_ERROR_RATE"
STOPPED_SHARE_SETTING = "FANOUT_LOCAL_BATCH_STOPPED_SHARE"
OPERATIONS = ("CreateModelInvocationJob", "GetModelInvocationJob", "StopModelInvocationJob", "ListModelInvocationJobs")
_THREADS = 16
_ATTEMPTS = 6


@dataclass
class _Job:
    arn: str
    name: str
    model_id: str
    status: str
    looked: int = 0
    records: int = 0
    errors: int = 0
    submitted: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    params: dict[str, Any] = field(default_factory=dict)  # the CreateModelInvocationJob request
    held: str | None = None  # the job id of a job held InProgress, whose records have not run
    stopping: tuple[str, float] | None = None  # a held job stopped: its job id, and the share of records it processed


class LocalBatchJobs:
    """The model invocation jobs of one local runtime."""

    def __init__(self, provider_for: Callable[[str], Provider], s3: Callable[[], Any], region: str, account: str) -> None:
        self.provider_for = provider_for
        self.s3 = s3
        self.region, self.account = region, account
        self.jobs: dict[str, _Job] = {}
        self.created: list[dict[str, Any]] = []  # the CreateModelInvocationJob requests, as sent
        self.stopped: list[str] = []  # the jobs StopModelInvocationJob named
        self.listed: list[dict[str, Any]] = []  # the ListModelInvocationJobs requests, as sent
        self._lock = threading.Lock()

    def install(self, session: Any) -> None:
        for operation in OPERATIONS:
            session.events.register_first(f"before-send.bedrock.{operation}", self._route)

    def uninstall(self, session: Any) -> None:
        for operation in OPERATIONS:
            session.events.unregister(f"before-send.bedrock.{operation}", self._route)

    def _route(self, request: Any, **_: Any) -> AWSResponse:
        url = urlsplit(request.url)
        path = url.path.split("/model-invocation-job", 1)[1]
        try:
            if path.startswith("s"):  # /model-invocation-jobs: ListModelInvocationJobs
                body = self.list({k: v[0] for k, v in parse_qs(url.query).items()})
            elif not path.strip("/"):
                body = self.create(json.loads(request.body or b"{}"))
            elif path.endswith("/stop"):
                body = self.stop(unquote(path[1:-5]))
            else:
                body = self.get(unquote(path[1:]))
        except _Refused as exc:
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": exc.code}
            return AWSResponse(request.url, exc.status, headers, RawBody(json.dumps({"message": str(exc)}).encode()))
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, RawBody(json.dumps(body).encode()))

    # -- the API ------------------------------------------------------------------------------------------------
    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        for name in ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig"):
            if name not in params:
                raise _Refused("ValidationException", f"{name} is required")
        with self._lock:
            for job in self.jobs.values():
                if job.name == params["jobName"]:
                    return {"jobArn": job.arn}  # the same clientRequestToken: the job it created
            job_id = uuid.uuid4().hex[:12]
            arn = f"arn:aws:bedrock:{self.region}:{self.account}:model-invocation-job/{job_id}"
            job = self.jobs[arn] = _Job(arn, params["jobName"], params["modelId"], "InProgress", params=params)
            self.created.append(params)
        self._run(job, job_id, params)
        return {"jobArn": arn}

    def get(self, arn: str) -> dict[str, Any]:
        job = self.jobs.get(arn)
        if job is None:
            raise _Refused("ResourceNotFoundException", f"no model invocation job {arn}", 404)
        if job.stopping is not None:
            (held, share), job.stopping = job.stopping, None
            self._run(job, held, job.params, stopped_share=share)  # Stopping -> Stopped: what it processed is written
        if job.held is not None and job.status == "InProgress" and os.environ.get(STATUS_SETTING) != "InProgress":
            held, job.held = job.held, None
            self._run(job, held, job.params)  # a slow job: it runs its records now
        job.looked += 1
        status = "InProgress" if job.looked == 1 and job.status != "Stopped" else job.status
        return {**self._summary(job), "status": status}

    def list(self, params: dict[str, str]) -> dict[str, Any]:
        """ListModelInvocationJobs: the jobs whose name contains ``nameContains`` (one page: a local run has few)."""
        self.listed.append(params)
        part = params.get("nameContains", "")
        return {"invocationJobSummaries": [self._summary(job) for job in self.jobs.values() if part in job.name]}

    def _summary(self, job: _Job) -> dict[str, Any]:
        return {
            "jobArn": job.arn,
            "jobName": job.name,
            "modelId": job.model_id,
            "roleArn": job.params.get("roleArn", ""),
            "status": job.status,
            "submitTime": job.submitted,
            "inputDataConfig": job.params.get("inputDataConfig", {}),
            "outputDataConfig": job.params.get("outputDataConfig", {}),
            "totalRecordCount": job.records,
            "errorRecordCount": job.errors,
        }

    def stop(self, arn: str) -> dict[str, Any]:
        job = self.jobs.get(arn)
        if job is None:
            raise _Refused("ResourceNotFoundException", f"no model invocation job {arn}", 404)
        if job.held is not None and job.status == "InProgress":
            # a job that runs goes Stopping, then Stopped (ModelInvocationJobStatus); what it processed is billed
            job.stopping = (job.held, float(os.environ.get(STOPPED_SHARE_SETTING) or 0))
            job.status = "Stopping"
        else:
            job.status = "Stopped"
        job.held = None
        self.stopped.append(arn)
        return {}

    # -- running a job ------------------------------------------------------------------------------------------
    def _run(self, job: _Job, job_id: str, params: dict[str, Any], *, stopped_share: float | None = None) -> None:
        s3 = self.s3()
        source = params["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
        bucket, key = source[5:].split("/", 1)
        lines = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines() if line.strip()]
        hints = _hints(s3, bucket, key)
        ending = "Stopped" if stopped_share is not None else os.environ.get(STATUS_SETTING) or ""
        job.records = len(lines)
        if ending == "InProgress":
            job.status, job.held = ending, job_id
            return
        if ending == "Failed":
            job.status = ending
            return
        answered = lines if ending not in ("Expired", "Stopped") else lines[: len(lines) // 2]
        if stopped_share is not None:
            answered = lines[: int(len(lines) * stopped_share)]
        spec = job.model_id if job.model_id.startswith("sim") else f"bedrock:{job.model_id}"
        provider = self.provider_for(spec)
        rate = float(os.environ.get(RECORD_ERRORS_SETTING) or 0)
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            out = list(pool.map(lambda line: _answer(provider, line, hints, rate), answered))
        job.errors = sum(1 for line in out if "error" in line)
        target = params["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        out_bucket, out_prefix = target[5:].split("/", 1)
        where = f"{out_prefix.rstrip('/')}/{job_id}/"
        body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in reversed(out))  # order not kept
        s3.put_object(Bucket=out_bucket, Key=f"{where}{key.rsplit('/', 1)[-1]}.out", Body=body.encode("utf-8"))
        manifest = {
            "totalRecordCount": len(lines),
            "processedRecordCount": len(out),
            "successRecordCount": len(out) - job.errors,
            "errorRecordCount": job.errors,
            "inputTokenCount": sum(line.get("modelOutput", {}).get("usage", {}).get("inputTokens", 0) for line in out),
            "outputTokenCount": sum(line.get("modelOutput", {}).get("usage", {}).get("outputTokens", 0) for line in out),
        }
        s3.put_object(Bucket=out_bucket, Key=f"{where}manifest.json.out", Body=json.dumps(manifest).encode())
        job.status = ending or ("PartiallyCompleted" if job.errors else "Completed")


def _hints(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The tasks file fanout wrote next to the input: the simulator's hints by recordId."""
    try:
        listed = json.loads(s3.get_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/tasks.json")["Body"].read())
    except Exception:
        return {}
    field_name, schema = listed.get("answer_field"), listed.get("output_schema")
    return {e["record_id"]: {**e["task"], "answer_field": field_name, "output_schema": schema} for e in listed.get("records", [])}


def _picked(record_id: str, rate: float) -> bool:
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def _answer(provider: Provider, line: dict[str, Any], hints: dict[str, Any], error_rate: float) -> dict[str, Any]:
    """One output line: the record's Converse request answered by the provider, as a Converse response body."""
    rid = str(line.get("recordId"))
    body = line.get("modelInput") or {}
    if _picked(rid, error_rate):
        return {
            **line,
            "error": {"errorCode": 400, "errorMessage": "simulated record error (FANOUT_LOCAL_BATCH_RECORD_ERROR_RATE)"},
        }
    if body.get("toolConfig"):
        # as Bedrock answers such a record ("Process multiple prompts with batch inference", batch-inference.html)
        return {**line, "error": {"errorCode": 400, "errorMessage": "tool calling is not supported for Converse batch jobs"}}
    hint = hints.get(rid, {})
    request = _request(rid, body, hint)
    try:
        reply = _invoke(provider, request)
    except ModelError as exc:
        code = 429 if exc.kind == "throttled" else 500 if exc.kind in ("transient", "timeout") else 400
        return {**line, "error": {"errorCode": code, "errorMessage": f"{exc.code}: {exc.message}"}}
    return {**line, "modelOutput": _converse_response(reply, body)}


def _invoke(provider: Provider, request: ModelRequest) -> ModelReply:
    """One record's call; a batch job retries what is throttled or transient itself, and so does this one."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return provider.invoke(request, attempt)
        except ModelError as exc:
            if exc.kind == "permanent" or attempt >= _ATTEMPTS:
                raise
            time.sleep(min(1.0, 0.05 * 2**attempt))


def _request(rid: str, body: dict[str, Any], hint: dict[str, Any]) -> ModelRequest:
    content = body.get("messages", [{}])[0].get("content", [])
    inference = body.get("inferenceConfig") or {}
    # the schema a real model reads in the system prompt (a model without the JSON-schema output format): the
    # simulator takes it from the tasks file instead
    schema = hint.get("output_schema")
    text_format = (body.get("outputConfig") or {}).get("textFormat")
    if text_format:
        schema = json.loads(text_format["structure"]["jsonSchema"]["schema"])
    return ModelRequest(
        task_id=hint.get("task_id", rid),
        prompt="".join(block.get("text", "") for block in content),
        system="".join(block.get("text", "") for block in body.get("system", [])) or None,
        output_schema=schema,
        max_tokens=int(inference.get("maxTokens", 512)),
        temperature=inference.get("temperature"),
        top_p=inference.get("topP"),
        expected=hint.get("expected"),
        answer_field=hint.get("answer_field"),
    )


def _converse_response(reply: ModelReply, body: dict[str, Any]) -> dict[str, Any]:
    if (body.get("toolConfig") or {}).get("tools"):
        block: dict[str, Any] = {"toolUse": {"toolUseId": "t1", "name": TOOL_NAME, "input": reply.output}}
        stop = "tool_use"
    else:
        text = reply.output if isinstance(reply.output, str) else json.dumps(reply.output, ensure_ascii=False)
        block, stop = {"text": text}, "end_turn"
    response: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [block]}},
        "stopReason": "max_tokens" if reply.truncated else stop,
        "usage": {
            "inputTokens": reply.input_tokens,
            "outputTokens": reply.output_tokens,
            "totalTokens": reply.input_tokens + reply.output_tokens,
        },
        "metrics": {"latencyMs": 0},
    }
    if reply.synthetic:
        response["additionalModelResponseFields"] = {"synthetic": True}
    return response


class _Refused(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.status = code, status
