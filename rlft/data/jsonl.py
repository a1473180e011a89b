"""``jsonl:PATH``: your own problems, one JSON object per line with ``question`` and ``answer``.

``prompt`` or ``problem`` are accepted for ``question``. The answer may be a string or a number
and must be a math answer that :func:`rlft.rewards.parse_gold` accepts.

PATH is either a folder holding ``train.jsonl`` and ``test.jsonl`` (each used for its split), or
one file used for both splits: its rows are shuffled with a fixed seed and the first
:data:`FILE_TEST_FRACTION` (at least one row) are the test split, the rest train, so the two never
overlap whatever the run seed. Ids are ``jsonl/{split}/{n}`` with ``n`` the row's position in
the file (0-based, blank lines not counted); every row is validated whichever split is loaded.
``.json`` (a list of objects) and ``.parquet`` files with the same fields work too.
"""

from __future__ import annotations

from rlft.data.base import DATASETS, Problem
from rlft.data.files import Row, field
from rlft.data.tables import FILE_TEST_FRACTION, load_table
from rlft.errors import UsageError

__all__ = ["FILE_TEST_FRACTION", "load_jsonl"]


def question_answer(row: Row) -> tuple[object, object]:
    """``question`` (or ``prompt``/``problem``) and ``answer`` of a row."""
    return field(row, "question", "prompt", "problem"), field(row, "answer")


@DATASETS.register("jsonl")
def load_jsonl(arg: str | None, split: str, seed: int) -> list[Problem]:
    """Problems from a local JSON Lines file or folder (see the module docstring)."""
    if not arg:
        raise UsageError(
            "jsonl needs a path: 'jsonl:PATH' (a .jsonl file, or a folder with train.jsonl and test.jsonl)"
        )
    return load_table("jsonl", arg, split, ("", None), question_answer)
