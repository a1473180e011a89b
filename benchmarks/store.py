"""Crash-safe result files for sweeps: every write is atomic, finished cells are never redone.

Layout of a sweep directory::

    DIR/sweep.json            the manifest: which kind of sweep wrote the directory, with which settings
    DIR/cells/<cell>.json     one record per finished (or failed) cell: its keys, settings, results
    DIR/curves/<cell>.csv     the cell's per-step curve
    DIR/runs/<cell>/          (LM sweeps) the cell's trainer run directory, kept for resuming
    DIR/summary.csv, table.md, *.png   rebuilt from the files above by benchmarks.report

A cell's JSON is written last, so its presence means the cell is complete; a rerun skips it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from rlft.errors import UsageError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
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


def cell_name(keys: dict[str, Any]) -> str:
    """A file-name-safe id of a cell: ``algo=agro,offpolicy=0.5,seed=1``."""
    text = ",".join(f"{k}={v}" for k, v in keys.items())
    return text.replace("/", "_").replace(":", "_").replace(" ", "")


class ResultStore:
    """The files of one sweep directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            (self.root / "cells").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"cannot write results to {self.root}: {exc.strerror}; pass a writable --out") from None

    def cell_path(self, name: str) -> Path:
        return self.root / "cells" / f"{name}.json"

    def curve_path(self, name: str) -> Path:
        return self.root / "curves" / f"{name}.csv"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def is_done(self, name: str) -> bool:
        return self.cell_path(name).exists()

    def record(self, name: str) -> dict[str, Any] | None:
        """The stored record of cell ``name``, or None if it has none yet."""
        path = self.cell_path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def manifest(self) -> dict[str, Any] | None:
        """The parsed ``sweep.json``, or None if the directory has none yet."""
        path = self.root / "sweep.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, name: str, record: dict[str, Any], curve: pd.DataFrame | None = None) -> None:
        """Store a finished cell: the curve first, then the record that marks it complete."""
        if curve is not None:
            atomic_write_text(self.curve_path(name), curve.to_csv(index=False))
        atomic_write_text(self.cell_path(name), json.dumps(record, indent=1, sort_keys=True, default=str))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "cells").glob("*.json"))]

    def curves(self, names: Iterable[str] | None = None) -> pd.DataFrame:
        """All curves concatenated, each with its cell's key columns."""
        frames = []
        for record in self.records():
            path = self.curve_path(record["cell"])
            if path.exists() and (names is None or record["cell"] in names):
                frame = pd.read_csv(path)
                for key, value in record["keys"].items():
                    frame[key] = value
                frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write_text(self, relative: str, text: str) -> None:
        atomic_write_text(self.root / relative, text)
