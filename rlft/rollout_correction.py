"""Correcting for a sampler whose numerics are not the trainer's: truncated importance weights or masks.

An on-policy sample is drawn by the rollout engine at the current weights, but the engine need not
compute what the trainer computes: a bfloat16 vLLM engine under a float32 trainer, other kernels,
another sampling temperature. Its recorded log-probs ``mu`` then differ from ``pi_old``, the
trainer's own log-probs of the same tokens under the same weights. The trainer recomputes pi_old
(``TrainConfig.recompute_behavior``), uses it as the behaviour log-probs of on-policy rows, and
weights the loss of every ratio-based algorithm by

    rho = pi_old / mu          token modes: per token;  sequence modes: the product over the sequence
    truncate: w = clamp(rho, low, high)          mask: w = rho if low <= rho <= high, else 0

(computed in log space). This is TRL's ``vllm_importance_sampling_mode`` (token_truncate,
token_mask, sequence_truncate, sequence_mask; TRL's default sequence_mask with high 3), verl's
``rollout_is`` / ``rollout_rs`` and OpenRLHF's ``is_correction_type``. Shapes: [B, T] throughout.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from algorithms.functional import LOG_RATIO_LIMIT

Mode = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
MODES: tuple[str, ...] = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def correction_weights(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, mode: Mode,
                       low: float = 0.0, high: float = 3.0) -> tuple[Tensor, Tensor]:
    """The weights w of the module docstring: (per token [B, T], 0 on padding; per sequence [B]).

    Sequence modes give every token of a row its sequence's w; token modes give each sequence the
    product of its tokens' w (what a sequence-level estimator such as is-pg multiplies by). Mode
    "none" gives 1 everywhere.

    Args:
        trainer_logprobs: [B, T] log pi_old(y_t), the trainer's recomputation.
        sampler_logprobs: [B, T] log mu(y_t), what the sampler recorded.
        mask: [B, T] real completion tokens.
        low, high: the band of accepted ratios, 0 <= low < high.
    """
    mask = mask.to(trainer_logprobs.dtype)
    if mode not in MODES:
        raise ValueError(f"unknown rollout correction {mode!r}; use one of {', '.join(MODES)}")
    if mode == "none":
        return mask, mask.new_ones(mask.shape[0])
    log_rho = (trainer_logprobs - sampler_logprobs) * mask
    if mode.startswith("sequence"):
        log_rho = log_rho.sum(-1, keepdim=True)
    log_rho = log_rho.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    log_low = math.log(low) if low > 0 else -math.inf
    if mode.endswith("truncate"):
        log_w = log_rho.clamp(log_low, math.log(high))
    else:  # mask
        log_w = torch.where((log_rho >= log_low) & (log_rho <= math.log(high)), log_rho, -math.inf)
    if mode.startswith("sequence"):
        return log_w.exp().expand_as(mask) * mask, log_w.exp().squeeze(-1)
    return log_w.exp() * mask, torch.where(mask.bool(), log_w, 0.0).sum(-1).exp()


def sampler_kl(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Per token [B, T], 0 on padding: k3 = rho - 1 - log rho with rho = pi_old / mu, whose mean
    over tokens sampled from mu estimates KL(mu || pi_old) per token (>= 0; Schulman 2020)."""
    log_rho = (trainer_logprobs - sampler_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return (torch.expm1(log_rho) - log_rho) * mask.to(log_rho.dtype)


def recompute_on_policy(batch, trainer_logprobs: Tensor, mode: Mode, low: float, high: float) -> dict[str, Tensor]:
    """Give the on-policy rows of ``batch`` the trainer's own behaviour log-probs, in place.

    ``batch.behavior_logprobs`` of on-policy rows becomes ``trainer_logprobs`` (pi_old [B, T]); the
    sampler's values move to ``batch.sampler_logprobs``; ``batch.rollout_weights`` [B, T] and
    ``batch.rollout_sequence_weights`` [B] get the correction of :func:`correction_weights` on
    on-policy rows and 1 on off-policy rows (whose behaviour log-probs are their source's own).
    Returns sums over this process's on-policy tokens for the step's metrics: ``tokens``,
    ``sampler_kl`` (k3 of :func:`sampler_kl`), ``weight`` and ``masked`` (tokens with weight 0).
    """
    on = ~batch.is_offpolicy[:, None]
    mask = batch.completion_mask
    sampler = batch.behavior_logprobs
    tokens, sequences = correction_weights(trainer_logprobs, sampler, mask, mode, low, high)
    batch.sampler_logprobs = sampler
    batch.behavior_logprobs = torch.where(on, trainer_logprobs, sampler)
    batch.rollout_weights = torch.where(on, tokens, mask.to(tokens.dtype))
    batch.rollout_sequence_weights = torch.where(on[:, 0], sequences, torch.ones_like(sequences))
    on_tokens = mask & on
    return {
        "tokens": on_tokens.sum().to(torch.float64),
        "sampler_kl": sampler_kl(trainer_logprobs, sampler, on_tokens).sum().to(torch.float64),
        "weight": (tokens * on_tokens).sum().to(torch.float64),
        "masked": ((tokens == 0) & on_tokens).sum().to(torch.float64),
    }
