"""Answer extraction and grading with math-verify, fail-closed.

* :func:`extract_answer` finds the final answer in a completion: the last ``\\boxed{...}``
  (nested braces allowed), else a GSM8K-style ``#### n`` line, else the last number in the text.
* :func:`parse_gold` parses a gold answer with math-verify and raises :class:`UsageError` when it
  parses to nothing; loaders call it on every row, so an unparseable gold never reaches training.
* :func:`grade` returns 1.0 when the extracted answer is mathematically equivalent to the gold
  (``math_verify.verify``) and 0.0 otherwise; any error, a missing answer or an absurdly long one
  is 0.0, never 1.0.
* :class:`Grader` grades a batch and caches parsed golds: the ``math`` reward, the default.

A reward is any class in :data:`REWARDS` (or ``--reward package.module:Class``) whose instances are
called as ``reward(completions, golds) -> [float]``, one per completion; a task with another notion
of correctness brings its own. The objective's optimum J* (rlft/objective.py) assumes a 0/1 reward.

math-verify bounds its own run time with ``signal.alarm``, which only works on the main thread.
We use that limit on the main thread only (:data:`MAIN_THREAD_TIMEOUT`); elsewhere we call it
with its timeouts disabled, so grading works from any thread. Either way we bound the work
ourselves: the length of what is parsed is capped (:data:`MAX_ANSWER_CHARS`), and answers holding
astronomically large numbers (``9^{9^{9}}``) or huge symbolic powers, which sympy would evaluate
for minutes, are refused before ``verify`` (see :func:`_is_tame`).
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

import math_verify.grader
import math_verify.parser
import sympy
from math_verify import parse, verify

from rlft.errors import UsageError
from rlft.registry import Registry

#: Reward name -> class; third-party rewards register through the ``rlft.rewards`` entry-point group.
REWARDS: Registry[type] = Registry("reward", "rlft.rewards")

# Off the main thread we disable math-verify's signal-based timeouts on purpose (see the module
# docstring); silence the warning it would log on first use.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

#: Extracted answers (and golds) longer than this are not parsed: grade 0.0 / gold error.
MAX_ANSWER_CHARS = 1000
#: Largest numeric exponent or factorial argument in an answer that we let math-verify evaluate.
MAX_EXPONENT = 10_000
#: Most terms the expansion of a symbolic power may have (``(a+b+c+d+e+f)^{10}``, 3003 terms,
#: takes sympy 12 s to compare).
MAX_EXPANSION_TERMS = 300
#: Largest log10 of a numeric power (``base ** exponent``) that we let math-verify evaluate.
MAX_LOG10 = 100_000
#: On the main thread, math-verify's own (signal-based) time limit per parse/verify, in seconds.
MAIN_THREAD_TIMEOUT = 5


def _timeout() -> int | None:
    """math-verify's timeout argument: :data:`MAIN_THREAD_TIMEOUT` on the main thread (where
    ``signal.alarm`` works), else None (disabled; the guards in :func:`_is_tame` bound the work)."""
    return MAIN_THREAD_TIMEOUT if threading.current_thread() is threading.main_thread() else None


_BOX_OPENERS = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K_MARK = re.compile(r"####\s*([^\n]*)")
# A number: optional minus (not a binary minus after a digit), digits with optional thousands
# separators or a decimal part, optionally a fraction a/b.
_NUMBER = re.compile(
    r"(?<![\w.])(?:(?<![\d)])-)?"
    r"(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
    r"(?:/\d+(?:\.\d+)?)?"
)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN_INTEGER = re.compile(r"^-?\d{1,30}$")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, or None."""
    starts = [m.end() for m in _BOX_OPENERS.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
        # unbalanced: try the previous box
    return None


def _clean_number(text: str) -> str:
    """Drop thousands separators (``1,234`` -> ``1234``), a leading ``$`` and a trailing period."""
    text = text.strip().rstrip(".").strip()
    text = text.lstrip("$").strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return text


def _last_number(text: str) -> str | None:
    """The last number in ``text`` (``-3``, ``1,234``, ``0.5``, ``3/4``), or None."""
    numbers = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    return _clean_number(numbers[-1]) if numbers else None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, as a string, or None when there is none.

    Looks, in order, for the last ``\\boxed{...}`` (nested braces allowed), the last GSM8K
    ``#### answer`` line, and the last number in the text.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    marks = [m.group(1).strip() for m in _GSM8K_MARK.finditer(text)]
    if marks and marks[-1]:
        return _clean_number(marks[-1])
    return _last_number(text)


def _parse_math(answer: str) -> list:
    """math-verify parse of an answer string, read as inline math ``$...$`` (dollar signs, which
    in an answer are currency, are dropped first); failing that, as written."""
    bare = answer.replace("\\$", "").replace("$", "").strip()
    if bare and "\\boxed" not in bare:
        parsed = parse(f"${bare}$", parsing_timeout=_timeout())
        if parsed:
            return parsed
    return parse(answer, parsing_timeout=_timeout())


@lru_cache(maxsize=65536)
def parse_gold(answer: str) -> list:
    """Parse a gold answer with math-verify; :class:`UsageError` if it parses to nothing.

    The result is math-verify's list of candidate forms (a sympy object and its string), ready
    for ``math_verify.verify``. Results are cached.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise UsageError("the gold answer is empty")
    if len(answer) > MAX_ANSWER_CHARS:
        raise UsageError(f"the gold answer is longer than {MAX_ANSWER_CHARS} characters")
    answer = answer.strip()
    if _PLAIN_INTEGER.match(answer):  # fast path, same result as math-verify's parse
        return [sympy.Integer(int(answer)), answer]
    try:
        parsed = _parse_math(answer)
    except Exception as exc:  # math-verify/sympy internals: report as a data error
        raise UsageError(f"the gold answer {answer!r} cannot be parsed ({type(exc).__name__})") from None
    if all(isinstance(form, str) for form in parsed):  # only math-verify's raw-text fallback
        raise UsageError(f"the gold answer {answer!r} is not a parseable math answer")
    if not _is_tame(parsed):
        raise UsageError(f"the gold answer {answer!r} holds a number too large to grade")
    return parsed


def _is_tame(parsed: list) -> bool:
    """False if a parsed answer holds a number too big to compare quickly.

    ``verify`` evaluates numbers exactly, so ``9^{9^{9}}`` or ``(10^{100})!`` would run for
    minutes, and ``(x+1)^{5000}`` takes a minute to expand. Walking each expression bottom-up,
    every numeric exponent must be at most :data:`MAX_EXPONENT`, a numeric power at most
    ``10**MAX_LOG10``, the expansion of a power of a symbolic sum at most
    :data:`MAX_EXPANSION_TERMS` terms, and a factorial's argument at most :data:`MAX_EXPONENT`,
    each checked before its parent is evaluated, so the check itself is cheap.
    """
    try:
        return all(_is_tame_expression(form) for form in parsed if isinstance(form, sympy.Basic))
    except Exception:  # e.g. an exponent that evaluates to complex infinity: refuse
        return False


def _is_tame_expression(expression: sympy.Basic) -> bool:
    """:func:`_is_tame` for one sympy expression."""
    for node in sympy.postorder_traversal(expression):
        if isinstance(node, sympy.Pow) and node.exp.is_number:
            exponent = abs(complex(node.exp.evalf(15)))
            if exponent > MAX_EXPONENT:
                return False
            if isinstance(node.base, sympy.Add) and not node.base.is_number:
                # expanding (t_1 + ... + t_k)^n gives up to C(n + k - 1, k - 1) terms
                k = len(node.base.args)
                if math.comb(int(exponent) + k - 1, k - 1) > MAX_EXPANSION_TERMS:
                    return False
            if node.base.is_number:
                base = abs(complex(node.base.evalf(15)))
                if base > 0 and exponent * abs(math.log10(base)) > MAX_LOG10:
                    return False
        elif isinstance(node, sympy.factorial) and node.args[0].is_number:
            if abs(complex(node.args[0].evalf(15))) > MAX_EXPONENT:
                return False
    return True


def _is_integer_gold(gold_parsed: list) -> bool:
    """Whether a parsed gold is one integer (``[sympy.Integer, text]``, as :func:`parse_gold` gives for ``-46``)."""
    return len(gold_parsed) == 2 and isinstance(gold_parsed[0], sympy.Integer)


def _grade_parsed(completion: str, gold_parsed: list) -> float:
    """1.0 if the completion's extracted answer verifies against an already parsed gold, else 0.0."""
    try:
        answer = extract_answer(completion)
        if answer is None or len(answer) > MAX_ANSWER_CHARS:
            return 0.0
        if _PLAIN_INTEGER.match(answer) and _is_integer_gold(gold_parsed):
            # fast path: math-verify's parse of a plain integer is that integer, and two integers
            # verify as equal exactly when they are (checked on ~11k pairs, leading zeros and signs included)
            return 1.0 if int(answer) == int(gold_parsed[0]) else 0.0
        predicted = _parse_math(answer)
        if not predicted or not _is_tame(predicted):
            return 0.0
        return 1.0 if verify(gold_parsed, predicted, timeout_seconds=_timeout()) else 0.0
    except Exception:  # fail closed: nothing that goes wrong may earn a reward
        return 0.0


def grade(completion: str, gold: str) -> float:
    """1.0 if the completion's final answer equals ``gold`` mathematically, else 0.0.

    Fail-closed: a missing answer, an unparseable gold or any error gives 0.0.
    """
    try:
        gold_parsed = parse_gold(gold)
    except Exception:
        return 0.0
    return _grade_parsed(completion, gold_parsed)


@REWARDS.register("math")
class Grader:
    """Grades batches of completions, caching the parsed gold answers.

    ``Grader()(completions, golds)`` -> one reward in {0.0, 1.0} per completion; ``golds[i]`` is
    the gold answer of ``completions[i]``. Fail-closed like :func:`grade`.
    """

    def __init__(self) -> None:
        self._golds: dict[str, list | None] = {}

    def _parsed_gold(self, gold: str) -> list | None:
        if gold not in self._golds:
            try:
                self._golds[gold] = parse_gold(gold)
            except Exception:
                self._golds[gold] = None
        return self._golds[gold]

    def __call__(self, completions: list[str], golds: list[str]) -> list[float]:
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        rewards = []
        for completion, gold in zip(completions, golds):
            gold_parsed = self._parsed_gold(gold)
            rewards.append(0.0 if gold_parsed is None else _grade_parsed(completion, gold_parsed))
        return rewards
