"""Files the project writes: one atomic writer, one check that an output folder is usable, one
reader of JSON that names a damaged file.

    atomic_write_text(path, text)     via a temporary file in the same folder and os.replace: a
                                      reader sees the old file or the new one, never half of one
    ensure_writable_dir(path, flag)   create it and write a probe file, BEFORE any long work
    read_json(path, what_to_do)       parsed JSON, or one UsageError line naming the damaged file
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rlft.errors import UsageError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never half-written).

    The data are flushed to disk before the rename; on any error (a full disk, Ctrl-C) the
    temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it.

    Raises a one-line :class:`UsageError` naming ``flag`` when ``path`` is a file, cannot be created
    or is not writable, so a command fails before it loads a model or trains anything.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write to {flag} {path}: {exc.strerror or exc}; pass a writable folder") from None
    return path


def read_json(path: str | os.PathLike, what_to_do: str) -> Any:
    """``json.loads`` of ``path``; a file that cannot be read or parsed is one line naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         f"{what_to_do}") from None
