"""``python -m fanout serve`` end to end, as a user runs it and driven only by a plain boto3 client."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout.serve import execution_name

ROOT = Path(__file__).resolve().parents[2]
FAST_SIM = "sim:latency_ms=1,jitter_ms=1"
SUMMARY_FIELDS = {"job_id", "status", "counts", "tasks_skipped", "usage", "result_uri", "results_uri", "report_uri", "message"}


def voting_job(**extra: Any) -> dict[str, Any]:
    items = [{"id": "t-1", "text": "Refund took three weeks.", "expected": "negative"}, {"id": "t-2", "text": "Great app."}]
    return {
        "pattern": "voting",
        "votes": 3,
        "model": FAST_SIM,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "items": items,
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
        **extra,
    }


@dataclass
class Served:
    process: subprocess.Popen[str]
    info: dict[str, Any]
    lines: queue.Queue[dict[str, Any]]
    stderr: Path
    seen: list[dict[str, Any]] = field(default_factory=list)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.info["endpoint"],
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def line_where(self, timeout: float = 15, **wanted: Any) -> dict[str, Any]:
        """The first printed line (read so far or next) with these field values."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if all(line.get(k) == v for k, v in wanted.items()):
                    return line
            try:
                self.seen.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no line with {wanted}; printed: {self.seen}") from None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # Given `python -m fanout serve --port N` started from the repository, as a user would
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stderr = tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "fanout", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for text in process.stdout:
            lines.put(json.loads(text))

    threading.Thread(target=read, daemon=True).start()
    try:
        info = lines.get(timeout=60)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"serve printed nothing; stderr: {stderr.read_text()}") from None
    yield Served(process, info, lines, stderr)
    if process.poll() is None:
        process.kill()
        process.wait()


def wait_for(sfn: Any, execution_arn: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING" or time.monotonic() > deadline:
            return described
        time.sleep(0.1)


def execution_named(sfn: Any, machine: str, prefix: str, timeout: float = 10) -> str:
    """The ARN of the execution the upload rule started, found as any client would: by listing them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for execution in sfn.list_executions(stateMachineArn=machine)["executions"]:
            if execution["name"].startswith(prefix):
                return str(execution["executionArn"])
        time.sleep(0.1)
    raise AssertionError(f"no execution named {prefix}*")


def read_json(s3: Any, uri: str) -> Any:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_startup_line_names_the_endpoint_state_machine_and_buckets(served: Served) -> None:
    assert set(served.info) >= {"endpoint", "state_machine_arn", "input_bucket", "results_bucket"}
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", served.info["endpoint"])
    machines = served.client("stepfunctions").list_state_machines()["stateMachines"]
    assert [m["stateMachineArn"] for m in machines] == [served.info["state_machine_arn"]]
    buckets = {b["Name"] for b in served.client("s3").list_buckets()["Buckets"]}
    assert buckets == {served.info["input_bucket"], served.info["results_bucket"]}


def test_an_uploaded_job_runs_to_a_complete_result(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")

    # When a job file is put under jobs/ in the input bucket
    s3.put_object(Bucket=served.info["input_bucket"], Key="jobs/x.json", Body=json.dumps(voting_job()))

    # Then an execution starts on its own, named after the file, and succeeds
    arn = execution_named(sfn, served.info["state_machine_arn"], "x-")
    execution = wait_for(sfn, arn)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")

    # with the Aggregate summary as its small output: status, counts, result URIs, cost
    output = json.loads(execution["output"])
    assert set(output) == SUMMARY_FIELDS
    assert output["job_id"] == "x" and output["status"] == "complete"
    assert output["counts"] == {"items": 2, "tasks": 6, "ok": 6, "invalid": 0, "failed": 0}
    assert output["usage"]["estimated_cost_usd"] == 0.0
    assert output["result_uri"] == f"s3://{served.info['results_bucket']}/results/x/result.json"
    assert len(execution["output"]) < 2000

    # and a complete result.json in the results bucket, under results/<job_id>/
    result = read_json(s3, output["result_uri"])
    assert result["job_id"] == "x" and result["status"] == "complete"
    assert [i["id"] for i in result["items"]] == ["t-1", "t-2"]
    assert all(i["valid_votes"] == 3 and i["answer"] in ("positive", "neutral", "negative") for i in result["items"])

    # and serve said so, one line as it started and one as it ended
    name = arn.rsplit(":", 1)[-1]
    started = served.line_where(event="started", execution=name)
    assert started["trigger"] == f"s3://{served.info['input_bucket']}/jobs/x.json"
    ended = served.line_where(event="ended", execution=name)
    assert ended["status"] == "SUCCEEDED" and ended["output"] == output


def test_a_started_execution_runs_to_a_complete_result(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")

    # When a job is the input of StartExecution, with no name, as the console and the CLI allow
    job = voting_job(job_id="from-api")
    arn = sfn.start_execution(stateMachineArn=served.info["state_machine_arn"], input=json.dumps(job))["executionArn"]

    # Then it succeeds and leaves result.json under its job_id
    execution = wait_for(sfn, arn)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    output = json.loads(execution["output"])
    assert set(output) == SUMMARY_FIELDS and output["status"] == "complete"
    result = read_json(s3, f"s3://{served.info['results_bucket']}/results/from-api/result.json")
    assert result["counts"]["ok"] == 6 and len(result["items"]) == 2
    assert served.line_where(event="started", execution=execution["name"])["trigger"] == "StartExecution"

    # and {"job_uri": ...} runs a job file kept anywhere in S3, named after its file
    s3.put_object(Bucket=served.info["input_bucket"], Key="library/kept.json", Body=json.dumps(voting_job()))
    pointed = sfn.start_execution(
        stateMachineArn=served.info["state_machine_arn"],
        name="kept-1",
        input=json.dumps({"job_uri": f"s3://{served.info['input_bucket']}/library/kept.json"}),
    )["executionArn"]
    assert json.loads(wait_for(sfn, pointed)["output"])["result_uri"].endswith("/results/kept/result.json")


def test_an_invalid_upload_fails_with_invalid_job_naming_the_object_and_field(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")

    s3.put_object(Bucket=served.info["input_bucket"], Key="jobs/broken.json", Body=json.dumps(voting_job(votes=1)))

    execution = wait_for(sfn, execution_named(sfn, served.info["state_machine_arn"], "broken-"))
    assert execution["status"] == "FAILED"
    assert execution["error"] == "InvalidJob"
    assert execution["cause"].startswith(f"s3://{served.info['input_bucket']}/jobs/broken.json: votes: ")
    ended = served.line_where(event="ended", execution=execution["name"])
    assert (ended["status"], ended["error"]) == ("FAILED", "InvalidJob")


HOSTILE_UPLOADS = {
    # name: (the job file's text, the field its Cause names after the object)
    "surrogate": (json.dumps(voting_job(items=[{"id": "a", "text": "\ud800"}])), "items[0].text: contains a lone surrogate"),
    "long-int": (json.dumps(voting_job(votes=0)).replace('"votes": 0', '"votes": ' + "9" * 5000), "votes: an integer of 5000"),
    "deep": (
        json.dumps(voting_job(items=[{"id": "a", "text": 0}])).replace('"text": 0', '"text": ' + "[" * 5000 + "]" * 5000),
        "items[0].text[0]",
    ),
    "nan": (
        json.dumps(voting_job(inference={"temperature": 0})).replace('"temperature": 0', '"temperature": NaN'),
        "inference.temperature: NaN",
    ),
    "list-items-schema": (
        json.dumps(
            voting_job(
                output_schema={"type": "object", "properties": {"t": {"type": "array", "items": 5}}},
                aggregate={"strategy": "threshold", "field": "t"},
            )
        ),
        "output_schema.properties.t.items",
    ),
}


def test_hostile_uploads_and_events_fail_with_invalid_job_naming_the_field(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")
    bucket, machine = served.info["input_bucket"], served.info["state_machine_arn"]

    # Given job files Python's json reads but no step can use, uploaded as a user would
    for name, (text, _) in HOSTILE_UPLOADS.items():
        s3.put_object(Bucket=bucket, Key=f"jobs/hostile-{name}.json", Body=text.encode("utf-8", "surrogatepass"))
    # and S3 events of the wrong shape started by hand
    events = {
        "bad-detail": ({"detail": {"bucket": "b", "object": {"key": "jobs/x.json"}}}, "detail.bucket: must be an object"),
        "bad-key": ({"detail": {"bucket": {"name": bucket}, "object": {"key": 5}}}, "detail.object.key: must be"),
    }
    started = {
        name: sfn.start_execution(stateMachineArn=machine, input=json.dumps(event))["executionArn"]
        for name, (event, _) in events.items()
    }

    # Then each ends in InvalidJob, the Cause naming the object and the field, never a stack trace
    for name, (_, named) in HOSTILE_UPLOADS.items():
        execution = wait_for(sfn, execution_named(sfn, machine, f"hostile-{name}-"))
        assert (execution["status"], execution.get("error")) == ("FAILED", "InvalidJob"), (name, execution.get("cause"))
        assert execution["cause"].startswith(f"s3://{bucket}/jobs/hostile-{name}.json: {named}"), execution["cause"]
        assert "Traceback" not in execution["cause"] and "Error:" not in execution["cause"]
    for name, (_, named) in events.items():
        execution = wait_for(sfn, started[name])
        assert (execution["status"], execution.get("error")) == ("FAILED", "InvalidJob"), (name, execution.get("cause"))
        assert execution["cause"].startswith(named), execution["cause"]


def test_objects_the_rule_does_not_match_start_nothing(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")
    bucket = served.info["input_bucket"]

    for key in ("notes/skipped.json", "jobs/skipped.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(voting_job()))
        served.line_where(event="ignored", object=f"s3://{bucket}/{key}")

    names = [e["name"] for e in sfn.list_executions(stateMachineArn=served.info["state_machine_arn"])["executions"]]
    assert not [n for n in names if n.startswith("skipped")]


def test_execution_names_are_valid_unique_and_short() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    assert execution_name("jobs/ticket-triage.json", now) == "ticket-triage-20260102T030405678901"
    odd = execution_name("jobs/team a/ünï:cødé {1}.json", now)
    assert re.fullmatch(r"[0-9A-Za-z_-]+", odd) and odd.endswith("-20260102T030405678901")
    assert len(execution_name("jobs/" + "x" * 300 + ".json", now)) == 80


def slow_job(job_id: str) -> dict[str, Any]:
    """24 calls of 300 ms, two at a time in batches of two: about four seconds, long enough to act in the middle."""
    items = [{"id": f"t-{n}", "text": f"ticket {n}"} for n in range(8)]
    return voting_job(
        job_id=job_id, items=items, model="sim:latency_ms=300,jitter_ms=1", limits={"max_concurrency": 2, "batch_size": 2}
    )


def record_count(s3: Any, bucket: str, job_id: str) -> int:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{job_id}/records/")
    return int(listed.get("KeyCount", 0))


def until(condition: Any, timeout: float = 20, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start(served: Served, job: dict[str, Any]) -> str:
    sfn = served.client("stepfunctions")
    return str(sfn.start_execution(stateMachineArn=served.info["state_machine_arn"], input=json.dumps(job))["executionArn"])


def lease_exists(s3: Any, bucket: str, job_id: str) -> bool:
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{job_id}/lease.json").get("KeyCount"))


def test_a_stopped_execution_frees_its_job_id_and_the_next_start_resumes(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")
    results = served.info["results_bucket"]

    # Given a job stopped with StopExecution in the middle of its batches
    first = start(served, slow_job("stopped-job"))
    until(lambda: record_count(s3, results, "stopped-job") >= 2, what="two batches' records")
    sfn.stop_execution(executionArn=first, cause="stopped by hand")
    assert wait_for(sfn, first)["status"] == "ABORTED"

    # When the same job is started again at once (its lease still names the stopped execution)
    assert lease_exists(s3, results, "stopped-job")
    second = start(served, slow_job("stopped-job"))

    # Then it runs to the end, and calls the model only for the tasks the first run did not finish
    execution = wait_for(sfn, second, timeout=30)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    counts = read_json(s3, f"s3://{results}/runs/stopped-job/plan.json")["counts"]
    assert counts["tasks"] == 24 and counts["skipped"] >= 4 and counts["skipped"] + counts["pending"] == 24
    output = json.loads(execution["output"])
    assert output["counts"]["ok"] == 24
    # and its output says so
    assert output["tasks_skipped"] == counts["skipped"]
    assert f"{counts['skipped']} tasks finished by an earlier run were not asked again" in output["message"]
    assert not lease_exists(s3, results, "stopped-job")


def test_an_aggregate_that_fails_releases_the_job_id_and_ends_in_job_failed(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")
    results = served.info["results_bucket"]

    # Given a run whose saved job disappears while its batches run, so that Aggregate cannot read it
    first = start(served, slow_job("crashing-job"))
    until(lambda: record_count(s3, results, "crashing-job") >= 1, what="the first batch's records")
    s3.delete_object(Bucket=results, Key="runs/crashing-job/job.json")

    # When the execution ends
    execution = wait_for(sfn, first, timeout=30)

    # Then it failed in JobFailed with what Aggregate failed with, and its lease is gone already
    assert (execution["status"], execution["error"]) == ("FAILED", "JobFailed")
    assert execution["cause"].startswith("aggregation failed (NoSuchKey): ")
    assert not lease_exists(s3, results, "crashing-job")

    # and the job runs again at once, to the end
    again = wait_for(sfn, start(served, slow_job("crashing-job")), timeout=30)
    assert again["status"] == "SUCCEEDED", again.get("cause")


def test_of_two_starts_of_one_job_id_at_once_exactly_one_runs(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")

    # When one job is started twice at the same moment
    arns: list[str] = []
    threads = [threading.Thread(target=lambda: arns.append(start(served, slow_job("twice")))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = [wait_for(sfn, arn, timeout=30) for arn in arns]

    # Then one runs to the end, and the other is refused before any model call, naming the one that runs
    (winner,) = [e for e in ended if e["status"] == "SUCCEEDED"]
    (loser,) = [e for e in ended if e["status"] != "SUCCEEDED"]
    assert (loser["status"], loser["error"]) == ("FAILED", "InvalidJob")
    assert loser["cause"].startswith(f"job_id: 'twice' is already running (execution {winner['executionArn']}, ")
    assert "stop-execution" in loser["cause"] and "use a new job_id" in loser["cause"]
    assert json.loads(winner["output"])["counts"]["ok"] == 24
    assert not lease_exists(s3, served.info["results_bucket"], "twice")


def fenced(text: str, after: str, language: str) -> str:
    """The first fenced block of ``language`` in ``text`` after the phrase ``after``."""
    opening = f"```{language}\n"
    start = text.index(opening, text.index(after)) + len(opening)
    return text[start : text.index("\n```", start)]


def test_the_readmes_try_it_locally_commands_work_as_written(served: Served, tmp_path: Path) -> None:
    # the AWS CLI of this environment (awscli in requirements-dev.txt), first on the commands' PATH
    here = Path(sys.executable).parent
    if not (here / "aws").is_file():
        pytest.fail(f"the README's commands need the AWS CLI: {here / 'aws'} is missing; pip install -r requirements-dev.txt")
    sfn = served.client("stepfunctions")
    machine = served.info["state_machine_arn"]

    # Given the README's job.json and its commands, pointed at this server's port
    readme = (ROOT / "README.md").read_text()
    (tmp_path / "job.json").write_text(fenced(readme, "A job file (`job.json`)", "json"))
    local = readme[readme.index("### Try it locally") :]
    commands = fenced(local, "In another terminal", "sh").replace("http://127.0.0.1:4599", served.info["endpoint"])
    assert "first-triage" in commands and "start-execution" in commands
    before = {e["executionArn"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]}

    # When they run in order, as pasted into a shell that stops at the first failing command
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{here}{os.pathsep}{env.get('PATH', '')}"
    found = subprocess.run(["bash", "-c", "command -v aws"], env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == str(here / "aws")
    done = subprocess.run(["bash", "-e", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    # Then each succeeds, the result is printed, and both executions they started succeeded
    assert done.returncode == 0, done.stderr
    assert '"job_id": "first-triage"' in done.stdout and '"status": "complete"' in done.stdout
    started = [e for e in sfn.list_executions(stateMachineArn=machine)["executions"] if e["executionArn"] not in before]
    assert len(started) == 2
    assert {e["status"] for e in started} == {"SUCCEEDED"}
    # the second run resumed from the first's records: no task was pending, and its output says so
    counts = read_json(served.client("s3"), f"s3://{served.info['results_bucket']}/runs/first-triage/plan.json")["counts"]
    assert (counts["pending"], counts["skipped"]) == (0, counts["tasks"])
    outputs = [json.loads(sfn.describe_execution(executionArn=e["executionArn"])["output"]) for e in started]
    assert sorted(o["tasks_skipped"] for o in outputs) == [0, 6]


def test_a_job_at_tier_batch_runs_its_batch_inference_jobs_on_the_endpoint(served: Served) -> None:
    s3, sfn = served.client("s3"), served.client("stepfunctions")
    # Given a job with enough tasks for a batch inference job
    items = [{"id": f"t-{n}", "text": f"ticket {n}"} for n in range(34)]
    job = voting_job(job_id="batched", items=items, limits={"tier": "batch"})

    # When it is started on the local endpoint
    arn = sfn.start_execution(stateMachineArn=served.info["state_machine_arn"], input=json.dumps(job))["executionArn"]

    # Then its calls are answered by the in-process batch job, and every item is there
    execution = wait_for(sfn, arn)
    assert execution["status"] == "SUCCEEDED", execution.get("cause")
    result = read_json(s3, f"s3://{served.info['results_bucket']}/results/batched/result.json")
    assert result["counts"]["ok"] == 102 and len(result["items"]) == 34
    assert result["tier"]["batch_inference"]["answered"] == 102
    assert set(result["usage"]["by_model"]) == {f"{FAST_SIM}@batch"}


def test_ctrl_c_stops_cleanly(served: Served) -> None:
    # runs last in this module: it stops the server the other tests use
    started = time.monotonic()
    served.process.send_signal(signal.SIGINT)

    assert served.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert served.line_where(event="stopped")
    assert "Traceback" not in served.stderr.read_text()
