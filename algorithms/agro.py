"""AGRO: Any-Generation Reward Optimization.

Tang, Cohen, Zhang, Valko, Munos. "RL-finetuning LLMs from on- and off-policy data with a single
algorithm." arXiv:2503.19612 (AISTATS 2026).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class AGROConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength of the objective E[r] - beta KL(pi || pi_ref)")
    baseline: Literal["mean", "loo"] = hp(
        "mean", "centre Delta by the group mean (gradient x (n-1)/n) or leave-one-out mean (unbiased)"
    )
    clip_log_ratio: float = hp(
        float("inf"), "clip ell = logp - logp_ref to [-c, c] inside Delta (inf: no clipping; changes the fixed point if active)"
    )
    length_normalize: bool = hp(
        False, "use ell / |y| in Delta: optimises E[r] - beta E[ell / |y|], a DIFFERENT objective"
    )


@register("agro")
class AGRO(Algorithm):
    """AGRO (arXiv:2503.19612): one estimator for on- and off-policy groups, no importance weights.

    Per group of n samples from ANY behaviour policy mu, with ell_i = logp(y_i) - logp_ref(y_i):

        Delta_i = r_i - beta * ell_i                         (stop-gradient)
        A_i     = Delta_i - mean_j Delta_j   (or mean_{j != i} Delta_j with baseline="loo")
        loss    = - mean_i A_i * logp(y_i)

    On-policy its expected gradient is grad J(pi); under any mu it is -(n-1)/n grad Var_mu[Delta] /
    (2 beta) (mean baseline), zero exactly at pi* = pi_ref exp(r / beta) / Z, where Delta is constant
    ("generation consistency"). KL direction: beta * ell is the per-sample k1 estimate of
    KL(pi || pi_ref), the objective's; AGRO evaluates it on whatever samples it gets.
    """

    Config = AGROConfig
    needs = Needs(ref_logprobs=True, min_group_size=2)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        seq_logprobs = batch.sequence_sum(logprobs)
        ell = (seq_logprobs.detach() - batch.ref_seq_logprobs).clamp(-cfg.clip_log_ratio, cfg.clip_log_ratio)
        if cfg.length_normalize:
            ell = ell / batch.lengths.clamp(min=1)
        delta = batch.rewards - cfg.beta * ell
        advantages = delta - F.baseline(delta, batch.group_ids, cfg.baseline)
        return LossOutput(
            loss=F.policy_gradient_loss(advantages, seq_logprobs, norm),
            metrics={
                "delta": F.sequence_mean(delta, norm),
                "advantage_abs": F.sequence_mean(advantages.abs(), norm),
            },
        )
