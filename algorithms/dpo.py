"""DPO on pairs built inside each group.

Rafailov et al., "Direct preference optimization: your language model is secretly a reward model",
NeurIPS 2023, arXiv:2305.18290. Online/on-policy pair construction as in Guo et al., "Direct
language model alignment from online AI feedback", arXiv:2402.04792.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import functional as F
from algorithms.base import Algorithm, AlgorithmConfig, LossOutput, Needs, Normalizers, hp, register
from rlft.batch import Batch


@dataclass
class DPOConfig(AlgorithmConfig):
    beta: float = hp(0.05, "DPO temperature: the KL strength of the implied objective")
    label_smoothing: float = hp(0.0, "conservative DPO: probability that a pair's label is flipped")


def best_and_worst(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per group, indices (chosen [G], rejected [G]) of the highest and lowest reward (first on
    ties), and has_gap [G]: True where the two rewards differ (other groups make no pair)."""
    _, inverse = torch.unique_consecutive(group_ids, return_inverse=True)
    num_groups, rows = int(inverse.max()) + 1, torch.arange(len(rewards), device=rewards.device)

    def first_where(flags: Tensor) -> Tensor:
        candidates = torch.where(flags, rows, len(rewards))
        return rows.new_full((num_groups,), len(rewards)).scatter_reduce(0, inverse, candidates, "amin")

    chosen = first_where(rewards == F.group_max(rewards, group_ids))
    rejected = first_where(rewards == -F.group_max(-rewards, group_ids))
    return chosen, rejected, rewards[chosen] > rewards[rejected]


@register("dpo")
class DPO(Algorithm):
    """DPO (Rafailov et al. 2023) on in-group pairs: highest vs lowest reward of each group.

        h    = beta * (ell_chosen - ell_rejected),   ell = logp - logp_ref
        loss = sum_pairs -[(1 - s) log sigmoid(h) + s log sigmoid(-h)] / P

    P is the global number of pairs (groups whose rewards differ; the others make no pair), so the
    loss is the mean over pairs, as in the paper. Works on any data. The implied objective is
    E[r] - beta KL(pi || pi_ref) (the paper's derivation); no KL is estimated from samples.
    """

    Config = DPOConfig
    needs = Needs(ref_logprobs=True, min_group_size=2)

    def denominators(self, batch: Batch) -> dict[str, Tensor]:
        """``pairs``: the number of groups with a reward gap."""
        return {"pairs": best_and_worst(batch.rewards, batch.group_ids)[2].sum()}

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        cfg = self.config
        if "pairs" not in norm.extra:
            raise ValueError("DPO normalises by the number of pairs: build the Normalizers with "
                             "Normalizers.of(batch, algorithm=dpo) (the trainer does)")
        pairs = max(norm.extra["pairs"], 1.0)
        ell = batch.sequence_sum(logprobs) - batch.ref_seq_logprobs
        chosen, rejected, has_gap = best_and_worst(batch.rewards, batch.group_ids)
        margin = cfg.beta * (ell[chosen] - ell[rejected])
        s = cfg.label_smoothing
        per_pair = -((1 - s) * F.logsigmoid(margin) + s * F.logsigmoid(-margin))
        gap = has_gap.to(margin.dtype)
        return LossOutput(
            loss=(per_pair * gap).sum() / pairs,
            metrics={
                "pairs": gap.sum() / norm.groups,  # the share of groups that made a pair
                "pair_accuracy": ((margin > 0).to(margin.dtype) * gap).sum().detach() / pairs,
                "margin": (margin * gap).sum().detach() / pairs,
            },
        )
