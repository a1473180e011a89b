"""Several training processes (DDP through accelerate, FSDP2 under torchrun; gloo on this CPU) give the
one-process step, and a killed FSDP2 run resumes exactly.

DDP launches start real processes with ``accelerate launch --multi_gpu --num_processes 2``, which on
a machine without GPUs runs 2 CPU processes over gloo; FSDP2 launches use ``torchrun
--nproc-per-node 2`` and ``--fsdp`` (torch's ``fully_shard``, see rlft/fsdp.py).
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.run import accelerate_launch
from tolerances import difference, forward_reductions  # tests/tolerances.py


TESTS = Path(__file__).parent
ALGOS = ["agro", "grpo", "ppo", "dpo"]
TIMING = {"tokens_per_s", "rollout_seconds", "step_seconds"}


def torchrun(processes: int, *command: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(processes), *command]  # (--standalone: a free port)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    """The step of every algorithm in ALGOS: 1 process x batch B, and 2 processes x B/2 with one
    group per micro-batch (so gradient accumulation is exercised too), under DDP and under FSDP2."""
    root = tmp_path_factory.mktemp("ddp")
    single = run([sys.executable, str(TESTS / "ddp_step.py"), "--out", str(root / "one")], root)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run(accelerate_launch(2, str(TESTS / "ddp_step.py"), "--out", str(root / "two"), "--micro-groups", "1"),
                 root)
    assert double.returncode == 0, double.stderr[-3000:]
    sharded = run(torchrun(2, str(TESTS / "ddp_step.py"), "--out", str(root / "fsdp"), "--micro-groups", "1",
                           "--fsdp"), root)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    return root


@pytest.mark.parametrize("launch", ["two", "fsdp"])
@pytest.mark.parametrize("algo", ALGOS)
def test_two_processes_take_the_one_process_step(one_step, tiny, algo, launch):
    """2 processes x B/2 take the step of 1 process x B, to rounding (bounds: tests/tolerances.py),
    with DDP (``two``: every process holds every parameter) and with FSDP2 (``fsdp``: each holds half
    of every parameter, gradient and optimizer moment; the test gathers them).

    The two runs sum the same terms in other orders (other batch shapes, micro-batches, the
    all-reduce), so their gradients may differ by rounding only. AdamW then divides each gradient
    entry by its own magnitude: its update m / (sqrt(v) + eps) changes by up to 1/eps times a change
    of the gradient (at g = 0). In float32 that makes the parameter check vacuous: entries that are
    zero up to cancellation (|g| ~ 1e-8, from terms of ~0.1) carry rounding of ~1e-9, which AdamW
    turns into parameter differences of ~lr (seen on an AMD EPYC with AVX2: 1.7e-4 with lr 1e-4 in
    PPO's second epoch, while the gradients agreed to 4e-8 of their largest entry). So the step
    runs in float64 (u = 1.1e-16), and with one epoch: a second epoch would start from parameters
    that already differ, which tests the loss's smoothness, not DDP.

    Bounds, with the batch's `tokens` and the forward chain F of a completion token:
      gradient:   difference(F + F + [tokens], sqrt(tokens) * max|g|)  (backward mirrors the forward;
                  each entry sums the tokens' contributions, whose centred advantages cancel like a
                  random walk, so their absolute sum is about sqrt(tokens) times the largest entry)
      parameters: lr / eps * the gradient bound (AdamW's first step, slope at most 1/eps)
      loss:       difference(F + [tokens], 2 * max|logit| * sqrt(tokens)) (|log-prob| <= 2 max|logit|;
                  every coefficient of these losses is at most sqrt(tokens): PPO's whitened advantages)
      grad norm:  | |g1| - |g2| | <= |g1 - g2| (triangle inequality) + its own sum's rounding
    """
    one = torch.load(one_step / "one" / f"{algo}.pt")
    two = torch.load(one_step / launch / f"{algo}.pt")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert 0 < one["offpolicy_groups"] < 4  # the batch mixes on- and off-policy groups
    assert one["tokens"] == two["tokens"] and len(one["grads"]) == len(two["grads"]) == 1
    for name, before in one["before"].items():
        assert torch.equal(before, two["before"][name]) and before.dtype == torch.float64
    config = tiny[0].config  # the model ddp_step.py trained
    tokens = one["tokens"]
    forward = forward_reductions(config, one["prompt_width"] + one["width"])

    g1, g2 = one["grads"][0], two["grads"][0]
    largest = max(g.abs().max().item() for g in g1.values())
    grad_bound = difference(forward + forward + [tokens], math.sqrt(tokens) * largest, torch.float64)
    grad_diff = max((g1[k] - g2[k]).abs().max().item() for k in g1)
    assert grad_diff <= grad_bound, f"{algo}: gradients differ by {grad_diff:.2e} > {grad_bound:.2e}"

    param_bound = one["lr"] / one["adam_eps"] * grad_bound
    change = max((one["after"][k] - one["before"][k]).abs().max().item() for k in one["after"])
    diff = max((one["after"][k] - two["after"][k]).abs().max().item() for k in one["after"])
    assert change > 100 * param_bound, "the step must move the weights far beyond the bound"
    assert diff <= param_bound, f"{algo}: parameters differ by {diff:.2e} > {param_bound:.2e} after the step"
    assert diff <= 1e-5  # (the bar; the bound above is far tighter)

    norm1, norm2 = one["metrics"]["grad_norm"], two["metrics"]["grad_norm"]
    grad_gap = math.sqrt(sum(float(((g1[k] - g2[k]) ** 2).sum()) for k in g1))
    parameters = sum(g.numel() for g in g1.values())
    assert abs(norm1 - norm2) <= grad_gap + difference([parameters], norm1, torch.float64)

    loss_bound = difference(forward + [tokens], 2 * one["max_abs_logit"] * math.sqrt(tokens), torch.float64)
    assert abs(two["metrics"]["loss"] - one["metrics"]["loss"]) <= loss_bound
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


def fsdp_train(out: Path, steps: int) -> list[str]:
    """PPO (a value head, several epochs of shuffled mini-batches) on half off-policy batches, sharded."""
    return torchrun(2, "-m", "rlft.train", "--fsdp", "--algo", "ppo", "--offpolicy", "0.5", "--steps", str(steps),
                    "--groups", "4", "--group-size", "4", "--eval-every", "2", "--eval-problems", "8",
                    "--save-every", "1", "--out", str(out))


def records_without_timing(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fsdp_run_killed_mid_training_resumes_exactly(tmp_path):
    """torchrun + --fsdp: SIGKILL both processes after a checkpoint; the rerun resumes from it (weights,
    value head and optimizer loaded back into the shards) and logs what an uninterrupted run logs."""
    steps = 6
    straight = run(fsdp_train(tmp_path / "straight", steps), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    saved = tmp_path / "straight" / "checkpoint"
    # the last step's checkpoint: the shards, and the weights gathered into an HF folder
    assert (saved / "model.safetensors").is_file() and (saved / "value_head.safetensors").is_file()
    assert len(list((saved / "sharded").glob("*.distcp"))) == 2

    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(fsdp_train(out, steps), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        state = out / "checkpoint" / "trainer_state.json"
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if state.exists() and json.loads(state.read_text() or "{}").get("step", 0) >= 2:
                break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both training processes
        proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert proc.returncode == -signal.SIGKILL and 2 <= killed_at < steps, (tmp_path / "killed.log").read_text()[-2000:]
    # a checkpoint before the last step: each process's own shards, nothing gathered
    assert len(list((out / "checkpoint" / "sharded").glob("*.distcp"))) == 2
    assert not (out / "checkpoint" / "model.safetensors").exists()

    resumed = run(fsdp_train(out, steps), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records_without_timing(out) == records_without_timing(tmp_path / "straight")
    assert [r["step"] for r in records_without_timing(out)] == list(range(steps + 1))


def test_fsdp_feeds_the_stale_source_the_gathered_weights(tmp_path):
    """--behavior stale:1 under FSDP2: the off-policy groups of step t come from the weights of step t-1,
    gathered from the shards. In float64 a 2-process FSDP2 run then samples what a 2-process DDP run
    (every process holds every weight; same ranks, same seeds) samples at every step, and logs the
    same losses to rounding; a stale source fed shards or old weights would sample other groups."""
    args = ["-m", "rlft.train", "--algo", "grpo", "--behavior", "stale:1", "--offpolicy", "0.5", "--steps", "3",
            "--groups", "4", "--group-size", "4", "--lr", "1e-3", "--dtype", "float64", "--eval-every", "3",
            "--eval-problems", "8"]
    replicated = run(accelerate_launch(2, *args, "--out", str(tmp_path / "ddp")), tmp_path)
    assert replicated.returncode == 0, replicated.stderr[-3000:]
    sharded = run(torchrun(2, *args, "--fsdp", "--out", str(tmp_path / "fsdp")), tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    ddp, fsdp = records_without_timing(tmp_path / "ddp"), records_without_timing(tmp_path / "fsdp")
    assert [r["step"] for r in ddp] == [r["step"] for r in fsdp] == [0, 1, 2, 3]
    assert any(r["reward_offpolicy"] for r in ddp[2:])  # the stale groups carry signal
    for a, b in zip(ddp[1:], fsdp[1:]):
        assert a["reward"] == b["reward"] and a["reward_offpolicy"] == b["reward_offpolicy"]
        assert abs(a["loss"] - b["loss"]) <= 1e-9 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-9 * a["grad_norm"]


@pytest.mark.parametrize("engine,dtype", [("auto", "bfloat16"), ("hf", "float32")])
def test_fsdp_with_the_hf_engine_finishes(tmp_path, engine, dtype):
    """--fsdp with --engine auto (resolved to the HF engine where vLLM is missing: it must sample from its
    own full copy, not from the shards, or the processes call collectives unevenly and hang) and with
    --engine hf; in bfloat16 (FSDP2's mixed precision: float32 shards, bfloat16 compute) and float32.
    The stale:1 source samples with the same engine class, its weights kept by the main process only."""
    out = tmp_path / "run"
    done = run(torchrun(2, "-m", "rlft.train", "--fsdp", "--engine", engine, "--dtype", dtype, "--algo", "grpo",
                        "--behavior", "stale:1", "--offpolicy", "0.5", "--steps", "2", "--groups", "4",
                        "--group-size", "4", "--eval-every", "2", "--eval-problems", "8", "--save-every", "1",
                        "--out", str(out)), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in records_without_timing(out)] == [0, 1, 2]
    checkpoint = out / "checkpoint"
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:  # the float32 master weights
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    main, other = (torch.load(checkpoint / f"behavior-{r}.pt", weights_only=False) for r in (0, 1))
    assert [step for step, _ in main["snapshots"]] == [1, 2] and other["snapshots"] == []
    assert main["loaded_step"] == other["loaded_step"] == 1
