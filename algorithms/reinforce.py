"""REINFORCE / KL-regularised policy gradient.

Williams, "Simple statistical gradient-following algorithms for connectionist reinforcement
learning", Machine Learning 1992; with the KL penalty of RL fine-tuning (Ziegler et al. 2019,
arXiv:1909.08593). The paper's main contrast for AGRO off-policy (arXiv:2503.19612).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch
from rlft.errors import UsageError


@dataclass
class ReinforceConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength")
    baseline: F.Baseline = hp("mean", "reward baseline b: none, group mean reward, or leave-one-out mean reward")
    kl: Literal["reward", "loss"] = hp(
        "reward", "fold -beta * ell into the reward (unbiased on-policy) or add beta * KL estimate as a loss term"
    )
    kl_estimator: F.KLEstimator = hp(
        "k2", "KL loss term for kl='loss': k2 (sequence level: the gradient of KL(pi || pi_ref)) or k3 (per token: "
              "the gradient of KL(pi_ref || pi)); k1 is refused (its expected gradient is 0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl == "loss" and self.kl_estimator == "k1":
            raise UsageError("kl_estimator=k1 as a loss term has zero expected gradient (E[grad log pi] = 0); "
                             "use k2 (the gradient of KL(pi || pi_ref)), k3, or kl=reward")


@register("reinforce")
class Reinforce(Algorithm):
    """KL-regularised REINFORCE (Williams 1992; KL penalty as in Ziegler et al. 2019).

        kl="reward":  A_i = r_i - beta * ell_i - b_i,   loss = - mean_i A_i logp(y_i)
        kl="loss":    A_i = r_i - b_i,                  loss = - mean_i A_i logp(y_i) + beta mean_i k_i

    with b a reward baseline (none, group mean, leave-one-out) and ell = logp - logp_ref. KL
    direction: kl="reward" and kl="loss" with k_i = ell_i^2 / 2 (k2, sequence level) both give, on
    policy, exactly the gradient of E[r] - beta KL(pi || pi_ref); k_i = sum_t k3_it (per token)
    gives beta times the gradient of KL(pi_ref || pi) instead (Tang and Munos 2025,
    arXiv:2506.09477). Unbiased on-policy with b = none or loo; on off-policy data it has the wrong
    fixed point (which is the point of the comparison).
    """

    Config = ReinforceConfig
    needs = Needs(ref_logprobs=True, min_group_size=1)

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        if self.config.baseline != "none":
            self.needs = Needs(ref_logprobs=True, min_group_size=2)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        seq_logprobs = batch.sequence_sum(logprobs)
        ell = seq_logprobs.detach() - batch.ref_seq_logprobs
        advantages = batch.rewards - F.baseline(batch.rewards, batch.group_ids, cfg.baseline)
        kl_term = seq_logprobs.new_zeros(())
        if cfg.kl == "reward":
            advantages = advantages - cfg.beta * ell
        elif cfg.kl_estimator == "k2":
            kl_term = cfg.beta * F.sequence_mean(F.kl_estimate(seq_logprobs, batch.ref_seq_logprobs, "k2"), norm)
        else:  # k3, per token: a sequence's ratio pi_ref / pi would overflow
            per_token = F.kl_estimate(logprobs, batch.ref_logprobs, "k3")
            kl_term = cfg.beta * F.sequence_mean(batch.sequence_sum(per_token), norm)
        pg_loss = F.policy_gradient_loss(advantages, seq_logprobs, norm)
        return LossOutput(
            loss=pg_loss + kl_term,
            metrics={"pg_loss": pg_loss.detach(), "kl_loss": kl_term.detach(),
                     "advantage_abs": F.sequence_mean(advantages.abs(), norm)},
        )
