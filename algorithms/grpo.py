"""GRPO: Group Relative Policy Optimization.

Shao et al., "DeepSeekMath: pushing the limits of mathematical reasoning in open language models",
arXiv:2402.03300. Loss aggregation options from Liu et al., "Understanding R1-Zero-like training:
a critical perspective" (Dr. GRPO), arXiv:2503.20783, and Yu et al., "DAPO", arXiv:2503.14476.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class GRPOConfig(AlgorithmConfig):
    beta: float = hp(0.05, "weight of the k3 KL(pi || pi_ref) loss term (0 disables it)")
    clip_eps: float = hp(0.2, "lower clip: ratio kept >= 1 - clip_eps")
    clip_eps_high: float = hp(0.2, "upper clip: ratio kept <= 1 + clip_eps_high (DAPO's clip-higher if > clip_eps)")
    clip_ratio_c: float = hp(3.0, "dual-clip: where A < 0 the loss is at most -A * clip_ratio_c (verl's default; inf: off)")
    scale_rewards: Literal["group", "none"] = hp("group", "divide centred rewards by the group std (Dr. GRPO: none)")
    std_eps: float = hp(1e-4, "added to the group std before dividing")
    aggregation: F.Aggregation = hp(
        "token-mean", "token-mean | seq-mean-token-mean (original GRPO) | seq-mean-token-sum-norm (Dr. GRPO)"
    )


def grpo_advantages(rewards: Tensor, group_ids: Tensor, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """[B]: (r_i - mean_group r) / (std_group r + eps), or only centred if ``scale == "none"``."""
    centred = rewards - F.group_mean(rewards, group_ids)
    return centred / (F.group_std(rewards, group_ids) + eps) if scale == "group" else centred


@register("grpo")
class GRPO(Algorithm):
    """GRPO (Shao et al. 2024, arXiv:2402.03300): token-level PPO-clip with group advantages.

        A_i    = (r_i - mean_j r_j) / (std_j r_j + eps)
        rho_it = pi(y_it) / mu(y_it)      (mu: the behaviour log-probs; log rho clamped to +-20)
        l_it   = max(-rho_it A_i, -clip(rho_it, 1 - eps, 1 + eps_high) A_i), and <= -c A_i where A_i < 0
        loss   = aggregate(w_it * (l_it + beta * k3_it))   (token-mean, seq-mean-token-mean, Dr. GRPO)

    with k3_it = pi_ref/pi - 1 - log(pi_ref/pi) per token, c the dual-clip bound (Ye et al. 2020)
    and w the trainer's rollout correction (``Batch.correction``, 1 unless the sampler's numerics
    differ from the trainer's). KL direction: the k3 term's value estimates KL(pi || pi_ref) per
    token, but its gradient as a loss, on-policy, is that of KL(pi_ref || pi) (Tang and Munos 2025,
    arXiv:2506.09477), as in GRPO's paper.
    """

    Config = GRPOConfig
    needs = Needs(ref_logprobs=True, min_group_size=2)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        advantages = grpo_advantages(batch.rewards, batch.group_ids, cfg.scale_rewards, cfg.std_eps)[:, None]
        log_ratio = F.bounded_log_ratio(logprobs, batch.behavior_logprobs)
        policy_loss, clipped = F.clipped_surrogate(log_ratio, advantages, cfg.clip_eps, cfg.clip_eps_high,
                                                   cfg.clip_ratio_c)
        kl = F.kl_estimate(logprobs, batch.ref_logprobs, "k3") if cfg.beta > 0 else torch.zeros_like(logprobs)
        per_token = batch.correction * (policy_loss + cfg.beta * kl)
        mask = batch.completion_mask
        return LossOutput(
            loss=F.aggregate(per_token, mask, cfg.aggregation, norm),
            metrics={
                "clip_fraction": F.aggregate(clipped.detach(), mask, "token-mean", norm),
                "kl_k3": F.aggregate(kl.detach(), mask, "token-mean", norm),
            },
        )
