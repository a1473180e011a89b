"""TOPR: Tapered Off-Policy REINFORCE.

Le Roux, Bellemare, Lebensold, Bergeron, Greaves-Tunnell, Jiang, Khalil, Tahmasebi, Perez, Ramsay,
"Tapered off-policy REINFORCE: stable and efficient reinforcement learning for LLMs",
arXiv:2503.14286 (2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class TOPRConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength (folded into the reward)")
    baseline: F.Baseline = hp("mean", "baseline subtracted from the shaped reward: none, mean or loo")


@register("topr")
class TOPR(Algorithm):
    """TOPR (Le Roux et al. 2025, arXiv:2503.14286): SFT-like on positive, tapered on negative samples.

        A_i  = r_i - beta * ell_i - b_i
        w_i  = 1                          if A_i >= 0
             = min(pi(y_i) / mu(y_i), 1)  if A_i < 0          (stop-gradient)
        loss = - mean_i w_i A_i logp(y_i)
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
        shaped = batch.rewards - cfg.beta * (seq_logprobs.detach() - batch.ref_seq_logprobs)
        advantages = shaped - F.baseline(shaped, batch.group_ids, cfg.baseline)
        tapered = F.importance_weight(seq_logprobs, batch.behavior_seq_logprobs, cap=1.0)
        weights = torch.where(advantages >= 0, torch.ones_like(tapered), tapered)
        return LossOutput(
            loss=F.policy_gradient_loss(weights * advantages, seq_logprobs, norm),
            metrics={"positive_fraction": F.sequence_mean((advantages >= 0).to(shaped.dtype), norm)},
        )
