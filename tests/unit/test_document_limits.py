"""A folder or prefix of documents is checked from its listing before any file is read: links, kinds, formats, sizes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from documents_fixtures import xlsx_with
from moto import mock_aws

from fanout_core import documents
from fanout_core.documents import document_items, local_document_items, s3_document_items
from fanout_core.errors import InvalidJob


def folder_items(folder: Path) -> list[dict[str, Any]]:
    return local_document_items(folder, max_items=100, max_item_bytes=10_000)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file read_regular opens, in order."""
    opened: list[Path] = []
    real = documents.read_regular

    def recording(path: Path, limit: int, where: str = "items_uri") -> bytes:
        opened.append(path)
        return real(path, limit, where)

    monkeypatch.setattr(documents, "read_regular", recording)
    return opened


def test_a_link_to_a_file_outside_the_folder_refuses_the_job_by_its_path(tmp_path: Path, reads: list[Path]) -> None:
    # Given a folder holding a text file and a link to a file outside it
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the model")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("fine")
    (docs / "b.txt").symlink_to(secret)

    # When its items are made, the link refuses the job, by its path, before any file is read
    with pytest.raises(InvalidJob) as raised:
        folder_items(docs)
    assert str(raised.value).startswith(f"items_uri: {docs}/b.txt is a symbolic link; ")
    assert "copy the file in instead" in str(raised.value)
    assert raised.value.field == "items_uri"
    assert reads == []


def test_a_linked_folder_refuses_the_job_too(tmp_path: Path, reads: list[Path]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("elsewhere")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("fine")
    (docs / "more").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidJob, match=r"docs/more is a symbolic link"):
        folder_items(docs)
    assert reads == []


def test_a_fifo_in_the_folder_is_refused_without_opening_it(tmp_path: Path, reads: list[Path]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("fine")
    os.mkfifo(docs / "pipe.txt")
    with pytest.raises(InvalidJob, match=r"docs/pipe.txt is not a regular file"):
        folder_items(docs)
    assert reads == []


def test_an_unsupported_format_is_refused_from_the_listing_before_any_file_is_read(tmp_path: Path, reads: list[Path]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("fine")
    (docs / "photo.png").write_bytes(b"\x89PNG" + b"\0" * 1000)
    with pytest.raises(InvalidJob, match=r"docs/photo.png: cannot read .png files; fanout reads "):
        folder_items(docs)
    assert reads == []


def test_the_files_of_a_folder_together_are_capped_before_any_is_read(
    tmp_path: Path, reads: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 100 bytes for the whole folder, and three files of 40 bytes
    monkeypatch.setattr(documents, "MAX_FOLDER_BYTES", 100)
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (docs / name).write_text("x" * 40)

    # Then the third file takes the folder over the cap: refused, with what to do, nothing read
    with pytest.raises(InvalidJob) as raised:
        folder_items(docs)
    assert str(raised.value) == (
        f"items_uri: the files in {docs}/ add up to more than 100 bytes, what one job reads at once; "
        "split them into several folders (one job each)"
    )
    assert reads == []
    # and two of them fit
    (docs / "c.txt").unlink()
    assert [i["id"] for i in folder_items(docs)] == ["a.txt", "b.txt"]
    assert len(reads) == 2


@pytest.fixture
def s3() -> Any:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        client.create_bucket(Bucket="docs")
        yield client


def get_objects(client: Any) -> list[str]:
    keys: list[str] = []
    client.meta.events.register("before-call.s3.GetObject", lambda params, **_: keys.append(params["Key"]))
    return keys


def test_an_s3_prefix_is_refused_by_format_and_total_from_its_listing_before_any_object_is_read(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched = get_objects(s3)
    s3.put_object(Bucket="docs", Key="in/a.txt", Body=b"x" * 40)
    s3.put_object(Bucket="docs", Key="in/b.bin", Body=b"\0" * 40)
    with pytest.raises(InvalidJob, match=r"items_uri: s3://docs/in/b.bin: cannot read .bin files"):
        s3_document_items(s3, "docs", "in/", max_items=10, max_item_bytes=1000)
    assert fetched == []

    monkeypatch.setattr(documents, "MAX_FOLDER_BYTES", 60)
    s3.delete_object(Bucket="docs", Key="in/b.bin")
    s3.put_object(Bucket="docs", Key="in/c.txt", Body=b"y" * 40)
    with pytest.raises(InvalidJob, match=r"the files in s3://docs/in/ add up to more than 60 bytes"):
        s3_document_items(s3, "docs", "in/", max_items=10, max_item_bytes=1000)
    assert fetched == []


def test_a_small_workbook_whose_shared_strings_expand_hugely_is_refused_by_its_path() -> None:
    # Given a workbook naming one 100,000-character string in 120 cells (12 million characters of text)
    long = "x" * 100_000
    body = xlsx_with([[long] * 12 for _ in range(10)])
    assert len(body) < 200_000

    # When it is made an item, it is refused by its path, before the text is built
    with pytest.raises(InvalidJob) as raised:
        document_items([("sheets/big.xlsx", body)], shown="docs/")
    assert str(raised.value).startswith("items_uri: docs/sheets/big.xlsx: its cells expand to more than ")
    assert "split the workbook" in str(raised.value)

    # and a workbook under the cap still reads
    (item,) = document_items([("small.xlsx", xlsx_with([[long] * 3]))])
    assert item["text"] == "\t".join([long] * 3)
