"""A local run's memory does not grow with its run data: moto keeps large bodies on disk, the CLI drops the task list."""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout import runtime
from fanout.cli import main
from fanout.runtime import RESULTS_BUCKET, freeze_startup_objects, local_aws, raise_open_files_limit

FAST_SIM = "sim:latency_ms=0,jitter_ms=0,seed=3"


def resident_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process's resident size from /proc")
def test_large_bodies_in_the_local_store_stay_out_of_the_process_memory() -> None:
    # Given the local runtime's S3
    with local_aws() as _:
        s3 = boto3.client("s3")
        gc.collect()
        before = resident_mb()

        # When 200 MB of run data is written to it, in bodies the size of batch files and record chunks
        body = b"x" * (512 * 1024)
        for n in range(400):
            s3.put_object(Bucket=RESULTS_BUCKET, Key=f"runs/j/records/b{n:05d}.jsonl", Body=body)
        del body
        gc.collect()
        grown = resident_mb() - before

        # Then the process holds far less than the data (the bodies are in temporary files), and each reads back whole
        assert grown < 60, f"the process grew by {grown:.0f} MB for 200 MB of bodies"
        back = s3.get_object(Bucket=RESULTS_BUCKET, Key="runs/j/records/b00399.jsonl")["Body"].read()
        assert back == b"x" * (512 * 1024)


def test_the_open_files_limit_is_raised_for_the_bodies_on_disk() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        # Given a process that may open 256 files; When the local runtime raises the limit
        now = raise_open_files_limit(4096)

        # Then it may open 4,096 (or as many as the hard limit allows)
        expected = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        assert now == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_run_does_not_hold_the_task_list_the_cli_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a job of 600 tasks, and a look at the process's objects when the execution starts (before Plan runs)
    from fanout.runtime import LocalRuntime

    items = [{"id": f"t-{k}", "text": f"ticket {k}"} for k in range(200)]
    job = {
        "pattern": "voting",
        "votes": 3,
        "prompt": "Classify: {text}",
        "items": items,
        "aggregate": {"strategy": "majority"},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    task_lists: list[int] = []
    real_start = LocalRuntime.start

    def start(self: LocalRuntime, job_input: Any, name: str) -> str:
        gc.collect()
        task_lists.extend(
            len(o)
            for o in gc.get_objects()
            if isinstance(o, list) and len(o) == 600 and isinstance(o[0], dict) and "prompt" in o[0] and "task_id" in o[0]
        )
        return real_start(self, job_input, name)

    monkeypatch.setattr(LocalRuntime, "start", start)

    # When it runs
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--model", FAST_SIM, "--quiet"])

    # Then it completes, and no list of its 600 rendered tasks was alive while it ran
    assert code == 0
    assert task_lists == []


def test_the_runtime_s_startup_objects_are_frozen_while_it_runs_and_unfrozen_after() -> None:
    # Given no frozen objects; When the local runtime is set up
    assert gc.get_freeze_count() == 0
    with local_aws():
        # Then what it set up (moto, botocore's models, the parsed state machine) is out of the collector's walks
        assert gc.get_freeze_count() > 10_000

    # And once it is gone, nothing stays frozen
    assert gc.get_freeze_count() == 0


class _Cycle:
    """Garbage only the cyclic collector frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def test_the_first_runtime_s_freeze_collects_only_the_young_garbage_and_walks_no_full_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a process in which nothing was frozen yet, and fresh garbage in a cycle
    monkeypatch.setattr(runtime, "_frozen_after_full", [0])
    assert gc.get_freeze_count() == 0
    garbage = weakref.ref(_Cycle())
    full = _full_collections()

    # When the start-up objects are frozen
    assert freeze_startup_objects()
    try:
        # Then the fresh garbage was collected, not frozen, without a full collection's walk of every object
        assert garbage() is None
        assert _full_collections() == full
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _old_garbage() -> weakref.ref[_Cycle]:
    alive = _Cycle()
    gc.collect()  # moves it, still referenced, into the oldest generation
    return weakref.ref(alive)


@pytest.mark.parametrize("grown", [True, False])
def test_a_later_freeze_collects_the_oldest_garbage_once_that_generation_grew_by_a_quarter(
    monkeypatch: pytest.MonkeyPatch, grown: bool
) -> None:
    # Given garbage in the oldest generation, which holds a quarter more objects than the last freeze, or fewer
    garbage = _old_garbage()
    oldest = len(gc.get_objects(2))
    monkeypatch.setattr(runtime, "_frozen_after_full", [int(oldest / 1.3) if grown else oldest])
    full = _full_collections()

    # When the start-up objects are frozen
    assert freeze_startup_objects()
    try:
        # Then the old garbage was freed by a full collection when the generation had grown, and left alone if not
        assert (garbage() is None) is grown
        assert _full_collections() == full + grown
    finally:
        gc.unfreeze()
        gc.collect()


def test_runtimes_one_after_another_do_not_freeze_what_the_ended_ones_left_again_and_again() -> None:
    # Given runtimes set up one after another in one process (a test session, serve)
    frozen = []
    for _ in range(4):
        with local_aws():
            frozen.append(gc.get_freeze_count())

    # Then what the ended ones left is freed before it grows the frozen objects by more than a quarter
    assert max(frozen) <= frozen[0] * 1.3, frozen


def test_a_second_runtime_builds_its_clients_from_the_service_models_the_first_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a runtime that built an S3 and a Step Functions client
    with local_aws():
        boto3.client("s3", region_name="us-east-1").list_buckets()
        boto3.client("stepfunctions", region_name="us-east-1").list_state_machines()
    import botocore.loaders

    reads: list[str] = []
    real_load = botocore.loaders.JSONFileLoader.load_file

    def counting(self: Any, file_path: str) -> Any:
        reads.append(file_path)
        return real_load(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counting)

    # When a second runtime builds the same clients and calls them
    with local_aws():
        boto3.client("s3", region_name="us-east-1").list_buckets()
        boto3.client("stepfunctions", region_name="us-east-1").list_state_machines()

    # Then no service model file was read again: the first runtime's parsed models serve the second
    assert not [path for path in reads if "service-2" in path or "endpoint-rule-set" in path], reads


def test_the_shared_loader_s_search_paths_stay_as_one_session_makes_them() -> None:
    # Given three runtimes one after another
    for _ in range(3):
        with local_aws():
            loader = boto3.DEFAULT_SESSION._loader  # type: ignore[union-attr]
            paths = list(loader.search_paths)

    # Then the loader they share lists each folder once (every boto3 session appends its own data folder)
    assert len(paths) == len(set(paths)), paths


def test_a_runtime_inside_a_callers_own_mock_keeps_the_callers_session() -> None:
    # Given a caller's own mock, with its own default session
    from moto import mock_aws

    with mock_aws():
        boto3.setup_default_session(region_name="eu-west-1")
        callers = boto3.DEFAULT_SESSION

        # When a local runtime runs inside it
        with local_aws():
            inside = boto3.DEFAULT_SESSION

        # Then the runtime used the caller's session and left it in place
        assert inside is callers
        assert boto3.DEFAULT_SESSION is callers
