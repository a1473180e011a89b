"""The data registry's core: the :class:`Problem` record, the ``DATASETS`` registry, ``load``.

A dataset loader is any callable ``loader(arg, split, seed) -> list[Problem]`` registered in
:data:`DATASETS` (or exposed through the ``rlft.datasets`` entry-point group). ``arg`` is the part
of the spec after the first colon (``"gsm8k:/data/gsm8k"`` -> ``"/data/gsm8k"``) or ``None``.
Loaders return problems in a fixed order; :func:`load` then applies the seeded shuffle and the
``limit``. Loaders validate every gold answer with :func:`rlft.rewards.parse_gold`.

Train/test splits never depend on the run seed: the same test set is used for every seed, and a
train set loaded with any seed never overlaps the test set loaded with any other seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

from rlft.errors import UsageError
from rlft.registry import Registry

SPLITS = ("train", "test")

#: Seed used by loaders that must cut or generate a train/test split themselves (arith, champ,
#: reasoning-gym, single-file jsonl). Fixed, so the test set is the same whatever the run seed.
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Problem:
    """One prompt with a verifiable answer.

    Attributes:
        question: the problem text shown to the model (without any prompt template).
        answer: the gold final answer as a string (``"68"``, ``"\\frac{1}{2}"``), parseable by
            :func:`rlft.rewards.parse_gold` (checked at load time).
        id: a stable id ``"<dataset>/<split>/<index>"``, e.g. ``"gsm8k/train/3"``.
    """

    question: str
    answer: str
    id: str


DatasetLoader = Callable[[str | None, str, int], list[Problem]]

#: Dataset name -> loader ``(arg, split, seed) -> list[Problem]``.
DATASETS: Registry[DatasetLoader] = Registry("dataset", "rlft.datasets")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"name:ARG"`` -> ``("name", "ARG")``; ``"name"`` -> ``("name", None)``."""
    name, sep, arg = spec.partition(":")
    name = name.strip()
    if not name:
        raise UsageError(f"dataset spec {spec!r} has no name; use e.g. 'arith', 'gsm8k:PATH' or 'jsonl:PATH'")
    return name, (arg if sep else None)


def resolve(spec: str) -> tuple[DatasetLoader, str | None]:
    """The loader and its argument for ``spec``.

    ``"package.module:function[:ARG]"`` (a name with a dot that is not registered) imports a
    loader directly.
    """
    name, arg = split_spec(spec)
    if name not in DATASETS and "." in name and arg:
        attr, _, rest = arg.partition(":")
        return DATASETS.get(f"{name}:{attr}"), (rest or None)
    return DATASETS.get(name), arg


def load(spec: str, split: str, seed: int = 0, limit: int | None = None) -> list[Problem]:
    """Load the problems of ``spec`` (``"name"`` or ``"name:ARG"``) for ``split``.

    The loader's problems are shuffled with ``random.Random(seed)`` and the first ``limit`` kept,
    so the result is deterministic given ``(spec, split, seed, limit)``.
    """
    if split not in SPLITS:
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be a positive number of problems, got {limit}")
    loader, arg = resolve(spec)
    problems = list(loader(arg, split, seed))
    if not problems:
        raise UsageError(f"dataset {spec!r} has no {split} problems")
    random.Random(seed).shuffle(problems)
    return problems[:limit] if limit is not None else problems


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def make_problem(question: str, answer: object, id: str, where: str) -> Problem:
    """Build a :class:`Problem`, checking the question is text and the gold answer parses.

    ``where`` names the row for errors, e.g. ``"train.jsonl line 3"``.
    """
    from rlft.rewards import parse_gold  # local import: rewards must not import the data package

    if not isinstance(question, str) or not question.strip():
        raise UsageError(f"{where}: the question is empty or not text")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise UsageError(f"{where}: the answer must be a string or number, got {type(answer).__name__}")
    answer = str(answer).strip()
    try:
        parse_gold(answer)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return Problem(question=question, answer=answer, id=id)


def parse_options(text: str | None, defaults: dict[str, object], what: str) -> dict[str, object]:
    """Parse ``"k=v,k2=v2"`` into a copy of ``defaults``, converting each value to its default's type.

    Unknown keys are an error listing the known ones. A default of ``None`` keeps the value as
    an int, float, bool or string, whichever it reads as.
    """
    options = dict(defaults)
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f"{what}: option {item!r} is not of the form key=value")
        if key not in defaults:
            raise UsageError(f"{what}: unknown option {key!r}; known: {', '.join(sorted(defaults))}")
        options[key] = convert_value(value, defaults[key], f"{what}: option {key}")
    return options


def convert_value(value: str, default: object, what: str) -> object:
    """Convert the text ``value`` to the type of ``default`` (or guess it when the default is None)."""
    if isinstance(default, bool) or default is None and value.lower() in ("true", "false"):
        if value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"{what} must be true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if isinstance(default, int) or default is None:
        try:
            return int(value)
        except ValueError:
            if isinstance(default, int):
                raise UsageError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(default, float) or default is None:
        try:
            return float(value)
        except ValueError:
            if isinstance(default, float):
                raise UsageError(f"{what} must be a number, got {value!r}") from None
    return value


def seeded_order(items: Iterable, seed: int = SPLIT_SEED) -> list:
    """``items`` as a list in a random order fixed by ``seed``."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def cut_split(items: list, split: str, test_fraction: float, seed: int = SPLIT_SEED) -> list:
    """A disjoint train/test cut of ``items``: shuffle with ``seed``, the test set is the first
    ``round(test_fraction * len)`` (at least 1 when there are 2 or more items), train the rest."""
    ordered = seeded_order(items, seed)
    n_test = round(test_fraction * len(ordered))
    if len(ordered) >= 2:
        n_test = min(max(n_test, 1), len(ordered) - 1)
    return ordered[:n_test] if split == "test" else ordered[n_test:]
