"""PPO with a learned value head and GAE, the RLHF recipe.

Schulman et al., "Proximal policy optimization algorithms", arXiv:1707.06347; GAE: Schulman et al.,
"High-dimensional continuous control using generalized advantage estimation", arXiv:1506.02438;
per-token KL in the reward as in Ouyang et al., "Training language models to follow instructions
with human feedback", arXiv:2203.02155.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch
from rlft.distributed import all_sum


@dataclass
class PPOConfig(AlgorithmConfig):
    epochs: int = hp(2, "optimisation passes over each batch")
    mini_batch_groups: int = hp(4, "groups per mini-batch: each epoch takes ceil(groups / this) optimizer steps "
                                   "over shuffled mini-batches (0: the whole batch)")
    beta: float = hp(0.05, "per-token k1 KL penalty folded into the reward")
    gamma: float = hp(1.0, "discount")
    lam: float = hp(0.95, "GAE lambda")
    clip_eps: float = hp(0.2, "policy ratio clip")
    clip_ratio_c: float = hp(3.0, "dual-clip: where A < 0 the policy loss is at most -A * clip_ratio_c (inf: off)")
    value_clip: float = hp(0.2, "value clip around the values at preparation time")
    value_coef: float = hp(0.5, "weight of the value loss")
    whiten_advantages: bool = hp(True, "normalise advantages to zero mean, unit std over the batch")


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates [B, T] for right-padded sequences (value 0 after the end).

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages


def whiten(values: Tensor, mask: Tensor) -> Tensor:
    """``(values - mean) / (std + 1e-8)`` over the real tokens of the WHOLE batch, all processes.

    mean = sum(m v) / sum(m), var = sum(m (v - mean)^2) / sum(m), each sum all-reduced over ranks,
    so a batch split over processes is whitened exactly as in one process. [B, T] -> [B, T], 0 on padding.
    """
    mask = mask.to(values.dtype)
    total, count = all_sum(torch.stack([(values * mask).sum(), mask.sum()])).unbind()
    mean = total / count
    var = all_sum(((values - mean) ** 2 * mask).sum()) / count
    return (values - mean) / (var.sqrt() + 1e-8) * mask


@register("ppo")
class PPO(Algorithm):
    """PPO (Schulman et al. 2017) with value head, GAE and per-token KL reward (Ouyang et al. 2022).

        r_t  = -beta (log pi_old(y_t) - log pi_ref(y_t)) + r * 1[t = last]     (fixed at preparation)
        A_t  = whiten(GAE(r, V_old; gamma, lambda)),  R_t = GAE + V_old_t
        l_t  = max(-rho_t A_t, -clip(rho_t, 1 +- eps) A_t), and <= -c A_t where A_t < 0 (dual-clip)
               + c_v / 2 * max((V_t - R_t)^2, (clip(V_t, V_old_t +- eps_v) - R_t)^2)
        loss = token-mean(w_t * l_t)  per mini-batch; `epochs` passes of shuffled mini-batches, each
               its own optimizer step

    rho_t = pi(y_t) / pi_old(y_t) (log-ratio clamped to +-20): pi_old is the trainer's own log-prob
    under the weights before the first epoch (recomputed, ``needs.recompute_behavior``) for on-policy
    rows, the behaviour policy's for off-policy rows; w is the rollout correction (1 unless the
    sampler's numerics differ from the trainer's). The KL penalty estimates KL(pi || pi_ref) (k1 per
    token, in the reward).
    """

    Config = PPOConfig
    needs = Needs(ref_logprobs=True, value_head=True, prepare=True, recompute_behavior=True)

    def prepare(self, batch: Batch, logprobs: Tensor, values: Tensor | None) -> dict[str, Tensor]:
        cfg = self.config
        mask = batch.mask
        token_rewards = -cfg.beta * (logprobs - batch.ref_logprobs) * mask
        last = (batch.lengths - 1).clamp(min=0)
        token_rewards[torch.arange(len(batch), device=mask.device), last] += batch.rewards
        advantages = gae(token_rewards, values, mask, cfg.gamma, cfg.lam)
        returns = advantages + values
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        return {"advantages": advantages, "returns": returns, "old_values": values}

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        advantages, returns, old_values = (batch.extras[k] for k in ("advantages", "returns", "old_values"))
        log_ratio = F.bounded_log_ratio(logprobs, batch.behavior_logprobs)
        policy_loss, clipped = F.clipped_surrogate(log_ratio, advantages, cfg.clip_eps, cfg.clip_eps, cfg.clip_ratio_c)
        clipped_values = old_values + (values - old_values).clamp(-cfg.value_clip, cfg.value_clip)
        value_loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
        mask = batch.completion_mask
        pg_loss = F.aggregate(batch.correction * policy_loss, mask, "token-mean", norm)
        vf_loss = F.aggregate(value_loss, mask, "token-mean", norm)
        return LossOutput(
            loss=pg_loss + cfg.value_coef * vf_loss,
            metrics={"pg_loss": pg_loss.detach(), "value_loss": vf_loss.detach(),
                     "clip_fraction": F.aggregate(clipped.detach(), mask, "token-mean", norm)},
        )
