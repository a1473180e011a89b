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
    """RAFT (Dong et al. 2023, arXiv:2304.06767): supervised fine-tuning on each group's best samples.

        keep_i = [r_i = max_{j in group} r_j  and  r_i > min_reward]
        loss   = - sum_i keep_i sum_t log pi(y_it) / sum_i keep_i |y_i|

    the token-mean cross-entropy of the kept samples (the paper fine-tunes on the filtered set);
    no KL term.
    """

    Config = RAFTConfig
    needs = Needs(ref_logprobs=False, min_group_size=1)

    def kept(self, batch: Batch) -> Tensor:
        """[B] 1.0 for the samples RAFT keeps, else 0.0."""
        rewards = batch.rewards
        return ((rewards >= F.group_max(rewards, batch.group_ids)) & (rewards > self.config.min_reward)).to(rewards.dtype)

    def denominators(self, batch: Batch) -> dict[str, Tensor]:
        """``kept_tokens``: the completion tokens of the kept samples."""
        return {"kept_tokens": (self.kept(batch) * batch.lengths).sum()}

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        if "kept_tokens" not in norm.extra:
            raise ValueError("RAFT normalises by the kept tokens: build the Normalizers with "
                             "Normalizers.of(batch, algorithm=raft) (the trainer does)")
        keep = self.kept(batch)
        return LossOutput(
            loss=-(keep * batch.sequence_sum(logprobs)).sum() / max(norm.extra["kept_tokens"], 1.0),
            metrics={"kept_fraction": F.sequence_mean(keep, norm)},
        )
