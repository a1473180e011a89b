"""Exact properties of the estimators (the project's specification of what the tests must prove).

Sections 1-3 use a softmax bandit (K = 2..4 single-token arms, groups of n = 2..3): every
expectation is an exact finite sum over the K^n ordered groups, each group going through the REAL
``Algorithm.loss`` on a real Batch and torch.autograd (see ``tests/exact.py``). No Monte Carlo.
Everything is float64; the tolerances are float64 rounding bounds of these sums (tests/tolerances.py).

1. on-policy unbiasedness   2. AGRO off-policy = -grad Var_mu[Delta] / (2 beta), fixed point pi*
3. untruncated is-pg unbiased off-policy   4. KL estimators   5. micro-batch loss aggregation
6. GRPO advantage invariances   7. AGRO variants (shift, anchor): their updates and fixed points
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import algorithms
from algorithms import Normalizers
from algorithms import functional as F
from algorithms.grpo import grpo_advantages
from rlft.batch import Batch
from rlft.errors import UsageError
from exact import DTYPE, Problem, expected_gradient, group_batch, per_group_gradients, total_probability  # tests/exact.py
from tolerances import chain_error, difference  # tests/tolerances.py

#: Exact expectations sum the K^n <= 64 groups of n <= 3 samples, each through a softmax over K <= 4
#: arms and the loss's group sums. Their terms are below SCALE in magnitude: |r| <= 1, |ell| <= 6 + log 4
#: (logits in [-3, 3]), beta in [0.05, 2], so |Delta| <= 16, times at most 1 / (2 beta) = 10 and the
#: gradient of a log-softmax (<= 2).
ENUMERATION = [4, 3, 4**3, 4]
SCALE = 1e3
RTOL = 2 * chain_error(ENUMERATION, DTYPE)
ATOL = difference(ENUMERATION, SCALE, DTYPE)
INF = float("inf")

EXACT = settings(max_examples=50, deadline=None)
CHEAP = settings(max_examples=100, deadline=None)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- strategies
LOGIT = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
REWARD = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
BETA = st.floats(0.05, 2.0, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw, on_policy: bool = False) -> Problem:
    """A bandit: K in 2..4 arms, n in 2..3 samples per group, logits in [-3, 3], r in [0, 1]."""
    K = draw(st.integers(2, 4))
    vector = lambda elements: st.lists(elements, min_size=K, max_size=K).map(tuple)  # noqa: E731
    return Problem(
        theta=draw(vector(LOGIT)),
        ref_logits=draw(vector(LOGIT)),
        mu_logits=None if on_policy else draw(vector(LOGIT)),
        rewards=draw(vector(REWARD)),
        beta=draw(BETA),
        n=draw(st.integers(2, 3)),
    )


def make(name: str, problem: Problem, **overrides) -> algorithms.Algorithm:
    return algorithms.make(name, beta=problem.beta, **overrides)


# ============================================================== 0. the references themselves
@EXACT
@given(problems())
def test_references_are_consistent(problem: Problem) -> None:
    """The analytic grad J = pi_k (g_k - E_pi g) equals autograd of the closed-form J, and the
    enumeration of groups is a probability distribution (weights sum to 1)."""
    close(problem.grad_objective_analytic(), problem.grad_objective())
    assert math.isclose(total_probability(problem), 1.0, rel_tol=0, abs_tol=difference(ENUMERATION, 1.0, DTYPE))


# =================================================================== 1. on-policy unbiasedness
UNBIASED = [
    ("reinforce", dict(baseline="none", kl="reward")),
    ("reinforce", dict(baseline="loo", kl="reward")),
    ("rloo", {}),
    ("agro", dict(baseline="loo")),
    ("is-pg", dict(baseline="none", truncation=INF)),
    ("is-pg", dict(baseline="loo", truncation=INF)),
    ("reinforce", dict(baseline="none", kl="loss", kl_estimator="k2")),
    ("reinforce", dict(baseline="loo", kl="loss", kl_estimator="k2")),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in UNBIASED]


@pytest.mark.parametrize("name, overrides", UNBIASED, ids=IDS)
@EXACT
@given(problem=problems(on_policy=True))
def test_on_policy_unbiased(name: str, overrides: dict, problem: Problem) -> None:
    """mu = pi: E_{y_1..n ~ pi}[-grad loss] = grad J(pi) exactly."""
    close(expected_gradient(make(name, problem, **overrides), problem), problem.grad_objective_analytic())


@pytest.mark.parametrize("baseline", ["none", "loo"])
@EXACT
@given(problem=problems(on_policy=True))
def test_reinforce_k3_loss_is_the_reverse_kl_gradient(baseline: str, problem: Problem) -> None:
    """mu = pi: with a per-token k3 loss term, E[-grad loss] = grad E_pi[r] - beta grad KL(pi_ref || pi):
    the OTHER direction of KL than the objective's (the gradient of KL(pi_ref || pi) in softmax
    logits is pi - pi_ref)."""
    pi = torch.softmax(problem.tensor(problem.theta), -1)
    reward_gradient = pi * (problem.r - (pi * problem.r).sum())
    expected = reward_gradient - problem.beta * (pi - problem.ref_logprobs.exp())
    algorithm = make("reinforce", problem, baseline=baseline, kl="loss", kl_estimator="k3")
    close(expected_gradient(algorithm, problem), expected)


@EXACT
@given(problem=problems(on_policy=True))
def test_on_policy_agro_mean_is_scaled(problem: Problem) -> None:
    """mu = pi: AGRO with the group-mean baseline gives (n-1)/n grad J(pi)."""
    expected = (problem.n - 1) / problem.n * problem.grad_objective_analytic()
    close(expected_gradient(make("agro", problem, baseline="mean"), problem), expected)


# ====================================================================== 2. AGRO off-policy
@pytest.mark.parametrize("baseline", ["mean", "loo"])
@EXACT
@given(problem=problems())
def test_agro_off_policy_is_minus_variance_gradient(baseline: str, problem: Problem) -> None:
    """Any full-support mu: E_mu[-grad loss] = -c grad Var_mu[Delta] / (2 beta),
    c = (n-1)/n for the mean baseline and 1 for leave-one-out."""
    factor = (problem.n - 1) / problem.n if baseline == "mean" else 1.0
    expected = -factor * problem.grad_var_delta() / (2 * problem.beta)
    close(expected_gradient(make("agro", problem, baseline=baseline), problem), expected)


@pytest.mark.parametrize("baseline", ["mean", "loo"])
@EXACT
@given(problem=problems())
def test_agro_fixed_point_is_optimum_for_any_mu(baseline: str, problem: Problem) -> None:
    """At pi = pi* (theta = ref_logits + r / beta) the gradient of EVERY group is zero, whatever mu
    (so its expectation, and the sampling noise, are zero too)."""
    optimum = problem.at_optimum()
    algorithm = make("agro", optimum, baseline=baseline)
    zero = torch.zeros(problem.K, dtype=DTYPE)
    for grad in per_group_gradients(algorithm, optimum):
        close(grad, zero)
    close(expected_gradient(algorithm, optimum), zero)


def reinforce_mean_at_optimum(problem: Problem) -> torch.Tensor:
    """Closed form of E_mu[-grad loss] of reinforce(baseline=mean, kl=reward) at pi = pi*.

    There A_i = Delta_i - mean_j r_j = c - rbar (c = beta log Z) and -grad loss = (c - rbar)(counts/n - pi*),
    so its expectation is  mu_k (c - m - (r_k - m)/n) - (c - m) pi*_k,  m = E_mu r.
    """
    mu = problem.mu_logprobs().exp()
    pi_star = torch.softmax(torch.tensor(problem.optimal_theta, dtype=DTYPE), -1)
    r, n, c = problem.r, problem.n, problem.beta * problem.log_partition
    m = (mu * r).sum()
    return mu * (c - m - (r - m) / n) - (c - m) * pi_star


@EXACT
@given(problem=problems())
def test_reinforce_reward_baseline_does_not_vanish_at_optimum(problem: Problem) -> None:
    """KL-regularised REINFORCE with a group-mean REWARD baseline has a non-zero expected gradient at
    pi* for generic off-policy mu: pi* is not its fixed point (the paper's contrast to AGRO)."""
    optimum = problem.at_optimum()
    pi_star = torch.softmax(torch.tensor(optimum.theta, dtype=DTYPE), -1)
    mu = problem.mu_logprobs().exp()
    closed_form = reinforce_mean_at_optimum(optimum)
    # non-degenerate draws: rewards not all equal, mu away from pi*, predicted drift not ~0
    assume(max(problem.rewards) - min(problem.rewards) > 0.1)
    assume(float((mu - pi_star).abs().max()) > 0.05)
    assume(float(closed_form.norm()) > 1e-4)
    grad = expected_gradient(make("reinforce", optimum, baseline="mean", kl="reward"), optimum)
    close(grad, closed_form)
    assert float(grad.norm()) > 1e-6


@EXACT
@given(problem=problems())
def test_dro_expected_gradient_is_population_loss_gradient(problem: Problem) -> None:
    """DRO's policy gradient under any mu and any value V is the gradient of its population loss
    E_mu[(r - V - beta ell)^2] / (2 beta) (the policy copy of the loss is divided by beta)."""
    value = 0.3
    theta = problem.theta_leaf()
    mu = problem.mu_logprobs().exp()
    ell = torch.log_softmax(theta, -1) - problem.ref_logprobs
    population = (mu * (problem.r - value - problem.beta * ell) ** 2).sum() / (2 * problem.beta)
    (grad,) = torch.autograd.grad(population, theta)
    close(expected_gradient(make("dro", problem), problem, value=value), -grad)


@EXACT
@given(problem=problems())
def test_dro_vanishes_at_optimum_with_optimal_value(problem: Problem) -> None:
    """At pi = pi* and V = beta log Z, every DRO group gradient (w.r.t. theta) is zero, for any mu."""
    optimum = problem.at_optimum()
    value = problem.beta * problem.log_partition
    algorithm = make("dro", optimum)
    zero = torch.zeros(problem.K, dtype=DTYPE)
    for grad in per_group_gradients(algorithm, optimum, value=value):
        close(grad, zero)
    close(expected_gradient(algorithm, optimum, value=value), zero)


# ================================================================ 3. is-pg unbiased off-policy
@pytest.mark.parametrize("baseline", ["none", "loo"])
@EXACT
@given(problem=problems())
def test_is_pg_unbiased_off_policy(baseline: str, problem: Problem) -> None:
    """Any full-support mu: untruncated is-pg has E_mu[-grad loss] = grad J(pi)."""
    algorithm = make("is-pg", problem, baseline=baseline, truncation=INF)
    close(expected_gradient(algorithm, problem), problem.grad_objective_analytic())


def per_sample_expectation(problem: Problem, weights: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """E_{y ~ mu}[w(y) A(y) grad_theta log pi(y)] = sum_y mu_y w_y A_y (e_y - pi) for a softmax policy."""
    pi = torch.softmax(problem.tensor(problem.theta), -1)
    terms = problem.mu_logprobs().exp() * weights * advantages
    return terms - pi * terms.sum()


@EXACT
@given(problem=problems())
def test_truncated_is_pg_expected_gradient(problem: Problem) -> None:
    """Any mu, truncation c: E_mu[-grad loss] = E_mu[min(pi / mu, c) (r - beta ell) grad log pi]."""
    c = 1.5
    logpi = torch.log_softmax(problem.tensor(problem.theta), -1)
    weights = (logpi - problem.mu_logprobs()).exp().clamp(max=c)
    advantages = problem.r - problem.beta * (logpi - problem.ref_logprobs)
    algorithm = make("is-pg", problem, baseline="none", truncation=c)
    close(expected_gradient(algorithm, problem), per_sample_expectation(problem, weights, advantages))


@EXACT
@given(problem=problems(), c=st.sampled_from([0.25, 0.5, 0.75]))
def test_topr_splits_by_the_reward(problem: Problem, c: float) -> None:
    """TOPR as in Le Roux et al. 2025, any mu: positive samples (r >= c) weight 1, negative ones the
    truncated ratio min(pi / mu, 1); A = r - c - beta ell:
    E_mu[-grad loss] = E_mu[w(y) A(y) grad log pi(y)]."""
    logpi = torch.log_softmax(problem.tensor(problem.theta), -1)
    tapered = (logpi - problem.mu_logprobs()).exp().clamp(max=1.0)
    weights = torch.where(problem.r >= c, torch.ones_like(tapered), tapered)
    advantages = problem.r - c - problem.beta * (logpi - problem.ref_logprobs)
    algorithm = make("topr", problem, reward_baseline=c)
    close(expected_gradient(algorithm, problem), per_sample_expectation(problem, weights, advantages))


# ============================================================================ 4. KL estimators
@CHEAP
@given(problems(on_policy=True))
def test_kl_estimators_unbiased(problem: Problem) -> None:
    """E_{y ~ pi}[k1] = E_{y ~ pi}[k3] = KL(pi || pi_ref), enumerating the K arms."""
    logpi = torch.log_softmax(torch.tensor(problem.theta, dtype=DTYPE), -1)
    logref = problem.ref_logprobs
    pi = logpi.exp()
    kl = float((pi * (logpi - logref)).sum())
    for kind in ("k1", "k3"):
        estimate = float((pi * F.kl_estimate(logpi, logref, kind)).sum())
        assert math.isclose(estimate, kl, rel_tol=RTOL, abs_tol=ATOL), (kind, estimate, kl)


LOGPROB = st.floats(-40.0, 0.0, allow_nan=False, allow_infinity=False)


@CHEAP
@given(st.lists(st.tuples(LOGPROB, LOGPROB), min_size=1, max_size=20))
def test_k3_nonnegative(pairs: list[tuple[float, float]]) -> None:
    """k3 = (r - 1) - log r >= 0 pointwise, for arbitrary (log pi, log pi_ref) pairs (k2 too)."""
    logprobs = torch.tensor([p for p, _ in pairs], dtype=DTYPE)
    ref = torch.tensor([q for _, q in pairs], dtype=DTYPE)
    for kind in ("k2", "k3"):
        estimate = F.kl_estimate(logprobs, ref, kind)
        assert torch.isfinite(estimate).all()
        assert (estimate >= 0).all(), (kind, estimate)


# ====================================================================== 5. loss aggregation
@st.composite
def lm_batches(draw, max_group_size: int = 3):
    """A random LM-like batch: G groups of 2..3 completions, T <= 5, right padding (>= 1 real
    token), left-padded prompts, and how many groups go in each micro-batch."""
    G = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(2, max_group_size), min_size=G, max_size=G))
    B, T, P = sum(sizes), draw(st.integers(1, 5)), 3
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    discrete_rewards = draw(st.booleans())  # ties and no-gap groups (DPO, RAFT, GRPO std = 0)
    seed = draw(st.integers(0, 2**31 - 1))
    groups_per_slice = draw(st.integers(1, G))

    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    prompt_lengths = torch.randint(1, P + 1, (B,), generator=g)
    rewards = (torch.randint(0, 3, (B,), generator=g).to(DTYPE) / 2 if discrete_rewards
               else torch.rand(B, generator=g, dtype=DTYPE))
    negative = lambda: -3 * torch.rand(B, T, generator=g, dtype=DTYPE) - 0.01  # noqa: E731
    batch = Batch(
        prompt_ids=torch.randint(0, 50, (B, P), generator=g),
        prompt_mask=torch.arange(P)[None, :] >= (P - prompt_lengths)[:, None],
        completion_ids=torch.randint(0, 50, (B, T), generator=g) * mask,
        completion_mask=mask,
        group_ids=torch.repeat_interleave(torch.arange(G), torch.tensor(sizes)),
        rewards=rewards,
        behavior_logprobs=negative() * mask,
        ref_logprobs=negative() * mask,
    )
    logprobs = negative().requires_grad_(True)  # the current policy's token log-probs (a leaf)
    values = torch.randn(B, T, generator=g, dtype=DTYPE).requires_grad_(True)
    return batch, logprobs, values, groups_per_slice


def micro_batches(batch: Batch, groups_per_slice: int):
    """(rows, micro-batch) for the group-aligned split of ``batch``."""
    start = 0
    for part in batch.group_slices(groups_per_slice):
        yield slice(start, start + len(part)), part
        start += len(part)
    assert start == len(batch)


AGGREGATION_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-sum"]


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
@CHEAP
@given(lm_batches())
def test_aggregate_is_additive_over_micro_batches(mode: str, drawn) -> None:
    """functional.aggregate with the WHOLE batch's Normalizers: sum over micro-batches = whole."""
    batch, token_values, _, groups_per_slice = drawn
    norm = Normalizers.of(batch)
    whole = F.aggregate(token_values, batch.completion_mask, mode, norm)
    parts = [F.aggregate(token_values[rows], part.completion_mask, mode, norm)
             for rows, part in micro_batches(batch, groups_per_slice)]
    close(sum(parts), whole, rtol=SPLIT_RTOL, atol=split_atol(1.0))


#: A drawn batch has B <= 12 completions of T <= 5 tokens in G <= 4 groups: its losses are sums over
#: tokens, sequences and groups (and PPO's GAE runs over T), split or whole.
SPLIT_SUMS = [12 * 5, 12, 4, 5]
SPLIT_RTOL = 2 * chain_error(SPLIT_SUMS, DTYPE)
#: Their terms are below 1e2 (log-probs in [-3, 0] per token, |ell| <= 15, beta 0.3, rewards <= 1,
#: DRO squares a residual of ~6); is-pg's untruncated sequence ratio multiplies them by up to e^(3 * 5).
SPLIT_SCALE = {"is-pg": 1e2 * math.exp(15)}


def split_atol(scale: float) -> float:
    return difference(SPLIT_SUMS, scale, DTYPE)


SPLITTABLE = [
    ("agro", dict(baseline="mean")),
    ("agro", dict(baseline="loo")),
    *[("grpo", dict(aggregation=mode)) for mode in AGGREGATION_MODES],
    ("ppo", {}),
    ("dpo", {}),
    ("rloo", {}),
    ("reinforce", dict(baseline="mean", kl="reward")),
    ("reinforce", dict(baseline="loo", kl="loss", kl_estimator="k3")),
    ("is-pg", {}),
    ("topr", {}),
    ("dro", {}),
    ("raft", {}),
]
SPLIT_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}".rstrip("-") for name, kw in SPLITTABLE]


def run(algorithm, batch: Batch, logprobs, values, norm):
    return algorithm.loss(batch, logprobs, values if algorithm.needs.value_head else None, norm)


@pytest.mark.parametrize("name, overrides", SPLITTABLE, ids=SPLIT_IDS)
@settings(max_examples=30, deadline=None)
@given(drawn=lm_batches())
def test_micro_batches_sum_to_whole_batch(name: str, overrides: dict, drawn) -> None:
    """Group-aligned micro-batches with the global Normalizers: the losses and every metric sum to
    those of the whole batch, and so do the gradients (w.r.t. log-probs and values). Padding
    positions get zero gradient. PPO's prepare runs once on the whole batch (batch.extras)."""
    batch, logprobs, values, groups_per_slice = drawn
    if "beta" in algorithms.get(name).Config.help():
        overrides = {"beta": 0.3, **overrides}
    algorithm = algorithms.make(name, **overrides)
    if algorithm.needs.prepare:
        batch.extras = algorithm.prepare(batch, logprobs.detach(), values.detach())
    norm = Normalizers.of(batch, algorithm=algorithm)  # the WHOLE batch's counts, the algorithm's own included
    leaves = (logprobs, values) if algorithm.needs.value_head else (logprobs,)

    whole = run(algorithm, batch, logprobs, values, norm)
    whole_grads = torch.autograd.grad(whole.loss, leaves, allow_unused=True)

    parts = [run(algorithm, part, logprobs[rows], values[rows], norm)
             for rows, part in micro_batches(batch, groups_per_slice)]
    total = sum(p.loss for p in parts)
    split_grads = torch.autograd.grad(total, leaves, allow_unused=True)

    atol = split_atol(SPLIT_SCALE.get(name, 1e2))
    close(total.detach(), whole.loss.detach(), rtol=SPLIT_RTOL, atol=atol)
    for key, value in whole.metrics.items():
        close(sum(p.metrics[key] for p in parts), value, rtol=SPLIT_RTOL, atol=atol)
    for split, full in zip(split_grads, whole_grads):
        split = torch.zeros_like(logprobs) if split is None else split
        full = torch.zeros_like(logprobs) if full is None else full
        close(split, full, rtol=SPLIT_RTOL, atol=atol)
    padding = ~batch.completion_mask
    if whole_grads[0] is not None:
        assert (whole_grads[0][padding] == 0).all(), "padding tokens must not receive gradient"


# =========================================================================== 6. GRPO invariances
@st.composite
def grouped_rewards(draw):
    """Rewards of G groups of n, a shift and a positive scale per group."""
    G, n = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    per_group = lambda elements: st.lists(elements, min_size=G, max_size=G)  # noqa: E731
    rewards = draw(st.lists(st.lists(REWARD, min_size=n, max_size=n), min_size=G, max_size=G))
    shifts = draw(per_group(st.floats(-10.0, 10.0, allow_nan=False)))
    scales = draw(per_group(st.floats(0.1, 10.0, allow_nan=False)))
    expand = lambda values: torch.tensor(values, dtype=DTYPE).repeat_interleave(n)  # noqa: E731
    return (torch.tensor(rewards, dtype=DTYPE).reshape(-1), torch.arange(G).repeat_interleave(n),
            expand(shifts), expand(scales))


@CHEAP
@given(grouped_rewards())
def test_grpo_advantages_invariances(drawn) -> None:
    """Shifting a group's rewards leaves the advantages unchanged (any std eps, both scalings);
    scaling them by c > 0 leaves them unchanged with scale_rewards='group' (std_eps = 0) and
    multiplies them by c with scale_rewards='none'."""
    rewards, group_ids, shift, scale = drawn
    assume(bool((F.group_std(rewards, group_ids) > 1e-2).all()))  # non-constant groups
    for scaling, eps in (("group", 0.0), ("group", 1e-4), ("none", 0.0)):
        base = grpo_advantages(rewards, group_ids, scaling, eps)
        close(grpo_advantages(rewards + shift, group_ids, scaling, eps), base)
    base = grpo_advantages(rewards, group_ids, "group", 0.0)
    close(grpo_advantages(rewards * scale, group_ids, "group", 0.0), base)
    close(grpo_advantages(rewards * scale, group_ids, "none", 0.0),
          scale * grpo_advantages(rewards, group_ids, "none", 0.0))


@settings(max_examples=50, deadline=None)
@given(drawn=lm_batches(max_group_size=3), shift=st.floats(-10, 10), scale=st.floats(0.1, 10))
def test_grpo_loss_gradient_invariances(drawn, shift: float, scale: float) -> None:
    """The GRPO loss and its gradient are unchanged by r -> c r + s per group (std_eps = 0,
    scale_rewards='group'), and by r -> r + s with scale_rewards='none' (Dr. GRPO)."""
    batch, logprobs, _, _ = drawn
    assume(bool((F.group_std(batch.rewards, batch.group_ids) > 1e-2).all()))
    # a different shift and scale per group
    G = batch.num_groups
    shifts = (shift * torch.linspace(-1, 1, G, dtype=DTYPE))[batch.group_ids]
    scales = (scale * torch.linspace(1, 2, G, dtype=DTYPE))[batch.group_ids]
    norm = Normalizers.of(batch)

    def loss_and_grad(algorithm, rewards):
        b = dataclasses.replace(batch, rewards=rewards)
        out = algorithm.loss(b, logprobs, None, norm)
        return out.loss.detach(), torch.autograd.grad(out.loss, logprobs)[0]

    for scaling, transformed in (("group", batch.rewards * scales + shifts), ("none", batch.rewards + shifts)):
        algorithm = algorithms.make("grpo", beta=0.1, std_eps=0.0, scale_rewards=scaling)
        loss, grad = loss_and_grad(algorithm, batch.rewards)
        loss2, grad2 = loss_and_grad(algorithm, transformed)
        close(loss2, loss)
        close(grad2, grad)


# ====================================================================== 7. AGRO variants
# ``shift`` (Asymmetric REINFORCE's baseline shift) and ``anchor`` (the pi*-anchor): what each adds
# to AGRO's expected update, and where its fixed point is (algorithms/agro.py, class docstring).
SHIFT = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False).filter(lambda d: abs(d) > 1e-3)
ANCHOR = st.floats(0.05, 2.0, allow_nan=False, allow_infinity=False)
BASELINES = ["mean", "loo"]


def consistency_factor(baseline: str, n: int) -> float:
    """c of the class docstring: (n-1)/n with the mean baseline, 1 with leave-one-out."""
    return (n - 1) / n if baseline == "mean" else 1.0


@pytest.mark.parametrize("baseline", BASELINES)
@EXACT
@given(problem=problems(), shift=SHIFT)
def test_agro_shift_adds_behaviour_cloning(baseline: str, problem: Problem, shift: float) -> None:
    """Any full-support mu: E_mu[-grad loss] = -c grad Var_mu[Delta] / (2 beta) + delta (mu - pi),
    the second term being delta * grad E_mu[log pi] in softmax logits (a pull toward the data)."""
    pi = torch.softmax(problem.tensor(problem.theta), -1)
    mu = problem.mu_logprobs().exp()
    c = consistency_factor(baseline, problem.n)
    expected = -c * problem.grad_var_delta() / (2 * problem.beta) + shift * (mu - pi)
    close(expected_gradient(make("agro", problem, baseline=baseline, shift=shift), problem), expected)


@pytest.mark.parametrize("baseline", BASELINES)
@EXACT
@given(problem=problems(on_policy=True), shift=SHIFT)
def test_agro_shift_leaves_on_policy_unchanged(baseline: str, problem: Problem, shift: float) -> None:
    """mu = pi: E_pi[grad log pi] = 0, so the shift changes nothing in expectation."""
    plain = expected_gradient(make("agro", problem, baseline=baseline), problem)
    close(expected_gradient(make("agro", problem, baseline=baseline, shift=shift), problem), plain)


@pytest.mark.parametrize("baseline", BASELINES)
@EXACT
@given(problem=problems(), shift=SHIFT, level=st.floats(-1.0, 1.0))
def test_agro_shift_fixed_point(baseline: str, problem: Problem, shift: float, level: float) -> None:
    """The fixed point: E_mu[-grad loss] = 0 exactly where Delta(y) = b - delta' + delta' pi(y) / mu(y)
    (delta' = delta / c, b = E_mu[Delta]). The rewards are built so that the drawn pi is there:
    r = beta ell + b - delta' + delta' pi / mu. It is not pi*: there the gradient is delta (mu - pi*)."""
    logpi = torch.log_softmax(problem.tensor(problem.theta), -1)
    log_mu = problem.mu_logprobs()
    ratio = (logpi - log_mu).exp()
    assume(float(ratio.max()) <= 50)  # keeps |r| within the tolerance's SCALE
    delta_prime = shift / consistency_factor(baseline, problem.n)
    rewards = problem.beta * (logpi - problem.ref_logprobs) + level - delta_prime + delta_prime * ratio
    there = dataclasses.replace(problem, rewards=tuple(rewards.tolist()))
    algorithm = make("agro", there, baseline=baseline, shift=shift)
    close(expected_gradient(algorithm, there), torch.zeros(problem.K, dtype=DTYPE))
    optimum = problem.at_optimum()
    pi_star = torch.softmax(problem.tensor(optimum.theta), -1)
    close(expected_gradient(make("agro", optimum, baseline=baseline, shift=shift), optimum),
          shift * (log_mu.exp() - pi_star))


@pytest.mark.parametrize("baseline", BASELINES)
@EXACT
@given(problem=problems(), anchor=ANCHOR)
def test_agro_anchor_vanishes_at_optimum(baseline: str, problem: Problem, anchor: float) -> None:
    """At pi = pi*, Delta is constant in every group, so w*_i = w_i for every sample: the gradient of
    EVERY group is zero, for any mu, as for the paper's AGRO; pi* stays the fixed point."""
    optimum = problem.at_optimum()
    algorithm = make("agro", optimum, baseline=baseline, anchor=anchor)
    zero = torch.zeros(problem.K, dtype=DTYPE)
    for grad in per_group_gradients(algorithm, optimum):
        close(grad, zero)


@EXACT
@given(problem=problems(), arms=st.lists(st.integers(0, 3), min_size=2, max_size=6))
def test_agro_anchor_weights_are_importance_weights(problem: Problem, arms: list[int]) -> None:
    """In any group from mu: w*_i = n q*_i / sum_j q*_j with q* = pi* / mu, and w_i the same with
    q = pi / mu (the identity rho exp(Delta / beta) = exp(r / beta) pi_ref / mu, proportional to pi* / mu)."""
    arms = tuple(a % problem.K for a in arms)
    log_mu, ref = problem.mu_logprobs(), problem.ref_logprobs
    logpi = torch.log_softmax(problem.tensor(problem.theta), -1)
    batch = group_batch(arms, log_mu, ref, problem.r)
    algorithm = make("agro", problem, anchor=1.0)
    seq_logprobs = logpi[list(arms)]
    delta = batch.rewards - problem.beta * (seq_logprobs - batch.ref_seq_logprobs)
    log_star = torch.log_softmax(problem.tensor(problem.optimal_theta), -1)

    def normalised(q: torch.Tensor) -> torch.Tensor:
        return len(arms) * q / q.sum()

    expected = normalised((log_star - log_mu).exp()[list(arms)]) - normalised((logpi - log_mu).exp()[list(arms)])
    close(algorithm.anchor_weights(batch, seq_logprobs, delta), expected)


@EXACT
@given(problem=problems(), anchor=ANCHOR, n=st.integers(2, 6))
def test_agro_anchor_pulls_toward_optimum(problem: Problem, anchor: float, n: int) -> None:
    """Two arms, any mu, any group size: the anchor's update of arm 1's logit has the sign of
    pi*(1) - pi(1) in EVERY group (zero when all samples agree), so also in expectation.

    In a group with c samples of arm 1, its update is lambda * (share of w* on arm 1 - share of w on
    arm 1) * n / n, and the self-normalised share c q1/mu1 / (c q1/mu1 + (n - c) q0/mu0) grows with
    q1/q0: it is larger for q = pi* than for q = pi exactly when pi*(1) > pi(1)."""
    two = dataclasses.replace(problem, theta=problem.theta[:2], ref_logits=problem.ref_logits[:2],
                              mu_logits=problem.mu_logits[:2], rewards=problem.rewards[:2], n=n)
    pi = torch.softmax(two.tensor(two.theta), -1)
    pi_star = torch.softmax(two.tensor(two.optimal_theta), -1)
    toward = float(pi_star[1] - pi[1])
    assume(abs(toward) > 0.01)
    with_anchor, plain = make("agro", two, anchor=anchor), make("agro", two)
    grads = zip(per_group_gradients(with_anchor, two), per_group_gradients(plain, two))
    pulls = [float(a[1] - b[1]) for a, b in grads]
    assert all(p * toward >= -ATOL for p in pulls)
    expected_pull = float(expected_gradient(with_anchor, two)[1] - expected_gradient(plain, two)[1])
    assert expected_pull * toward > 0
    assert abs(expected_pull) > 1e3 * ATOL


def test_agro_variants_refuse_bad_values() -> None:
    """One line each: a non-finite shift, a negative anchor, an anchor without beta."""
    for bad in (dict(shift=float("nan")), dict(anchor=-0.1), dict(anchor=float("inf")), dict(anchor=0.5, beta=0.0)):
        with pytest.raises(UsageError, match="shift|anchor"):
            algorithms.make("agro", **bad)
