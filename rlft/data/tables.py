"""Datasets that are tables of rows on the Hub or on disk: ``gsm8k``, ``math``, ``math500``.

Each spec is ``NAME`` (read from the Hugging Face Hub with ``datasets.load_dataset``) or
``NAME:PATH`` where PATH is

* a folder laid out like the Hub repository or the official release: ``train.jsonl`` /
  ``test.jsonl`` (or ``.parquet``), or parquet shards ``train-*.parquet`` / ``test-*.parquet``
  anywhere below it (e.g. ``main/test-00000-of-00001.parquet``); or
* a single ``.jsonl`` / ``.json`` / ``.parquet`` file, cut into a disjoint train/test split by a
  fixed seed (:data:`FILE_TEST_FRACTION` of the rows are test). MATH-500 is test only, so a
  single ``math500`` file is the whole test set.
"""

from __future__ import annotations

from typing import Callable

from rlft.data.base import DATASETS, Problem, cut_split, make_problem
from rlft.data.files import Row, existing_path, field, read_file, read_files, read_hub, split_files
from rlft.errors import UsageError
from rlft.rewards import last_boxed

#: Share of a single local file used as the test split.
FILE_TEST_FRACTION = 0.1

GSM8K_HUB = ("openai/gsm8k", "main")
MATH_HUB = ("DigitalLearningGmbH/MATH-lighteval", "default")  # Hendrycks MATH, 7500 train / 5000 test
MATH500_HUB = ("HuggingFaceH4/MATH-500", None)  # 500 test problems, no train split

Extract = Callable[[Row], tuple[object, object]]  # row -> (question, answer)


def load_table(
    name: str, arg: str | None, split: str, hub: tuple[str, str | None], extract: Extract, test_only: bool = False
) -> list[Problem]:
    """Validated problems of ``split``: from the Hub when ``arg`` is None, else from the local PATH.

    Ids are ``"{name}/{split}/{index}"``, ``index`` counting the split's rows in order (for a
    single file: the row's position in the file). A single file is validated whole, whatever the
    split asked for, so a bad row is reported on the first load.
    """
    if arg is None:
        return to_problems(name, split, read_hub(hub[0], hub[1], split, name), extract)
    path = existing_path(arg, name)
    if path.is_dir():
        return to_problems(name, split, read_files(split_files(path, split)), extract)
    problems = to_problems(name, split, read_file(path), extract)
    if test_only:
        return problems
    return cut_split(problems, split, FILE_TEST_FRACTION)


def to_problems(name: str, split: str, rows: list[Row], extract: Extract) -> list[Problem]:
    """Build validated problems; ids are ``"{name}/{split}/{index}"`` in row order."""
    problems = []
    for index, row in enumerate(rows):
        question, answer = extract(row)
        problems.append(make_problem(question, answer, f"{name}/{split}/{index}", row.where))
    return problems


def gsm8k_answer(row: Row) -> tuple[object, object]:
    """GSM8K: the gold is what follows the last ``####`` in the answer, without thousands commas."""
    solution = field(row, "answer")
    if not isinstance(solution, str) or "####" not in solution:
        raise UsageError(f"{row.where}: the answer has no '#### <final answer>' line")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise UsageError(f"{row.where}: the '####' line of the answer is empty")
    return field(row, "question"), final


def boxed_answer(row: Row) -> tuple[object, object]:
    """MATH rows: ``problem`` and the last ``\\boxed{}`` of ``solution``."""
    solution = field(row, "solution")
    answer = last_boxed(solution) if isinstance(solution, str) else None
    if not answer:
        raise UsageError(f"{row.where}: the solution has no \\boxed{{}} final answer")
    return field(row, "problem"), answer


def math500_answer(row: Row) -> tuple[object, object]:
    """MATH-500 rows: ``problem`` and ``answer`` (or, if absent, the last ``\\boxed{}`` of ``solution``)."""
    if row.record.get("answer") is None and row.record.get("solution") is not None:
        return boxed_answer(row)
    return field(row, "problem"), field(row, "answer")


@DATASETS.register("gsm8k")
def load_gsm8k(arg: str | None, split: str, seed: int) -> list[Problem]:
    """GSM8K (``openai/gsm8k``, config ``main``) or ``gsm8k:PATH`` (official ``train.jsonl``/``test.jsonl``)."""
    return load_table("gsm8k", arg, split, GSM8K_HUB, gsm8k_answer)


@DATASETS.register("math")
def load_math(arg: str | None, split: str, seed: int) -> list[Problem]:
    """Hendrycks MATH (``DigitalLearningGmbH/MATH-lighteval``) or ``math:PATH``; gold = last ``\\boxed{}``."""
    return load_table("math", arg, split, MATH_HUB, boxed_answer)


@DATASETS.register("math500")
def load_math500(arg: str | None, split: str, seed: int) -> list[Problem]:
    """MATH-500 (``HuggingFaceH4/MATH-500``) or ``math500:PATH``; test split only."""
    if split != "test":
        raise UsageError("math500 has only a test split (500 problems for evaluation); train on 'math' instead")
    return load_table("math500", arg, split, MATH500_HUB, math500_answer, test_only=True)
