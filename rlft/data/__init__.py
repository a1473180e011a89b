"""The data registry: prompt sets with gold answers, train/test splits, deterministic by seed.

Public API::

    from rlft.data import Problem, load, format_prompt, DATASETS

    problems = load("arith", "train", seed=0, limit=100)
    problems = load("gsm8k:/path/to/gsm8k", "test")
    text = format_prompt(problems[0].question, tokenizer)

Specs (``name`` or ``name:ARG``):

* ``arith[:ops=+-*,digits=2,train_size=20000,test_size=500]``: synthetic arithmetic (built in).
* ``gsm8k`` (hub ``openai/gsm8k``) or ``gsm8k:PATH`` (folder with ``train.jsonl``/``test.jsonl``).
* ``math`` (hub Hendrycks MATH) or ``math:PATH``; ``math500`` (hub ``HuggingFaceH4/MATH-500``,
  test only) or ``math500:PATH``.
* ``champ``: the 167 CHAMP competition problems with closed-form answers (``champ-dataset``).
* ``rg:TASK[:opts]``: any reasoning-gym task, e.g. ``rg:chain_sum:size=500``.
* ``jsonl:PATH``: your own file or folder of ``{"question": ..., "answer": ...}`` rows.
* ``package.module:function[:ARG]`` or a name registered under the ``rlft.datasets`` entry point.
"""

from rlft.data.base import DATASETS, Problem, load
from rlft.data.prompts import SYSTEM_PROMPT, format_prompt
from rlft.data import arith, champ, jsonl, rg, tables  # noqa: F401  (register the built-ins)

__all__ = ["DATASETS", "Problem", "SYSTEM_PROMPT", "format_prompt", "load"]
