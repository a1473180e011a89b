"""A third-party algorithm defined outside the ``algorithms`` package (used by tests/test_plugins.py).

It uses only the public interface: subclass Algorithm, a documented Config, ``needs`` and ``loss``.
"""

from dataclasses import dataclass

from algorithms import Algorithm, AlgorithmConfig, LossOutput, Needs, hp
from algorithms import functional as F


@dataclass
class SignedPGConfig(AlgorithmConfig):
    beta: float = hp(0.1, "KL strength")


class SignedPG(Algorithm):
    """Sign-of-advantage policy gradient (a toy plug-in, not from a paper).

        A_i = sign(Delta_i - mean_j Delta_j),  Delta = r - beta * ell;  loss = -mean_i A_i logp(y_i)
    """

    name = "signed-pg"
    Config = SignedPGConfig
    needs = Needs(ref_logprobs=True, min_group_size=2)

    def loss(self, batch, logprobs, values, norm):
        seq_logprobs = batch.sequence_sum(logprobs)
        delta = batch.rewards - self.config.beta * (seq_logprobs.detach() - batch.ref_seq_logprobs)
        advantages = (delta - F.group_mean(delta, batch.group_ids)).sign()
        return LossOutput(loss=F.policy_gradient_loss(advantages, seq_logprobs, norm))
