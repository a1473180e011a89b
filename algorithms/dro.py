"""DRO: Direct Reward Optimisation.

Richemond, Tang, Guo, Calandriello, Gheshlaghi Azar, Rafailov, Avila Pires, Tarassov, Spangher,
Ellsworth, Severyn, Mallinson, Shani, Shamir, Joshi, Liu, Munos, Piot, "Offline regularised
reinforcement learning for large language models alignment", arXiv:2405.19107 (2024).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class DROConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength")
    value_coef: float = hp(1.0, "weight of the value's share of the squared loss")


@register("dro")
class DRO(Algorithm):
    """DRO (Richemond et al. 2024, arXiv:2405.19107): squared consistency of reward, value and policy.

        loss = mean_i 1/2 (r_i - V(x_i) - beta * ell_i)^2,   ell = logp - logp_ref

    minimised in the policy (through ell) and in V (value head at the first completion position).
    The policy's copy is divided by beta so its gradient, -(r - V - beta ell) grad logp, has the
    scale of a policy gradient.
    Its unique minimiser is V = beta log Z, pi = pi*, the optimum of E[r] - beta KL(pi || pi_ref);
    one sample per prompt suffices.
    """

    Config = DROConfig
    needs = Needs(ref_logprobs=True, value_head=True, min_group_size=1)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        value = values[:, 0]
        ell = batch.sequence_sum(logprobs) - batch.ref_seq_logprobs
        policy_residual = batch.rewards - value.detach() - cfg.beta * ell
        value_residual = batch.rewards - value - cfg.beta * ell.detach()
        policy_loss = F.sequence_mean(0.5 * policy_residual**2, norm) / max(cfg.beta, 1e-8)
        value_loss = F.sequence_mean(0.5 * value_residual**2, norm)
        return LossOutput(
            loss=policy_loss + cfg.value_coef * value_loss,
            metrics={"value_loss": value_loss.detach(), "value": F.sequence_mean(value.detach(), norm)},
        )
