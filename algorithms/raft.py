"""RAFT: reward-ranked fine-tuning (filtered behaviour cloning).

Dong et al., "RAFT: reward rAnked FineTuning for generative foundation model alignment",
arXiv:2304.06767 (TMLR 2023); see also rejection-sampling fine-tuning (Yuan et al., arXiv:2308.01825).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class RAFTConfig(AlgorithmConfig):
    min_reward: float = hp(0.0, "keep only samples whose reward is above this (and the group maximum)")


@register("raft")
class RAFT(Algorithm):
    """RAFT (Dong et al. 2023, arXiv:2304.06767): behaviour cloning of each group's best samples.

        keep_i = [r_i = max_{j in group} r_j  and  r_i > min_reward]
        loss   = - sum_i keep_i * logp(y_i) / B
    """

    Config = RAFTConfig
    needs = Needs(ref_logprobs=False, min_group_size=1)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        rewards = batch.rewards
        group_max = F.group_max(rewards, batch.group_ids)
        keep = ((rewards >= group_max) & (rewards > self.config.min_reward)).to(rewards.dtype)
        return LossOutput(
            loss=F.policy_gradient_loss(keep, batch.sequence_sum(logprobs), norm),
            metrics={"kept_fraction": F.sequence_mean(keep, norm)},
        )
