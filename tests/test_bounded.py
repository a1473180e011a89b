"""Bounded by default: log-space ratios clamped to +-20, finite truncation, per-token k3, dual-clip,
and every algorithm trains on long off-policy completions without a NaN."""

from __future__ import annotations

import json
import math

import pytest
import torch

import algorithms
from algorithms import functional as F
from rlft.trainer import TrainConfig, Trainer
from tolerances import difference  # tests/tolerances.py

#: float32 elementwise values through a log and an exp: two roundings (tests/tolerances.py)
REL = difference([2], 1.0)


def test_importance_weight_is_bounded_and_exact_below_the_bounds():
    logprobs = torch.tensor([-200.0, -1.0, 0.0, -3.0])
    behavior = torch.tensor([0.0, -1.5, -200.0, -3.0])
    uncapped = F.importance_weight(logprobs, behavior)
    assert torch.isfinite(uncapped).all()
    assert uncapped[2] == pytest.approx(math.exp(F.LOG_RATIO_LIMIT), rel=REL)  # e^200 clamped to e^20
    assert uncapped[0] == pytest.approx(math.exp(-F.LOG_RATIO_LIMIT), rel=REL)
    assert uncapped[1] == pytest.approx(math.exp(0.5), rel=REL) and uncapped[3] == 1.0
    capped = F.importance_weight(logprobs, behavior, cap=1.2)
    assert capped[2] == pytest.approx(1.2, rel=REL) and capped[1] == pytest.approx(1.2, rel=REL)
    assert capped[3] == 1.0


def test_k3_is_finite_where_its_exponential_would_overflow():
    logprobs = torch.tensor([-150.0, -1.0])
    ref = torch.tensor([0.0, -1.0])
    k3 = F.kl_estimate(logprobs, ref, "k3")
    assert torch.isfinite(k3).all() and k3[1] == 0.0
    assert k3[0] == pytest.approx(math.expm1(F.LOG_RATIO_LIMIT) - F.LOG_RATIO_LIMIT, rel=REL)


def test_clipped_surrogate_with_dual_clip():
    """A > 0: PPO's clip at 1 + eps; A < 0: also capped at -A c where the ratio exceeds c."""
    log_ratio = torch.log(torch.tensor([0.5, 1.1, 1.5, 10.0, 10.0])).requires_grad_(True)
    advantages = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0])
    loss, clipped = F.clipped_surrogate(log_ratio, advantages, 0.2, 0.2, clip_ratio_c=3.0)
    expected = torch.tensor([-0.5, -1.1, -1.2, -1.2, 3.0])
    assert torch.allclose(loss, expected, rtol=REL, atol=0)
    assert clipped.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    assert grad[3] == 0 and grad[4] == 0 and grad[0].item() == pytest.approx(-0.5, rel=REL)
    without = F.clipped_surrogate(log_ratio, advantages, 0.2, 0.2)[0]
    assert without[4].item() == pytest.approx(10.0, rel=REL)  # no dual-clip: -A rho


@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_ratio_algorithms_clamp_the_log_ratio(name):
    """A behaviour log-prob 500 nats below the policy's gives a finite loss and gradient."""
    from test_algorithms import compute_loss, lm_batch

    batch, logprobs, values = lm_batch()
    batch.behavior_logprobs = batch.behavior_logprobs - 500.0 * batch.completion_mask
    out = compute_loss(algorithms.make(name), batch, logprobs, values)
    (grad,) = torch.autograd.grad(out.loss, logprobs)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()


def test_is_pg_default_truncation_is_finite():
    assert math.isfinite(algorithms.make("is-pg").config.truncation)
    assert algorithms.make("is-pg", truncation="inf").config.truncation == math.inf  # the unbiased option


def long_completions(path, prompts: int = 3, per_prompt: int = 4) -> None:
    """A jsonl of arith prompts, each with completions of 70 characters (70+ tokens of the tiny
    preset), half rewarded 1: pi_ref gives them log-probs of hundreds of nats, so sequence ratios
    run to e^(+-100) within a few steps."""
    letters = "abcdefghijklmnopqrstuvwxyz 0123456789"
    with open(path, "w") as f:
        for i in range(prompts):
            for j in range(per_prompt):
                completion = "".join(letters[(7 * i + 3 * j + 5 * k * (j + 1)) % len(letters)] for k in range(70))
                f.write(json.dumps({"prompt": f"What is {i} + {i}?", "completion": completion,
                                    "reward": float(j % 2)}) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["agro", "dpo", "dro", "grpo", "is-pg", "ppo", "raft", "reinforce", "rloo", "topr"])
def test_three_steps_on_long_offpolicy_completions_stay_finite(algo, tmp_path):
    """Offpolicy 1 from a dataset of 70-token completions, a large learning rate: the sequence
    log-ratios run to hundreds of nats, and every loss stays finite (the trainer stops on NaN / inf)."""
    data = tmp_path / "long.jsonl"
    long_completions(data)
    config = TrainConfig(algo=algo, behavior=f"dataset:{data}", offpolicy=1.0, steps=3, groups=2, group_size=4,
                         lr=3e-2, eval_every=100, eval_problems=2, eval_samples=1, out=str(tmp_path / "run"))
    trainer = Trainer(config)
    records = [trainer.step(step) for step in range(1, 4)]
    for record in records:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
    assert records[0]["completion_tokens"] >= 64
    if algo in ("is-pg", "topr", "grpo", "ppo"):  # the log-ratios really did run far
        assert abs(records[-1]["ell_offpolicy"]) > 20, records[-1]


def test_gpu_smoke_script_refuses_without_cuda_in_one_line():
    """benchmarks/gpu_smoke.py needs a CUDA device; without one (hidden here) it says so and exits 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke"], cwd=Path(__file__).parents[1],
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "no CUDA device" in done.stderr
