"""submit / status / results / cancel against `python -m fanout serve`, as a laptop talks to a deployed stack."""

from __future__ import annotations

import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from fanout import remote
from fanout.cli import main
from fanout.errors import FanoutError

ROOT = Path(__file__).resolve().parents[2]
FAST_SIM = "sim:latency_ms=1,jitter_ms=1"


def voting_job(job_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": 3,
        "model": FAST_SIM,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "items": [{"id": "t-1", "text": "Refund took three weeks.", "expected": "negative"}, {"id": "t-2", "text": "Great app."}],
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
        **extra,
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # `python -m fanout serve` on a free port, its first line kept in a file as a user would keep it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with (folder / "stderr.txt").open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "fanout", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for text in process.stdout:
            lines.put(text)

    threading.Thread(target=read, daemon=True).start()
    try:
        first = lines.get(timeout=60)
    except queue.Empty:
        process.kill()
        raise AssertionError(f"serve printed nothing: {(folder / 'stderr.txt').read_text()}") from None
    (folder / "serve.jsonl").write_text(first)
    info = json.loads(first)
    yield {**info, "serve_file": str(folder / "serve.jsonl")}
    process.kill()
    process.wait()


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the laptop of someone with no AWS account: the local endpoint needs no credentials
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def client(served: dict[str, Any], service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=served["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def write(tmp_path: Path, job: dict[str, Any], name: str = "job.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(job))
    return path


def executions(served: dict[str, Any]) -> list[dict[str, Any]]:
    return list(client(served, "stepfunctions").list_executions(stateMachineArn=served["state_machine_arn"])["executions"])


def test_submit_wait_shows_progress_and_downloads_the_results(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job file and the endpoint of `fanout serve`
    path = write(tmp_path, voting_job("remote-wait"))

    # When it is submitted and waited for
    code = main(["submit", str(path), "--endpoint-url", served["endpoint"], "--wait", "--out", str(tmp_path / "out")])

    # Then the run's figures were shown as plain lines (stderr is not a terminal here), and the results downloaded
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "started: arn:aws:states:" in printed.out and "job_id: remote-wait" in printed.out
    assert "tasks 6/6 done  failed 0  invalid 0  throttled 0  retried 0  cost $0.0000" in printed.err
    result = json.loads((tmp_path / "out" / "remote-wait" / "result.json").read_text())
    assert result["status"] == "complete" and result["counts"]["ok"] == 6
    for name in ("results.jsonl", "report.md"):
        assert (tmp_path / "out" / "remote-wait" / name).is_file()
    stored = client(served, "s3").get_object(Bucket=served["results_bucket"], Key="results/remote-wait/result.json")
    assert json.loads(stored["Body"].read()) == result


def test_the_counts_line_includes_the_votes_early_stopping_skipped_locally_and_from_the_stack(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job whose votes all agree, so early stopping skips the last two of each item's five
    job = voting_job("remote-skipped", votes=5, model="sim:latency_ms=1,jitter_ms=0,accuracy=1")
    job["aggregate"] = {**job["aggregate"], "stop_when_agree": 3}
    path = write(tmp_path, job)

    # When it runs locally and on the stack
    assert main(["run", str(path), "--out", str(tmp_path / "local"), "--quiet"]) == 0
    local = capsys.readouterr().out
    submit = ["submit", str(path), "--endpoint-url", served["endpoint"], "--wait", "--quiet", "--out", str(tmp_path / "r")]
    assert main(submit) == 0
    remote = capsys.readouterr().out

    # Then both summaries' counts lines say how many were skipped, as result.json counts them, and the calls made
    for out, folder in ((local, tmp_path / "local"), (remote, tmp_path / "r")):
        counts = json.loads((folder / "remote-skipped" / "result.json").read_text())["counts"]
        assert counts["skipped"] > 0
        assert f"ok {counts['ok']}  invalid 0  failed 0  skipped {counts['skipped']}" in out, out
        assert f"model calls {counts['tasks'] - counts['skipped']} made, 0 requests reused" in out, out


def test_status_and_results_find_a_run_by_job_id_execution_name_or_arn(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, voting_job("remote-status"))
    assert main(["submit", str(path), "--serve", served["serve_file"], "--wait", "--quiet", "--out", str(tmp_path / "a")]) == 0
    arn = next(e["executionArn"] for e in executions(served) if e["name"].startswith("remote-status-"))
    capsys.readouterr()

    for ref in ("remote-status", arn, arn.rsplit(":", 1)[1]):
        assert main(["status", ref, "--serve", served["serve_file"], "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["execution_arn"] == arn and doc["job_id"] == "remote-status"
        assert doc["execution_status"] == "SUCCEEDED" and doc["result_status"] == "complete"
        assert doc["progress"]["done"] == doc["progress"]["tasks"] == 6

    assert main(["results", "remote-status", "--out", str(tmp_path / "b"), "--endpoint-url", served["endpoint"]]) == 0
    assert json.loads((tmp_path / "b" / "remote-status" / "result.json").read_text())["counts"]["tasks"] == 6
    assert main(["results", "never-ran", "--out", str(tmp_path / "c"), "--endpoint-url", served["endpoint"]]) == 1
    assert "no results for 'never-ran' yet" in capsys.readouterr().err


def test_a_large_job_and_a_local_items_file_go_to_the_input_bucket_as_items_uri(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job whose inline items make it larger than an execution input should be
    items = [{"id": f"i-{n}", "text": "x" * 400} for n in range(300)]
    big = write(tmp_path, voting_job("remote-big", items=items, votes=2), "big.json")
    assert big.stat().st_size > remote.INLINE_INPUT_LIMIT

    # When it is submitted
    assert main(["submit", str(big), "--endpoint-url", served["endpoint"], "--wait", "--quiet", "--out", str(tmp_path)]) == 0

    # Then the execution input names an items_uri in the input bucket instead of carrying the items
    out = capsys.readouterr().out
    uri = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("items: "))
    assert uri.startswith(f"s3://{served['input_bucket']}/items/remote-big/")
    arn = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("started: "))
    described = client(served, "stepfunctions").describe_execution(executionArn=arn)
    given = json.loads(described["input"])
    assert "items" not in given and given["items_uri"] == uri
    assert len(described["input"]) < 2000
    result = json.loads((tmp_path / "remote-big" / "result.json").read_text())
    assert [i["id"] for i in result["items"]] == [i["id"] for i in items]

    # and a job whose items_uri is a local file has it uploaded the same way
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items[:3]))
    job = voting_job("remote-file")
    del job["items"]
    local = write(tmp_path, {**job, "items_uri": "items.jsonl"}, "file.json")
    assert main(["submit", str(local), "--endpoint-url", served["endpoint"], "--wait", "--quiet", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "remote-file" / "result.json").read_text())["counts"]["items"] == 3


def test_an_invalid_job_is_refused_before_anything_starts(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(executions(served))
    path = write(tmp_path, voting_job("remote-bad", votes=1))
    assert main(["submit", str(path), "--endpoint-url", served["endpoint"]]) == 2
    assert capsys.readouterr().err.startswith("error: invalid job: votes:")
    assert len(executions(served)) == before


@pytest.mark.parametrize(
    ("args", "reader"),
    # head -n 0 is gone before the first write: the closed pipe is met every time, not only when head is quick
    [([], "head -1"), (["--json"], "head -1"), ([], "head -n 0")],
    ids=["lines", "json", "reader-gone"],
)
def test_status_piped_into_head_ends_quietly(served: dict[str, Any], tmp_path: Path, args: list[str], reader: str) -> None:
    # Given a finished run on the stack
    job_id = f"remote-piped-{len(args)}-{reader[-1]}"
    path = write(tmp_path, voting_job(job_id))
    assert main(["submit", str(path), "--serve", served["serve_file"], "--wait", "--quiet", "--out", str(tmp_path / "a")]) == 0

    # When its status is piped into a reader that takes one line
    status = shlex.join([sys.executable, "-m", "fanout", "status", job_id, "--serve", served["serve_file"], *args])
    piped = subprocess.run(
        ["bash", "-c", f'{status} | {reader}; echo "exit ${{PIPESTATUS[0]}}" >&2'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then there is that line, and no complaint about the closed pipe: the command ends quietly (0, or 141 as
    # a shell reports a writer ended by SIGPIPE)
    if reader == "head -1":
        first = "{" if args else "execution "
        assert piped.stdout.startswith(first) and piped.stdout.count("\n") == 1, piped.stdout
    else:
        assert piped.stdout == ""
    assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr, piped.stderr
    assert piped.stderr.strip().splitlines()[-1] in ("exit 0", "exit 141"), piped.stderr


def test_submit_wait_piped_into_a_reader_gone_still_downloads_the_results(served: dict[str, Any], tmp_path: Path) -> None:
    # Given a job submitted with --wait, its output piped into a reader that is gone before the first line
    path = write(tmp_path, voting_job("remote-piped-wait"))
    submit = shlex.join(
        [sys.executable, "-m", "fanout", "submit", str(path), "--serve", served["serve_file"], "--wait", "--quiet",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip

    # When it runs
    piped = subprocess.run(
        ["bash", "-c", f'{submit} | head -n 0; echo "exit ${{PIPESTATUS[0]}}" >&2'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then it waited for the run and downloaded its results, with no complaint about the closed pipe
    assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr, piped.stderr
    assert piped.stderr.strip().splitlines()[-1] in ("exit 0", "exit 141"), piped.stderr
    saved = tmp_path / "out" / "remote-piped-wait" / "result.json"
    assert saved.is_file(), piped.stderr
    assert json.loads(saved.read_text())["status"] == "complete"


def test_cancel_stops_the_execution_and_frees_the_job_id(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a slow job running on the stack, holding its job_id's lease
    slow = voting_job("remote-cancel", model="sim:latency_ms=1000", limits={"max_concurrency": 1})
    path = write(tmp_path, slow)
    assert main(["submit", str(path), "--endpoint-url", served["endpoint"]]) == 0
    arn = next(line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("started: "))
    s3 = client(served, "s3")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            s3.head_object(Bucket=served["results_bucket"], Key="runs/remote-cancel/lease.json")
            break
        except s3.exceptions.ClientError:
            time.sleep(0.1)
    else:
        raise AssertionError("the run never took its lease")

    # When it is cancelled by its execution name
    assert main(["cancel", arn.rsplit(":", 1)[1], "--endpoint-url", served["endpoint"]]) == 0

    # Then StopExecution was asked for, the lease is gone, and the same job_id runs again at once
    printed = capsys.readouterr().out
    assert f"stopped: {arn}" in printed and "job_id remote-cancel is free to run again" in printed
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=served["results_bucket"], Key="runs/remote-cancel/lease.json")
    code = main(["submit", str(path), "--endpoint-url", served["endpoint"], "--wait", "--quiet", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "remote-cancel" / "result.json").read_text())["status"] == "complete"
    # and the stopped execution ends ABORTED (the local interpreter stops it once its running batch returns)
    sfn = client(served, "stepfunctions")
    deadline = time.monotonic() + 30
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"


def test_the_stack_is_found_by_its_cloudformation_outputs() -> None:
    # DescribeStacks answers as CloudFormation does (Stubber checks the request and response against the API model)
    cloudformation = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    machine = "arn:aws:states:us-east-1:1:stateMachine:f"
    outputs = {"StateMachineArn": machine, "InputBucketName": "in", "ResultsBucketName": "out"}
    stubber = Stubber(cloudformation)
    stack = {
        "StackName": "Fanout",
        "CreationTime": "2026-01-01T00:00:00Z",
        "StackStatus": "CREATE_COMPLETE",
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
    }
    stubber.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": "Fanout"})
    stubber.add_client_error("describe_stacks", "ValidationError", "Stack with id Nope does not exist")
    with stubber:
        target = remote._stack_outputs(cloudformation, "Fanout")
        with pytest.raises(FanoutError, match=r"--stack: cannot describe stack 'Nope' \(Stack with id Nope does not exist\)"):
            remote._stack_outputs(cloudformation, "Nope")
    assert target == remote.Target("arn:aws:states:us-east-1:1:stateMachine:f", "in", "out")


def test_without_a_stack_or_endpoint_the_message_says_what_to_pass(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, voting_job("remote-nowhere"))
    assert main(["submit", str(path), "--region", "us-east-1"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: --stack: name the deployed stack")


def test_a_folder_of_documents_is_uploaded_and_run_as_items(
    served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from documents_fixtures import pdf_with_text

    # Given a job whose items_uri is a local folder of a text, an HTML and a PDF file
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "memo.txt").write_text("Ship it.")
    (docs / "page.html").write_text("<p>Hello <b>there</b></p>")
    (docs / "brief.pdf").write_bytes(pdf_with_text("Quarterly brief"))
    job = {
        "job_id": "remote-docs",
        "pattern": "sectioning",
        "model": FAST_SIM,
        "items_uri": "docs",
        "sections": [{"name": "summary", "prompt": "Summarise: {text}"}],
    }
    path = write(tmp_path, job)

    # When it is submitted and waited for
    assert main(["submit", str(path), "--endpoint-url", served["endpoint"], "--wait", "--quiet", "--out", str(tmp_path)]) == 0

    # Then the items (one per file) and the PDF itself went to the input bucket, and every file is an item
    out = capsys.readouterr().out
    assert "items: s3://fanout-local-input/items/remote-docs/files/brief.pdf" in out
    s3 = client(served, "s3")
    stored = s3.get_object(Bucket=served["input_bucket"], Key="items/remote-docs/files/brief.pdf")["Body"].read()
    assert stored == (docs / "brief.pdf").read_bytes()
    result = json.loads((tmp_path / "remote-docs" / "result.json").read_text())
    assert [i["id"] for i in result["items"]] == ["brief.pdf", "memo.txt", "page.html"]
    assert result["status"] == "complete"
