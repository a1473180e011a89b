"""The tabular benchmark (Figure 1 of arXiv:2503.19612): files, resume, every algorithm, the claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import algorithms
from benchmarks import tabular
from tolerances import difference  # tests/tolerances.py

ROOT = Path(__file__).parents[1]


def test_paper_claim_with_default_settings(tmp_path):
    """AGRO reaches pi* on- and off-policy; KL-regularised REINFORCE does not off-policy."""
    tabular.main(["--algos", "agro,reinforce", "--offpolicy", "0,1", "--out", str(tmp_path)])
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 * 2 * 3 and (summary["status"] == "ok").all()
    final = summary.groupby(["algo", "offpolicy"])["final_normalized_kl"].max()
    assert final["agro", 0.0] <= 1e-3 and final["agro", 1.0] <= 1e-3
    assert summary[(summary.algo == "reinforce") & (summary.offpolicy == 1.0)]["final_normalized_kl"].min() >= 1e-2


def test_outputs_and_resume(tmp_path, capsys):
    args = ["--algos", "agro", "--offpolicy", "0,0.5", "--seeds", "0,1", "--steps", "50", "--out", str(tmp_path)]
    tabular.main(args)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert {"algo", "offpolicy", "seed", "final_normalized_kl"} <= set(summary.columns)
    assert sorted(summary["offpolicy"].unique()) == [0.0, 0.5]
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert curves.groupby(["offpolicy", "seed"])["step"].max().eq(50).all()
    # starts at pi_ref: KL(pi_ref, pi*) / KL(pi_ref, pi*), two sums over the K = 10 arms, float64
    assert curves[curves.step == 0]["normalized_kl"].sub(1.0).abs().max() <= difference([10, 10], 1.0, torch.float64)
    assert "| agro |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "normalized_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cell_files = sorted((tmp_path / "cells").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in cell_files]
    capsys.readouterr()
    tabular.main(args)  # rerun: every cell is skipped
    assert "4 of 4 cells already done" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in cell_files] == stamps


def test_every_algorithm_runs(tmp_path):
    tabular.main(["--offpolicy", "0,0.5,1", "--seeds", "0", "--steps", "100", "--out", str(tmp_path)])
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["algo"]) == set(algorithms.available())
    assert (summary["status"] == "ok").all(), summary[summary.status != "ok"][["algo", "error"]]
    assert summary["final_normalized_kl"].notna().all()


def test_agro_variants_on_the_bandit(tmp_path):
    """--grid over AGRO's variants, fully off-policy (all data from pi_ref): the anchor keeps pi* as the
    fixed point (normalised KL to pi* goes to ~0, as for the paper's AGRO), a shift moves it toward
    the data, so the normalised KL stalls well above 0 (algorithms/agro.py gives both fixed points)."""
    tabular.main(["--algos", "agro", "--offpolicy", "1", "--seeds", "0,1", "--steps", "1500",
                  "--grid", "agro.shift=0,0.2", "--grid", "agro.anchor=0,1", "--out", str(tmp_path)])
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 2 * 2 * 2 and (summary["status"] == "ok").all()
    final = summary.groupby(["agro.shift", "agro.anchor"])["final_normalized_kl"].max()
    assert final[0.0, 0.0] <= 1e-2 and final[0.0, 1.0] <= 1e-2
    smallest_shifted = summary[summary["agro.shift"] == 0.2]["final_normalized_kl"].min()
    assert smallest_shifted >= 0.05
    table = (tmp_path / "table.md").read_text()
    assert "| agro shift=0 anchor=1 |" in table and "| agro shift=0.2 anchor=0 |" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--beta", "-1"], "--beta must be a finite number > 0"),
        (["--offpolicy", "0,1.5"], "outside [0, 1]"),
        (["--algos", "agro", "--group-size", "1"], "agro needs at least 2 samples per prompt"),
        (["--algos", "agro,nope"], "unknown algorithm 'nope'; known: agro,"),
        (["--steps", "ten"], "invalid int value"),
        (["--algos", "agro", "--grid", "agro.nope=1"], "agro has no hyper-parameter 'nope'"),
        (["--algos", "agro", "--grid", "agro.anchor=-1"], "anchor must be a finite number >= 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "benchmarks.tabular", *args, "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
