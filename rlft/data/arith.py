"""``arith``: synthetic integer arithmetic, generated in memory (no files needed).

Spec: ``arith`` or ``arith:ops=+-*,digits=2,train_size=20000,test_size=500``.

* ``ops``: operators to use, any of ``+``, ``-``, ``*`` (default all three).
* ``digits``: operands have exactly this many digits (2 -> 10..99; 1 -> 1..9).
* ``test_size`` / ``train_size``: how many problems per split, bounded by what exists.

Every ``(a, op, b)`` triple is a possible problem ("What is 23 + 45?", answer ``"68"``). The
triples are put in one random order fixed by :data:`~rlft.data.base.SPLIT_SEED`; the test set is
the first ``test_size`` of them (at most half of all triples) and the train set the next
``train_size``. So the test set does not depend on the train size nor on the run seed, and train
and test never overlap. The run seed only shuffles the order (see :func:`rlft.data.load`).
"""

from __future__ import annotations

import random
from typing import Iterator

from rlft.data.base import DATASETS, SPLIT_SEED, Problem, make_problem, parse_options
from rlft.errors import UsageError

ALLOWED_OPS = "+-*"
DEFAULTS = {"ops": ALLOWED_OPS, "digits": 2, "train_size": 20000, "test_size": 500}
_ENUMERATE_UP_TO = 1_000_000  # pools up to this size are shuffled whole, larger ones sampled
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _unique_indices(total: int, rng: random.Random) -> Iterator[int]:
    """Every index in ``range(total)`` once, in a random order (a prefix-stable stream)."""
    if total <= _ENUMERATE_UP_TO:
        order = list(range(total))
        rng.shuffle(order)
        yield from order
        return
    seen: set[int] = set()
    while True:  # sampling without replacement; callers take far fewer than ``total``
        index = rng.randrange(total)
        if index not in seen:
            seen.add(index)
            yield index


def _options(arg: str | None) -> tuple[str, int, int, int]:
    options = parse_options(arg, DEFAULTS, "arith")
    ops = "".join(dict.fromkeys(str(options["ops"]).replace(" ", "")))
    bad = [op for op in ops if op not in ALLOWED_OPS]
    if not ops or bad:
        raise UsageError(f"arith: ops must be some of '{ALLOWED_OPS}', got {options['ops']!r}")
    digits = int(options["digits"])
    if not 1 <= digits <= 9:
        raise UsageError(f"arith: digits must be between 1 and 9, got {digits}")
    train_size, test_size = int(options["train_size"]), int(options["test_size"])
    if train_size < 1 or test_size < 1:
        raise UsageError("arith: train_size and test_size must be positive")
    return ops, digits, train_size, test_size


def load_arith(arg: str | None, split: str, seed: int) -> list[Problem]:
    """Problems of the ``arith`` dataset (see the module docstring); ``seed`` is applied by ``load``."""
    ops, digits, train_size, test_size = _options(arg)
    low, high = (1 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    n = high - low + 1
    total = len(ops) * n * n
    n_test = min(test_size, total // 2)
    n_train = min(train_size, total - n_test)
    stream = _unique_indices(total, random.Random(SPLIT_SEED))
    test = [next(stream) for _ in range(n_test)]
    chosen = test if split == "test" else [next(stream) for _ in range(n_train)]
    problems = []
    for position, index in enumerate(chosen):
        op_index, rest = divmod(index, n * n)
        a, b = low + rest // n, low + rest % n
        op = ops[op_index]
        problem_id = f"arith/{split}/{position}"
        problems.append(make_problem(f"What is {a} {op} {b}?", str(_APPLY[op](a, b)), problem_id, problem_id))
    return problems


DATASETS.add("arith", load_arith)
