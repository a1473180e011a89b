"""Third-party algorithms: by ``module:Class`` and by an entry point in the ``rlft.algorithms`` group,
run end to end through the tabular benchmark CLI in a subprocess (a real interpreter, real metadata)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

TESTS = Path(__file__).parent
ROOT = TESTS.parent


def run_tabular(algo: str, out: Path, extra_path: list[Path]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in [*extra_path, ROOT]))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.tabular", "--algos", algo, "--offpolicy", "0,1",
         "--seeds", "0", "--steps", "300", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def check_ran(result: subprocess.CompletedProcess, out: Path, algo: str) -> None:
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["algo"]) == {algo}
    assert (summary["status"] == "ok").all(), summary["error"].tolist()
    # the plug-in learns: the policy moves toward pi* from normalised KL 1
    assert (summary["final_normalized_kl"] < 0.5).all(), summary


def test_plugin_by_module_path(tmp_path):
    result = run_tabular("plugin_algo:SignedPG", tmp_path / "out", [TESTS])
    check_ran(result, tmp_path / "out", "plugin_algo:SignedPG")


def test_plugin_by_entry_point(tmp_path):
    # What `pip install` of a plug-in package writes: a dist-info folder with entry_points.txt.
    site = tmp_path / "site"
    dist_info = site / "rlft_example_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rlft-example-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[rlft.algorithms]\nsigned-pg = plugin_algo:SignedPG\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(TESTS), str(ROOT)]))
    listed = subprocess.run([sys.executable, "-c", "import algorithms; print(algorithms.available())"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "'signed-pg'" in listed.stdout
    result = run_tabular("signed-pg", tmp_path / "out", [site, TESTS])
    check_ran(result, tmp_path / "out", "signed-pg")
