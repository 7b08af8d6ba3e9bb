"""Documents as items: a folder or an S3 prefix of files, one item per file; CSV and JSON Lines item files.

Each file becomes ``{"id": <path under the prefix>, "text": <its text>}``: txt, md and json as they are,
html with its tags stripped (script and style dropped), PDF through pypdf, docx and xlsx from their XML.
PDF and office files also carry ``document`` (format, a neutral name, size), the shape of a Bedrock
Converse ``document`` content block.

Bedrock's limits for such a block (Bedrock API reference, Message and DocumentBlock): formats pdf, csv,
doc, docx, xls, xlsx, html, txt, md; at most 4.5 MB each and five per message; a name of letters, digits,
single spaces, hyphens, parentheses and square brackets, at most 200 characters.

A file that cannot be read is refused by its path, before any model call; the job's item limits apply
to the items made (``check_items``) and bound what is read before that.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from xml.etree import ElementTree

from fanout_core.errors import InvalidJob

TEXT_FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".json": "json"}
DOCUMENT_FORMATS = {".pdf": "pdf", ".docx": "docx", ".xlsx": "xlsx"}
# Bedrock API reference, Message: "Each document's size must be no more than 4.5 MB"
MAX_DOCUMENT_BYTES = 4_500_000
MAX_NAME_CHARS = 200
# how much larger than the item limit a text file may be before its text is made (html shrinks when stripped)
TEXT_READ_FACTOR = 4
# bounds on what an office file's XML may unpack to (a zip bomb must not exhaust memory)
MAX_XML_BYTES = 50_000_000
# the text a workbook's shared strings may expand to: each string is stored once and may be referenced by any
# number of cells, so a small file can name one long string a million times
MAX_SHEET_CHARS = 10_000_000
# all the files of one folder or prefix together: Plan (512 MB) holds them at once while it makes the items
MAX_FOLDER_BYTES = 100_000_000
SUPPORTED = ", ".join(sorted({*TEXT_FORMATS, *DOCUMENT_FORMATS}))


def is_listed_file(relative: str) -> bool:
    """Files of a folder that are items: not hidden, not a folder marker."""
    parts = PurePosixPath(relative).parts
    return bool(parts) and not relative.endswith("/") and not any(p.startswith(".") for p in parts)


def check_size(relative: str, size: int, max_item_bytes: int, where: str) -> None:
    """Refuse a file before reading it when it cannot make an item: a format fanout does not read, or over the limits."""
    suffix = PurePosixPath(relative).suffix.lower()
    if suffix not in TEXT_FORMATS and suffix not in DOCUMENT_FORMATS:
        raise InvalidJob(f"{where}: {relative}: cannot read {suffix or 'extensionless'} files; fanout reads {SUPPORTED}", where)
    if suffix in DOCUMENT_FORMATS and size > MAX_DOCUMENT_BYTES:
        raise InvalidJob(
            f"{where}: {relative} is {size} bytes, over the {MAX_DOCUMENT_BYTES} a Bedrock document may be; split it",
            where,
        )
    if suffix in TEXT_FORMATS and size > TEXT_READ_FACTOR * max_item_bytes:
        raise InvalidJob(
            f"{where}: {relative} is {size} bytes, far over limits.max_item_bytes ({max_item_bytes}); "
            "shorten it or raise the limit",
            where,
        )


def check_count(count: int, max_items: int, where: str) -> None:
    if count > max_items:
        raise InvalidJob(f"{where}: more than {max_items} files, over limits.max_items; raise it or split the folder", where)


def check_total(total: int, shown: str, where: str) -> None:
    if total > MAX_FOLDER_BYTES:
        raise InvalidJob(
            f"{where}: the files in {shown} add up to more than {MAX_FOLDER_BYTES} bytes, what one job reads at once; "
            "split them into several folders (one job each)",
            where,
        )


def check_text_total(total: int, max_job_bytes: int | None, shown: str, where: str) -> None:
    """The text files of a folder become the items' text: their sizes count against limits.max_job_bytes as listed."""
    if max_job_bytes is not None and total > max_job_bytes:
        from fanout_core.job import job_bytes_message

        raise InvalidJob(job_bytes_message(where, max_job_bytes, f"the text files in {shown}"), where)


def document_items(
    files: Iterable[tuple[str, bytes]], where: str = "items_uri", shown: str = "", uri_prefix: str | None = None
) -> list[dict[str, Any]]:
    """One item per (path under the prefix, content), in path order; errors name the file as ``shown + path``.

    With ``uri_prefix`` (the s3:// prefix the files are read from), a PDF or office item's ``document`` names its object.
    """
    items = []
    for relative, body in sorted(files, key=lambda f: f[0]):
        uri = None if uri_prefix is None else uri_prefix + relative
        items.append(document_item(relative, body, where, shown, uri))
    if not items:
        raise InvalidJob(f"{where}: no files in {shown or 'it'}; give a folder (or s3:// prefix) of {SUPPORTED} files", where)
    return items


def local_document_items(
    folder: Path,
    *,
    max_items: int,
    max_item_bytes: int,
    where: str = "items_uri",
    uri_prefix: str | None = None,
    max_job_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """The files under a local folder, each checked from its ``lstat`` (kind, format, size) before any is read.

    A symbolic link (to a file or a folder) or anything but a regular file or a folder refuses the job by its
    path: a link could reach a file outside the folder. ``uri_prefix`` is where the caller uploads the folder's
    PDF and office files, for their document blocks.
    """
    listed: list[tuple[str, Path]] = []
    total = text_total = 0
    for directory, subdirectories, names in os.walk(folder, onerror=_unlisted(where)):
        subdirectories.sort()
        for name in sorted(names + [d for d in subdirectories if os.path.islink(Path(directory) / d)]):
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if not is_listed_file(relative):
                continue
            info = path.lstat()
            _check_kind(info.st_mode, f"{folder}/{relative}", where)
            check_size(f"{folder}/{relative}", info.st_size, max_item_bytes, where)
            total += info.st_size
            check_total(total, f"{folder}/", where)
            text_total += 0 if _is_document(relative) else info.st_size
            check_text_total(text_total, max_job_bytes, f"{folder}/", where)
            listed.append((relative, path))
            check_count(len(listed), max_items, where)
    files = [
        (relative, read_regular(path, MAX_DOCUMENT_BYTES if _is_document(relative) else TEXT_READ_FACTOR * max_item_bytes, where))
        for relative, path in listed
    ]
    return document_items(files, where, shown=f"{folder}/", uri_prefix=uri_prefix)


def read_regular(path: Path, limit: int, where: str = "items_uri") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else refuses the job (InvalidJob naming ``where``).

    The file is opened without following a link and without blocking (a FIFO cannot hang the read), and checked
    on the open descriptor, so what is read is what was checked.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _check_kind(stat.S_IFLNK, str(path), where)
        raise InvalidJob(f"{where}: cannot read {path} ({exc.strerror})", where) from None
    with os.fdopen(descriptor, "rb") as opened:
        info = os.fstat(opened.fileno())
        _check_kind(info.st_mode, str(path), where)
        body = opened.read(limit + 1)
    if max(info.st_size, len(body)) > limit:
        raise InvalidJob(f"{where}: {path} is over {limit} bytes, more than it may be; shorten or split it", where)
    return body


def _check_kind(mode: int, shown: str, where: str) -> None:
    if stat.S_ISLNK(mode):
        raise InvalidJob(
            f"{where}: {shown} is a symbolic link; fanout reads only regular files here (a link could reach any file "
            "on the disk): copy the file in instead",
            where,
        )
    if not stat.S_ISREG(mode):
        raise InvalidJob(f"{where}: {shown} is not a regular file (a FIFO, socket or device?); give files only", where)


def _is_document(relative: str) -> bool:
    return PurePosixPath(relative).suffix.lower() in DOCUMENT_FORMATS


def _unlisted(where: str) -> Callable[[OSError], None]:
    def refuse(exc: OSError) -> None:
        raise InvalidJob(f"{where}: cannot list {exc.filename} ({exc.strerror})", where)

    return refuse


def s3_document_items(
    s3: Any, bucket: str, prefix: str, *, max_items: int, max_item_bytes: int, max_job_bytes: int | None = None
) -> list[dict[str, Any]]:
    """The objects under ``s3://bucket/prefix``, listed and checked against the limits before any is read."""
    from botocore.exceptions import ClientError

    where, shown = "items_uri", f"s3://{bucket}/{prefix}"
    keys: list[tuple[str, str]] = []
    total = text_total = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix) :]
                if not is_listed_file(relative):
                    continue
                check_size(shown + relative, int(obj.get("Size", 0)), max_item_bytes, where)
                total += int(obj.get("Size", 0))
                check_total(total, shown, where)
                text_total += 0 if _is_document(relative) else int(obj.get("Size", 0))
                check_text_total(text_total, max_job_bytes, shown, where)
                keys.append((relative, obj["Key"]))
                check_count(len(keys), max_items, where)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise InvalidJob(f"{where}: cannot list {shown} ({code}); check the bucket and prefix", where) from None

    def read(entry: tuple[str, str]) -> tuple[str, bytes]:
        try:
            return entry[0], s3.get_object(Bucket=bucket, Key=entry[1])["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise InvalidJob(f"{where}: cannot read {shown}{entry[0]} ({code})", where) from None

    with ThreadPoolExecutor(max_workers=16) as pool:
        files = list(pool.map(read, keys))
    return document_items(files, where, shown=shown, uri_prefix=shown)


# -- the Converse document block ----------------------------------------------------------

# Bedrock API reference, DocumentBlock: format "pdf | csv | doc | docx | xls | xlsx | html | txt | md"
CONVERSE_FORMATS = ("pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md")


def attach_documents(tasks: list[dict[str, Any]], s3: Any) -> None:
    """Give each Bedrock task whose item is a PDF or office file that file's bytes, read once per file.

    Other providers answer from the item's extracted text in the prompt; a file that can no longer be read
    leaves its task with the text alone.
    """
    from botocore.exceptions import ClientError

    read: dict[str, bytes | None] = {}
    for task in tasks:
        document = task.get("document")
        if not isinstance(document, dict) or not str(task.get("model", "")).startswith("bedrock:"):
            continue
        uri = str(document.get("uri", ""))
        if uri not in read:
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            try:
                read[uri] = s3.get_object(Bucket=bucket, Key=key)["Body"].read() if uri.startswith("s3://") else None
            except ClientError:
                read[uri] = None
        if read[uri]:
            task["document_bytes"] = read[uri]


def converse_documents(task: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The Converse ``document`` content blocks of a task (Bedrock API reference, DocumentBlock and DocumentSource)."""
    document, body = task.get("document"), task.get("document_bytes")
    # an item may carry a "document" field of its own: only a well-formed one becomes a block
    if not isinstance(document, dict) or not body or document.get("format") not in CONVERSE_FORMATS:
        return ()
    if not isinstance(document.get("name"), str) or neutral_name(document["name"]) != document["name"]:
        return ()
    block = {"document": {"format": document["format"], "name": document["name"], "source": {"bytes": body}}}
    return (block,)


def document_item(
    relative: str, body: bytes, where: str = "items_uri", shown: str = "", uri: str | None = None
) -> dict[str, Any]:
    """The item of one file; ``uri`` is where a PDF or office file can be read again (its Bedrock document block)."""
    suffix = PurePosixPath(relative).suffix.lower()
    try:
        if suffix in TEXT_FORMATS:
            if TEXT_FORMATS[suffix] == "html":
                return {"id": relative, "text": html_text(_html_decoded(body))}
            return {"id": relative, "text": _utf8(body)}
        if suffix in DOCUMENT_FORMATS:
            kind = DOCUMENT_FORMATS[suffix]
            text = {"pdf": pdf_text, "docx": docx_text, "xlsx": xlsx_text}[kind](body)
            document: dict[str, Any] = {"format": kind, "name": neutral_name(relative), "bytes": len(body)}
            if uri is not None:
                document["uri"] = uri
            return {"id": relative, "text": text, "document": document}
    except _Unreadable as exc:
        raise InvalidJob(f"{where}: {shown}{relative}: {exc}", where) from None
    raise InvalidJob(
        f"{where}: {shown}{relative}: cannot read {suffix or 'extensionless'} files; fanout reads {SUPPORTED}", where
    )


class _Unreadable(Exception):
    """Why a file gives no text, in a few words."""


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


# -- html -----------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE)


def _html_decoded(body: bytes) -> str:
    """UTF-8, or the charset the page declares in a <meta> tag (older pages are often windows-1252)."""
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        declared = _META_CHARSET.search(body[:4096])
        if declared is None:
            raise _Unreadable("not UTF-8 and no <meta charset> says what it is; save it as UTF-8") from None
        name = declared.group(1).decode("ascii")
        try:
            return body.decode(name)
        except LookupError:
            raise _Unreadable(f"declares charset {name!r}, which Python does not know") from None
        except UnicodeDecodeError as exc:
            raise _Unreadable(f"not valid {name} text (byte {exc.start})") from None


class _TextOfHtml(HTMLParser):
    _SKIPPED: ClassVar[set[str]] = {"script", "style", "template", "noscript", "head"}
    _BLOCKS: ClassVar[set[str]] = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "table", "ul"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The text a reader sees: tags stripped, script/style/head dropped, entities decoded, blank runs collapsed."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


# -- pdf and office ---------------------------------------------------------------------


def pdf_text(body: bytes) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(body))
        if reader.is_encrypted:
            raise _Unreadable("the PDF is encrypted; give a copy without a password")
        text = "\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except _Unreadable:
        raise
    except Exception as exc:  # a malformed file can make pypdf raise almost anything (PyPdfError and more)
        raise _Unreadable(f"not a readable PDF ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not text.strip():
        raise _Unreadable("the PDF has no text layer (a scan?); run OCR on it first")
    return text.strip()


def _zip_xml(body: bytes, names: Iterable[str]) -> Iterator[ElementTree.Element]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except zipfile.BadZipFile:
        raise _Unreadable("not a readable office file (not a zip archive)") from None
    with archive:
        for name in names:
            try:
                info = archive.getinfo(name)
            except KeyError:
                continue
            if info.file_size > MAX_XML_BYTES:
                raise _Unreadable(f"{name} unpacks to {info.file_size} bytes; too large to read")
            try:
                yield ElementTree.fromstring(archive.read(info))
            except (ElementTree.ParseError, zipfile.BadZipFile, RuntimeError) as exc:
                raise _Unreadable(f"{name} is not readable XML ({exc})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def docx_text(body: bytes) -> str:
    paragraphs = []
    for root in _zip_xml(body, ["word/document.xml"]):
        for element in root.iter():
            if _local(element.tag) == "p":
                line = "".join(t.text or "" for t in element.iter() if _local(t.tag) == "t")
                if line.strip():
                    paragraphs.append(line.strip())
    if not paragraphs:
        raise _Unreadable("no text found in the document (word/document.xml)")
    return "\n".join(paragraphs)


def xlsx_text(body: bytes) -> str:
    try:
        names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    except zipfile.BadZipFile:
        raise _Unreadable("not a readable office file (not a zip archive)") from None
    shared: list[str] = []
    for root in _zip_xml(body, ["xl/sharedStrings.xml"]):
        for item in root:
            shared.append("".join(t.text or "" for t in item.iter() if _local(t.tag) == "t"))
    sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
    rows = []
    chars = 0  # the text made so far: shared strings repeated by many cells must not expand without bound
    for root in _zip_xml(body, sheets):
        for row in (e for e in root.iter() if _local(e.tag) == "row"):
            cells = []
            for cell in (c for c in row if _local(c.tag) == "c"):
                value = next((v.text for v in cell.iter() if _local(v.tag) in ("v", "t")), None) or ""
                if cell.get("t") == "s" and value.isdigit() and int(value) < len(shared):
                    value = shared[int(value)]
                chars += len(value) + 1
                if chars > MAX_SHEET_CHARS:
                    raise _Unreadable(f"its cells expand to more than {MAX_SHEET_CHARS} characters of text; split the workbook")
                cells.append(value)
            if any(cells):
                rows.append("\t".join(cells))
    if not rows:
        raise _Unreadable("no cells found in the workbook")
    return "\n".join(rows)


def neutral_name(relative: str) -> str:
    """A document name Bedrock accepts (DocumentBlock.name): letters, digits, single spaces, - ( ) [ ]."""
    name = re.sub(r"[^A-Za-z0-9\-\(\)\[\] ]+", " ", PurePosixPath(relative).stem)
    name = re.sub(r" {2,}", " ", name).strip() or "document"
    return name[:MAX_NAME_CHARS]


# -- item files -------------------------------------------------------------------------


def csv_items(body: bytes, where: str) -> list[dict[str, Any]]:
    """One item per row; the header names the fields (an ``id`` column is required, as for any item)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{where}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8", where) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise InvalidJob(f"{where}: the CSV has no header row; its first row names the fields (one of them 'id')", where)
    blank = [i for i, name in enumerate(reader.fieldnames) if not (name or "").strip()]
    if blank:
        raise InvalidJob(f"{where}: column {blank[0] + 1} of the header has no name; name every column", where)
    items = []
    try:
        for number, row in enumerate(reader, start=2):
            if None in row:
                raise InvalidJob(f"{where}: line {number} has more fields than the header", where)
            items.append({k: v for k, v in row.items() if v is not None})
    except csv.Error as exc:
        raise InvalidJob(f"{where}: not valid CSV: {exc}", where) from None
    return items


def is_csv(name: str) -> bool:
    """A key, path or bare suffix naming a CSV file."""
    return name.lower().endswith(".csv")
