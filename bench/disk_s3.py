"""A stand-in S3 for ``bench.scale`` row (k): each object a file under a folder, one folder a bucket.

Plan, RunBatch and Aggregate are run over it in processes of their own, so the
peak memory measured is the function's, not an in-memory store's. It answers
only the calls those steps make, with S3's conditional-write refusals.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError


def _refused(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)  # type: ignore[typeddict-item]


class _Body:
    """A streaming body as botocore's: ``read(n)`` gives the next n bytes, then b"" at the end."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._at = 0

    def read(self, amount: int | None = None) -> bytes:
        with self._path.open("rb") as file:
            file.seek(self._at)
            data = file.read() if amount is None else file.read(amount)
        self._at += len(data)
        return data


class _Pages:
    def __init__(self, s3: DiskS3) -> None:
        self._s3 = s3

    def paginate(self, Bucket: str, Prefix: str = "") -> Iterator[dict[str, Any]]:
        keys = self._s3.keys(Bucket, Prefix)
        for start in range(0, max(len(keys), 1), 1000):
            page = keys[start : start + 1000]
            yield {"Contents": [{"Key": k} for k in page], "KeyCount": len(page)}


class DiskS3:
    """The S3 calls Plan, RunBatch and Aggregate make, over files in ``root`` (one folder a bucket)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def keys(self, bucket: str, prefix: str) -> list[str]:
        base = self.root / bucket
        # only the folder the prefix names is walked (a prefix ends in a partial name or "/")
        start = base / prefix.rpartition("/")[0]
        if not start.is_dir():
            return []
        found = (p.relative_to(base).as_posix() for p in start.rglob("*") if p.is_file())
        return sorted(k for k in found if k.startswith(prefix))

    @staticmethod
    def _etag(path: Path) -> str:
        return '"' + hashlib.md5(path.read_bytes()).hexdigest() + '"'

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        path = self._path(Bucket, Key)
        if not path.is_file():
            raise _refused("NoSuchKey", "GetObject")
        return {"Body": _Body(path), "ETag": self._etag(path)}

    def put_object(
        self, Bucket: str, Key: str, Body: bytes | str, IfNoneMatch: str | None = None, IfMatch: str | None = None, **_: Any
    ) -> dict[str, Any]:
        path = self._path(Bucket, Key)
        if IfNoneMatch == "*" and path.exists():
            raise _refused("PreconditionFailed", "PutObject")
        if IfMatch is not None and (not path.exists() or self._etag(path) != IfMatch):
            raise _refused("PreconditionFailed", "PutObject")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Body if isinstance(Body, bytes) else Body.encode())
        return {"ETag": self._etag(path)}

    def upload_file(self, Filename: str, Bucket: str, Key: str, ExtraArgs: Any = None) -> None:
        path = self._path(Bucket, Key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Path(Filename).read_bytes())

    def upload_fileobj(self, Fileobj: Any, Bucket: str, Key: str, ExtraArgs: Any = None) -> None:
        path = self._path(Bucket, Key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            while chunk := Fileobj.read(1 << 20):
                out.write(chunk)

    def delete_object(self, Bucket: str, Key: str, IfMatch: str | None = None, **_: Any) -> None:
        path = self._path(Bucket, Key)
        if IfMatch is not None and path.exists() and self._etag(path) != IfMatch:
            raise _refused("PreconditionFailed", "DeleteObject")
        path.unlink(missing_ok=True)

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> None:
        for entry in Delete["Objects"]:
            self._path(Bucket, entry["Key"]).unlink(missing_ok=True)

    def list_objects_v2(self, Bucket: str, Prefix: str = "", MaxKeys: int = 1000, **_: Any) -> dict[str, Any]:
        keys = self.keys(Bucket, Prefix)[:MaxKeys]
        return {"Contents": [{"Key": k} for k in keys], "KeyCount": len(keys)}

    def get_paginator(self, name: str) -> _Pages:
        return _Pages(self)
