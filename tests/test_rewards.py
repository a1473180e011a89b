"""Answer extraction and grading (rlft.rewards): equivalent forms earn 1.0, everything else 0.0."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rlft.errors import UsageError
from rlft.rewards import MAX_ANSWER_CHARS, Grader, extract_answer, grade, last_boxed, parse_gold


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{68}.", "68"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),  # nested braces
        ("first \\boxed{3}, then on reflection \\boxed{4}", "4"),  # the last box wins
        ("\\fbox{12}", "12"),
        ("unbalanced \\boxed{7} then \\boxed{8", "7"),  # an unclosed box is skipped
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),  # thousands separators dropped
        ("#### $1,000.", "1000"),
        ("So the total is 1,234,567 dollars", "1234567"),
        ("The temperature is -3 degrees", "-3"),
        ("5-3=2", "2"),  # a binary minus is not a sign
        ("she ate 3/4 of the pie", "3/4"),
        ("the probability is 0.5.", "0.5"),
        ("", None),
        ("I don't know", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_handles_deep_nesting():
    assert last_boxed("x \\boxed{\\frac{1}{\\sqrt{\\frac{a}{b}}}} y") == "\\frac{1}{\\sqrt{\\frac{a}{b}}}"
    assert last_boxed("no box here") is None


@pytest.mark.parametrize(
    ("completion", "gold", "reward"),
    [
        # equivalent forms earn 1.0
        ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("The answer is 1/2", "0.5", 1.0),
        ("\\boxed{\\dfrac{1}{2}}", "1/2", 1.0),
        ("\\boxed{\\frac12}", "0.5", 1.0),
        ("#### 1,234", "1234", 1.0),
        ("There are 1,234 apples", "1234", 1.0),
        ("\\boxed{1,234}", "1234", 1.0),
        ("\\boxed{1234}", "1,234", 1.0),
        ("\\boxed{-3}", "-3", 1.0),
        ("It drops to -3 degrees.", "-3", 1.0),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}", 1.0),
        ("\\boxed{\\sqrt{3}/2}", "\\frac{\\sqrt{3}}{2}", 1.0),
        ("\\boxed{\\frac{1}{\\sqrt{3}}}", "sqrt(3)/3", 1.0),
        ("\\boxed{2^{n-1}}", "2^(n-1)", 1.0),
        ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
        ("\\boxed{72.0}", "72", 1.0),
        ("\\boxed{\\$10}", "10", 1.0),
        ("\\boxed{10\\%}", "10", 1.0),
        ("\\boxed{x = 5}", "5", 1.0),
        ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", 1.0),
        ("Natalia sold 72 clips.\n#### 72", "72", 1.0),
        ("so 3 * 4 = 12.", "12", 1.0),
        # wrong answers earn 0.0
        ("\\boxed{3}", "-3", 0.0),
        ("answer: -3", "3", 0.0),
        ("72.5", "72", 0.0),
        ("0.333", "1/3", 0.0),
        ("\\boxed{1,2}", "12", 0.0),  # a pair is not twelve
        ("#### 71", "72", 0.0),
        ("The answer is \\boxed{4}, not 3", "3", 0.0),  # the boxed answer counts, not the last number
        # no answer earns 0.0
        ("", "0", 0.0),
        ("I have no idea", "0", 0.0),
        ("\\boxed{}", "0", 0.0),
        # a gold that cannot be parsed never gives a reward (fail-closed)
        ("\\boxed{???}", "???", 0.0),
        ("anything 5", "", 0.0),
    ],
)
def test_grade(completion, gold, reward):
    assert grade(completion, gold) == reward


def test_grade_rejects_absurdly_long_answers():
    digits = "9" * (MAX_ANSWER_CHARS + 1)
    assert grade(f"\\boxed{{{digits}}}", digits[:20]) == 0.0


@pytest.mark.parametrize(
    "answer", ["9^{9^{9}}", "9^{9^{9^{9}}}", "(10^{100})!", "x^{9^{9}}", "(x+y+z+1)^{100}", "(a+b+c+d+e+f)^{10}"]
)
def test_huge_answers_are_refused_quickly_off_the_main_thread(answer):
    """Off the main thread math-verify has no time limit; our guards keep sympy from grinding."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        start = time.perf_counter()
        assert pool.submit(grade, f"\\boxed{{{answer}}}", "5").result(timeout=60) == 0.0
        assert time.perf_counter() - start < 5.0


def test_large_but_reasonable_answers_are_still_graded():
    assert grade("\\boxed{2^{997}}", "2^{997}") == 1.0
    assert grade("\\boxed{100!}", "100!") == 1.0
    assert grade("\\boxed{(x+1)^{n}}", "(1+x)^n") == 1.0


@pytest.mark.parametrize("gold", ["", "   ", "???", "#", "\\boxed{}", "x" * (MAX_ANSWER_CHARS + 1), "9^{9^{9}}"])
def test_parse_gold_rejects_unparseable(gold):
    with pytest.raises(UsageError, match="gold answer"):
        parse_gold(gold)


@pytest.mark.parametrize(
    ("gold", "value"),
    [("68", 68), ("-46", -46), ("1,234", 1234), ("0.5", 0.5), ("\\frac{1}{2}", 0.5), ("3/4", 0.75)],
)
def test_parse_gold_values(gold, value):
    parsed = parse_gold(gold)
    assert float(parsed[0]) == value  # exactly representable values


def test_parse_gold_integer_fast_path_matches_math_verify():
    from math_verify import parse

    for gold in ["0", "7", "-46", "123456789012"]:
        assert parse_gold(gold) == parse(f"${gold}$", parsing_timeout=None)


def test_grader_batches_and_caches_golds():
    grader = Grader()
    completions = ["\\boxed{72}", "#### 71", "It is 1/2", "nothing", "\\boxed{5}"]
    golds = ["72", "72", "0.5", "3", "???"]
    assert grader(completions, golds) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert set(grader._golds) == {"72", "0.5", "3", "???"}
    assert grader._golds["???"] is None  # unparseable gold cached as "never rewarded"
    assert grader(["\\boxed{72}"], ["72"]) == [1.0]


def test_grader_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        Grader()(["1", "2"], ["1"])


def test_grading_works_off_the_main_thread():
    def run(index):
        assert threading.current_thread() is not threading.main_thread()
        return grade(f"\\boxed{{\\frac{{{index}}}{{2}}}}", str(index / 2))

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(run, range(1, 7))) == [1.0] * 6
