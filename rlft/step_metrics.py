"""The metrics of one optimizer step, accumulated over its micro-batches and reduced over processes.

What the trainer logs per step (``OUT/metrics.jsonl``): the algorithm's loss and metrics (the mean
over the first pass's mini-batches), the reward on- and off-policy, KL(pi || pi_ref) on the policy's
own samples (the mean of ell = log pi(y) - log pi_ref(y), the first pass's log pi), the mean
log-ratio on the off-policy samples (``ell_offpolicy``: with pi_ref data, the drift off the data),
the entropy per token, the gradient norm and, when on-policy behaviour log-probs are recomputed,
the sampler-trainer mismatch. Sums are all-reduced and per-sample values gathered, so the numbers
are the whole batch's however many processes share it.
"""

from __future__ import annotations

import torch

from algorithms.base import LossOutput
from rlft.batch import Batch
from rlft.distributed import all_sum
from rlft.scoring import TokenScores


class StepMetrics:
    """One step's metrics. Shapes: ``seq_logprobs`` [B], this process's rows in batch order."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.sums: dict[str, float] = {}
        self.seq_logprobs = batch.behavior_logprobs.new_zeros(len(batch))
        self.entropy_sum = 0.0
        self.grad_norms: list[float] = []

    def add_micro_batch(self, out: LossOutput, scores: TokenScores, micro: Batch, rows: torch.Tensor, minis: int) -> None:
        """A first-pass micro-batch (rows ``rows`` of the batch) of one of ``minis`` mini-batches."""
        for key, value in {"loss": out.loss, **out.metrics}.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().item() / minis
        self.seq_logprobs[rows] = micro.sequence_sum(scores.logprobs.detach())
        self.entropy_sum += float((scores.entropy.detach() * micro.mask).sum())

    def result(self, correction: dict[str, torch.Tensor], accelerator) -> dict[str, float]:
        """Every metric of the step over all processes (``correction``: the rollout correction's sums)."""
        batch, device = self.batch, accelerator.device
        # losses and metrics are additive shares of the batch's; per-sample values are gathered
        keys, correction_keys = sorted(self.sums), sorted(correction)
        totals = all_sum(torch.tensor([self.sums[k] for k in keys] + [float(correction[k]) for k in correction_keys]
                                      + [self.entropy_sum, float(batch.completion_mask.sum())],
                                      dtype=torch.float64, device=device)).tolist()
        summed, correction_sums = totals[:len(keys)], dict(zip(correction_keys, totals[len(keys):-2]))
        entropy_sum, tokens = totals[-2:]
        rewards = accelerator.gather(batch.rewards.float().contiguous())
        off = accelerator.gather(batch.is_offpolicy.float().contiguous()).bool()
        ell = accelerator.gather((self.seq_logprobs - batch.ref_seq_logprobs).float().contiguous())
        metrics = {
            "reward": float(rewards.mean()),
            "reward_onpolicy": masked_mean(rewards, ~off),
            "reward_offpolicy": masked_mean(rewards, off),
            "kl_ref": masked_mean(ell, ~off),  # mean ell on the policy's own samples: KL(pi || pi_ref)
            "ell_offpolicy": masked_mean(ell, off),  # drift from the behaviour data
            "entropy": entropy_sum / tokens,
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms),
            "optimizer_steps": len(self.grad_norms),
            "offpolicy_share": float(off.float().mean()),
            "completion_tokens": tokens / len(rewards),
            **dict(zip(keys, summed)),
        }
        if correction_sums:  # per on-policy token: KL(sampler || trainer), the mean weight, the masked share
            on_tokens = max(correction_sums["tokens"], 1.0)
            metrics.update(sampler_kl=correction_sums["sampler_kl"] / on_tokens,
                           rollout_weight=correction_sums["weight"] / on_tokens,
                           rollout_masked=correction_sums["masked"] / on_tokens)
        return metrics


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean over ``mask``; None (JSON null) when nothing is selected."""
    return float(values[mask].mean()) if bool(mask.any()) else None
