"""The training loop: mixer -> Batch -> reference log-probs -> algorithm.loss -> optimizer -> engine.

One optimizer step (``Trainer.step``)::

    problems (data registry) -> Mixer: on-policy groups from the engine at the current weights,
    a share ``offpolicy`` of groups from the behaviour source -> rewards -> Batch
    -> ref log-probs (frozen pi_ref) -> [algorithm.prepare] -> for each epoch, for each
    group-aligned micro-batch: policy forward, algorithm.loss with GLOBAL normalisers, backward
    -> clip, optimizer step -> engine.load_weights -> behaviour source sees the new weights

Under ``accelerate launch --multi_gpu --num_processes N`` or ``torchrun`` (DDP; gloo on a CPU)
each process runs this loop on its ``groups / N`` groups; the normalisers are global and each loss
is scaled by N, so the update equals the one-process update (see :mod:`rlft.distributed`). With
``--fsdp`` the policy is sharded instead of replicated (:mod:`rlft.fsdp`); with ``--lora`` only
peft adapters train and pi_ref is the frozen weights without them (:mod:`rlft.lora`). Only the
main process writes files; each process checkpoints its own behaviour source.

The trainer knows no algorithm, model preset or task by name: it asks ``algorithm.needs`` what to
compute, the preset for its completion budget (:mod:`rlft.models`) and the reward registry for the
reward (``--reward``, math grading by default: :mod:`rlft.rewards`). Log-probs are scored at the
sampling temperature, so they agree with the behaviour log-probs the engine recorded.

This module is the loop; its parts live beside it: the settings (:mod:`rlft.config`), a step's
metrics (:mod:`rlft.step_metrics`), the evaluations (:class:`rlft.evaluation.Evaluator`) and the run
folder with its checkpoint (:mod:`rlft.checkpoint`). Every step appends one JSON line to
``OUT/metrics.jsonl``; ``OUT/checkpoint/`` is replaced atomically every ``save_every`` steps and a
rerun with the same settings resumes from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed
from tqdm import tqdm

import algorithms
from algorithms.base import Normalizers
from rlft.batch import Batch
from rlft import checkpoint, fsdp, lora, rollout_correction
from rlft.config import TrainConfig
from rlft.cpu import warn_if_bf16_is_slow
from rlft.data import Problem, format_prompt, load
from rlft.distributed import all_true
from rlft.engines import check_engine_args, resolve_engine
from rlft.engines.base import SamplingParams
from rlft.errors import NonFiniteLoss, UsageError
from rlft.evaluation import Evaluator
from rlft.files import atomic_write_text, ensure_writable_dir, read_json
from rlft.models import load_model
from rlft.policy import PolicyWithValue, checkpointed_layers_on, enable_activation_checkpointing
from rlft.precision import Precision, compute_in, frozen_copy, fsdp_policy
from rlft.rewards import REWARDS
from rlft.scoring import Scoring, score_batch
from rlft.sources import DatasetSource, EngineSource, Mixer, RefPoolSource, StaleSource, stable_seed
from rlft.step_metrics import StepMetrics

#: Below this many parameters one CPU thread is faster: kernel launch and thread sync dominate,
#: and two threads contending with any other process slowed a tiny-preset step 10x here.
SMALL_MODEL_PARAMS = 20_000_000


class Trainer:
    """RL fine-tuning of one model with one algorithm; see the module docstring for a step."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = cfg = config
        self.algorithm = algorithms.make(cfg.algo, **cfg.algo_args)
        self.algorithm.check_group_size(cfg.group_size)
        self.out = Path(cfg.out)
        behavior_kind, behavior_arg = parse_behavior(cfg.behavior)
        check_engine_args(cfg.engine, cfg.engine_args)  # fails early, in one line, also if vLLM is missing
        reward_cls = REWARDS.get(cfg.reward)  # an unknown reward fails here, before the model loads
        ensure_writable_dir(self.out)  # before the model is loaded
        if (self.out / "config.json").exists():
            read_json(self.out / "config.json", "restore it, or pass another --out (or delete that run)")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       log_with=None if cfg.report_to == "none" else cfg.report_to,
                                       project_dir=str(self.out))
        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise UsageError("accelerate's FSDP config is not used by rlft: pass --fsdp (torch's FSDP2, see "
                             "rlft/fsdp.py) under accelerate launch --multi_gpu or torchrun")
        self.rank, self.processes = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if cfg.groups % self.processes or cfg.eval_problems < self.processes:
            raise UsageError(f"groups ({cfg.groups}) must be a multiple of the number of processes "
                             f"({self.processes}) and eval_problems ({cfg.eval_problems}) at least that: "
                             "each process takes whole groups and its share of the test problems")
        if cfg.fsdp and cfg.lora:
            raise UsageError("--lora with --fsdp is not supported: pick one (LoRA's trained state is small "
                             "enough for DDP: accelerate launch --multi_gpu)")
        if cfg.fsdp and self.processes == 1:
            raise UsageError("--fsdp shards the policy over several processes, and this is one: launch with "
                             "torchrun --nproc-per-node N -m rlft.train ... (or accelerate launch --multi_gpu "
                             "--num_processes N), or drop --fsdp")
        self.train_set = load(cfg.dataset, "train", seed=cfg.seed)
        # the same test problems for every seed, so seeds differ only in training
        self.test_set = load(cfg.dataset, "test", seed=0, limit=cfg.eval_problems)
        set_seed(cfg.seed)  # Python's, NumPy's and torch's global generators
        self.precision = Precision(cfg.dtype)
        model, self.tokenizer = load_model(cfg.model, dtype=self.precision.master)
        if cfg.threads or sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
            torch.set_num_threads(cfg.threads or 1)
        warn_if_bf16_is_slow(cfg.dtype, self.accelerator.device)
        model.to(self.accelerator.device)
        self.ref_model = self._set_precision(model)  # pi_ref: a frozen copy that computes as the policy does
        if cfg.gradient_checkpointing:  # transformers' own, each decoder layer recomputed in the backward pass
            enable_activation_checkpointing(model)
        self.model = model  # the LM inside the policy (sharded in place under --fsdp, adapted under --lora)
        self.policy = PolicyWithValue(model) if self.algorithm.needs.value_head else model
        #: how completions are scored without gradients (pi_ref, pi_old, evaluation, dataset source)
        self.scoring = Scoring(temperature=cfg.temperature, chunk_tokens=cfg.score_chunk_tokens,
                               rows=cfg.micro_groups * cfg.group_size)

        self.sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_new_tokens=cfg.completion_budget)
        # the engines take the full weights now, before --fsdp shards them (an HF engine then samples from
        # its own full copy: no collective inside generation) or --lora adapts them (the HF engine shares
        # the model, adapters included; the others receive merged weights)
        self.engine_cls = resolve_engine(cfg.engine, model)  # ``auto`` decided here, for this model
        self.engine = self._engine(model, sharded=cfg.fsdp)
        self.grader = reward_cls()
        policy_source = EngineSource(self.engine, self.prompt, self.grader, self.sampling, "policy", False,
                                     lambda: self.engine.version)
        self.behavior = self._behavior_source(behavior_kind, behavior_arg)
        #: peft's model under --lora (its adapters are injected into ``model`` in place), else None
        self.peft_model = lora.add_adapters(model, lora.parse_lora(cfg.lora)) if cfg.lora else None
        if cfg.fsdp:  # before the optimizer, which must hold the shards
            fsdp.shard_policy(self.policy, model, fsdp_policy(self.precision))
        #: whether on-policy behaviour log-probs are replaced by the trainer's pi_old (see update)
        self.recompute_behavior = (cfg.recompute_behavior == "on" or self.algorithm.needs.recompute_behavior or
                                   (cfg.recompute_behavior == "auto" and not self.engine.computes_like(model)))
        self.optimizer = torch.optim.AdamW(lora.trainable_parameters(self.policy), lr=cfg.lr, weight_decay=0.0)
        if not cfg.fsdp:  # DDP (or nothing, with one process) through accelerate
            self.policy, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.mixer = Mixer(policy_source, self.behavior, cfg.offpolicy, cfg.seed, self.rank, self.processes)
        self.evaluator = Evaluator(cfg, self.engine, self.ref_model, self.tokenizer, self.grader, self.test_set,
                                   self.prompt, self.sampling, self.rank, self.processes, self.accelerator.device,
                                   self.scoring)
        self.start_step = 0

    # ---------------------------------------------------------------------------- set-up
    def prompt(self, question: str) -> str:
        return format_prompt(question, self.tokenizer)

    def _set_precision(self, model: torch.nn.Module) -> torch.nn.Module:
        """Put the policy ``model`` in the run's precision (:mod:`rlft.precision`); returns pi_ref, a
        frozen copy of it that computes as it does (under --lora the frozen weights without the adapters)."""
        cfg, precision = self.config, self.precision
        if precision.mixed and cfg.lora:  # frozen weights need no float32 master; peft keeps adapters in float32
            model.to(precision.compute)
        if precision.mixed and not cfg.fsdp:  # autocast, as accelerate's mixed_precision="bf16"
            compute_in(model, precision.compute)
        if cfg.lora:
            return lora.reference_view(model)
        # FSDP2 computes in bfloat16 from float32 shards: pi_ref beside it is a bfloat16 copy
        return frozen_copy(model, precision.compute if cfg.fsdp and precision.mixed else None)

    def _engine(self, model: torch.nn.Module, *, sharded: bool = False, own_weights: bool = False):
        """An engine of the run's class (``--engine``) on ``model``, sampling as the trainer computes
        (:meth:`rlft.engines.base.RolloutEngine.options`), with the user's ``--engine-arg``."""
        options = self.engine_cls.options(model, compute_dtype=self.precision.compute, sharded=sharded,
                                          own_weights=own_weights)
        return self.engine_cls(model, self.tokenizer, **{**options, **self.config.engine_args})

    def _behavior_source(self, kind: str, arg: str):
        """The ``--behavior`` source; the ``ref`` pool and ``stale:K`` sample with the run's engine class."""
        if kind == "ref":
            # a run without off-policy groups starts no engine on pi_ref; otherwise every process builds it
            # now, together (a vLLM engine's start-up is a collective under several processes)
            engine = self._engine(self.ref_model) if self.config.offpolicy > 0 else lambda: self._engine(self.ref_model)
            return RefPoolSource(engine, self.prompt, self.grader, self.sampling, self.config.seed)
        if kind == "stale":
            return StaleSource(self._engine(self.model, own_weights=True), int(arg), self.prompt, self.grader,
                               self.sampling, self.model.state_dict(), self.rank, self.accelerator.device)
        return DatasetSource(arg, self.tokenizer, self.ref_model, self.prompt, self.scoring)

    def problems_for_step(self, step: int) -> list[Problem]:
        """The ``groups`` training problems of step ``step`` (1-based): seeded epochs over the train set."""
        G, N = self.config.groups, len(self.train_set)
        out = []
        for i in range((step - 1) * G, step * G):
            epoch, index = divmod(i, N)
            order = torch.randperm(N, generator=torch.Generator().manual_seed(stable_seed(self.config.seed, "epoch", epoch)))
            out.append(self.train_set[int(order[index])])
        return out

    # ------------------------------------------------------------------------------ a step
    def step(self, step: int) -> dict[str, float]:
        """One optimizer step: :meth:`rollout`, then :meth:`update`; metrics of the whole batch."""
        start = time.perf_counter()
        batch = self.rollout(step)
        rollout_seconds = time.perf_counter() - start
        metrics = self.update(batch, step)
        seconds = time.perf_counter() - start
        tokens = metrics["completion_tokens"] * len(batch) * self.processes
        return {**metrics, "tokens_per_s": tokens / seconds, "rollout_seconds": rollout_seconds,
                "step_seconds": seconds}

    def rollout(self, step: int) -> Batch:
        """This process's share of the groups of step ``step``: completions, rewards, behaviour log-probs."""
        return self.mixer.batch(self.problems_for_step(step), self.config.group_size, step).to(self.accelerator.device)

    def update(self, batch: Batch, step: int) -> dict[str, float]:
        """Learn from ``batch`` (this process's groups), then let the engine and the behaviour source
        follow the new weights; returns the batch's metrics, over all processes.

        Reference log-probs; pi_old, the policy's own log-probs before the update, where the
        algorithm prepares (PPO's values and advantages) or the behaviour of on-policy rows is
        recomputed (:func:`rlft.rollout_correction.recompute_on_policy`); then ``epochs`` passes over
        the batch's mini-batches (:meth:`mini_batches`), one optimizer step each, each mini-batch in
        group-aligned micro-batches. Every loss is normalised by the WHOLE mini-batch's counts (all
        micro-batches and processes) and multiplied by the number of processes because DDP
        averages gradients over them: the step is the same however the batch is split.
        """
        correction = self._score_before_update(batch)
        metrics = StepMetrics(batch)
        for epoch in range(self.algorithm.epochs):
            minis = self.mini_batches(batch, step, epoch)
            for rows, mini in minis:
                self._accumulate_gradients(mini, rows, step, epoch, metrics if epoch == 0 else None, len(minis))
                metrics.grad_norms.append(self._optimizer_step(step))
        state = self.full_weights()
        self.engine.load_weights(state)
        self.behavior.after_update(step, state)
        return metrics.result(correction, self.accelerator)

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The LM's ``state_dict()`` with full tensors: what the engine and the behaviour source take.
        Under ``--fsdp`` the shards are gathered (a collective: every process calls it); under ``--lora``
        the adapters are merged into the weights they adapt (:func:`rlft.lora.merged_state_dict`)."""
        if self.config.fsdp:
            return fsdp.full_state_dict(self.model)
        if self.config.lora:
            return lora.merged_state_dict(self.model)
        return self.model.state_dict()

    def _score_before_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Set ``batch.ref_logprobs``; score pi_old where the algorithm prepares (``batch.extras``) or
        on-policy behaviour is recomputed. Returns the rollout correction's sums (or nothing)."""
        cfg, algo = self.config, self.algorithm
        correction: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            batch.ref_logprobs = self._reference_logprobs(batch)
            if algo.needs.prepare or self.recompute_behavior:
                before = self.scoring.batch(self.policy, batch)
                if self.recompute_behavior:
                    correction = rollout_correction.recompute_on_policy(
                        batch, before.logprobs, cfg.rollout_correction, cfg.rollout_correction_min,
                        cfg.rollout_correction_max)
                if algo.needs.prepare:
                    batch.extras = algo.prepare(batch, before.logprobs, before.values)
        return correction

    def _reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """[B, T] log pi_ref of every completion token: scored by the frozen pi_ref, except on the
        off-policy rows of a source whose behaviour log-probs are pi_ref's already
        (``logprobs_are_reference``: the ``ref`` pool, a ``dataset`` file), which are taken as they are."""
        known = batch.is_offpolicy
        if not self.behavior.logprobs_are_reference or not bool(known.any()):
            return self.scoring.batch(self.ref_model, batch).logprobs
        ref = batch.behavior_logprobs.clone()
        if not bool(known.all()):
            rest = (~known).nonzero().squeeze(1)
            ref[rest] = self.scoring.batch(self.ref_model, batch.select(rest)).logprobs
        return ref

    def _accumulate_gradients(self, mini: Batch, rows: torch.Tensor, step: int, epoch: int,
                              metrics: StepMetrics | None, minis: int) -> None:
        """Backward the loss of mini-batch ``mini`` (rows ``rows`` of the batch, one of ``minis``)
        in group-aligned micro-batches, normalised by the whole mini-batch's counts over every
        process; gradients are all-reduced once, with the last micro-batch's backward."""
        cfg, algo = self.config, self.algorithm
        norm = Normalizers.across_processes(mini, max_tokens=cfg.completion_budget, algorithm=algo)
        micro_batches = mini.group_slices(cfg.micro_groups) if cfg.micro_groups else [mini]
        done = 0
        for i, micro in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1
            # (FSDP2 reduce-scatters every micro-batch's gradients into the shards: the same sum)
            with contextlib.nullcontext() if sync or self.config.fsdp else self.accelerator.no_sync(self.policy), \
                    checkpointed_layers_on(self.model):
                # (under gradient checkpointing a layer keeps no key / value cache: prompts run whole)
                scores = score_batch(self.policy, micro, temperature=cfg.temperature, with_entropy=epoch == 0,
                                     share_prompts=not cfg.gradient_checkpointing,
                                     chunk_tokens=cfg.score_chunk_tokens)
                out = algo.loss(micro, scores.logprobs, scores.values, norm)
                self._check_finite(out.loss, step)
                self.accelerator.backward(out.loss * self.processes)
            if metrics is not None:  # the batch's metrics: the first pass's
                metrics.add_micro_batch(out, scores, micro, rows[done: done + len(micro)], minis)
            done += len(micro)

    def mini_batches(self, batch: Batch, step: int, epoch: int) -> list[tuple[torch.Tensor, Batch]]:
        """``[(rows, mini-batch)]`` for one pass over ``batch``: the whole batch if the algorithm's
        ``mini_batch_groups`` is 0, else ceil(groups / mini_batch_groups) shuffled mini-batches of
        whole groups (each process splits its own groups into as many; seeded by step and epoch)."""
        size = self.algorithm.config.mini_batch_groups
        count = min(math.ceil(self.config.groups / size), batch.num_groups) if size else 1
        if count == 1:
            return [(torch.arange(len(batch), device=batch.group_ids.device), batch)]
        generator = torch.Generator().manual_seed(stable_seed(self.config.seed, "mini-batches", step, epoch, self.rank))
        return batch.mini_batches(count, generator)

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        """Stop every process, not only the one that saw it, on a NaN or inf loss."""
        finite = bool(torch.isfinite(loss))
        if not all_true(finite, self.accelerator.device):
            what = f"loss is {loss.item()}" if not finite else "loss is not finite on another process"
            where = f" (process {self.rank} of {self.processes})" if self.processes > 1 else ""
            raise NonFiniteLoss(f"step {step}: {self.config.algo} {what}{where}")

    def _optimizer_step(self, step: int) -> float:
        """Clip, step and zero the gradients; returns the gradient norm before clipping."""
        if self.config.fsdp:
            grad_norm = fsdp.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
        else:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLoss(f"step {step}: gradient norm is {grad_norm}")
        self.optimizer.step()
        self.optimizer.zero_grad()
        return grad_norm

    # --------------------------------------------------------------------------- the loop
    def train(self) -> list[dict[str, Any]]:
        """Run (or resume) to ``config.steps``; return every metrics record of this run."""
        cfg = self.config
        self._prepare_out_dir()
        if cfg.report_to != "none":
            self.accelerator.init_trackers("rlft", config=_flat(dataclasses.asdict(cfg)))
        records = []
        try:
            if self.start_step == 0:
                records.append(self._log({"step": 0, **self.evaluator.initial()}))
            bar = tqdm(range(self.start_step + 1, cfg.steps + 1), desc=f"{cfg.algo} p={cfg.offpolicy:g}",
                       unit="step", initial=self.start_step, total=cfg.steps, disable=not self.is_main)
            for step in bar:
                record = {"step": step, **self.step(step)}
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    record.update(self.evaluator.evaluate(step))
                records.append(self._log(record))
                bar.set_postfix(reward=f"{record['reward']:.2f}", loss=f"{record['loss']:.3g}")
                if step % cfg.save_every == 0 or step == cfg.steps:
                    self.save_checkpoint(step)
        except Exception as exc:
            where = f" (process {self.rank} of {self.processes})" if self.processes > 1 else ""
            atomic_write_text(self.out / "error.json", json.dumps({"error": f"{type(exc).__name__}: {exc}{where}"}))
            raise
        finally:
            if cfg.report_to != "none":
                self.accelerator.end_training()
        return records

    def _log(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append ``record`` (already over all processes) to metrics.jsonl, once: on the main process."""
        if self.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.config.report_to != "none":
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        return record

    # -------------------------------------------------------------------------- checkpoints
    def _prepare_out_dir(self) -> None:
        """Write config.json, or resume from the checkpoint (:mod:`rlft.checkpoint`)."""
        checkpoint.prepare_run_folder(self)

    def save_checkpoint(self, step: int) -> None:
        checkpoint.save_checkpoint(self, step)

    def checkpoint_step(self) -> int | None:
        """The step of the checkpoint in ``OUT/checkpoint``, or None if there is none."""
        return checkpoint.checkpoint_step(self.out)


def parse_behavior(spec: str) -> tuple[str, str]:
    """``"ref"`` | ``"stale:K"`` | ``"dataset:PATH"`` -> (kind, argument), validated."""
    kind, _, arg = spec.partition(":")
    if kind == "ref" and not arg:
        return kind, arg
    if kind == "stale":
        if not arg.isdigit() or int(arg) < 1:
            raise UsageError(f"--behavior {spec!r}: K in stale:K must be an integer number of steps >= 1")
        return kind, arg
    if kind == "dataset" and arg:
        if not Path(arg).is_file():
            raise UsageError(f"--behavior {spec!r}: no such file (jsonl rows of prompt, completion, reward)")
        return kind, arg
    raise UsageError(f"unknown behaviour source {spec!r}; use ref, stale:K or dataset:PATH")


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in config.items()}
