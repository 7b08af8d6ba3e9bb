"""``python -m fanout serve``: the stack's S3 and Step Functions APIs on 127.0.0.1, for any AWS client.

moto runs in server mode in this process: S3 and Step Functions answer on 127.0.0.1, the stack's two
buckets and its state machine (the same ASL file, through ``LocalRuntime``) are created in it, and moto's
interpreter runs every execution. Its ``lambda:invoke`` calls are answered in-process by the real handlers
through the runtime's botocore hook (the interpreter builds its clients on boto3's default session); the
handlers' S3 client reaches the same server through ``AWS_ENDPOINT_URL_S3``.

The S3 upload rule is bridged here, because moto's EventBridge cannot target Step Functions: the input
bucket has EventBridge notifications on, as in the stack, and every event moto's S3 sends to EventBridge
is also evaluated against the rule's pattern from ``infra/job_rule.py``; a match starts an execution with
the rule's input transformer applied. Hooking moto's notification point (rather than polling the bucket)
sees every object-creating call (PutObject, POST, CopyObject, CompleteMultipartUpload) once, in order,
the overwrite of an existing key included, and costs nothing while idle.

Output: one JSON line (endpoint, region, state machine ARN, buckets), then one JSON line per execution as
it starts and as it ends, whoever started it. Ctrl-C or SIGTERM stops the server and exits 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TextIO

import boto3

from fanout import moto_patches
from fanout.resources import job_rule_module
from fanout.runtime import (
    _LOCAL_ENV,
    ACCOUNT,
    INPUT_BUCKET,
    REGION,
    RESULTS_BUCKET,
    LocalRuntime,
    caller_session,
)
from fanout_core.handlers import _clients
from fanout_core.providers.registry import ProviderRegistry

job_rule = job_rule_module()

HOST = "127.0.0.1"
NAME_LIMIT = 80  # Step Functions' longest execution name
POLL_SECONDS = 0.2
# the reason S3 gives in an EventBridge event, by moto's notification event name
_REASONS = {
    "s3:ObjectCreated:Put": "PutObject",
    "s3:ObjectCreated:Post": "POST Object",
    "s3:ObjectCreated:Copy": "CopyObject",
    "s3:ObjectCreated:CompleteMultipartUpload": "CompleteMultipartUpload",
}


@dataclass(frozen=True)
class S3Change:
    """What moto's S3 told EventBridge about, copied out of the request thread."""

    event_name: str
    detail_type: str
    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None


def serve(port: int, out: TextIO | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; 0 on a clean stop, 1 when the port cannot be used."""
    stream = out or sys.stdout
    try:
        import flask  # noqa: F401 - moto's server mode runs on it
    except ImportError:
        print("error: moto's server mode needs flask; install the local requirements (make test does)", file=sys.stderr)
        return 1
    try:
        _check_port(port)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        print(f"error: cannot listen on {HOST}:{port} ({reason}); pass another --port", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    # our lines are the only thing on stdout; anything else printed in this process (handler logs) goes to stderr
    saved_stdout, sys.stdout = sys.stdout, sys.stderr
    lock = threading.Lock()

    def emit(line: dict[str, Any]) -> None:
        with lock:
            _emit(stream, line)

    endpoint = LocalEndpoint(port, emit=emit)
    try:
        endpoint.start()
        if not stop.is_set():
            emit(endpoint.describe())
        while not stop.wait(0.5):
            pass
    finally:
        endpoint.stop()
        sys.stdout = saved_stdout
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    emit({"event": "stopped"})
    return 0


class LocalEndpoint:
    """moto in server mode with the stack's resources, the S3 upload rule bridged, and executions reported."""

    def __init__(self, port: int, emit: Callable[[dict[str, Any]], None]) -> None:
        self.port = port
        self.endpoint_url = f"http://{HOST}:{port}"
        self.emit = emit
        self.runtime = LocalRuntime()
        self._server: Any = None
        self._stop = threading.Event()
        self._changes: queue.Queue[S3Change] = queue.Queue()
        self._triggers: dict[str, str] = {}  # execution name -> what started it, for the bridge's executions
        self._threads: list[threading.Thread] = []
        self._undo = contextlib.ExitStack()

    def start(self) -> None:
        from moto.core.config import default_user_config
        from moto.server import ThreadedMotoServer

        moto_patches.check_version()
        # everything changed here is put back by stop(), in reverse order
        self._undo.callback(_restore_environ([*_LOCAL_ENV, "MOTO_PORT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SFN"]))
        # a job naming a bedrock: model calls Bedrock with the caller's credentials, read before the local ones are set
        self._undo.enter_context(_clients.using_providers(ProviderRegistry(bedrock_session=caller_session())))
        for name in ("moto", "werkzeug"):
            self._undo.callback(_restore_level(logging.getLogger(name)))
            logging.getLogger(name).setLevel(logging.CRITICAL)
        saved_filters = warnings.filters[:]
        self._undo.callback(lambda: setattr(warnings, "filters", saved_filters))
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        saved_config = default_user_config.get("stepfunctions")
        self._undo.callback(lambda: _put_back(default_user_config, "stepfunctions", saved_config))
        default_user_config["stepfunctions"] = {"execute_state_machine": True}
        self._undo.callback(moto_patches.cache_jsonpath_parsing())
        self._undo.callback(moto_patches.name_nameless_executions())
        self._undo.callback(moto_patches.atomic_conditional_writes())
        self._undo.callback(moto_patches.stopped_executions_stay_stopped())
        self._undo.callback(moto_patches.aws_sdk_member_casing())
        self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]  # the port chosen, when asked for 0
        self.endpoint_url = f"http://{HOST}:{self.port}"
        os.environ.update(
            {
                **_LOCAL_ENV,
                # the interpreter's clients go to localhost:MOTO_PORT; the handlers' and ours to this server
                "MOTO_PORT": str(self.port),
                "AWS_ENDPOINT_URL_S3": self.endpoint_url,
                "AWS_ENDPOINT_URL_SFN": self.endpoint_url,
            }
        )
        self.runtime.install()
        self._undo.callback(self.runtime.uninstall)
        # as the stack's input bucket: its events go to EventBridge
        boto3.client("s3", region_name=REGION).put_bucket_notification_configuration(
            Bucket=INPUT_BUCKET, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
        self._undo.callback(moto_patches.hook_s3_eventbridge(_changes_to(self._changes.put)))
        for target in (self._bridge, self._watch):
            thread = threading.Thread(target=target, name=f"fanout-{target.__name__.strip('_')}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint_url,
            "region": REGION,
            "state_machine_arn": self.runtime.state_machine_arn,
            "input_bucket": INPUT_BUCKET,
            "results_bucket": RESULTS_BUCKET,
        }

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._undo.close()

    # -- the S3 upload rule ---------------------------------------------------
    def _bridge(self) -> None:
        pattern = job_rule.event_pattern(INPUT_BUCKET)
        sfn = boto3.client("stepfunctions", region_name=REGION)
        while not self._stop.is_set():
            try:
                change = self._changes.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            event = eventbridge_event(change)
            where = f"s3://{change.bucket}/{change.key}"
            if not job_rule.matches(pattern, event):
                if change.detail_type == "Object Created" and change.bucket == INPUT_BUCKET:
                    self.emit({"event": "ignored", "object": where, "rule": f"only {job_rule.KEY_WILDCARD} starts a job"})
                continue
            name = execution_name(change.key)
            self._triggers[name] = where
            try:
                sfn.start_execution(
                    stateMachineArn=self.runtime.state_machine_arn, name=name, input=json.dumps(job_rule.transform(event))
                )
            except Exception as exc:  # a failed start is reported, and the next upload is still bridged
                self.emit({"event": "error", "object": where, "error": f"{type(exc).__name__}: {exc}"})

    # -- one line per execution as it starts and ends -------------------------
    def _watch(self) -> None:
        sfn = boto3.client("stepfunctions", region_name=REGION)
        running: set[str] = set()
        seen: set[str] = set()
        while not self._stop.wait(POLL_SECONDS):
            try:
                listed = [
                    e
                    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=self.runtime.state_machine_arn)
                    for e in page["executions"]
                ]
            except Exception:  # the server is stopping
                continue
            for execution in sorted(listed, key=lambda e: e["startDate"]):
                arn, name = execution["executionArn"], execution["name"]
                if arn not in seen:
                    seen.add(arn)
                    running.add(arn)
                    trigger = self._triggers.pop(name, "StartExecution")
                    self.emit({"event": "started", "execution": name, "trigger": trigger, "execution_arn": arn})
                if arn in running and execution["status"] != "RUNNING":
                    running.discard(arn)
                    self.emit(_ended(sfn.describe_execution(executionArn=arn)))


def eventbridge_event(change: S3Change) -> dict[str, Any]:
    """The event S3 sends to EventBridge for a change, in the documented shape."""
    detail_object: dict[str, Any] = {"key": change.key, "size": change.size, "etag": change.etag, "sequencer": _sequencer()}
    if change.version_id:
        detail_object["version-id"] = change.version_id
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": change.detail_type,
        "source": "aws.s3",
        "account": ACCOUNT,
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [f"arn:aws:s3:::{change.bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": change.bucket},
            "object": detail_object,
            "request-id": uuid.uuid4().hex[:16].upper(),
            "requester": ACCOUNT,
            "source-ip-address": HOST,
            "reason": _REASONS.get(change.event_name, change.event_name.split(":")[-1]),
        },
    }


def execution_name(key: str, now: dt.datetime | None = None) -> str:
    """A unique execution name for an uploaded job: <key stem>-<UTC time>, in the characters names allow."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%f")
    stem = re.sub(r"[^0-9A-Za-z_-]+", "-", PurePosixPath(key).stem).strip("-") or "job"
    return f"{stem[: NAME_LIMIT - len(stamp) - 1]}-{stamp}"


def _ended(described: dict[str, Any]) -> dict[str, Any]:
    line: dict[str, Any] = {"event": "ended", "execution": described["name"], "status": described["status"]}
    if described.get("stopDate") and described.get("startDate"):
        line["seconds"] = round((described["stopDate"] - described["startDate"]).total_seconds(), 3)
    if described.get("output"):
        line["output"] = json.loads(described["output"])
    for field in ("error", "cause"):
        if described.get(field):
            line[field] = described[field]
    return line


def _changes_to(deliver: Callable[[S3Change], None]) -> Callable[[Any, Any, str, Any], None]:
    """moto's notification arguments as an S3Change, for the events S3 sends EventBridge."""

    def on_notification(account_id: str, bucket: Any, event_name: str, key: Any) -> None:
        if moto_patches.is_put_of_multipart(event_name, key):
            return
        detail_type = moto_patches.s3_detail_type(event_name)
        if detail_type is None:
            return
        deliver(
            S3Change(
                event_name=str(event_name.value if hasattr(event_name, "value") else event_name),
                detail_type=detail_type,
                bucket=bucket.name,
                key=key.name,
                size=int(key.size),
                etag=key.etag.strip('"'),
                version_id=key.version_id if key.version_id not in (None, "null") else None,
            )
        )

    return on_notification


def _restore_environ(names: list[str]) -> Callable[[], None]:
    saved = {name: os.environ.get(name) for name in names}

    def undo() -> None:
        for name, value in saved.items():
            _put_back(os.environ, name, value)

    return undo


def _restore_level(log: logging.Logger) -> Callable[[], None]:
    level = log.level
    return lambda: log.setLevel(level)


def _put_back(mapping: Any, key: str, value: Any) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _check_port(port: int) -> None:
    """Fail here, with a message, rather than in the server's thread where moto would hang waiting for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))


def _sequencer() -> str:
    return f"{time.time_ns():X}"


def _emit(stream: TextIO, line: dict[str, Any]) -> None:
    stream.write(json.dumps(line, default=str) + "\n")
    stream.flush()
