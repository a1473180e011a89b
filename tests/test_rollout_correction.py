"""The sampler-trainer mismatch: recomputed behaviour log-probs, the correction weights of every
mode, and their effect when a bfloat16 sampler feeds a float32 trainer; PPO's pi_old and mini-batches."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.rollout_correction import correction_weights, sampler_kl
from rlft.trainer import TrainConfig, Trainer
from tolerances import difference  # tests/tolerances.py

#: float32 exp / log of a sum of 3 log-ratios (tests/tolerances.py)
REL = difference([3, 2], 1.0)

# two rows of 3 tokens (the second has 2 real ones); pi_old / mu per token:
RATIOS = torch.tensor([[0.5, 2.0, 4.0], [1.5, 0.1, 7.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
TRAINER, SAMPLER = RATIOS.log(), torch.zeros(2, 3)


def weights(mode, low=0.0, high=3.0):
    return correction_weights(TRAINER, SAMPLER, MASK, mode, low, high)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=REL, atol=0)


def test_token_modes():
    tokens, sequences = weights("token_truncate", low=0.2)
    close(tokens, [[0.5, 2.0, 3.0], [1.5, 0.2, 0.0]])
    close(sequences, [0.5 * 2 * 3, 1.5 * 0.2])
    tokens, sequences = weights("token_mask", low=0.2)
    close(tokens, [[0.5, 2.0, 0.0], [1.5, 0.0, 0.0]])
    close(sequences, [0.0, 0.0])  # a masked token zeroes its sequence's product


def test_sequence_modes():
    """Row ratios 0.5 * 2 * 4 = 4 and 1.5 * 0.1 = 0.15 (padding ignored)."""
    tokens, sequences = weights("sequence_truncate", low=0.2)
    close(sequences, [3.0, 0.2])
    close(tokens, [[3.0, 3.0, 3.0], [0.2, 0.2, 0.0]])
    tokens, sequences = weights("sequence_mask", low=0.1)
    close(sequences, [0.0, 0.15])
    close(tokens, [[0.0, 0.0, 0.0], [0.15, 0.15, 0.0]])


def test_no_correction_and_the_kl():
    tokens, sequences = weights("none")
    assert torch.equal(tokens, MASK.float()) and torch.equal(sequences, torch.ones(2))
    kl = sampler_kl(TRAINER, SAMPLER, MASK)
    close(kl, (RATIOS - 1 - RATIOS.log()) * MASK)
    assert (kl >= 0).all()


def mismatch_config(tmp_path, **overrides) -> TrainConfig:
    """GRPO on the tiny preset with a bfloat16 copy of the model as the sampler."""
    settings = dict(algo="grpo", groups=4, group_size=4, offpolicy=0.5, lr=1e-3, eval_problems=2, eval_samples=1,
                    engine_args={"dtype": "bfloat16"}, out=str(tmp_path / "run"))
    return TrainConfig(**{**settings, **overrides})


def test_a_bfloat16_sampler_is_recomputed_and_corrected(tmp_path):
    trainer = Trainer(mismatch_config(tmp_path, rollout_correction="token_mask", rollout_correction_max=1.002,
                                      rollout_correction_min=1 / 1.002))
    assert trainer.recompute_behavior  # auto: the engine's dtype is not the trainer's
    batch = trainer.rollout(1)
    on = ~batch.is_offpolicy
    recorded = batch.behavior_logprobs.clone()
    metrics = trainer.update(batch, 1)
    mask = batch.completion_mask
    # on-policy rows now carry the trainer's log-probs; the bfloat16 sampler's are kept aside
    assert torch.equal(batch.sampler_logprobs, recorded)
    assert not torch.equal(batch.behavior_logprobs[on], recorded[on])
    assert torch.equal(batch.behavior_logprobs[~on], recorded[~on])
    gap = (batch.behavior_logprobs - recorded)[on][mask[on]].abs()
    assert gap.max() > 1e-3  # a real mismatch: bfloat16 keeps 8 bits
    # the tight band masks the tokens whose ratio left it, and only those; off-policy rows weigh 1
    w = batch.rollout_weights
    outside = (gap > math.log(1.002) + REL)
    assert (w[on][mask[on]][outside] == 0).all() and (w[~on][mask[~on]] == 1).all()
    assert 0 < metrics["rollout_masked"] < 1 and metrics["sampler_kl"] > 0
    on_weights = w[on][mask[on]]
    assert metrics["rollout_masked"] == int((on_weights == 0).sum()) / on_weights.numel()


def test_the_correction_changes_the_step(tmp_path):
    """The same batch, without and with the correction: masking every on-policy token removes the
    on-policy part of the gradient (the gradient norm falls), as it should."""
    norms = {}
    for mode in ("none", "token_mask"):
        trainer = Trainer(mismatch_config(tmp_path / mode, rollout_correction=mode, rollout_correction_max=1.0 + 1e-9,
                                          rollout_correction_min=1.0 - 1e-9, offpolicy=0.0))
        metrics = trainer.update(trainer.rollout(1), 1)
        norms[mode] = metrics["grad_norm"]
        if mode == "token_mask":
            assert metrics["rollout_masked"] > 0.5
    assert norms["token_mask"] < 0.6 * norms["none"]


def test_hf_engine_in_the_trainer_dtype_needs_no_recomputation(tmp_path):
    assert not Trainer(mismatch_config(tmp_path, engine_args={})).recompute_behavior
    assert Trainer(mismatch_config(tmp_path / "on", engine_args={}, recompute_behavior="on")).recompute_behavior


def test_ppo_recomputes_pi_old_and_steps_per_mini_batch(tmp_path):
    """PPO: pi_old is the trainer's own (even with the sampler in the trainer's dtype), and each
    of epochs x ceil(groups / mini_batch_groups) shuffled mini-batches takes an optimizer step."""
    config = TrainConfig(algo="ppo", algo_args={"epochs": 2, "mini_batch_groups": 2}, groups=4, group_size=4,
                         eval_problems=2, eval_samples=1, out=str(tmp_path / "ppo"))
    trainer = Trainer(config)
    assert trainer.recompute_behavior
    batch = trainer.rollout(1)
    minis = trainer.mini_batches(batch, 1, 0)
    assert len(minis) == 2 and sorted(torch.cat([rows for rows, _ in minis]).tolist()) == list(range(len(batch)))
    assert [r.tolist() for r, _ in minis] == [r.tolist() for r, _ in trainer.mini_batches(batch, 1, 0)]  # seeded
    assert [r.tolist() for r, _ in minis] != [r.tolist() for r, _ in trainer.mini_batches(batch, 1, 1)]
    metrics = trainer.update(batch, 1)
    assert metrics["optimizer_steps"] == 4 and batch.sampler_logprobs is not None
    assert metrics["rollout_weight"] == pytest.approx(1.0, abs=1e-3)  # same numerics: ratios ~1
