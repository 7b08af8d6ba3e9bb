"""A job that forces limits.mode "inline" with more batches than an inline Map takes is refused, naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fanout_core.errors import InvalidJob
from fanout_core.job import parse_job
from fanout_core.planning import INLINE_MAX_BATCHES, batching_for, choose_mode, expand_tasks


def job(mode: str, batches: int) -> dict[str, Any]:
    items = [{"id": f"i{n}", "text": "x"} for n in range(batches)]
    return {"pattern": "voting", "votes": 2, "prompt": "{text}", "items": items, "limits": {"mode": mode, "batch_size": 2}}


def mode_of(data: dict[str, Any]) -> str:
    checked = parse_job(data)
    tasks = expand_tasks(checked, checked.items or [], "sim")
    return choose_mode(checked.limits.mode, batching_for(checked, len(tasks), 50))


def test_inline_with_more_batches_than_an_inline_map_takes_is_refused_by_the_field() -> None:
    with pytest.raises(
        InvalidJob, match=rf"^limits.mode: 'inline' runs at most {INLINE_MAX_BATCHES} batches and this job has"
    ) as refused:
        mode_of(job("inline", INLINE_MAX_BATCHES + 1))
    assert refused.value.field == "limits.mode"
    assert "'distributed'" in str(refused.value)


def test_inline_up_to_the_limit_runs_inline_and_auto_moves_a_larger_job_to_distributed() -> None:
    assert mode_of(job("inline", INLINE_MAX_BATCHES)) == "inline"
    assert mode_of(job("auto", INLINE_MAX_BATCHES + 1)) == "distributed"
    assert mode_of(job("distributed", INLINE_MAX_BATCHES + 1)) == "distributed"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_refuses_it_before_anything_runs_or_is_written(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fanout.cli import main

    path = tmp_path / "big-inline.json"
    path.write_text(json.dumps(job("inline", INLINE_MAX_BATCHES + 1)))
    out = tmp_path / "out"

    code = main([command, str(path), *(["--out", str(out)] if command == "run" else [])])

    assert code == 2
    assert capsys.readouterr().err.startswith("error: invalid job: limits.mode: 'inline' runs at most")
    assert not out.exists()
