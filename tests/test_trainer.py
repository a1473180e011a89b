"""The LM trainer end to end on the tiny preset: every algorithm, on- and off-policy, determinism,
resume, behaviour sources, NaN handling and the CLI's bad-input errors."""

from __future__ import annotations

import json
import random
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import algorithms
from rlft.errors import NonFiniteLoss, UsageError
from rlft.scoring import score_batch
from rlft.trainer import TrainConfig, Trainer
from tolerances import logprob_tolerance  # tests/tolerances.py

ROOT = Path(__file__).parents[1]
TIMING_KEYS = {"tokens_per_s", "rollout_seconds", "step_seconds"}

SMALL = dict(model="tiny", groups=4, group_size=4, eval_problems=8, eval_samples=2, eval_every=3, save_every=100)


def small_config(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**SMALL, "out": str(tmp_path / "run"), **overrides})


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("offpolicy", [0.0, 1.0])
@pytest.mark.parametrize("algo", algorithms.available())
def test_every_algorithm_trains(tmp_path, algo, offpolicy):
    trainer = Trainer(small_config(tmp_path, algo=algo, offpolicy=offpolicy, steps=3))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    records = trainer.train()
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no weight changed"
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for record in steps:
        for key in ("loss", "grad_norm", "reward", "entropy"):
            assert math.isfinite(record[key]), (key, record)
        assert record["offpolicy_share"] == offpolicy
        assert (record["kl_ref"] is None) == (offpolicy == 1.0)
        assert (record["ell_offpolicy"] is None) == (offpolicy == 0.0)
    assert math.isfinite(records[-1]["eval_accuracy"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]


def test_deterministic_given_seed(tmp_path):
    config = dict(algo="agro", offpolicy=0.5, steps=3, seed=3)
    first = Trainer(small_config(tmp_path / "a", **config)).train()
    second = Trainer(small_config(tmp_path / "b", **config)).train()
    assert without_timing(first) == without_timing(second)
    third = Trainer(small_config(tmp_path / "c", **{**config, "seed": 4})).train()
    assert without_timing(first) != without_timing(third)


def test_resume_continues_exactly(tmp_path):
    config = dict(algo="grpo", offpolicy=0.5, save_every=2, eval_every=2)
    straight = Trainer(small_config(tmp_path / "straight", steps=4, **config)).train()
    Trainer(small_config(tmp_path / "resumed", steps=2, **config)).train()
    resumed_trainer = Trainer(small_config(tmp_path / "resumed", steps=4, **config))
    resumed_trainer.train()
    assert resumed_trainer.start_step == 2
    lines = (tmp_path / "resumed" / "run" / "metrics.jsonl").read_text().splitlines()
    resumed = [json.loads(line) for line in lines]
    assert without_timing(resumed) == without_timing(json.loads(json.dumps(straight)))


def test_resume_restores_every_global_generator(tmp_path, monkeypatch):
    """A plug-in drawing from Python's, NumPy's and torch's global generators draws the same numbers
    after a resume as in the uninterrupted run (rlft/checkpoint.py)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = dict(algo="noisy_algo:NoisyPG", offpolicy=1.0, save_every=2, eval_every=2)
    straight = Trainer(small_config(tmp_path / "straight", steps=4, **config)).train()
    Trainer(small_config(tmp_path / "resumed", steps=2, **config)).train()
    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # what a new process would not share
    resumed_trainer = Trainer(small_config(tmp_path / "resumed", steps=4, **config))
    resumed_trainer.train()
    assert resumed_trainer.start_step == 2
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "run" / "metrics.jsonl").read_text().splitlines()]
    draws = [[r[k] for k in ("python_draw", "numpy_draw", "torch_draw")] for r in resumed if "python_draw" in r]
    assert len(draws) == 4 and len({tuple(d) for d in draws}) == 4
    assert without_timing(resumed) == without_timing(json.loads(json.dumps(straight)))


def test_a_plug_in_reward_replaces_math_grading(tmp_path, monkeypatch):
    """--reward package.module:Class: the trainer and its evaluation grade with it (rlft.rewards.REWARDS)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    records = Trainer(small_config(tmp_path, steps=1, eval_every=1, reward="half_reward:HalfReward")).train()
    assert records[0]["eval_accuracy"] == 0.5 and records[-1]["eval_accuracy"] == 0.5
    assert records[-1]["reward"] == 0.5
    with pytest.raises(UsageError, match="unknown reward 'nope'; known: math"):
        Trainer(small_config(tmp_path / "other", reward="nope"))


def test_ref_pool_reuses_the_same_samples(tmp_path):
    trainer = Trainer(small_config(tmp_path, offpolicy=1.0, steps=1))
    problems = trainer.problems_for_step(1)
    first = trainer.mixer.batch(problems, 4, step=1)
    trainer.step(1)  # the policy moves; the pool does not
    again = trainer.mixer.batch(problems, 4, step=2)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.behavior_logprobs, again.behavior_logprobs)
    assert set(first.sources) == {"ref"} and bool(first.is_offpolicy.all())
    assert (first.policy_version == -1).all()


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_reference_logprobs_of_the_ref_pool_are_its_behaviour_logprobs(tmp_path, top_p):
    """The pi_ref pool's rows carry pi_ref's log-probs (mu = pi_ref): the trainer takes them instead
    of scoring pi_ref again, and they agree with the scored ones up to summation order. With top_p < 1
    the engine draws from a truncated distribution, so every row is scored."""
    trainer = Trainer(small_config(tmp_path, offpolicy=0.5, top_p=top_p, steps=1))
    assert trainer.behavior.logprobs_are_reference == (top_p == 1.0)
    batch = trainer.rollout(1)
    off = batch.is_offpolicy
    assert bool(off.any()) and not bool(off.all())
    used = trainer._reference_logprobs(batch)
    scored = score_batch(trainer.ref_model, batch, temperature=trainer.config.temperature).logprobs
    if top_p == 1.0:
        assert torch.equal(used[off], batch.behavior_logprobs[off])
        assert (used[off] - scored[off]).abs().max() <= logprob_tolerance(trainer.ref_model, batch)
        on = (~off).nonzero().squeeze(1)
        alone = score_batch(trainer.ref_model, batch.select(on), temperature=trainer.config.temperature).logprobs
        assert torch.equal(used[on], alone)
    else:
        assert torch.equal(used, scored)


def test_stale_source_lags_the_policy(tmp_path):
    trainer = Trainer(small_config(tmp_path, behavior="stale:2", offpolicy=0.5, steps=1))
    for step in range(1, 5):
        trainer.step(step)
    batch = trainer.mixer.batch(trainer.problems_for_step(5), 4, step=5)
    stale = batch.policy_version[batch.is_offpolicy]
    fresh = batch.policy_version[~batch.is_offpolicy]
    assert (fresh == 4).all() and (stale == 2).all()
    assert set(s for s, off in zip(batch.sources, batch.is_offpolicy.tolist()) if off) == {"stale:2"}


def test_dataset_source(tmp_path):
    data = tmp_path / "offline.jsonl"
    rows = [{"prompt": "What is 12 + 30?", "completion": " 42", "reward": 1.0},
            {"prompt": "What is 12 + 30?", "completion": " 41", "reward": 0.0},
            {"prompt": "What is 9 * 9?", "completion": " 81", "reward": 1.0}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = Trainer(small_config(tmp_path, behavior=f"dataset:{data}", offpolicy=1.0, steps=2))
    records = trainer.train()
    batch = trainer.mixer.batch(trainer.problems_for_step(1), 4, step=1)
    assert set(batch.sources) == {"dataset"}
    assert set(batch.rewards.tolist()) <= {0.0, 1.0}
    assert (batch.behavior_logprobs[batch.completion_mask] < 0).all()
    assert math.isfinite(records[-1]["loss"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + '{"prompt": "x", "completion": "y"}\n')
    with pytest.raises(UsageError, match=r"bad.jsonl:2: malformed row"):
        Trainer(small_config(tmp_path / "bad", behavior=f"dataset:{bad}", offpolicy=1.0))


def test_nan_loss_stops_with_recorded_error(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    trainer = Trainer(small_config(tmp_path, algo="nan_algo:ExplodingPG", steps=3))
    with pytest.raises(NonFiniteLoss, match="loss is nan"):
        trainer.train()
    error = json.loads((tmp_path / "run" / "error.json").read_text())
    assert "NonFiniteLoss" in error["error"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]  # the finished step is kept, the broken one is not logged


@pytest.mark.parametrize(
    "args, message",
    [
        (["--offpolicy", "1.5"], "outside [0, 1]"),
        (["--algo", "nope"], "unknown algorithm 'nope'"),
        (["--group-size", "1"], "agro needs at least 2 samples per prompt"),
        (["--behavior", "stale:x"], "stale:K must be an integer"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--preset", "/no/such/model"], "no such folder"),
        (["--hp", "beta=-1"], "beta must be >= 0"),
        (["--engine", "vllm"], "pip install vllm"),
        (["--engine-arg", "tensor_parallel_size"], "--engine-arg expects KEY=VALUE"),
        (["--engine-arg", "foo=1"], "the hf engine does not take these arguments"),
    ],
)
def test_cli_bad_input(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "rlft.train", *args, "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_config_file_errors_are_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"train": {"steps": 2, "bogus": 1}}))
    cases = [(["--config", str(tmp_path / "none.json")], "cannot read a YAML or JSON mapping"),
             (["--config", str(config)], "unknown settings bogus"),
             (["--config", str(config), "--steps", "3"], "unknown settings bogus")]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "rlft.train", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_metrics_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(small_config(tmp_path, steps=2, report_to="tensorboard")).train()
    event_files = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert event_files, "no tensorboard event file written"
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "reward" in tags and "eval_accuracy" in tags
    assert [e.step for e in events.Scalars("reward")] == [1, 2]


def test_resume_survives_a_kill_mid_write(tmp_path):
    """A kill can leave a half-written metrics line, or the checkpoint between its two renames."""
    config = dict(steps=2, save_every=2, eval_every=2)
    Trainer(small_config(tmp_path, **config)).train()
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    (run / "checkpoint").rename(run / "checkpoint.old")
    trainer = Trainer(small_config(tmp_path, **{**config, "steps": 3}))
    trainer.train()
    assert trainer.start_step == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
