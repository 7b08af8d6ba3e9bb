"""The job_id lease: its holder named, taken over at once when the holder no longer runs, never won by two runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout_core.errors import InvalidJob
from fanout_core.lease import REFRESH_SECONDS, TTL_SECONDS, Lease, execution_status
from fanout_core.settings import Settings
from fanout_core.steps import plan

ARN = "arn:aws:states:us-east-1:123456789012:execution:fanout:"
JOB: dict[str, Any] = {"job_id": "j", "pattern": "voting", "votes": 2, "prompt": "{text}", "items": [{"id": "a", "text": "x"}]}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="results")
        yield s3, boto3.client("stepfunctions")


def lease(s3: Any) -> Lease:
    return Lease(s3, "results", "runs/j/")


def held(s3: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(s3.get_object(Bucket="results", Key="runs/j/lease.json")["Body"].read())
    return body


def statuses(**by_name: str) -> Any:
    return lambda execution: by_name.get(execution.removeprefix(ARN))


def test_a_free_job_id_is_taken_and_names_its_holder(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    assert lease(s3).take(ARN + "one", 100.0) is None
    assert held(s3) == {"execution": ARN + "one", "taken": 100.0, "refreshed": 100.0}


def test_a_running_holder_keeps_its_lease_and_the_refusal_says_who_and_what_to_do(aws: tuple[Any, Any]) -> None:
    # Given a lease held by an execution that still runs
    s3, _ = aws
    lease(s3).take(ARN + "one", 100.0)

    # When another execution asks for it
    holder = lease(s3).take(ARN + "two", 160.0, describe=statuses(one="RUNNING"))

    # Then it is refused, and the message names the holder, how long it has run, and the ways out
    assert holder is not None and holder.execution == ARN + "one" and holder.status == "RUNNING"
    message = holder.refusal("j", 160.0)
    assert message.startswith(f"job_id: 'j' is already running (execution {ARN}one, running for 1 min)")
    assert f"aws stepfunctions stop-execution --execution-arn {ARN}one" in message
    assert "resumes from its records" in message and "use a new job_id" in message
    assert held(s3)["execution"] == ARN + "one"


@pytest.mark.parametrize("status", ["ABORTED", "FAILED", "TIMED_OUT", "SUCCEEDED", "MISSING"])
def test_a_holder_that_ended_loses_its_lease_at_once(aws: tuple[Any, Any], status: str) -> None:
    s3, _ = aws
    lease(s3).take(ARN + "one", 100.0)

    # a second later, well inside any age limit
    assert lease(s3).take(ARN + "two", 101.0, describe=statuses(one=status)) is None
    assert held(s3)["execution"] == ARN + "two"


def test_the_same_execution_again_keeps_its_lease(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    lease(s3).take(ARN + "one", 100.0)
    assert lease(s3).take(ARN + "one", 130.0, describe=statuses(one="RUNNING")) is None
    assert held(s3)["taken"] == 100.0


def test_a_holder_that_cannot_be_asked_about_loses_its_lease_by_age_only(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    lease(s3).take("exec-by-name", 100.0)
    assert lease(s3).take(ARN + "two", 100.0 + TTL_SECONDS - 1, describe=statuses()) is not None
    assert lease(s3).take(ARN + "two", 100.0 + TTL_SECONDS + 1, describe=statuses()) is None


def test_of_two_runs_taking_over_one_lease_exactly_one_wins(aws: tuple[Any, Any]) -> None:
    # Given a lease left by an execution that was stopped
    s3, _ = aws
    lease(s3).take(ARN + "dead", 100.0)
    outcome: dict[str, Any] = {}

    def describe_racing(execution: str) -> str:
        # while "a" is asking about the dead holder (after it read the lease's ETag), "b" takes the lease over
        if execution == ARN + "dead" and "b" not in outcome:
            outcome["b"] = lease(s3).take(ARN + "b", 200.0, describe=statuses(dead="ABORTED"))
            return "ABORTED"
        return "RUNNING"

    # When "a" goes on to take over with the ETag it read
    outcome["a"] = lease(s3).take(ARN + "a", 200.0, describe=describe_racing)

    # Then its conditional write fails, it looks again, and it is refused: "b" holds the lease, alone
    assert outcome["b"] is None
    assert outcome["a"] is not None and outcome["a"].execution == ARN + "b"
    assert held(s3)["execution"] == ARN + "b"


def test_a_long_run_refreshes_its_own_lease_only(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    lease(s3).take(ARN + "one", 100.0)

    assert not lease(s3).refresh(ARN + "one", 100.0 + REFRESH_SECONDS / 2)  # still fresh: no write
    assert not lease(s3).refresh(ARN + "other", 100.0 + REFRESH_SECONDS + 1)  # not its lease
    assert lease(s3).refresh(ARN + "one", 100.0 + REFRESH_SECONDS + 1)
    assert held(s3) == {"execution": ARN + "one", "taken": 100.0, "refreshed": 100.0 + REFRESH_SECONDS + 1}


def test_execution_status_asks_step_functions(aws: tuple[Any, Any]) -> None:
    # Given a state machine with one running and one stopped execution (moto does not run them)
    _, sfn = aws
    machine = sfn.create_state_machine(
        name="fanout",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/r",
    )["stateMachineArn"]
    running = sfn.start_execution(stateMachineArn=machine, name="running")["executionArn"]
    stopped = sfn.start_execution(stateMachineArn=machine, name="stopped")["executionArn"]
    sfn.stop_execution(executionArn=stopped)
    describe = execution_status(sfn)

    assert describe(running) == "RUNNING"
    assert describe(stopped) == "ABORTED"
    assert describe(f"{machine.replace(':stateMachine:', ':execution:')}:never-started") == "MISSING"
    assert describe("exec-by-name") is None


def test_plan_takes_over_the_lease_of_a_stopped_execution_and_refuses_while_one_runs(aws: tuple[Any, Any]) -> None:
    # Given a job planned by an execution that was then stopped
    s3, sfn = aws
    machine = sfn.create_state_machine(
        name="fanout",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/r",
    )["stateMachineArn"]
    first, second, third = (sfn.start_execution(stateMachineArn=machine, name=n)["executionArn"] for n in ("1", "2", "3"))
    settings = Settings(results_bucket="results")
    plan(JOB, "1", s3=s3, settings=settings, execution_arn=first, sfn=sfn)
    sfn.stop_execution(executionArn=first)

    # When a new execution plans the same job, it runs at once
    assert plan(JOB, "2", s3=s3, settings=settings, execution_arn=second, sfn=sfn)["job_id"] == "j"

    # Then a third, while the second still runs, is refused by the field, naming the second
    with pytest.raises(InvalidJob, match=rf"^job_id: 'j' is already running \(execution {second}, ") as refused:
        plan(JOB, "3", s3=s3, settings=settings, execution_arn=third, sfn=sfn)
    assert refused.value.field == "job_id"


def test_a_batch_of_a_long_run_refreshes_the_runs_lease(aws: tuple[Any, Any]) -> None:
    # Given a planned job whose lease was last written longer ago than the refresh interval
    from fanout_core.providers.registry import ProviderRegistry
    from fanout_core.steps import run_subtask

    s3, _ = aws
    planned = plan(JOB, "one", s3=s3, settings=Settings(results_bucket="results"), execution_arn=ARN + "one")
    stale = {**held(s3), "refreshed": held(s3)["refreshed"] - REFRESH_SECONDS - 1}
    s3.put_object(Bucket="results", Key="runs/j/lease.json", Body=json.dumps(stale))
    # (planned as long ago: the batch file says when Plan took the lease)
    batch = json.loads(s3.get_object(Bucket="results", Key="runs/j/batches/00000.json")["Body"].read())
    batch["lease_taken"] = stale["refreshed"]
    s3.put_object(Bucket="results", Key="runs/j/batches/00000.json", Body=json.dumps(batch))

    # When one of its batches runs
    event = {"job_id": "j", "run_uri": planned["run_uri"], "batch": {"index": 0}, "threads": 1, "execution_arn": ARN + "one"}
    run_subtask(event, s3=s3, provider_for=ProviderRegistry().provider_for)

    # Then the lease says the run was active just now, and still names it
    assert held(s3)["execution"] == ARN + "one"
    assert held(s3)["refreshed"] > stale["refreshed"] + REFRESH_SECONDS


def test_a_batch_soon_after_plan_does_not_read_the_lease(aws: tuple[Any, Any]) -> None:
    # Given a job just planned, its lease taken by Plan
    from fanout_core.providers.registry import ProviderRegistry
    from fanout_core.steps import run_subtask

    s3, _ = aws
    planned = plan(JOB, "one", s3=s3, settings=Settings(results_bucket="results"), execution_arn=ARN + "one")
    before = held(s3)
    reads: list[str] = []
    s3.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: reads.append(params["Key"]))

    # When one of its batches runs, within the refresh interval of the take
    event = {"job_id": "j", "run_uri": planned["run_uri"], "batch": {"index": 0}, "threads": 1, "execution_arn": ARN + "one"}
    run_subtask(event, s3=s3, provider_for=ProviderRegistry().provider_for)

    # Then it read no lease (there was nothing to write), and the lease is as Plan wrote it
    assert "runs/j/lease.json" not in reads and "runs/j/batches/00000.json" in reads
    assert held(s3) == before
    # And a refresh told of a write within the interval does not read the lease either
    reads.clear()
    assert not lease(s3).refresh(ARN + "one", before["refreshed"] + REFRESH_SECONDS - 1, written=before["refreshed"])
    assert reads == []


def test_release_deletes_only_the_lease_its_execution_holds(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    # Given a lease that another run took over from "one" (which ended without releasing it)
    lease(s3).take(ARN + "one", 100.0)
    assert lease(s3).take(ARN + "two", 200.0, describe=statuses(one="ABORTED")) is None

    # When "one" releases (its Aggregate, or fanout cancel of it, late), by ARN or by name
    assert lease(s3).release(ARN + "one") is False
    assert lease(s3).release("one") is False

    # Then the lease stays with "two"; and "two" (known by name, as Aggregate knows it) releases it
    assert held(s3)["execution"] == ARN + "two"
    assert lease(s3).release("two") is True
    assert s3.list_objects_v2(Bucket="results").get("KeyCount", 0) == 0
    assert lease(s3).release("two") is False  # nothing left to release


def test_release_is_conditional_on_the_etag_it_read(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    lease(s3).take(ARN + "one", 100.0)
    deletes: list[dict[str, Any]] = []

    # Given a takeover by "two" that lands between the release's read and its delete
    def taken_over_meanwhile(params: dict[str, Any], **_: Any) -> None:
        deletes.append(dict(params))
        s3.put_object(Bucket="results", Key="runs/j/lease.json", Body=json.dumps({"execution": ARN + "two"}).encode())

    s3.meta.events.register_first("before-parameter-build.s3.DeleteObject", taken_over_meanwhile)

    # When "one" releases, its delete names the ETag it read, and so fails: the new holder's lease stays
    assert lease(s3).release(ARN + "one") is False
    assert deletes and deletes[0]["IfMatch"]
    assert held(s3)["execution"] == ARN + "two"
