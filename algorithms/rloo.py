"""RLOO: REINFORCE Leave-One-Out.

Kool, van Hoof, Welling, "Buy 4 REINFORCE samples, get a baseline for free!", ICLR DeepRLStructPred
workshop 2019; Ahmadian et al., "Back to basics: revisiting REINFORCE style optimization for
learning from human feedback in LLMs", arXiv:2402.14740.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class RLOOConfig(AlgorithmConfig):
    beta: float = hp(0.05, "KL strength; the sequence-level k1 penalty is folded into the reward")


@register("rloo")
class RLOO(Algorithm):
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): leave-one-out baseline on the KL-shaped reward.

        R_i  = r_i - beta * (logp(y_i) - logp_ref(y_i))          (stop-gradient)
        A_i  = R_i - mean_{j != i} R_j
        loss = - mean_i A_i * logp(y_i)

    Unbiased for grad J = grad (E[r] - beta KL(pi || pi_ref)) on-policy: beta * ell is the k1
    estimate of KL(pi || pi_ref). (Algebraically AGRO's "loo" variant; AGRO's claim is about using
    it on any data.)
    """

    Config = RLOOConfig
    needs = Needs(ref_logprobs=True, min_group_size=2)

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        seq_logprobs = batch.sequence_sum(logprobs)
        shaped = batch.rewards - self.config.beta * (seq_logprobs.detach() - batch.ref_seq_logprobs)
        advantages = shaped - F.leave_one_out_mean(shaped, batch.group_ids)
        return LossOutput(
            loss=F.policy_gradient_loss(advantages, seq_logprobs, norm),
            metrics={"advantage_abs": F.sequence_mean(advantages.abs(), norm)},
        )
