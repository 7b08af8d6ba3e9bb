"""Documents as items: text of each format, refusals by path, limits, CSV item files, S3 prefixes."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from documents_fixtures import docx_with, pdf_with_text, xlsx_with
from moto import mock_aws

from fanout_core.documents import (
    MAX_DOCUMENT_BYTES,
    csv_items,
    document_items,
    html_text,
    local_document_items,
    neutral_name,
    s3_document_items,
)
from fanout_core.errors import InvalidJob
from fanout_core.job import parse_job
from fanout_core.loading import load_items

HTML = """<!doctype html><html><head><title>Skip me</title><style>p { color: red }</style></head>
<body><h1>Quarterly&nbsp;report</h1><script>alert("no")</script><p>Revenue rose &amp; costs fell.</p>
<ul><li>one</li><li>two</li></ul></body></html>"""


def test_html_keeps_what_a_reader_sees() -> None:
    assert html_text(HTML) == "Quarterly\xa0report\nRevenue rose & costs fell.\none\ntwo"


def test_every_format_gives_an_item_with_its_path_as_id_and_its_text() -> None:
    files = [
        ("notes/a.txt", b"plain text"),
        ("notes/b.md", "# Title\n\u00e9t\u00e9".encode()),
        ("c.html", HTML.encode()),
        ("d.json", b'{"k": 1}'),
        ("reports/q3.pdf", pdf_with_text("Hello from a PDF")),
        ("e.docx", docx_with(["First paragraph", "Second one"])),
        ("f.xlsx", xlsx_with([["region", "sales"], ["north", "12"]])),
    ]
    items = {i["id"]: i for i in document_items(files)}
    assert list(items) == sorted(f[0] for f in files)
    assert items["notes/a.txt"] == {"id": "notes/a.txt", "text": "plain text"}
    assert items["notes/b.md"]["text"] == "# Title\n\u00e9t\u00e9"
    assert items["c.html"]["text"].startswith("Quarterly")
    assert items["d.json"]["text"] == '{"k": 1}'
    assert items["reports/q3.pdf"]["text"] == "Hello from a PDF"
    assert items["e.docx"]["text"] == "First paragraph\nSecond one"
    assert items["f.xlsx"]["text"] == "region\tsales\nnorth\t12"
    # PDF and office files carry what a Bedrock document block needs
    assert items["reports/q3.pdf"]["document"] == {"format": "pdf", "name": "q3", "bytes": len(files[4][1])}
    assert "document" not in items["notes/a.txt"]


def test_a_document_name_is_one_bedrock_accepts() -> None:
    assert neutral_name("x/Report: Q3 (final) ; v2!.pdf") == "Report Q3 (final) v2"
    assert neutral_name("x/\u6f22\u5b57.pdf") == "document"
    assert len(neutral_name("a" * 300 + ".pdf")) == 200


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("bad.pdf", b"%PDF-1.4 not really", "not a readable PDF"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8 text"),
        ("photo.png", b"\x89PNG", "cannot read .png files"),
        ("broken.docx", b"PK\x03\x04 nope", "not a readable office file"),
        ("empty.pdf", pdf_with_text(""), "no text layer"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_by_its_path(name: str, body: bytes, reason: str) -> None:
    with pytest.raises(InvalidJob, match=reason) as raised:
        document_items([("ok.txt", b"fine"), (f"sub/{name}", body)], shown="docs/")
    assert f"items_uri: docs/sub/{name}: " in str(raised.value)
    assert raised.value.field == "items_uri"


def test_a_local_folder_skips_hidden_files_and_applies_the_limits_before_reading(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "b.md").write_text("b")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    items = local_document_items(tmp_path, max_items=10, max_item_bytes=1000)
    assert [i["id"] for i in items] == ["b.md", "sub/a.txt"]

    with pytest.raises(InvalidJob, match=r"more than 1 files, over limits\.max_items"):
        local_document_items(tmp_path, max_items=1, max_item_bytes=1000)
    # a file far over the item limit is refused by its size, not read
    (tmp_path / "huge.txt").write_bytes(b"x" * 5000)
    with pytest.raises(InvalidJob, match=r"huge.txt is 5000 bytes, far over limits.max_item_bytes \(1000\)"):
        local_document_items(tmp_path, max_items=10, max_item_bytes=1000)
    (tmp_path / "huge.txt").unlink()
    big = tmp_path / "big.pdf"
    with big.open("wb") as handle:  # sparse: its size is all that is looked at
        handle.truncate(MAX_DOCUMENT_BYTES + 1)
    with pytest.raises(InvalidJob, match="over the 4500000 a Bedrock document may be"):
        local_document_items(tmp_path, max_items=10, max_item_bytes=10**7)


def test_an_empty_folder_says_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(InvalidJob, match="no files in"):
        local_document_items(tmp_path, max_items=10, max_item_bytes=1000)


def test_csv_items_take_their_field_names_from_the_header() -> None:
    body = b'id,text,expected\nt-1,"Refund took, three weeks.",negative\nt-2,Great app.,positive\n'
    assert csv_items(body, "items_uri") == [
        {"id": "t-1", "text": "Refund took, three weeks.", "expected": "negative"},
        {"id": "t-2", "text": "Great app.", "expected": "positive"},
    ]
    with pytest.raises(InvalidJob, match="line 2 has more fields than the header"):
        csv_items(b"id,text\na,b,c\n", "items_uri")
    with pytest.raises(InvalidJob, match="column 2 of the header has no name"):
        csv_items(b"id,\na,b\n", "items_uri")
    with pytest.raises(InvalidJob, match="no header row"):
        csv_items(b"", "items_uri")


@pytest.fixture
def s3() -> object:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="docs")
        yield client


def job_for(items_uri: str, **limits: int) -> object:
    return parse_job(
        {"pattern": "voting", "votes": 2, "prompt": "Summarise: {text}", "items_uri": items_uri, "limits": limits},
        job_id_default="docs",
    )


def test_plan_reads_an_s3_prefix_of_documents_one_item_per_object(s3: object) -> None:
    client: object = s3
    for key, body in {
        "in/a.txt": b"alpha",
        "in/deep/b.html": b"<p>beta</p>",
        "in/c.pdf": pdf_with_text("gamma"),
        "in/folder/": b"",
        "other/x.txt": b"not under the prefix",
    }.items():
        client.put_object(Bucket="docs", Key=key, Body=body)  # type: ignore[attr-defined]
    items = load_items(client, job_for("s3://docs/in/"))
    assert [(i["id"], i["text"]) for i in items] == [("a.txt", "alpha"), ("c.pdf", "gamma"), ("deep/b.html", "beta")]


def test_an_s3_prefix_is_refused_by_the_object_that_cannot_be_read_or_by_the_limits(s3: object) -> None:
    client: object = s3
    client.put_object(Bucket="docs", Key="in/a.txt", Body=b"alpha")  # type: ignore[attr-defined]
    client.put_object(Bucket="docs", Key="in/b.pdf", Body=b"garbage")  # type: ignore[attr-defined]
    with pytest.raises(InvalidJob, match=r"items_uri: s3://docs/in/b.pdf: not a readable PDF"):
        load_items(client, job_for("s3://docs/in/"))
    with pytest.raises(InvalidJob, match="more than 1 files"):
        s3_document_items(client, "docs", "in/", max_items=1, max_item_bytes=1000)
    with pytest.raises(InvalidJob, match=r"no files in s3://docs/none/"):
        load_items(client, job_for("s3://docs/none/"))


def test_an_s3_csv_items_file_is_read_by_rows(s3: object) -> None:
    client: object = s3
    client.put_object(Bucket="docs", Key="items.csv", Body=b"id,text\na,first\nb,second\n")  # type: ignore[attr-defined]
    items = load_items(client, job_for("s3://docs/items.csv"))
    assert items == [{"id": "a", "text": "first"}, {"id": "b", "text": "second"}]


def test_the_converse_request_with_a_document_is_one_the_bedrock_api_accepts() -> None:
    from botocore.stub import Stubber

    from fanout_core.documents import converse_documents
    from fanout_core.providers.base import ModelRequest
    from fanout_core.providers.bedrock import converse_request

    # Given a task of a PDF item whose bytes the batch has read
    pdf = pdf_with_text("Hello")
    task = {"document": {"format": "pdf", "name": "q3", "bytes": len(pdf), "uri": "s3://b/k.pdf"}, "document_bytes": pdf}
    request = ModelRequest(task_id="q3.pdf#summary", prompt="Summarise: Hello", documents=converse_documents(task))

    # When it becomes Converse parameters and is sent through a client checked against the API model
    params = converse_request("amazon.nova-lite-v1:0", request)
    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    reply = {
        "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
        "metrics": {"latencyMs": 1},
    }
    stubber.add_response("converse", reply, params)
    with stubber:
        client.converse(**params)

    # Then the document block comes first, with the file's bytes, and the prompt text after it
    content = params["messages"][0]["content"]
    assert content == [{"document": {"format": "pdf", "name": "q3", "source": {"bytes": pdf}}}, {"text": "Summarise: Hello"}]


def test_only_bedrock_tasks_read_the_document_and_each_file_is_read_once(s3: object) -> None:
    from fanout_core.documents import attach_documents

    client: object = s3
    client.put_object(Bucket="docs", Key="in/a.pdf", Body=b"%PDF-bytes")  # type: ignore[attr-defined]
    document = {"format": "pdf", "name": "a", "uri": "s3://docs/in/a.pdf"}
    tasks = [
        {"model": "bedrock:amazon.nova-lite-v1:0", "document": document},
        {"model": "bedrock:amazon.nova-lite-v1:0", "document": document},
        {"model": "openai:http://127.0.0.1:1/v1#m", "document": document},
        {"model": "bedrock:amazon.nova-lite-v1:0", "document": {**document, "uri": "s3://docs/in/gone.pdf"}},
    ]
    attach_documents(tasks, client)
    assert [t.get("document_bytes") for t in tasks] == [b"%PDF-bytes", b"%PDF-bytes", None, None]
    assert tasks[0]["document_bytes"] is tasks[1]["document_bytes"]


def test_a_document_field_an_item_brings_itself_becomes_no_block_unless_well_formed() -> None:
    from fanout_core.documents import converse_documents

    good = {"format": "pdf", "name": "q3"}
    assert converse_documents({"document": good, "document_bytes": b"%PDF"})
    for bad in ({"format": "exe", "name": "q3"}, {"format": "pdf", "name": "../etc/passwd"}, {"format": "pdf"}, "pdf"):
        assert converse_documents({"document": bad, "document_bytes": b"%PDF"}) == ()
    assert converse_documents({"document": good}) == ()


def test_an_older_html_page_is_read_in_the_charset_it_declares() -> None:
    page = '<html><head><meta charset="windows-1252"></head><body><p>caf\u00e9 \u2013 na\u00efve</p></body></html>'
    (item,) = document_items([("old.html", page.encode("windows-1252"))])
    assert item["text"] == "caf\u00e9 \u2013 na\u00efve"
    with pytest.raises(InvalidJob, match="no <meta charset>"):
        document_items([("bad.html", "<p>caf\u00e9</p>".encode("latin-1"))])
