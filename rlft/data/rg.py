"""``rg:TASK[:opts]``: any reasoning-gym task, generated offline by the ``reasoning-gym`` package.

Examples: ``rg:basic_arithmetic``, ``rg:chain_sum:size=500,min_terms=2``, ``rg:gsm_symbolic``.

Options: ``size`` (train problems, default 1000) and ``test_size`` (default 200); every other
``key=value`` is passed to ``reasoning_gym.create_dataset`` as the task's config (numbers and
true/false are converted). reasoning-gym seeds item ``i`` of a dataset with ``seed + i``, so the
test set is generated with seed :data:`~rlft.data.base.SPLIT_SEED` and the train set with seed
``SPLIT_SEED + test_size``: no item seed is shared. Train items whose question also occurs in the
test set are dropped all the same, so the splits are disjoint (train may then hold a few fewer
than ``size`` problems). Neither depends on the run seed.

The gold answer is the entry's ``answer``, graded by math-verify: use tasks with math answers
(numbers, expressions). Answers that math-verify cannot parse fail at load time, naming the item;
word answers parse as products of symbols and are not graded reliably.
"""

from __future__ import annotations

from rlft.data.base import DATASETS, SPLIT_SEED, Problem, convert_value, first_line, make_problem
from rlft.errors import UsageError

DEFAULT_SIZES = {"size": 1000, "test_size": 200}


def _parse(arg: str | None) -> tuple[str, dict[str, int], dict[str, object]]:
    """``"TASK:k=v,..."`` -> (task, our sizes, the task's config)."""
    task, _, option_text = (arg or "").partition(":")
    task = task.strip()
    if not task:
        raise UsageError("rg needs a task name, e.g. 'rg:basic_arithmetic' or 'rg:chain_sum:size=500'")
    sizes, config = dict(DEFAULT_SIZES), {}
    for item in option_text.split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise UsageError(f"rg:{task}: option {item.strip()!r} is not of the form key=value")
        if key in sizes:
            sizes[key] = int(convert_value(value, 0, f"rg:{task}: option {key}"))
            if sizes[key] < 1:
                raise UsageError(f"rg:{task}: {key} must be positive")
        else:
            config[key] = convert_value(value, None, f"rg:{task}: option {key}")
    return task, sizes, config


def _generate(task: str, size: int, seed: int, config: dict[str, object]) -> list[dict]:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS as RG_TASKS

    if task not in RG_TASKS:
        names = sorted(RG_TASKS)
        examples = ", ".join(names[:12])
        raise UsageError(f"unknown reasoning-gym task {task!r}; {len(names)} tasks, e.g. {examples}, ...")
    try:
        return list(reasoning_gym.create_dataset(task, size=size, seed=seed, **config))
    except (TypeError, ValueError, AssertionError) as exc:
        raise UsageError(f"rg:{task}: bad task options {config}: {first_line(exc)}") from None


@DATASETS.register("rg")
def load_reasoning_gym(arg: str | None, split: str, seed: int) -> list[Problem]:
    """Problems of one reasoning-gym task (see the module docstring)."""
    try:
        import reasoning_gym  # noqa: F401
    except ImportError:
        raise UsageError("rg:TASK needs the reasoning-gym package: pip install reasoning-gym") from None
    task, sizes, config = _parse(arg)
    test = _generate(task, sizes["test_size"], SPLIT_SEED, config)
    if split == "test":
        entries = test
    else:
        test_questions = {entry["question"] for entry in test}
        train = _generate(task, sizes["size"], SPLIT_SEED + sizes["test_size"], config)
        entries = [entry for entry in train if entry["question"] not in test_questions]
    problems = []
    for index, entry in enumerate(entries):
        where = f"rg:{task} {split} item {index}"
        problems.append(make_problem(entry["question"], entry["answer"], f"rg/{task}/{split}/{index}", where))
    return problems
