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
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from rlft.errors import UsageError
from rlft.files import atomic_write_text, ensure_writable_dir, read_json


def cell_name(keys: dict[str, Any]) -> str:
    """A file-name-safe id of a cell: ``algo=agro,offpolicy=0.5,seed=1``."""
    text = ",".join(f"{k}={v}" for k, v in keys.items())
    return text.replace("/", "_").replace(":", "_").replace(" ", "")


class ResultStore:
    """The files of one sweep directory.

    A cell file that cannot be parsed (cut short by a full disk, edited by hand) is never fatal: it
    is renamed ``<cell>.json.corrupt`` (its curve too), reported once on stderr and listed in
    :attr:`set_aside`, and the cell counts as not done, so the sweep redoes it. A damaged
    ``sweep.json`` is a one-line error naming it.

    Args:
        root: the sweep directory.
        create: make ``root/cells`` and check it is writable (a sweep); False only reads (the
            report), and creates nothing.
    """

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root)
        self.set_aside: list[str] = []  # cells whose damaged files were renamed *.corrupt
        if create:
            ensure_writable_dir(self.root, "--out")
            (self.root / "cells").mkdir(exist_ok=True)

    def cell_path(self, name: str) -> Path:
        return self.root / "cells" / f"{name}.json"

    def curve_path(self, name: str) -> Path:
        return self.root / "curves" / f"{name}.csv"

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def is_done(self, name: str) -> bool:
        return self.record(name) is not None

    def record(self, name: str) -> dict[str, Any] | None:
        """The stored record of cell ``name``, or None if it has none yet (or had a damaged one)."""
        return self._read_cell(self.cell_path(name))

    def manifest(self) -> dict[str, Any] | None:
        """The parsed ``sweep.json``, or None if the directory has none yet."""
        path = self.root / "sweep.json"
        if not path.exists():
            return None
        manifest = read_json(path, "restore it, or delete it to have the next run of the sweep write it anew "
                                   "(the cells are kept)")
        if not isinstance(manifest, dict):
            raise UsageError(f"{path} is damaged (not a JSON object); restore it or delete it")
        return manifest

    def save(self, name: str, record: dict[str, Any], curve: pd.DataFrame | None = None) -> None:
        """Store a finished cell: the curve first, then the record that marks it complete."""
        if curve is not None:
            atomic_write_text(self.curve_path(name), curve.to_csv(index=False))
        atomic_write_text(self.cell_path(name), json.dumps(record, indent=1, sort_keys=True, default=str))

    def records(self) -> list[dict[str, Any]]:
        """Every readable cell record (damaged ones are set aside)."""
        paths = sorted((self.root / "cells").glob("*.json"))
        return [r for r in (self._read_cell(p) for p in paths) if r is not None]

    def _read_cell(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not {"cell", "keys"} <= set(record):
                raise ValueError("not a cell record")
            return record
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            self._set_aside(path.stem, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return None

    def _set_aside(self, name: str, why: str) -> None:
        """Rename the damaged files of cell ``name`` to ``*.corrupt`` (numbered if that exists)."""
        for path in (self.cell_path(name), self.curve_path(name)):
            if path.exists():
                target, k = path.with_name(path.name + ".corrupt"), 1
                while target.exists():
                    target, k = path.with_name(f"{path.name}.corrupt{k}"), k + 1
                path.rename(target)
        self.set_aside.append(name)
        print(f"warning: {self.cell_path(name)} was damaged ({why}); set aside as {self.cell_path(name).name}.corrupt, "
              "the cell will be redone", file=sys.stderr)

    def curves(self, names: Iterable[str] | None = None) -> pd.DataFrame:
        """All curves concatenated, each with its cell's key columns."""
        frames = []
        for record in self.records():
            path = self.curve_path(record["cell"])
            if path.exists() and (names is None or record["cell"] in names):
                try:
                    frame = pd.read_csv(path)
                except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors are ValueErrors
                    self._set_aside(record["cell"], f"its curve {path.name}: {type(exc).__name__}")
                    continue
                for key, value in record["keys"].items():
                    frame[key] = value
                frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write_text(self, relative: str, text: str) -> None:
        atomic_write_text(self.root / relative, text)
