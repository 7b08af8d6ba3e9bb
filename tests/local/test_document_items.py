"""A folder of documents and a CSV file as a job's items, run end to end on the local state machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from documents_fixtures import pdf_with_text

from fanout.cli import main

FAST_SIM = "sim:latency_ms=1,jitter_ms=1"


def summary_job(items_uri: str) -> dict[str, Any]:
    return {
        "job_id": "docs",
        "pattern": "sectioning",
        "items_uri": items_uri,
        "sections": [{"name": "summary", "prompt": "Summarise: {text}"}, {"name": "risks", "prompt": "List risks in: {text}"}],
    }


def test_a_folder_of_text_html_and_pdf_files_runs_one_item_per_file(tmp_path: Path) -> None:
    # Given a folder of documents next to the job file
    docs = tmp_path / "docs"
    (docs / "2026").mkdir(parents=True)
    (docs / "memo.txt").write_text("Ship the new plan on Monday.")
    (docs / "2026" / "page.html").write_text("<html><body><h1>Launch</h1><script>x()</script><p>Go &amp; see.</p></body></html>")
    (docs / "2026" / "brief.pdf").write_bytes(pdf_with_text("Quarterly brief"))
    (tmp_path / "job.json").write_text(json.dumps(summary_job("docs")))

    # When the job runs
    code = main(["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out"), "--quiet", "--model", FAST_SIM])

    # Then each file is one item, named by its path under the folder, in path order, every task answered
    assert code == 0
    result = json.loads((tmp_path / "out" / "docs" / "result.json").read_text())
    assert [i["id"] for i in result["items"]] == ["2026/brief.pdf", "2026/page.html", "memo.txt"]
    assert result["counts"] == {"items": 3, "tasks": 6, "ok": 6, "invalid": 0, "failed": 0}
    job = json.loads((tmp_path / "out" / "docs" / "records" / "_job.json").read_text())
    texts = {i["id"]: i["text"] for i in job["items"]}
    assert texts == {
        "2026/brief.pdf": "Quarterly brief",
        "2026/page.html": "Launch\nGo & see.",
        "memo.txt": "Ship the new plan on Monday.",
    }


def test_a_file_that_cannot_be_read_refuses_the_job_by_its_path_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fine.txt").write_text("ok")
    (docs / "scan.pdf").write_bytes(b"%PDF-1.7 truncated")
    (tmp_path / "job.json").write_text(json.dumps(summary_job("docs")))
    code = main(["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out"), "--quiet", "--model", FAST_SIM])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: invalid job: items_uri: {docs}/scan.pdf: not a readable PDF")
    assert not (tmp_path / "out").exists()


def test_a_csv_items_file_gives_one_item_per_row(tmp_path: Path) -> None:
    (tmp_path / "tickets.csv").write_text("id,text,expected\nt-1,Refund took three weeks.,negative\nt-2,Great app.,positive\n")
    job = {
        "job_id": "csv",
        "pattern": "voting",
        "votes": 3,
        "prompt": "Classify: {text}",
        "items_uri": "tickets.csv",
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["positive", "negative"]}}},
        "aggregate": {"strategy": "majority", "field": "label"},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    code = main(["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out"), "--quiet", "--model", FAST_SIM])
    assert code == 0
    result = json.loads((tmp_path / "out" / "csv" / "result.json").read_text())
    assert [i["id"] for i in result["items"]] == ["t-1", "t-2"]
    assert result["evaluation"]["items_with_expected"] == 2


def test_bedrock_gets_a_pdf_as_a_converse_document_block_and_other_models_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from tests.fakes import Script, fake_server

    # Given a folder holding a PDF and a text file, and a Bedrock model answered by a local Converse endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = pdf_with_text("Quarterly brief")
    (docs / "q3 brief.pdf").write_bytes(pdf)
    (docs / "memo.txt").write_text("Ship it.")
    job = {**summary_job("docs"), "sections": [{"name": "summary", "prompt": "Summarise: {text}"}]}
    (tmp_path / "job.json").write_text(json.dumps({**job, "model": "bedrock:us.amazon.nova-lite-v1:0"}))

    # When the job runs
    with fake_server(Script(answer=lambda body: "a summary"), "bedrock") as (url, served):
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
        assert main(["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    # Then the PDF's request carries the file itself as a document block, before the prompt with its text
    by_text = {r["body"]["messages"][0]["content"][-1]["text"]: r["body"]["messages"][0]["content"] for r in served.requests}
    pdf_content = by_text["Summarise: Quarterly brief"]
    assert pdf_content[0] == {
        "document": {"format": "pdf", "name": "q3 brief", "source": {"bytes": base64.b64encode(pdf).decode()}}
    }
    # and the text file's request is text alone
    assert by_text["Summarise: Ship it."] == [{"text": "Summarise: Ship it."}]
