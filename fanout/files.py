"""A local ``items_uri``: the file or folder it names, checked before anything is read or uploaded.

A job file is hostile input: its ``items_uri`` must not make fanout read (or upload to S3) any file the user
can read, nor hang on a FIFO. So the path is taken relative to the job file's folder and must resolve inside
it (no ``..`` out of it, no link pointing out of it), and must be a regular file of at most
MAX_ITEMS_FILE_BYTES or a folder of documents (whose files ``fanout_core.documents`` checks one by one).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fanout_core.errors import InvalidJob

# what a local items file may be: fanout reads it whole, parses it and uploads it
MAX_ITEMS_FILE_BYTES = 256 * 1024 * 1024


def local_items_path(base: Path, given: str) -> Path:
    """The file or folder ``given`` (an items_uri that is not s3://) names under ``base``, the job file's folder.

    Returned with every link resolved (relative to the current folder when inside it, so messages stay short).

    Raises InvalidJob naming items_uri and the fix; nothing is opened, so a FIFO cannot hang it.
    """
    relative = given.removeprefix("file://")
    root = base.resolve()
    path = root / relative
    try:
        path.lstat()
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise InvalidJob(
            f"items_uri: {relative}: no such file or folder in {root}; give a path relative to the job file's folder",
            "items_uri",
        ) from None
    except (OSError, RuntimeError) as exc:  # a loop of links, a folder that cannot be listed
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "a loop of symbolic links"
        raise InvalidJob(f"items_uri: {relative}: cannot follow it ({reason})", "items_uri") from None
    if not resolved.is_relative_to(root):
        raise InvalidJob(
            f"items_uri: {relative} resolves to {resolved}, outside the job file's folder {root}; "
            "move the items into that folder (or below it) and name them by a path relative to the job file",
            "items_uri",
        )
    mode = os.stat(resolved).st_mode
    if stat.S_ISDIR(mode):
        return _shown(resolved)
    if not stat.S_ISREG(mode):
        raise InvalidJob(
            f"items_uri: {relative} is not a regular file or a folder (a FIFO, socket or device?); "
            "give a JSON, JSON Lines or CSV file, or a folder of documents",
            "items_uri",
        )
    size = os.stat(resolved).st_size
    if size > MAX_ITEMS_FILE_BYTES:
        raise InvalidJob(
            f"items_uri: {relative} is {size} bytes, over the {MAX_ITEMS_FILE_BYTES} a local items file may be; "
            "split the items into several jobs",
            "items_uri",
        )
    return _shown(resolved)


def _shown(resolved: Path) -> Path:
    """The resolved path, relative to the current folder when it lies inside it (as messages show it: docs/a.pdf)."""
    here = Path.cwd()
    return resolved.relative_to(here) if resolved.is_relative_to(here) else resolved
