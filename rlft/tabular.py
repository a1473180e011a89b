"""A softmax bandit that produces the same Batch as the language-model path.

The setting of Figure 1 of Tang et al. (arXiv:2503.19612): one prompt, K arms (single-token
completions), pi_ref = softmax(z) with z ~ N(0, I), rewards r ~ U[0, 1], a softmax policy
initialised at pi_ref and trained with plain SGD on its logits, from groups of n samples drawn
from pi (on-policy) or pi_ref (off-policy). The optimum of E[r] - beta KL(pi || pi_ref) is
pi* = softmax(z + r / beta); progress is measured by KL(pi, pi*) / KL(pi_ref, pi*).

Every registered algorithm runs here unchanged: the completion is the arm (T = 1), the value head
is one scalar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms.base import Algorithm, Normalizers
from rlft.batch import Batch
from rlft.errors import NonFiniteLoss
from rlft.mixing import offpolicy_groups


@dataclass
class Bandit:
    """K-armed bandit with a reference policy and a KL strength."""

    ref_logits: Tensor  # [K] float64
    rewards: Tensor  # [K] float64 in [0, 1]
    beta: float

    @classmethod
    def random(cls, arms: int, beta: float, seed: int) -> "Bandit":
        g = torch.Generator().manual_seed(seed)
        return cls(
            ref_logits=torch.randn(arms, generator=g, dtype=torch.float64),
            rewards=torch.rand(arms, generator=g, dtype=torch.float64),
            beta=beta,
        )

    @property
    def ref_logprobs(self) -> Tensor:
        return torch.log_softmax(self.ref_logits, -1)

    @property
    def optimal_logprobs(self) -> Tensor:
        """log pi* = log softmax(z + r / beta)."""
        return torch.log_softmax(self.ref_logits + self.rewards / self.beta, -1)

    def kl_to_optimum(self, logprobs: Tensor) -> float:
        """KL(pi || pi*) for a policy given by its log-probs [K]."""
        return float((logprobs.exp() * (logprobs - self.optimal_logprobs)).sum())

    def normalized_kl(self, logprobs: Tensor) -> float:
        """KL(pi, pi*) / KL(pi_ref, pi*): 1 at the start, 0 at the optimum."""
        return self.kl_to_optimum(logprobs) / self.kl_to_optimum(self.ref_logprobs)


class TabularPolicy(nn.Module):
    """Softmax policy over K arms plus a scalar value (the 'value head' of PPO and DRO)."""

    def __init__(self, init_logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(init_logits.clone())
        self.value = nn.Parameter(torch.zeros((), dtype=init_logits.dtype))

    def logprobs(self) -> Tensor:
        return torch.log_softmax(self.logits, -1)

    def token_logprobs(self, batch: Batch) -> Tensor:
        """[B, 1]: log pi(arm) of each sample, with grad."""
        return self.logprobs()[batch.completion_ids]

    def values(self, batch: Batch) -> Tensor:
        """[B, 1]: the scalar value for every sample."""
        return self.value * torch.ones(len(batch), 1, dtype=self.value.dtype)


def sample_batch(
    bandit: Bandit, policy_logprobs: Tensor, num_groups: int, group_size: int, offpolicy: float,
    generator: torch.Generator, version: int = 0,
) -> Batch:
    """Groups of ``group_size`` arms; a share ``offpolicy`` of the groups is drawn from pi_ref."""
    offpolicy_mask = offpolicy_groups(num_groups, offpolicy, generator)
    behavior = torch.where(offpolicy_mask[:, None], bandit.ref_logprobs, policy_logprobs.detach())  # [G, K]
    arms = torch.multinomial(behavior.exp(), group_size, replacement=True, generator=generator)  # [G, n]
    B = num_groups * group_size
    arms_flat = arms.reshape(B, 1)
    is_off = offpolicy_mask.repeat_interleave(group_size)
    return Batch(
        prompt_ids=torch.zeros(B, 0, dtype=torch.long),
        prompt_mask=torch.zeros(B, 0, dtype=torch.bool),
        completion_ids=arms_flat,
        completion_mask=torch.ones(B, 1, dtype=torch.bool),
        group_ids=torch.arange(num_groups).repeat_interleave(group_size),
        rewards=bandit.rewards[arms_flat[:, 0]],
        behavior_logprobs=behavior.gather(1, arms).reshape(B, 1),
        ref_logprobs=bandit.ref_logprobs[arms_flat],
        is_offpolicy=is_off,
        policy_version=torch.where(is_off, -1, version),
        sources=["ref" if off else "policy" for off in is_off.tolist()],
    )


def update(algorithm: Algorithm, policy: TabularPolicy, batch: Batch, optimizer: torch.optim.Optimizer,
           generator: torch.Generator | None = None) -> dict[str, float]:
    """One batch as the LM trainer takes it: optional ``prepare``, then ``algorithm.epochs`` passes
    over its mini-batches (``mini_batch_groups``; shuffled with ``generator``), one step each.
    (The behaviour log-probs of on-policy rows are the policy's own here: nothing to recompute.)"""
    use_values = algorithm.needs.value_head
    if algorithm.needs.prepare:
        with torch.no_grad():
            batch.extras = algorithm.prepare(
                batch, policy.token_logprobs(batch), policy.values(batch) if use_values else None
            )
    size, groups = algorithm.config.mini_batch_groups, batch.num_groups
    count = min(math.ceil(groups / size), groups) if size else 1
    metrics: dict[str, float] = {}
    for _ in range(algorithm.epochs):
        minis = [batch] if count == 1 else [mini for _, mini in batch.mini_batches(count, generator)]
        for mini in minis:
            norm = Normalizers.of(mini, algorithm=algorithm)
            out = algorithm.loss(mini, policy.token_logprobs(mini), policy.values(mini) if use_values else None, norm)
            if not torch.isfinite(out.loss):
                raise NonFiniteLoss(f"{algorithm.name} loss is {out.loss.item()}")
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            metrics = {"loss": out.loss.item(), **{k: float(v) for k, v in out.metrics.items()}}
    return metrics


@dataclass
class TabularRun:
    """Settings of one bandit run."""

    arms: int = 10
    beta: float = 0.1
    group_size: int = 4
    groups: int = 4
    steps: int = 3000
    lr: float = 3.0
    value_lr: float = 0.5
    offpolicy: float = 0.0
    seed: int = 0
    log_every: int = 10


def train(algorithm: Algorithm, run: TabularRun) -> list[tuple[int, float]]:
    """Train on a fresh bandit; return (step, normalised KL) every ``log_every`` steps and at the end."""
    algorithm.check_group_size(run.group_size)
    bandit = Bandit.random(run.arms, run.beta, run.seed)
    policy = TabularPolicy(bandit.ref_logits)
    optimizer = torch.optim.SGD(
        [{"params": [policy.logits], "lr": run.lr}, {"params": [policy.value], "lr": run.value_lr}]
    )
    generator = torch.Generator().manual_seed(run.seed + 1)
    shuffle = torch.Generator().manual_seed(run.seed + 2)  # mini-batch order, apart from the sampling stream
    curve = [(0, bandit.normalized_kl(policy.logprobs().detach()))]
    for step in range(1, run.steps + 1):
        batch = sample_batch(bandit, policy.logprobs(), run.groups, run.group_size, run.offpolicy, generator, step)
        update(algorithm, policy, batch, optimizer, shuffle)
        if step % run.log_every == 0 or step == run.steps:
            nkl = bandit.normalized_kl(policy.logprobs().detach())
            if not math.isfinite(nkl):
                raise NonFiniteLoss(f"normalised KL became {nkl} at step {step}")
            curve.append((step, nkl))
    return curve
