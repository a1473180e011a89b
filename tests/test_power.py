"""benchmarks.power: paired differences recomputed on subsets of seeds, checked by direct t-tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from benchmarks import power, stats
from benchmarks.store import ResultStore
from rlft.errors import UsageError

PILOT = Path(__file__).resolve().parents[1] / "results" / "choosing-defaults" / "seeds-16-prompts"


def test_resolved_by_uses_only_the_chosen_seeds():
    d = stats.Difference("offpolicy 1", "offpolicy 0", ("agro",), 1.0, (-0.20, -0.21, -0.19, +0.30), (0, 1, 2, 3))
    assert power.resolved_by(d, (0, 1, 2))  # three tight negative values
    assert not power.resolved_by(d, (0, 1, 3))  # the outlier seed widens the interval across 0
    assert not power.resolved_by(d, (0,))  # one seed resolves nothing


def test_power_table_counts_match_t_tests_on_every_subset():
    """Each row's count of resolving 3-seed subsets equals a direct two-sided one-sample t-test count."""
    text = power.power_table(ResultStore(PILOT), 3)
    summary = pd.read_csv(PILOT / "summary.csv")
    final = summary.set_index(["algo", "offpolicy", "seed"])["final_accuracy"]
    seeds = sorted(summary["seed"].unique())
    subsets = list(itertools.combinations(seeds, 3))

    def count(algo, share):
        diffs = {s: final[(algo, share, s)] - final[(algo, 0.0, s)] for s in seeds}
        return sum(scipy_stats.ttest_1samp([diffs[s] for s in chosen], 0.0).pvalue < 0.05 for chosen in subsets)

    for algo in ("agro", "grpo"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {algo}: offpolicy 1 - offpolicy 0 |"))
        assert row.rstrip(" |").endswith(f"{count(algo, 1.0)} / {len(subsets)}"), row
    assert len(subsets) == 10


def test_committed_power_tables_are_what_the_command_writes(monkeypatch):
    repo = PILOT.parents[2]
    monkeypatch.chdir(repo)  # the tables name their folder as the command was given it
    folders = sorted(PILOT.parent.glob("seeds-*"))
    assert len(folders) == 2
    for folder in folders:
        relative = folder.relative_to(repo)
        assert power.power_table(ResultStore(relative), 3) == (folder / "power-k3.md").read_text(), folder


def test_k_must_leave_a_subset_smaller_than_all_seeds():
    with pytest.raises(UsageError, match="--k 5"):
        power.power_table(ResultStore(PILOT), 5)
