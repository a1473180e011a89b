"""A run folder and its checkpoint: what is saved, how it is replaced, how a run resumes.

``OUT/config.json`` holds the run's settings; a rerun with other settings is refused. Every
``save_every`` steps ``OUT/checkpoint/`` is replaced atomically (written as ``checkpoint.tmp``, then
two renames; a kill between them leaves ``checkpoint.old``, which the next start restores):

    model.safetensors, config, tokenizer  the policy (+ value_head.safetensors), a normal HF folder
                                         (under --lora a peft folder instead: adapter_config.json,
                                         adapter_model.safetensors)
    trainer.pt                           the optimizer state
    sharded/                             under --fsdp instead of the two above: the policy's and the
                                         optimizer's shards, each process's own (torch.distributed.checkpoint);
                                         the last step's checkpoint also holds the gathered HF folder
    behavior-RANK.pt                     each process's behaviour source (its ref pool; stale:K's
                                         snapshots on the main process only)
    rng-RANK.pt                          each process's global RNG states
    trainer_state.json                   step, engine version, process count (written last)

The trainer's own draws (data order, the on/off-policy mix, sampling, mini-batches) are seeded from
``(seed, purpose, step)`` (``rlft.sources.stable_seed``) and need no saved state. Anything that
draws from a global generator instead (dropout in a model, a plug-in algorithm calling
``random.random()``, ``numpy.random`` or ``torch.rand``) continues after a resume exactly as in an
uninterrupted run because those states are saved and restored: what ``accelerate``'s
``save_state`` / ``load_state`` keep of the RNGs.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlft import fsdp, lora
from rlft.config import TrainConfig
from rlft.errors import UsageError
from rlft.files import atomic_write_text, read_json
from rlft.policy import load_policy, load_value_head, save_policy, save_value_head

if TYPE_CHECKING:
    from rlft.trainer import Trainer

#: What to do about a checkpoint whose trainer_state.json cannot be read.
DAMAGED_CHECKPOINT = "delete OUT/checkpoint to start this run over (or pass another --out)"


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set every global generator to the states of :func:`rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def prepare_run_folder(trainer: Trainer) -> None:
    """Write config.json, or resume: check it matches and load the checkpoint (every process)."""
    config_path = trainer.out / "config.json"
    settings = {"train": dataclasses.asdict(trainer.config),
                "algorithm": dataclasses.asdict(trainer.algorithm.config)}
    if config_path.exists():
        saved = read_json(config_path, "restore it, or pass another --out (or delete that run)")
        mine = json.loads(json.dumps(settings, default=str))
        defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig()), default=str))
        # a setting added to rlft after that run was made had its default value there
        if {**defaults, **saved["train"], "steps": 0} != {**mine["train"], "steps": 0}:
            raise UsageError(f"{trainer.out} holds a run with other settings; use another --out or delete it")
    trainer.accelerator.wait_for_everyone()  # all have read it before it is rewritten
    if trainer.is_main:
        trainer.out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(settings, indent=1, default=str))
        (trainer.out / "error.json").unlink(missing_ok=True)
        if not (trainer.out / "checkpoint").exists() and (trainer.out / "checkpoint.old").exists():
            (trainer.out / "checkpoint.old").rename(trainer.out / "checkpoint")  # killed between two renames
        if not (trainer.out / "checkpoint" / "trainer_state.json").exists():
            (trainer.out / "metrics.jsonl").unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()
    if (trainer.out / "checkpoint" / "trainer_state.json").exists():
        load_checkpoint(trainer)


def save_checkpoint(trainer: Trainer, step: int) -> None:
    """Replace ``OUT/checkpoint`` atomically: policy (+ value head), optimizer, step (main process),
    each process's behaviour source (``behavior-RANK.pt``: its own ref pool; the ``stale:K`` weights
    on the main process only) and its global RNG states (``rng-RANK.pt``). Under ``--fsdp`` the
    policy and the optimizer are written by every process, its own shards (:func:`rlft.fsdp.save_sharded`:
    nothing is gathered), and the last step's checkpoint also holds the weights as a normal HF folder,
    gathered on the main process only."""
    tmp, final, old = trainer.out / "checkpoint.tmp", trainer.out / "checkpoint", trainer.out / "checkpoint.old"
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    value_head = getattr(policy, "value_head", None)
    if trainer.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if trainer.config.fsdp:
        _save_fsdp(trainer, policy, value_head, tmp, last=step == trainer.config.steps)
    elif trainer.is_main:
        if trainer.peft_model is not None:  # a peft folder: the adapters only
            lora.save_adapters(trainer.peft_model, tmp)
            trainer.tokenizer.save_pretrained(tmp)
            if value_head is not None:
                save_value_head(tmp, value_head.state_dict())
        else:
            save_policy(tmp, trainer.model, trainer.tokenizer, value_head)
        torch.save({"optimizer": trainer.optimizer.state_dict()}, tmp / "trainer.pt")
    trainer.accelerator.wait_for_everyone()
    torch.save(trainer.behavior.state_dict(), tmp / f"behavior-{trainer.rank}.pt")
    torch.save(rng_states(), tmp / f"rng-{trainer.rank}.pt")
    trainer.accelerator.wait_for_everyone()
    if trainer.is_main:
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "engine_version": trainer.engine.version, "processes": trainer.processes}))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def _save_fsdp(trainer: Trainer, policy, value_head, tmp: Path, last: bool) -> None:
    """(Every process.) The shards of the policy and the optimizer into ``tmp/sharded``; the model's
    config and tokenizer; on the ``last`` step also the gathered weights as an HF folder (main process)."""
    trainer.accelerator.wait_for_everyone()  # the main process made the folder
    fsdp.save_sharded(policy, trainer.optimizer, tmp / fsdp.SHARDED)
    if last:  # collectives; only the main process receives the tensors
        model_state = fsdp.gathered_on_main(trainer.model)
        value_head_state = fsdp.gathered_on_main(value_head) if value_head is not None else None
    if trainer.is_main:
        if last:
            save_policy(tmp, trainer.model, trainer.tokenizer, model_state=model_state,
                        value_head_state=value_head_state)
        else:
            trainer.model.config.save_pretrained(tmp)
            trainer.tokenizer.save_pretrained(tmp)


def checkpoint_step(out: Path) -> int | None:
    """The step of the checkpoint in ``out/checkpoint``, or None if there is none."""
    state = out / "checkpoint" / "trainer_state.json"
    return read_json(state, DAMAGED_CHECKPOINT)["step"] if state.exists() else None


def load_checkpoint(trainer: Trainer) -> None:
    """Resume from ``OUT/checkpoint``: weights, optimizer, behaviour source, RNG states, step; drop the
    metrics of later steps (they are redone identically)."""
    path = trainer.out / "checkpoint"
    state = read_json(path / "trainer_state.json", DAMAGED_CHECKPOINT)
    if state.get("processes", 1) != trainer.processes:
        raise UsageError(f"{trainer.out} was checkpointed with {state.get('processes', 1)} process(es); resume it "
                         f"with the same number (this run has {trainer.processes}) or use another --out")
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    extra = torch.load(path / "trainer.pt", weights_only=False) if not trainer.config.fsdp else {}
    if trainer.peft_model is not None:  # the adapters (the frozen weights are the preset's)
        lora.load_adapters(trainer.peft_model, path)
        value_head = load_value_head(path)
        if value_head is not None and hasattr(policy, "value_head"):
            policy.value_head.load_state_dict(value_head.state_dict())
        trainer.optimizer.load_state_dict(extra["optimizer"])
    elif trainer.config.fsdp:  # every process reads its own shards back
        if not (path / fsdp.SHARDED).is_dir():
            raise UsageError(f"{path} holds no sharded state ({fsdp.SHARDED}/): it was made by rlft before 2026-12-08; "
                             f"{DAMAGED_CHECKPOINT}")
        fsdp.load_sharded(policy, trainer.optimizer, path / fsdp.SHARDED)
    else:
        model, _, value_head = load_policy(path, dtype=trainer.precision.master)
        trainer.model.load_state_dict(model.state_dict())
        if value_head is not None and hasattr(policy, "value_head"):
            policy.value_head.load_state_dict(value_head.state_dict())
        trainer.optimizer.load_state_dict(extra["optimizer"])
    trainer.behavior.load_state_dict(torch.load(path / f"behavior-{trainer.rank}.pt", weights_only=False))
    if (path / f"rng-{trainer.rank}.pt").exists():  # checkpoints of rlft before 2026-12 have none
        restore_rng_states(torch.load(path / f"rng-{trainer.rank}.pt", weights_only=False))
    trainer.engine.load_weights(trainer.full_weights())  # an engine with its own copy (vllm) takes the checkpoint
    trainer.engine.version = state["engine_version"]
    trainer.start_step = state["step"]
    # drop metrics of steps after the checkpoint: they are redone identically
    if trainer.is_main:
        lines = (trainer.out / "metrics.jsonl").read_text().splitlines() if (trainer.out / "metrics.jsonl").exists() else []
        kept = [line for line in lines if _complete_record(line) and json.loads(line)["step"] <= trainer.start_step]
        atomic_write_text(trainer.out / "metrics.jsonl", "".join(line + "\n" for line in kept))


def _complete_record(line: str) -> bool:
    """False for a line cut short by a kill while it was being appended."""
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False
