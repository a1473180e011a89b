"""Presets built on first use: built in a temporary folder, renamed into place, under a file lock.

A killed build leaves no half model; a second process waits for the first and then simply loads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock

#: The file a finished build writes last; its presence marks the folder complete.
MARKER = "build_info.json"


def cached_build(final: Path, build: Callable[[Path], None]) -> Path:
    """``final`` if complete, else ``build(tmp)`` then rename ``tmp`` to ``final`` atomically.

    ``build`` must write :data:`MARKER` into the folder it is given.
    """
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.with_name(final.name + ".lock"))):
        if (final / MARKER).is_file():  # another process built it while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            if final.exists():  # a stale, incomplete folder from an old crash
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
