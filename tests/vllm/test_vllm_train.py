"""(c) Training with the vLLM engine: the trainer's API and ``python -m rlft.train --engine vllm``.

After every optimizer step the trainer calls ``engine.load_weights(model.state_dict())``; the
next on-policy batch must then carry behaviour log-probs equal to the trainer's recomputation.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlft.engines.vllm import VLLMEngine
from rlft.scoring import score_batch
from rlft.trainer import TrainConfig, Trainer
from tolerances import logprob_tolerance  # tests/tolerances.py


def finite(record: dict) -> bool:
    """Every number of a metrics record is finite (None: nothing to average, e.g. no off-policy group)."""
    return all(math.isfinite(v) for v in record.values() if isinstance(v, (int, float)))


def test_trainer_api_auto_picks_vllm_and_stays_on_policy(tmp_path):
    """Three AGRO steps on the tiny preset with ``engine="auto"`` (here: vLLM): before every step
    the engine's recorded log-probs of a fresh on-policy batch equal the trainer's recomputation
    with the current (updated) weights."""
    config = TrainConfig(engine="auto", model="tiny", steps=3, groups=4, group_size=4, lr=1e-3,
                         eval_every=3, eval_problems=8, eval_samples=2, out=str(tmp_path / "run"))
    trainer = Trainer(config)
    assert isinstance(trainer.engine, VLLMEngine)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for step in range(1, 4):
        batch = trainer.mixer.batch(trainer.problems_for_step(step), config.group_size, step)
        assert not batch.is_offpolicy.any()
        assert (batch.policy_version == step - 1).all()
        with torch.no_grad():
            recomputed = score_batch(trainer.policy, batch, temperature=config.temperature).logprobs
        diff = (recomputed - batch.behavior_logprobs).abs().max().item()
        print(f"step {step}: max |engine - trainer| = {diff:.2e}")
        assert diff <= logprob_tolerance(trainer.model, batch)
        metrics = trainer.step(step)
        assert finite(metrics)
        assert trainer.engine.version == step
    moved = max((trainer.model.state_dict()[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 1e-4  # the weights did change, so the agreement above is not trivial
    trainer.engine.close()


def test_lora_vllm_receives_merged_weights_and_stays_on_policy(tmp_path):
    """--lora with vLLM: after every step the engine serves the merged weights W + alpha/r B A, so a
    fresh on-policy batch's recorded log-probs equal the adapted policy's recomputation."""
    config = TrainConfig(engine="vllm", model="tiny", steps=3, groups=4, group_size=4, lr=1e-2, lora="r=4,alpha=8",
                         reward="varied_reward:VariedReward",  # differs between distinct completions: a gradient
                         eval_every=3, eval_problems=8, eval_samples=2, out=str(tmp_path / "run"))
    trainer = Trainer(config)
    for step in range(1, 4):
        batch = trainer.mixer.batch(trainer.problems_for_step(step), config.group_size, step)
        with torch.no_grad():
            recomputed = score_batch(trainer.policy, batch, temperature=config.temperature).logprobs
            reference = score_batch(trainer.ref_model, batch, temperature=config.temperature).logprobs
        assert (recomputed - batch.behavior_logprobs).abs().max().item() <= logprob_tolerance(trainer.model, batch)
        if step > 1:  # the adapters have moved the policy away from pi_ref, and the engine followed
            assert (recomputed - reference).abs().max().item() > 10 * logprob_tolerance(trainer.model, batch)
        assert finite(trainer.step(step))
    trainer.engine.close()


def test_resume_syncs_the_engine(tmp_path):
    """A resumed run (checkpoint at step 2) samples from the checkpoint's weights, not pi_ref's."""
    config = TrainConfig(engine="vllm", model="tiny", steps=2, groups=4, group_size=4, lr=1e-3,
                         eval_every=100, eval_problems=4, eval_samples=1, save_every=1, out=str(tmp_path / "run"))
    first = Trainer(config)
    first.train()
    first.engine.close()
    resumed = Trainer(dataclasses.replace(config, steps=3))
    resumed._prepare_out_dir()  # what train() does first: loads OUT/checkpoint
    assert resumed.start_step == 2 and resumed.engine.version == 2
    batch = resumed.mixer.batch(resumed.problems_for_step(3), config.group_size, 3)
    with torch.no_grad():
        recomputed = score_batch(resumed.policy, batch, temperature=config.temperature).logprobs
    try:
        assert (recomputed - batch.behavior_logprobs).abs().max() <= logprob_tolerance(resumed.model, batch)
    finally:
        resumed.engine.close()


def run_train(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlft.train", "--engine", "vllm", "--steps", "3", "--eval-every", "3",
           "--save-every", "3", "--out", str(out), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def check_run(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(finite(r) for r in records)
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state == {"step": 3, "engine_version": 3, "processes": 1}
    return records


def test_cli_three_steps_tiny(tmp_path):
    proc, out = run_train(tmp_path, "--preset", "tiny", "--groups", "4", "--group-size", "4",
                          "--eval-problems", "16", "--eval-samples", "2", "--algo", "grpo")
    records = check_run(out)
    assert "test accuracy" in proc.stdout
    # on-policy GRPO, one epoch: pi / mu = 1 up to float error, so no token is clipped
    assert all(r["clip_fraction"] == 0 for r in records[1:])


@pytest.mark.slow
def test_cli_three_steps_smollm2(tmp_path):
    proc, out = run_train(tmp_path, "--preset", "smollm2-135m", "--max-new-tokens", "16", "--groups", "2",
                          "--group-size", "2", "--eval-problems", "2", "--eval-samples", "1", "--lr", "1e-6",
                          "--algo", "grpo")
    records = check_run(out)
    assert all(r["clip_fraction"] == 0 for r in records[1:])
