"""Several training processes (DDP through accelerate, gloo on this CPU) give the one-process step.

Each launch starts real processes with ``accelerate launch --multi_gpu --num_processes 2``, which on
a machine without GPUs runs 2 CPU processes over gloo.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.run import accelerate_launch


TESTS = Path(__file__).parent
ALGOS = ["agro", "grpo", "ppo", "dpo"]
#: parameters after one step may differ by float rounding only
TOLERANCE = 1e-5


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    """The step of every algorithm in ALGOS: 1 process x batch B, and 2 processes x B/2 with one
    group per micro-batch (so gradient accumulation is exercised too)."""
    root = tmp_path_factory.mktemp("ddp")
    single = run([sys.executable, str(TESTS / "ddp_step.py"), "--out", str(root / "one")], root)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run(accelerate_launch(2, str(TESTS / "ddp_step.py"), "--out", str(root / "two"), "--micro-groups", "1"),
                 root)
    assert double.returncode == 0, double.stderr[-3000:]
    return root


@pytest.mark.parametrize("algo", ALGOS)
def test_two_processes_take_the_one_process_step(one_step, algo):
    one = torch.load(one_step / "one" / f"{algo}.pt")
    two = torch.load(one_step / "two" / f"{algo}.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert 0 < one["offpolicy_groups"] < 4  # the batch mixes on- and off-policy groups
    for name, before in one["before"].items():
        assert torch.equal(before, two["before"][name])
    change = max((one["after"][k] - one["before"][k]).abs().max().item() for k in one["after"])
    diff = max((one["after"][k] - two["after"][k]).abs().max().item() for k in one["after"])
    assert change > 5 * TOLERANCE, "the step must move the weights well beyond the tolerance"
    assert diff < TOLERANCE, f"{algo}: parameters differ by {diff:.2e} after the step"
    # AdamW's first step hardly depends on the gradient's scale: compare the gradient norm too
    # (taken before clipping, over the whole batch) and the whole batch's loss
    assert two["metrics"]["grad_norm"] == pytest.approx(one["metrics"]["grad_norm"], rel=1e-5)
    assert two["metrics"]["loss"] == pytest.approx(one["metrics"]["loss"], abs=1e-6)
    assert two["metrics"]["reward"] == one["metrics"]["reward"]


def train_args(out: Path, steps: int) -> list[str]:
    return ["-m", "rlft.train", "--algo", "agro", "--steps", str(steps), "--groups", "4", "--group-size", "4",
            "--eval-every", "2", "--eval-problems", "8", "--save-every", "1", "--out", str(out)]


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rlft_train_under_accelerate_launch_logs_once_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = run(accelerate_launch(2, *train_args(out, 2)), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert logged_steps(out) == [0, 1, 2]  # gathered and written once, not once per process
    checkpoint = out / "checkpoint"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["processes"] == 2
    assert sorted(p.name for p in checkpoint.glob("behavior-*.pt")) == ["behavior-0.pt", "behavior-1.pt"]

    resumed = run(accelerate_launch(2, *train_args(out, 3)), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_steps(out) == [0, 1, 2, 3]

    alone = run([sys.executable, *train_args(out, 4)], tmp_path)  # one process cannot resume it
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "2 process(es)" in alone.stderr


def test_benchmark_cells_run_through_accelerate(tmp_path):
    out = tmp_path / "sweep"
    sweep = run([sys.executable, "-m", "benchmarks.run", "--algos", "grpo", "--offpolicy", "0.5", "--seeds", "0",
                 "--steps", "2", "--groups", "4", "--group-size", "4", "--eval-every", "2", "--eval-problems", "8",
                 "--processes", "2", "--out", str(out)], Path(__file__).parents[1])
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    record = json.loads(next((out / "cells").glob("*.json")).read_text())
    assert record["status"] == "ok" and record["processes"] == 2
    assert record["final_accuracy"] is not None
    assert json.loads((out / "sweep.json").read_text())["settings"]["processes"] == 2
    assert logged_steps(Path(record["run_dir"])) == [0, 1, 2]
