"""How many groups of a batch are off-policy: the one rule shared by the bandit and the LM trainer."""

from __future__ import annotations

import math

import torch


def offpolicy_groups(num_groups: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [num_groups]: which groups come from the behaviour source instead of the policy.

    floor(p G) groups, plus one more with probability p G - floor(p G) (so the expected share is
    exactly p for any G), at random positions. p = 0 and p = 1 are deterministic.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"off-policy fraction must be in [0, 1], got {fraction}")
    expected = fraction * num_groups
    count = math.floor(expected)
    if count < num_groups and torch.rand((), generator=generator).item() < expected - count:
        count += 1
    chosen = torch.zeros(num_groups, dtype=torch.bool)
    chosen[torch.randperm(num_groups, generator=generator)[:count]] = True
    return chosen
