"""Statistics of a sweep over seeds: t-intervals of means and of paired (same-seed) differences.

Runs with the same seed share their training data order, their off-policy groups and (see
rlft/evaluation.py) their test problems and evaluation sampling noise. So the per-seed difference
between two cells, d_s = x_s(A) - x_s(B), removes what the seed alone decides, and its mean has the
95 % Student-t interval::

    mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)        (n = number of seeds both cells finished)

A difference is *resolved* when that interval excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

#: How an unset grid key (another algorithm's hyper-parameter) is labelled in a frame.
UNSET = "-"


def t_interval(values: Sequence[float], level: float = 0.95,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (the mean itself for one value),
    clipped to ``bounds``, the range the quantity can take (an accuracy's is [0, 1])."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return max(mean - half, bounds[0]), min(mean + half, bounds[1])


@dataclass(frozen=True)
class Difference:
    """The paired difference ``a - b`` of one quantity over the seeds both finished."""

    a: str  # what is compared, e.g. "grpo" or "offpolicy 1"
    b: str  # with what, e.g. "agro" or "offpolicy 0"
    point: tuple  # (algo, grid values...) of ``a``'s row in the tables
    offpolicy: float
    values: tuple[float, ...]  # one per seed
    seeds: tuple[int, ...] = ()  # the seed of each value

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def interval(self) -> tuple[float, float]:
        return t_interval(self.values)

    @property
    def resolved(self) -> bool:
        """Whether the 95 % interval excludes 0 (needs two seeds or more)."""
        low, high = self.interval
        return self.n >= 2 and (low > 0 or high < 0)

    def text(self, digits: int = 3) -> str:
        """``"**+0.041** [+0.012, +0.070] (n=3)"``: bold when resolved."""
        low, high = self.interval
        mean = f"{self.mean:+.{digits}f}"
        if self.n < 2:
            return f"{mean} (n={self.n})"
        return f"{f'**{mean}**' if self.resolved else mean} [{low:+.{digits}f}, {high:+.{digits}f}] (n={self.n})"


def _by_seed(rows: pd.DataFrame, value: str) -> dict:
    rows = rows[pd.to_numeric(rows[value], errors="coerce").notna()]
    if rows["seed"].duplicated().any():
        return {}
    return dict(zip(rows["seed"], rows[value].astype(float)))


def _paired(a: dict, b: dict) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(``a[s] - b[s]``, ``s``) over the seeds both have, in seed order."""
    seeds = tuple(sorted(set(a) & set(b)))
    return tuple(a[s] - b[s] for s in seeds), seeds


def _matching(rows: pd.DataFrame, grid: Sequence[str], point: dict) -> pd.DataFrame:
    """The rows whose grid values agree with ``point`` wherever both are set."""
    mask = pd.Series(True, index=rows.index)
    for key in grid:
        mine = point[key]
        if mine != UNSET:
            mask &= (rows[key] == mine) | (rows[key] == UNSET)
    return rows[mask]


def versus_algorithm(frame: pd.DataFrame, value: str, reference: str, grid: Sequence[str]) -> list[Difference]:
    """``value(algo) - value(reference)`` at every off-policy share and grid point, paired by seed.

    ``frame`` holds the finished cells (columns algo, offpolicy, seed, the grid keys labelled with
    :data:`UNSET` where they do not apply, and ``value``). A reference row matches when its grid
    values agree wherever both are set; where the reference has several variants that the point
    leaves open (``agro.baseline=mean`` and ``loo`` against reinforce), each is compared, and
    named in ``b`` (``"agro agro.baseline=loo"``).
    """
    out = []
    base = frame[frame["algo"] == reference]
    for (algo, *values), rows in frame[frame["algo"] != reference].groupby(["algo", *grid], sort=True):
        point = dict(zip(grid, values))
        for p, here in rows.groupby("offpolicy"):
            there = _matching(base[base["offpolicy"] == p], grid, point)
            for label, variant in _reference_variants(there, grid, point, reference):
                diffs, seeds = _paired(_by_seed(here, value), _by_seed(variant, value))
                if diffs:
                    out.append(Difference(algo, label, (algo, *values), float(p), diffs, seeds))
    return out


def _reference_variants(rows: pd.DataFrame, grid: Sequence[str], point: dict, reference: str) -> list[tuple]:
    """``[(label, rows)]``: the reference's rows split by the grid keys that ``point`` leaves unset
    but the reference sets, one group per variant; just ``[(reference, rows)]`` if there are none."""
    free = [key for key in grid if point[key] == UNSET and (rows[key] != UNSET).any()]
    if not free:
        return [(reference, rows)]
    return [(" ".join([reference, *(f"{k}={v}" for k, v in zip(free, values))]), group)
            for values, group in rows.groupby(free, sort=True)]


def versus_share(frame: pd.DataFrame, value: str, grid: Sequence[str]) -> list[Difference]:
    """``value(share p) - value(the smallest share)`` for each algorithm and grid point, paired by seed."""
    out = []
    for (algo, *values), rows in frame.groupby(["algo", *grid], sort=True):
        shares = sorted(rows["offpolicy"].unique())
        first = _by_seed(rows[rows["offpolicy"] == shares[0]], value)
        for p in shares[1:]:
            diffs, seeds = _paired(_by_seed(rows[rows["offpolicy"] == p], value), first)
            if diffs:
                out.append(Difference(f"offpolicy {p:g}", f"offpolicy {shares[0]:g}", (algo, *values), float(p),
                                      diffs, seeds))
    return out


def gains(frame: pd.DataFrame, grid: Sequence[str], share: float) -> list[Difference]:
    """``final_accuracy - initial_accuracy`` per algorithm and grid point at ``share``, per seed."""
    out = []
    rows = frame[frame["offpolicy"] == share]
    for (algo, *values), group in rows.groupby(["algo", *grid], sort=True):
        group = group.dropna(subset=["final_accuracy", "initial_accuracy"])
        group = group.sort_values("seed")
        diffs = tuple((group["final_accuracy"] - group["initial_accuracy"]).astype(float))
        if diffs:
            out.append(Difference("final", "initial", (algo, *values), float(share), diffs,
                                  tuple(int(s) for s in group["seed"])))
    return out
