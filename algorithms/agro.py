"""AGRO: Any-Generation Reward Optimization.

Tang, Cohen, Zhang, Valko, Munos. "RL-finetuning LLMs from on- and off-policy data with a single
algorithm." arXiv:2503.19612 (AISTATS 2026).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch
from rlft.errors import UsageError


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
    shift: float = hp(
        0.0, "delta added to every advantage, A = Delta - b + delta (Asymmetric REINFORCE): delta > 0 pulls "
             "toward the behaviour data and moves the off-policy fixed point toward mu; 0: the paper's AGRO"
    )
    anchor: float = hp(
        0.0, "lambda of the pi*-anchor lambda * (w*_i - w_i): self-normalised weights toward pi* minus those "
             "toward pi; zero at pi*, so pi* stays the fixed point; 0: the paper's AGRO"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.shift):
            raise UsageError(f"shift must be a finite number, got {self.shift}")
        if not (math.isfinite(self.anchor) and self.anchor >= 0):
            raise UsageError(f"anchor must be a finite number >= 0, got {self.anchor}")
        if self.anchor > 0 and self.beta <= 0:
            raise UsageError("anchor > 0 needs beta > 0 (its weights are exp(Delta / beta)); raise beta or set anchor=0")


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

    On a language model the fixed point is not enough: off-policy, the gradient only asks Delta to be
    constant on the SAMPLED completions, and pushing a wrong sample down moves its mass to
    sequences mu rarely produces (the drift: the trainer logs it as ``ell_offpolicy``, the mean
    ell on off-policy samples). Two
    variants, both off by default, add a pull toward the data (c = (n-1)/n with the mean baseline,
    1 with loo; rho_i = pi(y_i) / mu(y_i) from the behaviour log-probs):

    ``shift`` = delta (Asymmetric REINFORCE, Arnal et al. 2025, arXiv:2506.20520: a baseline below
    the mean). A_i = Delta_i - b_i + delta; the expected update is

        E[-grad loss] = c E_mu[(Delta - E_mu Delta) grad logp] + delta E_mu[grad logp],

    AGRO's plus delta times the behaviour-cloning gradient grad E_mu[log pi], which is zero
    on-policy (mu = pi: on-policy AGRO is unchanged in expectation). Fixed point (softmax over
    supp(mu)): Delta(y) = b - delta' + delta' pi(y) / mu(y) on supp(mu), with b = E_mu[Delta] and
    delta' = delta / c: a policy between pi* and mu, no longer pi*.

    ``anchor`` = lambda (this project's): A_i += lambda (w*_i - w_i), where

        w*_i = n softmax_group(log rho_j + Delta_j / beta)_i    self-normalised weights mu -> pi*
        w_i  = n softmax_group(log rho_j)_i                      self-normalised weights mu -> pi

    (rho_j exp(Delta_j / beta) = (pi_ref / mu)(y_j) exp(r_j / beta), proportional to pi* / mu). The
    added update is lambda * sum_i (w*_i - w_i) grad logp(y_i): maximum likelihood on the group
    reweighted to pi*, minus the same reweighted to pi (a control variate with expectation ~0); for
    large n it tends to lambda E_{pi*}[grad log pi] = -lambda grad KL(pi* || pi), a mass-covering
    pull onto the data where pi* puts mass. At pi = pi*, Delta is constant in every group, so
    w*_i = w_i for EVERY sample: the anchor vanishes sample by sample and pi* stays a fixed point,
    for any mu. On a softmax over two arms its expected update on the logit of arm 1 has the sign
    of pi*(1) - pi(1) for every n >= 2 (tests/test_properties.py proves both).
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
        metrics = {}
        if cfg.shift:
            advantages = advantages + cfg.shift
        if cfg.anchor:
            anchor = self.anchor_weights(batch, seq_logprobs.detach(), delta)
            advantages = advantages + cfg.anchor * anchor
            metrics["anchor_abs"] = F.sequence_mean(anchor.abs(), norm)
        return LossOutput(
            loss=F.policy_gradient_loss(advantages, seq_logprobs, norm),
            metrics={
                "delta": F.sequence_mean(delta, norm),
                "advantage_abs": F.sequence_mean(advantages.abs(), norm),
                **metrics,
            },
        )

    def anchor_weights(self, batch: Batch, seq_logprobs: Tensor, delta: Tensor) -> Tensor:
        """[B] w*_i - w_i of the class docstring: self-normalised weights toward pi* minus toward pi."""
        log_rho = seq_logprobs - batch.behavior_seq_logprobs  # any finite value: the weights are shift-invariant
        toward_optimum = F.self_normalized_weights(log_rho + delta / self.config.beta, batch.group_ids)
        toward_policy = F.self_normalized_weights(log_rho, batch.group_ids)
        return toward_optimum - toward_policy
