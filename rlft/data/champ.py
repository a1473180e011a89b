"""``champ``: the CHAMP competition-math problems, from the ``champ-dataset`` package (offline).

CHAMP has 270 problems whose reference answers are written for people ("C(10, 5), or
equivalently 252", "0 is the only possible value", "No"). We keep the problems whose answer
reduces to a closed-form expression that math-verify can grade:

* ``"X, or equivalently Y"`` -> ``Y``; ``"X, or approximately Y"`` / ``"X, or an equivalent form
  such as Y"`` -> ``X``;
* ``"X (i.e., ...)"`` -> ``X``; ``"X is the only possible value"`` -> ``X``;
  ``"The limit exists and is equal to X"`` -> ``X``;

and drop the rest (yes/no, prose, lists of solutions), since a grader cannot check them
reliably. The kept problems are cut into a disjoint train/test split by a fixed seed
(:data:`TEST_FRACTION` test), independent of the run seed.
"""

from __future__ import annotations

import re
from functools import lru_cache

from rlft.data.base import DATASETS, Problem, cut_split, make_problem
from rlft.errors import UsageError

TEST_FRACTION = 0.3
CHAMP_VERSION = "v0"

_REWRITES = [
    (re.compile(r"^.*,\s*or equivalently\s+(.+)$"), r"\1"),
    (re.compile(r"^(.*?),\s*or (?:approximately|an equivalent form).*$"), r"\1"),
    (re.compile(r"^(.*?)\s*\((?:i\.e\.,?|none|no )[^)]*\)$"), r"\1"),
    (re.compile(r"^(.*?)\s+is the only possible value$"), r"\1"),
    (re.compile(r"^The (?:limit exists and is equal to|only possible value for the limit is)\s+(.+)$"), r"\1"),
]
# What a gradable closed form may contain: numbers, single-letter variables, operators, brackets,
# and sqrt (not floor, sums or ellipses, which math-verify misreads).
_CLOSED_FORM = re.compile(r"^(?:sqrt|[A-Za-z](?![A-Za-z])|\d+(?:\.\d+)?|[+\-*/^()! ])+$")


def clean_answer(answer: str) -> str | None:
    """CHAMP's reference answer reduced to a closed-form expression, or None if it is not one."""
    text = answer.strip()
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text).strip()
    if not _CLOSED_FORM.match(text):
        return None
    return text


@lru_cache(maxsize=1)
def _closed_form_problems() -> tuple[tuple[str, str, str], ...]:
    """``(identifier, question, cleaned answer)`` of every CHAMP problem we keep, sorted by id."""
    try:
        import champ_dataset
    except ImportError:
        raise UsageError("champ needs the champ-dataset package: pip install champ-dataset") from None
    dataset = champ_dataset.load(CHAMP_VERSION)
    kept = []
    for identifier, problem in dataset.problems.items():
        answer = clean_answer(problem.answer)
        if answer is not None:
            kept.append((identifier, problem.text, answer))
    return tuple(sorted(kept))


@DATASETS.register("champ")
def load_champ(arg: str | None, split: str, seed: int) -> list[Problem]:
    """CHAMP problems with closed-form answers (see the module docstring); ``champ`` takes no argument."""
    if arg:
        raise UsageError(f"champ takes no argument, got 'champ:{arg}'")
    chosen = cut_split(list(_closed_form_problems()), split, TEST_FRACTION)
    return [
        make_problem(text, answer, f"champ/{split}/{identifier}", f"champ problem {identifier}")
        for identifier, text, answer in chosen
    ]
