"""Importance-weighted (off-policy) KL-regularised policy gradient.

Precup, Sutton, Singh, "Eligibility traces for off-policy policy evaluation", ICML 2000 (per-
trajectory importance sampling); truncation as in Ionides, "Truncated importance sampling", JCGS
2008, and Espeholt et al., "IMPALA", arXiv:1802.01561.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class ISPGConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength (folded into the reward)")
    truncation: float = hp(3.0, "c in min(pi / mu, c): bounds the variance (biased); inf: unbiased, but a "
                                "sequence's ratio can be astronomically large")
    baseline: Literal["none", "loo"] = hp("loo", "reward baseline: none or leave-one-out (both keep it unbiased)")


@register("is-pg")
class ImportanceWeightedPG(Algorithm):
    """Sequence-level importance-weighted KL-regularised policy gradient (Precup et al. 2000).

        w_i  = min(pi(y_i) / mu(y_i), c)      (stop-gradient; in log space, log-ratio clamped to +-20)
        A_i  = r_i - beta * ell_i - b_i,   b = 0 or mean_{j != i} r_j
        loss = - mean_i w_i * A_i * logp(y_i)

    Unbiased for grad J(pi) = grad (E[r] - beta KL(pi || pi_ref)) under any full-support mu when
    c = inf; the default c = 3 trades that for bounded weights (truncated importance sampling).
    ``Batch.correction`` (the rollout correction of on-policy rows) multiplies w.
    """

    Config = ISPGConfig
    needs = Needs(ref_logprobs=True, min_group_size=1)

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        if self.config.baseline == "loo":
            self.needs = Needs(ref_logprobs=True, min_group_size=2)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        seq_logprobs = batch.sequence_sum(logprobs)
        weights = F.importance_weight(seq_logprobs, batch.behavior_seq_logprobs, cfg.truncation)
        ell = seq_logprobs.detach() - batch.ref_seq_logprobs
        advantages = batch.rewards - cfg.beta * ell - F.baseline(batch.rewards, batch.group_ids, cfg.baseline)
        return LossOutput(
            loss=F.policy_gradient_loss(batch.sequence_correction * weights * advantages, seq_logprobs, norm),
            metrics={"importance_weight": F.sequence_mean(weights, norm)},
        )
