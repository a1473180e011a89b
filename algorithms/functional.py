"""Shared pieces of every estimator, written once: group statistics, baselines, KL estimators,
importance weights and loss aggregation with explicit global normalisers.

Shapes: B completions, T completion tokens. ``group_ids`` [B] labels contiguous groups.
"""

from __future__ import annotations

import math
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


def self_normalized_weights(log_weights: Tensor, group_ids: Tensor) -> Tensor:
    """[B]: w_i = n exp(v_i) / sum_j exp(v_j) over the sample's group (mean 1 in every group).

    The self-normalised importance weights of a group when ``log_weights`` are log(target / mu)
    up to a per-group constant; computed with the group maximum subtracted, so any finite v works.
    """
    shifted = (log_weights - group_max(log_weights, group_ids)).exp()
    return group_size(group_ids, log_weights.dtype) * shifted / group_sum(shifted, group_ids)


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


# ------------------------------------------------------------------------------ log-ratios
#: Every log-ratio is clamped to [-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT] before it is exponentiated
#: (as verl does): e^20 = 4.9e8 is finite in float32 and bfloat16, e^89 is not.
LOG_RATIO_LIMIT = 20.0


def bounded_log_ratio(logprobs: Tensor, other_logprobs: Tensor) -> Tensor:
    """log(p / q) = logprobs - other_logprobs, clamped to +-LOG_RATIO_LIMIT; elementwise."""
    return (logprobs - other_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)


# ------------------------------------------------------------------------------ KL estimators
def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLEstimator) -> Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from y ~ pi, elementwise (tokens or sequences).

    With log r = log pi_ref(y) - log pi(y) (Schulman 2020, "Approximating KL divergence"):
    k1 = -log r;  k2 = (log r)^2 / 2;  k3 = (r - 1) - log r  (>= 0, unbiased like k1).
    k3 exponentiates: use it per token (a sequence's log r overflows), with log r clamped to
    +-LOG_RATIO_LIMIT.

    As LOSS terms (gradient through pi only) they differ (Tang and Munos 2025, "On a few pitfalls in
    KL divergence gradient estimation for RL", arXiv:2506.09477): on-policy, E[grad k1] = 0;
    E[grad k2] = grad KL(pi || pi_ref) for a SEQUENCE-level k2; per-token k3 gives the gradient of
    KL(pi_ref || pi), the other direction.
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}")


# -------------------------------------------------------------------------- importance weights
def importance_weight(logprobs: Tensor, behavior_logprobs: Tensor, cap: float = float("inf")) -> Tensor:
    """min(pi / mu, cap), detached, computed in log space: exp(min(log pi - log mu, log cap)) with
    the log-ratio clamped to +-LOG_RATIO_LIMIT; elementwise on tokens or sequences."""
    log_weight = bounded_log_ratio(logprobs.detach(), behavior_logprobs)
    if cap < float("inf"):
        log_weight = log_weight.clamp(max=math.log(cap))
    return log_weight.exp()


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float,
                      clip_ratio_c: float = float("inf")) -> tuple[Tensor, Tensor]:
    """PPO's clipped policy loss per token, with dual-clip; ``(loss, clipped)`` both shaped like
    ``log_ratio`` ([B, T]; ``advantages`` broadcasts).

        rho  = exp(log_ratio)                       (log_ratio already clamped by the caller)
        l    = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))      (Schulman et al. 2017)
        l    = min(l, -A c)   where A < 0                     (dual-clip, Ye et al. 2020, arXiv:1912.09729)

    ``clipped`` is 1 where the loss does not follow -A rho (no gradient there), else 0.
    """
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    loss = torch.maximum(unclipped, -advantages * ratio.clamp(1 - clip_low, 1 + clip_high))
    if clip_ratio_c < float("inf"):
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * clip_ratio_c), loss)
    return loss, (loss != unclipped).to(log_ratio.dtype)


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
