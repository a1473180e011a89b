"""Reading tables of rows from local files and from the Hugging Face Hub, with row locations.

Every row comes back as a :class:`Row`: the record (a dict) and ``where``, a one-line location
used in error messages (``"/data/train.jsonl line 3"``, ``"/data/train-0.parquet row 3"``,
``"openai/gsm8k test row 3"``; all 1-based).

Parquet files are read with ``datasets.load_dataset("parquet", data_files=...)``. JSON Lines
(and ``.json``) files are parsed line by line with :mod:`json`: that gives the line number of a
malformed row, and keeps each value as written (``datasets``' JSON builder infers one Arrow type
per column, so it turns ``"1"`` into ``1`` next to numeric answers, and fails outright on such a
mix when the file has a blank line). Hub datasets are read with
``datasets.load_dataset(hub_id, config, split=...)``; failing that (e.g. offline) is a
:class:`UsageError` telling the user to pass a local path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlft.data.base import first_line
from rlft.errors import UsageError

JSON_SUFFIXES = (".jsonl", ".json")
TABLE_SUFFIXES = JSON_SUFFIXES + (".parquet",)


@dataclass(frozen=True)
class Row:
    """One record of a table and where it came from (for error messages)."""

    record: dict
    where: str


def existing_path(text: str, dataset: str) -> Path:
    """``text`` as a path that exists, else a one-line :class:`UsageError`."""
    path = Path(text).expanduser()
    if not text.strip() or not path.exists():
        raise UsageError(f"{dataset}: no such file or folder: {text!r}")
    return path


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files of ``split`` in ``folder`` (searched recursively).

    ``{split}.jsonl`` / ``{split}.json`` / ``{split}.parquet`` if present (the official GSM8K and
    MATH-500 layouts), else shards named ``{split}-*`` (the Hub's parquet layout, e.g.
    ``main/test-00000-of-00001.parquet``). Hidden files and folders are ignored.
    """
    candidates = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix in TABLE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    exact = [path for path in candidates if path.stem == split]
    if exact:
        return exact
    shards = [path for path in candidates if path.stem.startswith(f"{split}-")]
    if shards:
        return shards
    raise UsageError(
        f"{folder} has no {split} data: expected {split}.jsonl, {split}.parquet or {split}-*.parquet in it"
    )


def _read_json(path: Path) -> list[Row]:
    """Rows of a JSON Lines file (one object per line, blank lines skipped) or of a ``.json``
    file holding a list of objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({first_line(exc)})") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        located = [(record, f"{path} item {index}") for index, record in enumerate(records, start=1)]
    else:
        located = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((json.loads(line), f"{path} line {number}"))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path} line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    for record, where in located:
        if not isinstance(record, dict):
            raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return [Row(record, where) for record, where in located]


def _read_parquet(path: Path) -> list[Row]:
    """Rows of a parquet file, read with ``datasets``."""
    import datasets  # imported lazily: it is slow to import

    try:
        table = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as exc:  # pyarrow/datasets errors: report the file, one line
        raise UsageError(f"{path}: cannot be read as a parquet table ({first_line(exc)})") from None
    return [Row(record, f"{path} row {index}") for index, record in enumerate(table.to_list(), start=1)]


def read_file(path: Path) -> list[Row]:
    """All rows of one local ``.jsonl``, ``.json`` or ``.parquet`` file."""
    if path.suffix in JSON_SUFFIXES:
        return _read_json(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    raise UsageError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")


def read_files(paths: list[Path]) -> list[Row]:
    """The rows of several local files, in order."""
    return [row for path in paths for row in read_file(path)]


def read_hub(hub_id: str, config: str | None, split: str, dataset: str) -> list[Row]:
    """The rows of ``split`` of a Hub dataset; a :class:`UsageError` if it cannot be loaded."""
    import datasets

    try:
        table = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # offline, missing, renamed: all mean "give me a local copy"
        raise UsageError(
            f"{dataset}: cannot load {hub_id!r} from the Hugging Face Hub ({first_line(exc)}); "
            f"download it and pass a local path, e.g. '{dataset}:PATH'"
        ) from None
    return [Row(record, f"{hub_id} {split} row {index}") for index, record in enumerate(table.to_list(), start=1)]


def field(row: Row, *names: str) -> object:
    """The first of ``names`` present (and not None) in the row, else a :class:`UsageError`."""
    for name in names:
        value = row.record.get(name)
        if value is not None:
            return value
    wanted = " or ".join(repr(name) for name in names)
    raise UsageError(f"{row.where}: missing field {wanted}")
