"""TOPR: Tapered Off-Policy REINFORCE.

Le Roux, Bellemare, Lebensold, Bergeron, Greaves-Tunnell, Jiang, Khalil, Tahmasebi, Perez, Ramsay,
"Tapered off-policy REINFORCE: stable and efficient reinforcement learning for LLMs",
arXiv:2503.14286 (2025).
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
class TOPRConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength, folded into the reward (the paper uses none: set 0)")
    reward_baseline: float = hp(0.5, "the paper's baseline c: a sample is positive iff r >= c (0.5 splits 0/1 "
                                     "rewards into correct and wrong)")
    baseline: F.Baseline = hp("none", "group baseline also subtracted from the shaped reward: none, mean or loo")
    split: Literal["reward", "advantage"] = hp(
        "reward", "what decides positive vs negative: the reward r - c (the paper) or the sign of the KL-shaped, "
                  "group-centred advantage (this project's earlier rule)")


@register("topr")
class TOPR(Algorithm):
    """TOPR (Le Roux et al. 2025, arXiv:2503.14286): SFT-like on positive, tapered on negative samples.

        A_i  = r_i - c - beta * ell_i - b_i           (b: an optional group baseline of the same)
        w_i  = 1                          if r_i >= c   (positive; split="advantage": if A_i >= 0)
             = min(pi(y_i) / mu(y_i), 1)  otherwise     (stop-gradient, in log space)
        loss = - mean_i w_i A_i logp(y_i)

    The paper splits by the sign of the reward R = r - c, its REINFORCE baseline c; the KL term
    (absent in the paper) estimates KL(pi || pi_ref) through ell = logp - logp_ref.
    ``Batch.correction`` (the rollout correction of on-policy rows) multiplies w.
    """

    Config = TOPRConfig
    needs = Needs(ref_logprobs=True, min_group_size=2)

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        if self.config.baseline == "none":
            self.needs = Needs(ref_logprobs=True, min_group_size=1)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        seq_logprobs = batch.sequence_sum(logprobs)
        shaped = batch.rewards - cfg.reward_baseline - cfg.beta * (seq_logprobs.detach() - batch.ref_seq_logprobs)
        advantages = shaped - F.baseline(shaped, batch.group_ids, cfg.baseline)
        positive = batch.rewards >= cfg.reward_baseline if cfg.split == "reward" else advantages >= 0
        tapered = F.importance_weight(seq_logprobs, batch.behavior_seq_logprobs, cap=1.0)
        weights = torch.where(positive, torch.ones_like(tapered), tapered) * batch.sequence_correction
        return LossOutput(
            loss=F.policy_gradient_loss(weights * advantages, seq_logprobs, norm),
            metrics={"positive_fraction": F.sequence_mean(positive.to(shaped.dtype), norm)},
        )
