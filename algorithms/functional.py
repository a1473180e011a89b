"""Shared pieces of every estimator, written once: group statistics, baselines, KL estimators,
importance weights and loss aggregation with explicit global normalisers.

Shapes: B completions, T completion tokens. ``group_ids`` [B] labels contiguous groups.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from algorithms.base import Normalizers

Baseline = Literal["none", "mean", "loo"]
KLEstimator = Literal["k1", "k2", "k3"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "seq-sum"]


# ---------------------------------------------------------------------------- group statistics
def _groups(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(inverse [B] mapping each sample to its group 0..G-1, counts [G])."""
    _, inverse, counts = torch.unique_consecutive(group_ids, return_inverse=True, return_counts=True)
    return inverse, counts


def group_sum(values: Tensor, group_ids: Tensor) -> Tensor:
    """[B] -> [B]: the sum of each sample's group."""
    inverse, counts = _groups(group_ids)
    sums = values.new_zeros(len(counts)).index_add(0, inverse, values)
    return sums[inverse]


def group_max(values: Tensor, group_ids: Tensor) -> Tensor:
    """[B]: the maximum of each sample's group."""
    inverse, counts = _groups(group_ids)
    maxima = values.new_full((len(counts),), float("-inf")).scatter_reduce(0, inverse, values, "amax")
    return maxima[inverse]


def group_size(group_ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B]: n, the size of each sample's group."""
    inverse, counts = _groups(group_ids)
    return counts.to(dtype)[inverse]


def group_mean(values: Tensor, group_ids: Tensor) -> Tensor:
    """[B]: mean_j v_j over the sample's group."""
    return group_sum(values, group_ids) / group_size(group_ids, values.dtype)


def leave_one_out_mean(values: Tensor, group_ids: Tensor) -> Tensor:
    """[B]: mean_{j != i} v_j over the sample's group (needs n >= 2)."""
    n = group_size(group_ids, values.dtype)
    return (group_sum(values, group_ids) - values) / (n - 1).clamp(min=1)


def group_std(values: Tensor, group_ids: Tensor) -> Tensor:
    """[B]: the (unbiased, n - 1) standard deviation of the sample's group."""
    centred = values - group_mean(values, group_ids)
    n = group_size(group_ids, values.dtype)
    return (group_sum(centred**2, group_ids) / (n - 1).clamp(min=1)).sqrt()


def baseline(values: Tensor, group_ids: Tensor, kind: Baseline) -> Tensor:
    """[B]: b_i = 0 ("none"), mean_j v_j ("mean") or mean_{j != i} v_j ("loo")."""
    if kind == "none":
        return torch.zeros_like(values)
    if kind == "mean":
        return group_mean(values, group_ids)
    if kind == "loo":
        return leave_one_out_mean(values, group_ids)
    raise ValueError(f"unknown baseline {kind!r}")


# ------------------------------------------------------------------------------ KL estimators
def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLEstimator) -> Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from y ~ pi, elementwise (tokens or sequences).

    With log r = log pi_ref(y) - log pi(y) (Schulman 2020, "Approximating KL divergence"):
    k1 = -log r;  k2 = (log r)^2 / 2;  k3 = (r - 1) - log r  (>= 0, unbiased like k1).
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}")


# -------------------------------------------------------------------------- importance weights
def importance_weight(logprobs: Tensor, behavior_logprobs: Tensor, cap: float = float("inf")) -> Tensor:
    """min(pi / mu, cap), detached; elementwise on tokens or sequences."""
    return torch.exp(logprobs.detach() - behavior_logprobs).clamp(max=cap)


# ------------------------------------------------------------------------------- aggregation
def sequence_mean(values: Tensor, norm: Normalizers) -> Tensor:
    """sum_i v_i / B_global for per-sequence values [B]."""
    return values.sum() / norm.sequences


def aggregate(token_values: Tensor, mask: Tensor, mode: Aggregation, norm: Normalizers) -> Tensor:
    """Reduce per-token values [B, T] to a scalar with global denominators.

    token-mean:              sum_{i,t} v_it / N_tokens
    seq-mean-token-mean:     sum_i (sum_t v_it / |y_i|) / B
    seq-mean-token-sum-norm: sum_{i,t} v_it / (B * T_max)      (Dr. GRPO, Liu et al. 2025)
    seq-sum:                 sum_{i,t} v_it / B                (sequence-level estimators)
    """
    mask = mask.to(token_values.dtype)
    masked = token_values * mask
    if mode == "token-mean":
        return masked.sum() / norm.tokens
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / norm.sequences
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / (norm.sequences * norm.max_tokens)
    if mode == "seq-sum":
        return masked.sum() / norm.sequences
    raise ValueError(f"unknown loss aggregation {mode!r}")


def logsigmoid(x: Tensor) -> Tensor:
    """log sigmoid(x) = -softplus(-x), numerically stable.

    (torch 2.13's CPU ``logsigmoid`` kernel takes ~6 ms even on 4 elements; softplus is ~1000x faster.)
    """
    return -torch.nn.functional.softplus(-x)


def policy_gradient_loss(advantages: Tensor, seq_logprobs: Tensor, norm: Normalizers) -> Tensor:
    """The score-function surrogate -sum_i sg(A_i) * logp(y_i) / B (gradient only through logp)."""
    return -sequence_mean(advantages.detach() * seq_logprobs, norm)
