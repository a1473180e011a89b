"""The Batch: the one record passed from rollouts to algorithms.

B completions (B = groups x n, the n samples of a group adjacent), right-padded to T completion
tokens. Prompts are left-padded to P tokens so that ``cat([prompt_ids, completion_ids], 1)`` is
a contiguous sequence per row. Everything an algorithm needs is derived from these fields; the
tabular bandit fills the same record with P = 0 and T = 1 (the arm is the one completion token).

Shapes and dtypes::

    prompt_ids        [B, P] long    left-padded prompt tokens (P may be 0)
    prompt_mask       [B, P] bool    True on real prompt tokens
    completion_ids    [B, T] long    right-padded completion tokens
    completion_mask   [B, T] bool    True on real completion tokens (EOS included)
    group_ids         [B]    long    samples of one prompt share a group id; groups are contiguous
    rewards           [B]    float   scalar reward r(x, y)
    behavior_logprobs [B, T] float   log mu(y_t | x, y_<t) recorded by the engine at sampling time
    ref_logprobs      [B, T] float   log pi_ref(y_t | x, y_<t), or None if no algorithm asked
    sampler_logprobs  [B, T] float   what the sampler recorded, kept when the trainer replaced the
                                     behaviour log-probs of on-policy rows by its own (pi_old), else None
    rollout_weights   [B, T] float   weights correcting that sampler-trainer mismatch, 1 on off-policy
                                     rows (see rlft.rollout_correction), or None: all 1
    rollout_sequence_weights [B] float  the same correction for sequence-level estimators, or None
    is_offpolicy      [B]    bool    True if the sample came from a behaviour source, not the policy
    policy_version    [B]    long    version of the weights that produced the sample (-1: not a policy)
    sources           list[str] of length B: "policy", "ref", "stale:2", "dataset", ...
    extras            dict[str, Tensor [B, ...]] per-sample tensors an algorithm prepared once
                      per batch (see ``Algorithm.prepare``), sliced along with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    group_ids: Tensor
    rewards: Tensor
    behavior_logprobs: Tensor
    ref_logprobs: Tensor | None = None
    sampler_logprobs: Tensor | None = None
    rollout_weights: Tensor | None = None
    rollout_sequence_weights: Tensor | None = None
    is_offpolicy: Tensor | None = None
    policy_version: Tensor | None = None
    sources: list[str] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        B = self.completion_ids.shape[0]
        if self.is_offpolicy is None:
            self.is_offpolicy = torch.zeros(B, dtype=torch.bool, device=self.completion_ids.device)
        if self.policy_version is None:
            self.policy_version = torch.zeros(B, dtype=torch.long, device=self.completion_ids.device)
        if not self.sources:
            self.sources = ["policy"] * B
        for name in ("prompt_ids", "prompt_mask", "completion_mask", "group_ids", "rewards",
                     "behavior_logprobs", "is_offpolicy", "policy_version"):
            if getattr(self, name).shape[0] != B:
                raise ValueError(f"Batch.{name} has {getattr(self, name).shape[0]} rows, expected {B}")

    # ----------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def num_groups(self) -> int:
        return int(torch.unique_consecutive(self.group_ids).numel())

    @property
    def lengths(self) -> Tensor:
        """[B] number of real completion tokens."""
        return self.completion_mask.sum(-1)

    @property
    def mask(self) -> Tensor:
        """[B, T] completion mask as the float dtype of the rewards (for weighted sums)."""
        return self.completion_mask.to(self.rewards.dtype)

    # ------------------------------------------------------------------------ sequence sums
    def sequence_sum(self, token_values: Tensor) -> Tensor:
        """[B, T] -> [B]: sum over real completion tokens (e.g. token log-probs -> logp(y))."""
        return (token_values * self.mask).sum(-1)

    @property
    def correction(self) -> Tensor:
        """[B, T] the rollout correction weights (``rollout_weights``), 1 where none were computed."""
        return self.rollout_weights if self.rollout_weights is not None else torch.ones_like(self.behavior_logprobs)

    @property
    def sequence_correction(self) -> Tensor:
        """[B] the rollout correction of each sequence (``rollout_sequence_weights``), 1 where none."""
        if self.rollout_sequence_weights is not None:
            return self.rollout_sequence_weights
        return self.behavior_logprobs.new_ones(len(self))

    @property
    def behavior_seq_logprobs(self) -> Tensor:
        """[B] log mu(y | x)."""
        return self.sequence_sum(self.behavior_logprobs)

    @property
    def ref_seq_logprobs(self) -> Tensor:
        """[B] log pi_ref(y | x); raises if the batch carries no reference log-probs."""
        if self.ref_logprobs is None:
            raise ValueError("this batch has no ref_logprobs; the algorithm must declare needs.ref_logprobs")
        return self.sequence_sum(self.ref_logprobs)

    # ---------------------------------------------------------------------------- slicing
    def select(self, index: Tensor | slice) -> "Batch":
        """Rows ``index`` of every per-sample field (a micro-batch). Keep groups whole."""
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        else:
            rows = index.tolist()
        per_sample = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                per_sample[f.name] = value[index]
        return replace(
            self,
            **per_sample,
            sources=[self.sources[i] for i in rows],
            extras={k: v[index] for k, v in self.extras.items()},
        )

    def group_slices(self, groups_per_slice: int) -> list["Batch"]:
        """Split into micro-batches of ``groups_per_slice`` whole groups each."""
        _, counts = torch.unique_consecutive(self.group_ids, return_counts=True)
        bounds = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
        return [
            self.select(slice(bounds[g], bounds[min(g + groups_per_slice, len(counts))]))
            for g in range(0, len(counts), groups_per_slice)
        ]

    def mini_batches(self, count: int, generator: torch.Generator) -> list[tuple[Tensor, "Batch"]]:
        """The groups in a random order drawn from ``generator``, split into ``count`` mini-batches of
        whole groups whose sizes differ by at most one group: ``[(rows [b] of this batch, Batch)]``."""
        _, counts = torch.unique_consecutive(self.group_ids, return_counts=True)
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]]).tolist()
        order = torch.randperm(len(counts), generator=generator, device=generator.device)
        device, out = self.group_ids.device, []
        for chunk in torch.tensor_split(order, count):
            rows = torch.cat([torch.arange(starts[g], starts[g] + int(counts[g]), device=device) for g in chunk.tolist()])
            out.append((rows, self.select(rows)))
        return out

    def to(self, device: torch.device | str) -> "Batch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved, extras={k: v.to(device) for k, v in self.extras.items()})

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        """Stack batches row-wise, re-padding prompts (left) and completions (right)."""
        P = max(b.prompt_ids.shape[1] for b in batches)
        T = max(b.completion_ids.shape[1] for b in batches)

        def pad(t: Tensor | None, width: int, left: bool, value: float = 0) -> Tensor | None:
            if t is None:
                return None
            extra = width - t.shape[1]
            return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

        def cat(name: str, width: int | None = None, left: bool = False) -> Tensor | None:
            parts = [getattr(b, name) for b in batches]
            if any(p is None for p in parts):
                return None
            if width is not None:
                parts = [pad(p, width, left) for p in parts]
            return torch.cat(parts)

        # group ids must stay distinct across batches: offset each by the previous maximum + 1
        group_ids, offset = [], 0
        for b in batches:
            group_ids.append(b.group_ids - b.group_ids.min() + offset if len(b) else b.group_ids)
            offset = int(group_ids[-1].max()) + 1 if len(b) else offset
        extras_keys = set.intersection(*(set(b.extras) for b in batches)) if batches else set()
        return Batch(
            prompt_ids=cat("prompt_ids", P, left=True),
            prompt_mask=cat("prompt_mask", P, left=True),
            completion_ids=cat("completion_ids", T),
            completion_mask=cat("completion_mask", T),
            group_ids=torch.cat(group_ids),
            rewards=cat("rewards"),
            behavior_logprobs=cat("behavior_logprobs", T),
            ref_logprobs=cat("ref_logprobs", T),
            sampler_logprobs=cat("sampler_logprobs", T),
            rollout_weights=cat("rollout_weights", T),
            rollout_sequence_weights=cat("rollout_sequence_weights"),
            is_offpolicy=cat("is_offpolicy"),
            policy_version=cat("policy_version"),
            sources=[s for b in batches for s in b.sources],
            extras={k: torch.cat([b.extras[k] for b in batches]) for k in extras_keys},
        )
