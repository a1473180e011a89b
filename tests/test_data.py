"""The data registry (rlft.data): specs, splits, determinism, file formats and their errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

# Hub loaders must fail fast offline; set before `datasets`/`huggingface_hub` are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from rlft.data import DATASETS, SYSTEM_PROMPT, Problem, format_prompt, load
from rlft.data.champ import clean_answer
from rlft.errors import UsageError
from rlft.rewards import grade, parse_gold

FIXTURES = Path(__file__).parent / "fixtures"
#: The first 8 train and 4 test lines of the official GSM8K release, verbatim, with its MIT licence
#: (github.com/openai/grade-school-math, grade_school_math/data/*.jsonl).
GSM8K_RELEASE = FIXTURES / "gsm8k_release"


def questions(problems: list[Problem]) -> set[str]:
    return {problem.question for problem in problems}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_parquet(records: list[dict], path: Path) -> None:
    """Write records as a parquet file, as the Hub stores datasets."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(records).to_parquet(str(path))


# --- registry and load() -------------------------------------------------------------------


def test_builtin_datasets_are_registered():
    assert {"arith", "gsm8k", "math", "math500", "champ", "rg", "jsonl"} <= set(DATASETS.available())


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UsageError, match=r"unknown dataset 'nope'; known: .*arith.*gsm8k"):
        load("nope", "train")


@pytest.mark.parametrize("split", ["valid", "Train", ""])
def test_bad_split_is_a_usage_error(split):
    with pytest.raises(UsageError, match="split must be 'train' or 'test'"):
        load("arith", split)


def test_limit_must_be_positive():
    with pytest.raises(UsageError, match="limit must be a positive"):
        load("arith", "test", limit=0)


def test_limit_takes_a_seeded_prefix():
    full = load("arith", "test", seed=3)
    assert load("arith", "test", seed=3, limit=10) == full[:10]
    assert len(load("arith", "test", seed=3, limit=10_000)) == len(full)


def test_problem_is_frozen():
    problem = load("arith", "test", limit=1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.answer = "0"  # type: ignore[misc]


def test_loader_given_as_module_path():
    problems = load("rlft.data.arith:load_arith:digits=1,ops=+", "test")
    assert problems and all(re.fullmatch(r"What is \d \+ \d\?", p.question) for p in problems)


# --- format_prompt ---------------------------------------------------------------------------


def make_tokenizer(chat_template: str | None):
    """A real (tiny, word-level) Hugging Face tokenizer, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "what": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_format_prompt_plain_text_without_chat_template():
    expected = "Question: What is 2 + 2?\nAnswer:"
    assert format_prompt("What is 2 + 2?", None) == expected
    assert format_prompt("What is 2 + 2?", make_tokenizer(None)) == expected


def test_format_prompt_applies_chat_template():
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prompt = format_prompt("What is 2 + 2?", make_tokenizer(template))
    assert prompt == f"<|system|>{SYSTEM_PROMPT}\n<|user|>What is 2 + 2?\n<|assistant|>"
    assert "\\boxed{}" in SYSTEM_PROMPT and "step by step" in SYSTEM_PROMPT


# --- arith -----------------------------------------------------------------------------------


def test_arith_defaults_sizes_and_disjoint_splits():
    train, test = load("arith", "train"), load("arith", "test")
    assert (len(train), len(test)) == (20000, 500)
    assert not questions(train) & questions(test)
    assert len(questions(train)) == len(train)


def test_arith_answers_are_correct_and_ids_stable():
    for problem in load("arith", "train", limit=300):
        match = re.fullmatch(r"What is (\d\d) ([+\-*]) (\d\d)\?", problem.question)
        assert match, problem.question
        a, op, b = int(match[1]), match[2], int(match[3])
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert int(problem.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert re.fullmatch(r"arith/train/\d+", problem.id)
    assert any(int(p.answer) < 0 for p in load("arith", "test"))  # negative answers occur


def test_arith_is_deterministic_and_seed_only_reorders():
    assert load("arith", "test", seed=1) == load("arith", "test", seed=1)
    assert load("arith", "test", seed=1) != load("arith", "test", seed=2)
    assert set(load("arith", "test", seed=1)) == set(load("arith", "test", seed=2))
    # every seed's train set stays disjoint from every seed's test set
    assert not questions(load("arith", "train", seed=5)) & questions(load("arith", "test", seed=9))


def test_arith_test_set_does_not_depend_on_train_size():
    small = load("arith:train_size=10", "test")
    large = load("arith:train_size=23000", "test")
    assert small == large
    assert len(load("arith:train_size=10", "train")) == 10


def test_arith_options_and_bounds():
    # digits=1 with '+' only: 81 triples; the test set takes at most half of them
    train, test = load("arith:ops=+,digits=1", "train"), load("arith:ops=+,digits=1", "test")
    assert (len(train), len(test)) == (41, 40)
    assert not questions(train) & questions(test)
    assert all(" + " in p.question for p in train + test)
    big = load("arith:digits=5,ops=*,train_size=50,test_size=20", "train")
    assert len(big) == 50 and all(len(p.question.split()[2]) == 5 for p in big)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("arith:ops=/", "ops must be some of"),
        ("arith:digits=0", "digits must be between 1 and 9"),
        ("arith:digits=two", "digits must be an integer"),
        ("arith:colour=red", "unknown option 'colour'; known: digits, ops, test_size, train_size"),
        ("arith:digits", "not of the form key=value"),
        ("arith:test_size=0", "must be positive"),
    ],
)
def test_arith_bad_options(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        load(spec, "train")


# --- gsm8k -----------------------------------------------------------------------------------


def test_gsm8k_official_release():
    """Lines of the real release, as published: ids, questions, the answer after '####'."""
    assert "MIT License" in (GSM8K_RELEASE / "LICENSE").read_text()
    train = load(f"gsm8k:{GSM8K_RELEASE}", "train")
    test = load(f"gsm8k:{GSM8K_RELEASE}", "test")
    assert (len(train), len(test)) == (8, 4)
    first = {p.id: p for p in train}["gsm8k/train/0"]
    assert first.question.startswith("Natalia sold clips to 48 of her friends")
    assert first.answer == "72"
    assert {p.id: p.answer for p in test} == {"gsm8k/test/0": "18", "gsm8k/test/1": "3", "gsm8k/test/2": "70000",
                                              "gsm8k/test/3": "540"}
    assert all("," not in p.answer and "####" not in p.answer for p in train + test)
    assert all(grade(f"The answer is {p.answer}.", p.answer) == 1.0 for p in train + test)


def test_gsm8k_fixture_strips_thousands_separators():
    problems = {p.id: p for p in load(f"gsm8k:{FIXTURES / 'gsm8k_official'}", "train")}
    assert [problems[f"gsm8k/train/{i}"].answer for i in range(3)] == ["7", "2234", "-3"]
    test = {p.id: p.answer for p in load(f"gsm8k:{FIXTURES / 'gsm8k_official'}", "test")}
    assert test == {"gsm8k/test/0": "60", "gsm8k/test/1": "4.5"}


def test_gsm8k_hub_parquet_layout(tmp_path):
    """A local copy of the Hub repository (config folder `main/`, parquet shards) loads too."""
    for split in ("train", "test"):
        records = read_jsonl(FIXTURES / "gsm8k_official" / f"{split}.jsonl")
        write_parquet(records, tmp_path / "main" / f"{split}-00000-of-00001.parquet")
    test = load(f"gsm8k:{tmp_path}", "test")
    assert sorted(p.answer for p in test) == ["4.5", "60"]
    assert len(load(f"gsm8k:{tmp_path}", "train")) == 3


def test_gsm8k_answer_without_marker_names_file_and_line():
    path = FIXTURES / "gsm8k_no_marker.jsonl"
    with pytest.raises(UsageError, match=re.escape(f"{path} line 2: the answer has no '#### <final answer>' line")):
        load(f"gsm8k:{path}", "train")


def test_folder_without_the_split_is_an_error(tmp_path):
    shutil.copy(FIXTURES / "gsm8k_official" / "train.jsonl", tmp_path / "train.jsonl")
    with pytest.raises(UsageError, match=r"has no test data: expected test.jsonl"):
        load(f"gsm8k:{tmp_path}", "test")


@pytest.mark.parametrize(
    ("name", "hub_id"), [("gsm8k", "openai/gsm8k"), ("math", "MATH-lighteval"), ("math500", "MATH-500")]
)
def test_hub_loaders_offline_say_to_pass_a_local_path(name, hub_id):
    with pytest.raises(UsageError) as info:
        load(name, "test")
    message = str(info.value)
    assert hub_id in message and f"pass a local path, e.g. '{name}:PATH'" in message
    assert "\n" not in message


# --- math and math500 ------------------------------------------------------------------------


def test_math_gold_is_last_boxed_with_nested_braces():
    test = {p.id: p for p in load(f"math:{FIXTURES / 'math_official'}", "test")}
    assert test["math/test/0"].answer == "\\frac{1}{2^{2}}"
    assert test["math/test/1"].answer == "(1,2)"
    train = {p.id: p for p in load(f"math:{FIXTURES / 'math_official'}", "train")}
    assert [train[f"math/train/{i}"].answer for i in range(3)] == ["\\frac{1}{2}", "2\\sqrt{3}", "-2"]
    assert grade("so the answer is \\boxed{\\frac14}", test["math/test/0"].answer) == 1.0


def test_math_hub_parquet_layout(tmp_path):
    for split in ("train", "test"):
        records = read_jsonl(FIXTURES / "math_official" / f"{split}.jsonl")
        write_parquet(records, tmp_path / "data" / f"{split}-00000-of-00001.parquet")
    assert sorted(p.answer for p in load(f"math:{tmp_path}", "test")) == ["(1,2)", "\\frac{1}{2^{2}}"]
    parquet_file = tmp_path / "data" / "train-00000-of-00001.parquet"
    assert len(load(f"math:{tmp_path}", "train")) == 3
    write_parquet([{"problem": "p", "solution": "no box", "level": "1", "type": "x"}], parquet_file)
    expected = f"{parquet_file} row 1: the solution has no \\boxed{{}} final answer"
    with pytest.raises(UsageError, match=re.escape(expected)):
        load(f"math:{tmp_path}", "train")


def test_math_rows_need_a_solution():
    path = FIXTURES / "gsm8k_official"
    with pytest.raises(UsageError, match=re.escape(f"{path / 'train.jsonl'} line 1: missing field 'solution'")):
        load(f"math:{path}", "train")


def test_math500_folder_and_single_file():
    from_folder = load(f"math500:{FIXTURES / 'math500'}", "test")
    from_file = load(f"math500:{FIXTURES / 'math500' / 'test.jsonl'}", "test")
    assert from_folder == from_file and len(from_file) == 3
    answers = {p.id: p.answer for p in from_file}
    assert answers["math500/test/0"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert grade("\\boxed{(3, \\frac{\\pi}{2})}", answers["math500/test/0"]) == 1.0
    assert grade("\\boxed{0.5}", answers["math500/test/2"]) == 1.0


def test_math500_has_no_train_split():
    with pytest.raises(UsageError, match="math500 has only a test split"):
        load(f"math500:{FIXTURES / 'math500'}", "train")


# --- champ -----------------------------------------------------------------------------------


def test_champ_split_is_disjoint_and_gradable():
    train, test = load("champ", "train"), load("champ", "test")
    assert (len(train), len(test)) == (117, 50)
    assert not {p.id for p in train} & {p.id for p in test}
    assert all(p.id.startswith("champ/train/P_") for p in train)
    for problem in train + test:
        assert parse_gold(problem.answer)
        assert grade(f"\\boxed{{{problem.answer}}}", problem.answer) == 1.0, problem
    assert set(load("champ", "test", seed=7)) == set(test)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("239", "239"),
        ("C(10, 5), or equivalently 252", "252"),
        ("5/14, or approximately 35.7%", "5/14"),
        ("100 (i.e., all values)", "100"),
        ("0 is the only possible value", "0"),
        ("The limit exists and is equal to (a+3b)/2", "(a+3b)/2"),
        ("n(n+1)*2^(n-2)", "n(n+1)*2^(n-2)"),
        ("No", None),
        ("x=6, y=5", None),
        ("2^floor(n/2)*floor(n/2)!", None),
        ("x(x-1)(x-2)...(x-2022)", None),
    ],
)
def test_champ_answer_cleaning(raw, clean):
    assert clean_answer(raw) == clean


def test_champ_takes_no_argument():
    with pytest.raises(UsageError, match="champ takes no argument"):
        load("champ:x", "train")


# --- reasoning-gym ---------------------------------------------------------------------------


def test_reasoning_gym_task_with_options():
    spec = "rg:chain_sum:size=40,test_size=10,min_terms=3,max_terms=3"
    train, test = load(spec, "train"), load(spec, "test")
    assert (len(train), len(test)) == (40, 10)
    assert not questions(train) & questions(test)
    assert all(p.question.count("+") + p.question.count("-") >= 2 for p in train)
    assert all(re.fullmatch(r"rg/chain_sum/train/\d+", p.id) for p in train)
    assert load(spec, "train", seed=4) == load(spec, "train", seed=4)


def test_reasoning_gym_default_sizes_are_disjoint():
    train, test = load("rg:basic_arithmetic", "train"), load("rg:basic_arithmetic", "test")
    assert (len(train), len(test)) == (1000, 200)
    assert not questions(train) & questions(test)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rg:no_such_task", "unknown reasoning-gym task 'no_such_task'; 1"),
        ("rg", "rg needs a task name"),
        ("rg:chain_sum:bogus=1", "rg:chain_sum: bad task options {'bogus': 1}"),
        ("rg:chain_sum:size=many", "option size must be an integer"),
        ("rg:chain_sum:size", "not of the form key=value"),
    ],
)
def test_reasoning_gym_errors(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        load(spec, "train")


def test_reasoning_gym_unknown_task_lists_tasks():
    with pytest.raises(UsageError, match=r"e\.g\. .*basic_arithmetic"):
        load("rg:no_such_task", "test")


# --- jsonl -----------------------------------------------------------------------------------


def test_jsonl_single_file_is_split_disjointly():
    path = FIXTURES / "jsonl_single.jsonl"
    train, test = load(f"jsonl:{path}", "train"), load(f"jsonl:{path}", "test")
    assert (len(train), len(test)) == (9, 1)
    in_file = {r.get("question") or r.get("prompt") or r["problem"] for r in read_jsonl(path)}
    assert questions(train) | questions(test) == in_file
    assert not questions(train) & questions(test)
    answers = {p.question: p.answer for p in train + test}
    assert answers["What is 10 - 13?"] == "-3"  # `prompt` alias, numeric answer
    assert answers["Write 1234 with a thousands separator removed."] == "1,234"  # `problem` alias
    assert answers["What is half of 1?"] == "\\frac{1}{2}"
    assert set(load(f"jsonl:{path}", "test", seed=11)) == set(test)


def test_jsonl_folder_with_train_and_test():
    folder = FIXTURES / "jsonl_split"
    train, test = load(f"jsonl:{folder}", "train"), load(f"jsonl:{folder}", "test")
    assert sorted(p.answer for p in train) == ["16", "2", "5"]
    assert sorted(p.answer for p in test) == ["-1", "7"]
    assert {p.id for p in test} == {"jsonl/test/0", "jsonl/test/1"}


def test_jsonl_list_file_and_parquet_file(tmp_path):
    records = read_jsonl(FIXTURES / "jsonl_split" / "train.jsonl") + read_jsonl(FIXTURES / "jsonl_split" / "test.jsonl")
    (tmp_path / "rows.json").write_text(json.dumps(records))
    write_parquet(records, tmp_path / "rows.parquet")
    for name in ("rows.json", "rows.parquet"):
        both = load(f"jsonl:{tmp_path / name}", "train") + load(f"jsonl:{tmp_path / name}", "test")
        assert sorted(p.answer for p in both) == ["-1", "16", "2", "5", "7"]


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("jsonl_bad_json.jsonl", "line 3: invalid JSON (Expecting ',' delimiter"),
        ("jsonl_missing_answer.jsonl", "line 2: missing field 'answer'"),
        ("jsonl_bad_gold.jsonl", "line 4: the gold answer '???' is not a parseable math answer"),
    ],
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_jsonl_malformed_rows_name_file_and_line(fixture, message, split):
    path = FIXTURES / fixture
    with pytest.raises(UsageError) as info:
        load(f"jsonl:{path}", split)
    assert str(info.value).startswith(f"{path} {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('["a", "b"]', "line 1: expected a JSON object, got list"),
        ('{"question": "", "answer": "1"}', "line 1: the question is empty or not text"),
        ('{"question": "q", "answer": [1]}', "line 1: the answer must be a string or number, got list"),
        ('{"answer": "1"}', "line 1: missing field 'question' or 'prompt' or 'problem'"),
    ],
)
def test_jsonl_row_errors(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=re.escape(f"{path} {message}")):
        load(f"jsonl:{path}", "train")


def test_jsonl_missing_path_and_unsupported_type(tmp_path):
    with pytest.raises(UsageError, match=re.escape(f"jsonl: no such file or folder: '{tmp_path / 'absent.jsonl'}'")):
        load(f"jsonl:{tmp_path / 'absent.jsonl'}", "train")
    with pytest.raises(UsageError, match="jsonl needs a path"):
        load("jsonl", "train")
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(UsageError, match="unsupported file type '.csv'"):
        load(f"jsonl:{tmp_path / 'rows.csv'}", "train")
