"""--lora: peft adapters on frozen weights; pi_ref is the same weights without them; the engine gets
merged weights; the checkpoint is a peft folder; resume is exact; smollm2-135m trains too."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from rlft.config import TrainConfig
from rlft.errors import UsageError
from rlft.lora import LoraSettings, parse_lora
from rlft.models import load_model
from rlft.scoring import score_batch
from rlft.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "rollout_seconds", "step_seconds"}


def lora_config(tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(algo="agro", offpolicy=0.5, steps=2, groups=4, group_size=4, eval_every=2, eval_problems=8,
                    lr=1e-2, lora="r=4,alpha=8", out=str(tmp_path / "run"))
    return TrainConfig(**{**settings, **overrides})


def test_parse_lora():
    assert parse_lora("r=16,alpha=32,targets=q_proj,v_proj") == LoraSettings(16, 32.0, ("q_proj", "v_proj"), 0.0)
    assert parse_lora("r=8") == LoraSettings(8, 16.0, ("all-linear",), 0.0)  # alpha defaults to 2 r
    for bad, says in [("r=0", "r >= 1"), ("rank=4", "unknown key"), ("r=four", "integer"), ("q_proj", "KEY=VALUE"),
                      ("r=4,dropout=1", "dropout")]:
        with pytest.raises(UsageError, match=says):
            parse_lora(bad)


def test_only_adapters_train_and_pi_ref_is_the_frozen_weights(tmp_path):
    trainer = Trainer(lora_config(tmp_path))
    preset = load_model("tiny")[0].state_dict()
    trainer.train()
    model, peft_model = trainer.model, trainer.peft_model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in trained}  # AdamW holds the adapters only
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if ".lora_B." in n)  # they moved (B starts at 0)
    # every frozen weight is still the preset's, and pi_ref's tensor IS that weight (no second copy)
    ref = dict(trainer.ref_model.named_parameters())
    for name, tensor in model.state_dict().items():
        if ".lora_" not in name:
            plain = name.replace(".base_layer.", ".")
            assert torch.equal(tensor, preset[plain]), name
            if plain in ref:
                assert ref[plain].data_ptr() == tensor.data_ptr(), name
    # pi_ref's log-probs are the policy's with its adapters disabled, and differ from the policy's
    batch = trainer.rollout(3)
    with torch.no_grad():
        ref_logprobs = score_batch(trainer.ref_model, batch).logprobs
        policy_logprobs = score_batch(model, batch).logprobs
        with peft_model.disable_adapter():
            disabled = score_batch(model, batch).logprobs
    assert torch.allclose(ref_logprobs, disabled, atol=1e-6, rtol=0)
    assert (policy_logprobs - ref_logprobs).abs().max() > 1e-3


def test_an_engine_with_its_own_weights_receives_merged_weights(tmp_path):
    """An HF engine with its own copy (as vLLM holds one) gets W + alpha/r B A after every step: equal
    to peft's own merge_and_unload of the trained adapters, and it samples what the trainer scores."""
    trainer = Trainer(lora_config(tmp_path, engine_args={"own_copy": True}, recompute_behavior="on"))
    records = trainer.train()
    merged = copy.deepcopy(trainer.peft_model).merge_and_unload().state_dict()
    engine = trainer.engine.model.state_dict()
    assert engine.keys() == merged.keys()
    assert max((engine[k] - merged[k]).abs().max().item() for k in merged) < 1e-6
    assert any(not torch.equal(engine[k], trainer.ref_model.state_dict()[k]) for k in merged)
    kls = [r["sampler_kl"] for r in records if r["step"] > 0]
    assert len(kls) == 2 and all(abs(kl) < 1e-6 for kl in kls)  # the engine's log-probs are the trainer's


def train_command(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "rlft.train", "--algo", "ppo", "--offpolicy", "0.5", "--lora", "r=4,alpha=8",
            "--steps", str(steps), "--groups", "4", "--group-size", "4", "--eval-every", "2", "--eval-problems", "8",
            "--save-every", "1", "--out", str(out)]


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_checkpoint_is_a_peft_folder_and_resume_is_exact(tmp_path):
    for out, steps in [(tmp_path / "straight", 3), (tmp_path / "resumed", 2), (tmp_path / "resumed", 3)]:
        done = subprocess.run(train_command(out, steps), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert records(tmp_path / "resumed") == records(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "checkpoint"
    assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"} <= \
        {p.name for p in checkpoint.iterdir()}
    assert not (checkpoint / "model.safetensors").exists()  # the frozen weights are the preset's
    # a user loads it with peft on the preset; it is the trained policy, not pi_ref
    base, tokenizer = load_model("tiny")
    policy = PeftModel.from_pretrained(copy.deepcopy(base), str(checkpoint))
    ids = tokenizer(["12+34="], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (policy(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-4


def test_smollm2_trains_two_steps_with_adapters(tmp_path, smollm2):
    trainer = Trainer(lora_config(tmp_path, model="smollm2-135m", groups=2, group_size=2, max_new_tokens=16,
                                  eval_problems=2, lora="r=8,alpha=16,targets=q_proj,v_proj", offpolicy=0.0,
                                  reward="varied_reward:VariedReward"))  # (0/1 grading: all 0 in 4 samples)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "layers.0." in n}
    records = trainer.train()
    assert [r["step"] for r in records] == [0, 1, 2]
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all(("q_proj.lora_" in n or "v_proj.lora_" in n) for n in trained)
    after = dict(trainer.model.named_parameters())
    moved = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}
    assert moved and all(".lora_" in name for name in moved)  # only adapters move (B at once, A once B is not 0)
    assert any(".lora_B." in name for name in moved)
