"""The KL-regularised objective the algorithms optimise, its optimum and the normalised gap.

For a prompt x, a policy pi, the frozen reference pi_ref and a reward r(x, y) in {0, 1}::

    J(pi)  = E_x [ E_{y ~ pi}[r(x, y)] - beta * KL(pi(.|x) || pi_ref(.|x)) ]
    J*     = max_pi J(pi) = beta * E_x log Z(x),   Z(x) = E_{y ~ pi_ref}[exp(r(x, y) / beta)]
           = beta * E_x log(1 + (e^{1/beta} - 1) * p(x)),   p(x) = pi_ref(r = 1 | x)
    gap    = (J* - J(pi)) / (J* - J(pi_ref))

reached by pi*(y|x) = pi_ref(y|x) exp(r / beta) / Z(x). By the Gibbs variational principle
J* - J(pi) = beta * E_x KL(pi(.|x) || pi*(.|x)) >= 0 for every pi, so the gap is
KL(pi || pi*) / KL(pi_ref || pi*) averaged over prompts: the language-model counterpart of the
tabular benchmark's (and the AGRO paper's Figure 1) metric. 1 at pi_ref, 0 at pi*.

p(x) needs the reference mass of ALL correct completions. :func:`reference_correct_mass` splits it
into the correct completions it can score exactly (the task's canonical answer strings, C(x)) and
the rest, estimated from pi_ref's own samples::

    p(x) = pi_ref(C(x) | x) + (1/K) * #{k : r(x, y_k) = 1, y_k not in C(x)},   y_k ~ pi_ref

Unbiased for p(x), and exact when pi_ref puts no mass on correct completions outside C(x) (then
the sampled part is 0). ``canonical_share`` (the share of pi_ref's correct samples that are in
C(x)) says how close to that a task is: 1.0 on the tiny preset's arith, whose answers are
``" " + answer + EOS``. log is concave, so the sampled part makes J* slightly low in expectation.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def log_partition(p_correct: Tensor, beta: float) -> Tensor:
    """log Z(x) = log((1 - p) + p * e^{1/beta}) for each prompt, in float64, stable for small beta.

    Args:
        p_correct: [N] pi_ref(r = 1 | x) per prompt, in [0, 1].
        beta: the KL coefficient, > 0.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    p = p_correct.double().clamp(0.0, 1.0)
    return torch.logaddexp(torch.log1p(-p), torch.log(p) + 1.0 / beta)


def optimal_objective(p_correct: Tensor, beta: float) -> float:
    """J* = beta * mean_x log Z(x) for a 0/1 reward (see the module docstring); p_correct is [N]."""
    return float(beta * log_partition(p_correct, beta).mean())


def objective(mean_reward: float, kl: float, beta: float) -> float:
    """J(pi) = E[r] - beta * KL(pi || pi_ref), from the mean reward and the mean KL per prompt."""
    return mean_reward - beta * kl


def objective_gap(value: float, optimum: float, reference: float) -> float:
    """(J* - J) / (J* - J(pi_ref)); NaN when pi_ref is already optimal (J* = J(pi_ref))."""
    scale = optimum - reference
    return (optimum - value) / scale if scale > 0 else math.nan


def canonical_token_ids(tokenizer, answers: Sequence[str]) -> list[list[int]]:
    """The completion ``" " + answer`` then EOS, as token ids, per answer: C(x) of the arith-style
    tasks (what the tiny preset was trained to write after ``Answer:``)."""
    ids = tokenizer([" " + a for a in answers], add_special_tokens=False)["input_ids"]
    return [row + [tokenizer.eos_token_id] for row in ids]


def completion_rows(completion_ids: Tensor, completion_mask: Tensor) -> list[tuple[int, ...]]:
    """Each row's completion tokens (padding dropped), hashable, to compare with C(x)."""
    return [tuple(row[mask].tolist()) for row, mask in zip(completion_ids, completion_mask.bool())]


def reference_correct_mass(canonical_logprob: Tensor, rewards: Tensor, is_canonical: Tensor) -> Tensor:
    """p(x) per prompt: exact mass of C(x) plus the sampled share of other correct completions.

    Args:
        canonical_logprob: [N] log pi_ref(c(x) | x) of each prompt's canonical completion.
        rewards: [N, K] 0/1 rewards of K samples of pi_ref per prompt.
        is_canonical: [N, K] whether each sample is the canonical completion.
    Returns:
        [N] float64 estimate of pi_ref(r = 1 | x), in [0, 1].
    """
    other = (rewards.double() * (~is_canonical.bool()).double()).mean(dim=1)
    return (canonical_logprob.double().exp() + other).clamp(0.0, 1.0)
