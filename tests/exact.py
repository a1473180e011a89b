"""Exact expectations over a softmax bandit, for the property tests.

A "policy" is a categorical distribution over K single-token completions (arms). A group is n arms
drawn i.i.d. from a behaviour policy mu, so the expectation of anything computed on a group is a
finite sum over the K^n ordered groups (itertools.product), each weighted by prod_i mu(a_i). The
per-group quantity is the REAL ``Algorithm.loss`` on a real :class:`rlft.batch.Batch` (P = 0,
T = 1, completion_ids = the arms); gradients come from torch.autograd. Everything is float64.

Closed forms used as references (pi = softmax(theta), Delta_a = r_a - beta log(pi_a / ref_a)):

    J(pi)          = sum_a pi_a r_a - beta sum_a pi_a log(pi_a / ref_a)
    grad_k J       = pi_k (g_k - E_pi g),   g_a = r_a - beta log(pi_a / ref_a)
    Var_mu[Delta]  = sum_a mu_a Delta_a^2 - (sum_a mu_a Delta_a)^2      (mu fixed, Delta depends on theta)
    pi*            = softmax(ref_logits + r / beta),  Delta == beta log Z at pi*.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms.base import Algorithm, Normalizers
from rlft.batch import Batch

DTYPE = torch.float64


@dataclass(frozen=True)
class Problem:
    """One bandit instance: logits of pi (theta), pi_ref and mu, rewards, beta and group size n."""

    theta: tuple[float, ...]
    ref_logits: tuple[float, ...]
    mu_logits: tuple[float, ...] | None  # None: on-policy (mu = pi)
    rewards: tuple[float, ...]
    beta: float
    n: int

    @property
    def K(self) -> int:
        return len(self.theta)

    def tensor(self, values) -> Tensor:
        return torch.tensor(values, dtype=DTYPE)

    @property
    def ref_logprobs(self) -> Tensor:
        return torch.log_softmax(self.tensor(self.ref_logits), -1)

    @property
    def r(self) -> Tensor:
        return self.tensor(self.rewards)

    def theta_leaf(self) -> Tensor:
        return self.tensor(self.theta).requires_grad_(True)

    def mu_logprobs(self) -> Tensor:
        """log mu [K], detached (log pi itself when on-policy)."""
        logits = self.theta if self.mu_logits is None else self.mu_logits
        return torch.log_softmax(self.tensor(logits), -1)

    # ------------------------------------------------------------------ the optimum pi*
    @property
    def log_partition(self) -> float:
        """log Z = log sum_a ref_a exp(r_a / beta)."""
        return float(torch.logsumexp(self.ref_logprobs + self.r / self.beta, -1))

    @property
    def optimal_theta(self) -> tuple[float, ...]:
        """Logits of pi* = pi_ref exp(r / beta) / Z."""
        return tuple((self.tensor(self.ref_logits) + self.r / self.beta).tolist())

    def at_optimum(self) -> "Problem":
        return Problem(self.optimal_theta, self.ref_logits, self.mu_logits, self.rewards, self.beta, self.n)

    # -------------------------------------------------------------- closed forms (autograd)
    def objective(self, theta: Tensor) -> Tensor:
        """J(pi) = E_pi r - beta KL(pi || pi_ref)."""
        logpi = torch.log_softmax(theta, -1)
        pi = logpi.exp()
        return (pi * self.r).sum() - self.beta * (pi * (logpi - self.ref_logprobs)).sum()

    def grad_objective(self) -> Tensor:
        """grad_theta J by autograd of the closed form J."""
        theta = self.theta_leaf()
        (grad,) = torch.autograd.grad(self.objective(theta), theta)
        return grad

    def grad_objective_analytic(self) -> Tensor:
        """pi_k (g_k - E_pi g) with g_a = r_a - beta log(pi_a / ref_a)."""
        logpi = torch.log_softmax(self.tensor(self.theta), -1)
        pi = logpi.exp()
        g = self.r - self.beta * (logpi - self.ref_logprobs)
        return pi * (g - (pi * g).sum())

    def var_delta(self, theta: Tensor) -> Tensor:
        """Var_{y ~ mu}[Delta(y)], mu fixed, Delta_a = r_a - beta (log pi_a - log ref_a)."""
        mu = self.mu_logprobs().exp()
        delta = self.r - self.beta * (torch.log_softmax(theta, -1) - self.ref_logprobs)
        return (mu * delta**2).sum() - (mu * delta).sum() ** 2

    def grad_var_delta(self) -> Tensor:
        theta = self.theta_leaf()
        (grad,) = torch.autograd.grad(self.var_delta(theta), theta)
        return grad


# --------------------------------------------------------------------------- group batches
@functools.lru_cache(maxsize=None)
def all_groups(K: int, n: int) -> tuple[tuple[int, ...], ...]:
    """Every ordered group of n arms out of K (K^n of them)."""
    return tuple(itertools.product(range(K), repeat=n))


def group_batch(arms: tuple[int, ...], mu_logprobs: Tensor, ref_logprobs: Tensor, rewards: Tensor) -> Batch:
    """A Batch holding one group: completion_ids = the arms (T = 1, no prompt tokens)."""
    n = len(arms)
    ids = torch.tensor(arms, dtype=torch.long).reshape(n, 1)
    return Batch(
        prompt_ids=torch.zeros(n, 0, dtype=torch.long),
        prompt_mask=torch.zeros(n, 0, dtype=torch.bool),
        completion_ids=ids,
        completion_mask=torch.ones(n, 1, dtype=torch.bool),
        group_ids=torch.zeros(n, dtype=torch.long),
        rewards=rewards[ids[:, 0]],
        behavior_logprobs=mu_logprobs[ids],
        ref_logprobs=ref_logprobs[ids],
    )


def group_losses(algorithm: Algorithm, problem: Problem, theta: Tensor, value: float | None = None):
    """Yield (probability of the group under mu, loss of the group) for every one of the K^n groups.

    ``theta`` is the leaf the losses are differentiated against; ``value`` (DRO's V(x)) is passed
    as a float64 [n, 1] tensor when given.
    """
    logpi = torch.log_softmax(theta, -1)
    mu_logprobs = problem.mu_logprobs() if problem.mu_logits is not None else logpi.detach()
    ref_logprobs, rewards = problem.ref_logprobs, problem.r
    for arms in all_groups(problem.K, problem.n):
        batch = group_batch(arms, mu_logprobs, ref_logprobs, rewards)
        values = None if value is None else torch.full((problem.n, 1), value, dtype=DTYPE)
        out = algorithm.loss(batch, logpi[batch.completion_ids], values, Normalizers.of(batch, algorithm=algorithm))
        weight = float(mu_logprobs[list(arms)].sum().exp())
        yield weight, out.loss


def expected_gradient(algorithm: Algorithm, problem: Problem, value: float | None = None) -> Tensor:
    """E_{group ~ mu^n}[-grad_theta loss], exactly: -grad of sum_groups P(group) * loss(group)."""
    theta = problem.theta_leaf()
    total = sum(weight * loss for weight, loss in group_losses(algorithm, problem, theta, value))
    (grad,) = torch.autograd.grad(total, theta)
    return -grad


def per_group_gradients(algorithm: Algorithm, problem: Problem, value: float | None = None) -> list[Tensor]:
    """-grad_theta loss of every single group (the sampling noise is their spread)."""
    theta = problem.theta_leaf()
    grads = []
    for _, loss in group_losses(algorithm, problem, theta, value):
        (grad,) = torch.autograd.grad(loss, theta, retain_graph=True)
        grads.append(-grad)
    return grads


def total_probability(problem: Problem) -> float:
    return math.fsum(float(problem.mu_logprobs()[list(a)].sum().exp()) for a in all_groups(problem.K, problem.n))
