"""The lease one run holds on its job_id from Plan to Aggregate, so two runs of a job never share its records.

``runs/<job_id>/lease.json`` names its holder (the execution ARN), when it was taken and when the holder last
refreshed it. A run that finds the lease held asks Step Functions (DescribeExecution) whether the holder still
runs. A holder that ended without releasing it (stopped, failed, timed out, aborted, a Lambda out of memory)
has its lease taken over at once; one still running keeps it, and the new run is refused with a message that
names the holder. Only a holder that cannot be asked about (a lease without an execution ARN) loses its lease
by age: ``ttl_seconds`` after its last refresh.

Every write is an S3 conditional write (Amazon S3 User Guide, "How to prevent object overwrites with
conditional writes"): ``If-None-Match: *`` creates the lease only where there is none, and a takeover
writes with ``If-Match`` on the ETag it read, so of two runs that race for one lease exactly one wins; the
other gets 412 PreconditionFailed (or 409 ConditionalRequestConflict) and looks again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from fanout_core.store import LEASE

# a lease whose holder cannot be asked about is taken over this long after its last refresh
TTL_SECONDS = 3600.0
# a running job writes its lease again when the last write is older than this (RunBatch does it)
REFRESH_SECONDS = 300.0
# the answers of a conditional write that lost: someone else wrote (or deleted) the lease since it was read
_LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409")
_ROUNDS = 5

# DescribeExecution's status of an execution, or None when it cannot be asked
Describe = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as the refusal message tells it."""

    execution: str
    taken: float
    refreshed: float
    status: str | None  # RUNNING, or None when the holder could not be asked about

    def refusal(self, job_id: str, now: float) -> str:
        running = f"running for {(now - self.taken) / 60:.0f} min" if self.taken else "running"
        if self.status is None:
            running += f", last active {(now - self.refreshed) / 60:.0f} min ago"
        stop = f"aws stepfunctions stop-execution --execution-arn {self.execution}"
        return (
            f"job_id: '{job_id}' is already running (execution {self.execution}, {running}); wait for it to end, "
            f"or stop it ({stop}) and start again: the new run resumes from its records; or use a new job_id"
        )


def execution_status(sfn: Any) -> Describe:
    """DescribeExecution through ``sfn``: the holder's status, "MISSING" for an execution that does not exist."""

    def describe(execution: str) -> str | None:
        if not execution.startswith("arn:"):
            return None  # a name only (a lease written without the ARN): nothing to ask
        try:
            status: str = sfn.describe_execution(executionArn=execution)["status"]
            return status
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ExecutionDoesNotExist":
                return "MISSING"
            if code == "InvalidArn":
                return None
            raise

    return describe


class Lease:
    """``runs/<job_id>/lease.json`` in the results bucket."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self.s3, self.bucket, self.key = s3, bucket, prefix + LEASE

    def take(
        self, execution: str, now: float, describe: Describe | None = None, ttl_seconds: float = TTL_SECONDS
    ) -> Holder | None:
        """Claim the lease for ``execution``; None when it is ours, else the holder that keeps it."""
        body = {"execution": execution, "taken": now, "refreshed": now}
        holder: Holder | None = None
        for _ in range(_ROUNDS):
            if self._put(body, IfNoneMatch="*"):
                return None
            read = self._read()
            if read is None:
                continue  # released between the two calls: create it again
            held, etag = read
            holder = _holder(held)
            if holder.execution == execution:
                # the same execution again (a retried Plan): it keeps what it took
                if self._put({**body, "taken": holder.taken or now}, IfMatch=etag):
                    return None
                continue
            status = describe(holder.execution) if describe is not None else None
            holder = Holder(holder.execution, holder.taken, holder.refreshed, status)
            ended = status not in (None, "RUNNING") or (status is None and now - holder.refreshed > ttl_seconds)
            if not ended:
                return holder
            if self._put(body, IfMatch=etag):
                return None
            # another run took it over first: look again at who holds it now
        return holder

    def refresh(self, execution: str, now: float, every_seconds: float = REFRESH_SECONDS, written: float | None = None) -> bool:
        """Write the lease again when ``execution`` holds it and its last write is older than ``every_seconds``.

        ``written``: a time the lease is known to have been written at or before (Plan's take, in the batch file).
        Within ``every_seconds`` of it the lease is not read: whoever holds it now, its last write is no older
        (a holder's refreshes only move forward), so there would be nothing to write.
        """
        if written is not None and now - written < every_seconds:
            return False
        read = self._read()
        if read is None:
            return False
        held, etag = read
        holder = _holder(held)
        if holder.execution != execution or now - holder.refreshed < every_seconds:
            return False
        return self._put({**held, "refreshed": now}, IfMatch=etag)

    def release(self, execution: str) -> bool:
        """Delete the lease when ``execution`` (its ARN, or its name) holds it; True when it was deleted.

        The delete is conditional on the ETag read (Amazon S3 User Guide, "How to perform conditional deletes":
        DeleteObject with If-Match, 412 PreconditionFailed when the object changed), so a run never deletes a
        lease another run has taken over since, even between its read and its delete.
        """
        read = self._read()
        if read is None:
            return False
        held, etag = read
        if not holds(_holder(held).execution, execution):
            return False
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
            return True
        except ClientError as exc:
            if _code(exc) in _LOST:
                return False
            raise

    def _put(self, body: dict[str, Any], **condition: str) -> bool:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=data, ContentType="application/json", **condition)
            return True
        except ClientError as exc:
            if _code(exc) in _LOST:
                return False
            raise

    def _read(self) -> tuple[dict[str, Any], str] | None:
        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            held = json.loads(got["Body"].read())
        except ValueError:
            held = {}
        return (held if isinstance(held, dict) else {}), str(got["ETag"])


def holds(holder: str, execution: str) -> bool:
    """Whether the lease's ``holder`` is ``execution``, each given as an execution ARN or its name."""
    if holder.startswith("arn:") and execution.startswith("arn:"):
        return holder == execution
    # Aggregate knows its execution by name ($$.Execution.Name): an execution ARN ends in ":<name>"
    return _name(holder) == _name(execution)


def _name(execution: str) -> str:
    return execution.rsplit(":", 1)[-1] if execution.startswith("arn:") else execution


def _holder(held: dict[str, Any]) -> Holder:
    taken = _number(held.get("taken"))
    return Holder(str(held.get("execution") or "?"), taken, _number(held.get("refreshed")) or taken, None)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
