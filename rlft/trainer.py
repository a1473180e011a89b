"""The training loop: mixer -> Batch -> reference log-probs -> algorithm.loss -> optimizer -> engine.

One optimizer step (``Trainer.step``)::

    problems (data registry) -> Mixer: on-policy groups from the engine at the current weights,
    a share ``offpolicy`` of groups from the behaviour source -> rewards -> Batch
    -> ref log-probs (frozen pi_ref) -> [algorithm.prepare] -> for each epoch, for each
    group-aligned micro-batch: policy forward, algorithm.loss with GLOBAL normalisers, backward
    -> clip, optimizer step -> engine.load_weights -> behaviour source sees the new weights

Under ``accelerate launch --multi_gpu --num_processes N`` (DDP; gloo on a CPU) each process runs
this loop on its ``groups / N`` groups; the normalisers are global and each loss is scaled by N,
so the update equals the one-process update (see :mod:`rlft.distributed`). Only the main process
writes files; each process checkpoints its own behaviour source.

The trainer knows no algorithm by name: it asks ``algorithm.needs`` what to compute. Log-probs are
scored at the sampling temperature, so they agree with the behaviour log-probs the engine recorded.
Every step appends one JSON line to ``OUT/metrics.jsonl``; ``OUT/checkpoint/`` is replaced
atomically every ``save_every`` steps and a rerun with the same settings resumes from it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import shutil
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
from rlft.config import TrainConfig
from rlft.checkpoint import restore_rng_states, rng_states
from rlft.cpu import warn_if_bf16_is_slow
from rlft.data import Problem, format_prompt, load
from rlft.distributed import all_sum, all_true
from rlft.engines import ENGINES, check_engine_args, resolve_engine
from rlft.engines.base import SamplingParams
from rlft.errors import NonFiniteLoss, UsageError
from rlft.evaluation import CHUNK_ROWS, EvalSums, evaluate_policy
from rlft.files import atomic_write_text, ensure_writable_dir, read_json
from rlft.models import load_model
from rlft.policy import PolicyWithValue, load_policy, save_policy, score_batch
from rlft import rollout_correction
from rlft.objective import log_partition, objective
from rlft.rewards import Grader
from rlft.sources import DatasetSource, EngineSource, Mixer, RefPoolSource, StaleSource, stable_seed

#: Below this many parameters one CPU thread is faster: kernel launch and thread sync dominate,
#: and two threads contending with any other process slowed a tiny-preset step 10x here.
SMALL_MODEL_PARAMS = 20_000_000

#: What to do about a checkpoint whose trainer_state.json cannot be read.
DAMAGED_CHECKPOINT = "delete OUT/checkpoint to start this run over (or pass another --out)"


class Trainer:
    """RL fine-tuning of one model with one algorithm; see the module docstring for a step."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = cfg = config
        self.algorithm = algorithms.make(cfg.algo, **cfg.algo_args)
        self.algorithm.check_group_size(cfg.group_size)
        self.out = Path(cfg.out)
        behavior_kind, behavior_arg = parse_behavior(cfg.behavior)
        check_engine_args(cfg.engine, cfg.engine_args)  # fails early, in one line, also if vLLM is missing
        engine_cls = resolve_engine(cfg.engine)
        ensure_writable_dir(self.out)  # before the model is loaded
        if (self.out / "config.json").exists():
            read_json(self.out / "config.json", "restore it, or pass another --out (or delete that run)")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       log_with=None if cfg.report_to == "none" else cfg.report_to,
                                       project_dir=str(self.out))
        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise UsageError("FSDP is not supported yet: the rollout engines, the stale:K source and checkpoints "
                             "use the full weights on every process; use DDP (accelerate launch --multi_gpu)")
        self.rank, self.processes = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if cfg.groups % self.processes or cfg.eval_problems < self.processes:
            raise UsageError(f"groups ({cfg.groups}) must be a multiple of the number of processes "
                             f"({self.processes}) and eval_problems ({cfg.eval_problems}) at least that: "
                             "each process takes whole groups and its share of the test problems")
        self.train_set = load(cfg.dataset, "train", seed=cfg.seed)
        # the same test problems for every seed, so seeds differ only in training
        self.test_set = load(cfg.dataset, "test", seed=0, limit=cfg.eval_problems)
        set_seed(cfg.seed)  # Python's, NumPy's and torch's global generators
        model, self.tokenizer = load_model(cfg.model, dtype=getattr(torch, cfg.dtype))
        if cfg.threads or sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
            torch.set_num_threads(cfg.threads or 1)
        warn_if_bf16_is_slow(cfg.dtype, self.accelerator.device)
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.policy = PolicyWithValue(model) if self.algorithm.needs.value_head else model
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.policy, self.optimizer = self.accelerator.prepare(self.policy, self.optimizer)
        self.model = model  # the unwrapped LM: engine and checkpoints use it
        self.ref_model.to(self.accelerator.device)

        self.sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_new_tokens=cfg.completion_budget)
        self.engine = engine_cls(model, self.tokenizer, **cfg.engine_args)
        #: whether on-policy behaviour log-probs are replaced by the trainer's pi_old (see update)
        self.recompute_behavior = (cfg.recompute_behavior == "on" or self.algorithm.needs.recompute_behavior or
                                   (cfg.recompute_behavior == "auto" and not self.engine.computes_like(model)))
        self.grader = Grader()
        policy_source = EngineSource(self.engine, self.prompt, self.grader, self.sampling, "policy", False,
                                     lambda: self.engine.version)
        self.behavior = self._behavior_source(behavior_kind, behavior_arg)
        self.mixer = Mixer(policy_source, self.behavior, cfg.offpolicy, cfg.seed, self.rank, self.processes)
        self.start_step = 0

    # ---------------------------------------------------------------------------- set-up
    def prompt(self, question: str) -> str:
        return format_prompt(question, self.tokenizer)

    def _behavior_source(self, kind: str, arg: str):
        if kind == "ref":
            ref_engine = ENGINES.get("hf")(self.ref_model, self.tokenizer)
            return RefPoolSource(ref_engine, self.prompt, self.grader, self.sampling, self.config.seed)
        if kind == "stale":
            engine = ENGINES.get("hf")(self.model, self.tokenizer, own_copy=True)
            return StaleSource(engine, int(arg), self.prompt, self.grader, self.sampling, self.model.state_dict())
        return DatasetSource(arg, self.tokenizer, self.ref_model, self.prompt, self.config.temperature)

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
        cfg, algo, device = self.config, self.algorithm, self.accelerator.device
        correction: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            batch.ref_logprobs = score_batch(self.ref_model, batch, temperature=cfg.temperature).logprobs
            if algo.needs.prepare or self.recompute_behavior:
                before = score_batch(self.policy, batch, temperature=cfg.temperature)
                if self.recompute_behavior:
                    correction = rollout_correction.recompute_on_policy(
                        batch, before.logprobs, cfg.rollout_correction, cfg.rollout_correction_min,
                        cfg.rollout_correction_max)
                if algo.needs.prepare:
                    batch.extras = algo.prepare(batch, before.logprobs, before.values)
        sums: dict[str, float] = {}
        seq_logprobs = batch.behavior_logprobs.new_zeros(len(batch))  # the first pass's, in row order
        entropy_sum, grad_norms = 0.0, []
        for epoch in range(algo.epochs):
            minis = self.mini_batches(batch, step, epoch)
            for rows, mini in minis:
                norm = Normalizers.across_processes(mini, max_tokens=cfg.completion_budget, algorithm=algo)
                micro_batches = mini.group_slices(cfg.micro_groups) if cfg.micro_groups else [mini]
                done = 0
                for i, micro in enumerate(micro_batches):
                    # gradients are all-reduced once, with the last micro-batch's backward
                    sync = i == len(micro_batches) - 1
                    with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.policy):
                        scores = score_batch(self.policy, micro, temperature=cfg.temperature, with_entropy=epoch == 0)
                        out = algo.loss(micro, scores.logprobs, scores.values, norm)
                        self._check_finite(out.loss, step)
                        self.accelerator.backward(out.loss * self.processes)
                    if epoch == 0:  # the batch's metrics: the mean over its mini-batches
                        for key, value in {"loss": out.loss, **out.metrics}.items():
                            sums[key] = sums.get(key, 0.0) + value.detach().item() / len(minis)
                        seq_logprobs[rows[done: done + len(micro)]] = micro.sequence_sum(scores.logprobs.detach())
                        entropy_sum += float((scores.entropy.detach() * micro.mask).sum())
                        done += len(micro)
                grad_norms.append(self._optimizer_step(step))
        state = self.model.state_dict()
        self.engine.load_weights(state)
        self.behavior.after_update(step, state)

        # losses and metrics are additive shares of the batch's; per-sample values are gathered
        keys, correction_keys = sorted(sums), sorted(correction)
        totals = all_sum(torch.tensor([sums[k] for k in keys] + [float(correction[k]) for k in correction_keys]
                                      + [entropy_sum, float(batch.completion_mask.sum())],
                                      dtype=torch.float64, device=device)).tolist()
        summed, correction_sums = totals[:len(keys)], dict(zip(correction_keys, totals[len(keys):-2]))
        entropy_sum, tokens = totals[-2:]
        gather = self.accelerator.gather
        rewards = gather(batch.rewards.float().contiguous())
        off = gather(batch.is_offpolicy.float().contiguous()).bool()
        ell = gather((seq_logprobs - batch.ref_seq_logprobs).float().contiguous())
        metrics = {
            "reward": float(rewards.mean()),
            "reward_onpolicy": _masked_mean(rewards, ~off),
            "reward_offpolicy": _masked_mean(rewards, off),
            "kl_ref": _masked_mean(ell, ~off),  # mean ell on the policy's own samples: KL(pi || pi_ref)
            "ell_offpolicy": _masked_mean(ell, off),  # drift from the behaviour data
            "entropy": entropy_sum / tokens,
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "optimizer_steps": len(grad_norms),
            "offpolicy_share": float(off.float().mean()),
            "completion_tokens": tokens / len(rewards),
            **dict(zip(keys, summed)),
        }
        if correction_sums:  # per on-policy token: KL(sampler || trainer), the mean weight, the masked share
            on_tokens = max(correction_sums["tokens"], 1.0)
            metrics.update(sampler_kl=correction_sums["sampler_kl"] / on_tokens,
                           rollout_weight=correction_sums["weight"] / on_tokens,
                           rollout_masked=correction_sums["masked"] / on_tokens)
        return metrics

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
        grad_norm = float(self.accelerator.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm))
        if not math.isfinite(grad_norm):
            raise NonFiniteLoss(f"step {step}: gradient norm is {grad_norm}")
        self.optimizer.step()
        self.optimizer.zero_grad()
        return grad_norm

    # -------------------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy and sampled test accuracy, KL(pi || pi_ref) and J(pi) at ``objective_beta``
        (:mod:`rlft.evaluation`); at step 0, where pi is pi_ref, also J* (``eval_optimal_objective``).
        Each process takes every ``processes``-th test problem; the sums are all-reduced."""
        sums, masses = self._evaluate_sums(step)
        return self._eval_metrics(sums, masses)

    def _evaluate_sums(self, step: int) -> tuple[EvalSums, torch.Tensor | None]:
        """All-reduced evaluation sums; at step 0 also this process's p(x) per test problem."""
        problems = self.test_set[self.rank::self.processes]
        tag = () if self.processes == 1 else (self.rank,)
        local, masses = evaluate_policy(self.engine, self.ref_model, self.tokenizer, self.grader, problems,
                                        self.prompt, self.sampling, self.config.eval_samples, (step, *tag),
                                        self.accelerator.device, reference_mass=step == 0)
        device = self.accelerator.device
        total = all_sum(torch.tensor(local.as_list(), dtype=torch.float64, device=device)).tolist()
        return EvalSums.from_list(total), masses

    def _eval_metrics(self, sums: EvalSums, masses: torch.Tensor | None) -> dict[str, float]:
        beta = self.config.objective_beta
        metrics = sums.metrics()
        metrics["eval_objective"] = objective(metrics["eval_accuracy"], metrics["eval_kl_ref"], beta)
        if masses is not None:
            log_z = all_sum(torch.tensor([float(log_partition(masses, beta).sum()), float(len(masses))],
                                         dtype=torch.float64, device=self.accelerator.device)).tolist()
            metrics["eval_optimal_objective"] = beta * log_z[0] / log_z[1]
        return metrics

    def initial_evaluation(self) -> dict[str, float]:
        """The step-0 evaluation of pi_ref, read from the folder ``config.initial_eval`` when it holds
        one made with the same evaluation settings (:meth:`evaluation_key`, which names the file),
        else computed (and written there). A sweep shares it between its cells: their pi_ref and
        evaluation seeds are the same. One process only (with several, each evaluates its share)."""
        key = self.evaluation_key()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = (Path(self.config.initial_eval) / f"{digest}.json"
                if self.config.initial_eval and self.processes == 1 else None)
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if saved.get("key") == key:
                return self._eval_metrics(EvalSums(**saved["sums"]),
                                          torch.tensor(saved["p_correct"], dtype=torch.float64))
        sums, masses = self._evaluate_sums(0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": key, "sums": dataclasses.asdict(sums),
                                            "p_correct": masses.tolist()}))
        return self._eval_metrics(sums, masses)

    def evaluation_key(self) -> dict[str, Any]:
        """Everything the step-0 evaluation depends on (pi_ref is the model's initial weights)."""
        cfg = self.config
        return {"model": cfg.model, "dataset": cfg.dataset, "eval_problems": cfg.eval_problems,
                "eval_samples": cfg.eval_samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_new_tokens": cfg.completion_budget, "dtype": cfg.dtype, "engine": cfg.engine,
                "engine_args": json.loads(json.dumps(cfg.engine_args, default=str)),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "chunk_rows": CHUNK_ROWS}

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
                records.append(self._log({"step": 0, **self.initial_evaluation()}))
            bar = tqdm(range(self.start_step + 1, cfg.steps + 1), desc=f"{cfg.algo} p={cfg.offpolicy:g}",
                       unit="step", initial=self.start_step, total=cfg.steps, disable=not self.is_main)
            for step in bar:
                record = {"step": step, **self.step(step)}
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    record.update(self.evaluate(step))
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

    def _prepare_out_dir(self) -> None:
        """Write config.json, or resume: check it matches and load the checkpoint (every process)."""
        config_path = self.out / "config.json"
        settings = {"train": dataclasses.asdict(self.config),
                    "algorithm": dataclasses.asdict(self.algorithm.config)}
        if config_path.exists():
            saved = read_json(config_path, "restore it, or pass another --out (or delete that run)")
            mine = json.loads(json.dumps(settings, default=str))
            if {**saved["train"], "steps": 0} != {**mine["train"], "steps": 0}:
                raise UsageError(f"{self.out} holds a run with other settings; use another --out or delete it")
        self.accelerator.wait_for_everyone()  # all have read it before it is rewritten
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            config_path.write_text(json.dumps(settings, indent=1, default=str))
            (self.out / "error.json").unlink(missing_ok=True)
            if not (self.out / "checkpoint").exists() and (self.out / "checkpoint.old").exists():
                (self.out / "checkpoint.old").rename(self.out / "checkpoint")  # killed between two renames
            if not (self.out / "checkpoint" / "trainer_state.json").exists():
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        if (self.out / "checkpoint" / "trainer_state.json").exists():
            self.load_checkpoint()

    # -------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, step: int) -> None:
        """Replace ``OUT/checkpoint`` atomically: policy (+ value head), optimizer, step (main process),
        each process's behaviour source (``behavior-RANK.pt``: its own ref pool or snapshots) and its
        global RNG states (``rng-RANK.pt``, :mod:`rlft.checkpoint`)."""
        tmp, final, old = self.out / "checkpoint.tmp", self.out / "checkpoint", self.out / "checkpoint.old"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            policy = self.accelerator.unwrap_model(self.policy)
            save_policy(tmp, self.model, self.tokenizer, getattr(policy, "value_head", None))
            torch.save({"optimizer": self.optimizer.state_dict()}, tmp / "trainer.pt")
        self.accelerator.wait_for_everyone()
        torch.save(self.behavior.state_dict(), tmp / f"behavior-{self.rank}.pt")
        torch.save(rng_states(), tmp / f"rng-{self.rank}.pt")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": step, "engine_version": self.engine.version, "processes": self.processes}))
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def checkpoint_step(self) -> int | None:
        """The step of the checkpoint in ``OUT/checkpoint``, or None if there is none."""
        state = self.out / "checkpoint" / "trainer_state.json"
        return read_json(state, DAMAGED_CHECKPOINT)["step"] if state.exists() else None

    def load_checkpoint(self) -> None:
        path = self.out / "checkpoint"
        state = read_json(path / "trainer_state.json", DAMAGED_CHECKPOINT)
        if state.get("processes", 1) != self.processes:
            raise UsageError(f"{self.out} was checkpointed with {state.get('processes', 1)} process(es); resume it "
                             f"with the same number (this run has {self.processes}) or use another --out")
        model, _, value_head = load_policy(path, dtype=getattr(torch, self.config.dtype))
        self.model.load_state_dict(model.state_dict())
        policy = self.accelerator.unwrap_model(self.policy)
        if value_head is not None and hasattr(policy, "value_head"):
            policy.value_head.load_state_dict(value_head.state_dict())
        extra = torch.load(path / "trainer.pt", weights_only=False)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.behavior.load_state_dict(torch.load(path / f"behavior-{self.rank}.pt", weights_only=False))
        if (path / f"rng-{self.rank}.pt").exists():  # checkpoints of rlft before 2026-12 have none
            restore_rng_states(torch.load(path / f"rng-{self.rank}.pt", weights_only=False))
        self.engine.load_weights(self.model.state_dict())  # an engine with its own copy (vllm) takes the checkpoint
        self.engine.version = state["engine_version"]
        self.start_step = state["step"]
        # drop metrics of steps after the checkpoint: they are redone identically
        if self.is_main:
            lines = (self.out / "metrics.jsonl").read_text().splitlines() if (self.out / "metrics.jsonl").exists() else []
            kept = [line for line in lines if _complete_record(line) and json.loads(line)["step"] <= self.start_step]
            atomic_write_text(self.out / "metrics.jsonl", "".join(line + "\n" for line in kept))


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


def _complete_record(line: str) -> bool:
    """False for a line cut short by a kill while it was being appended."""
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean over ``mask``; None (JSON null) when nothing is selected."""
    return float(values[mask].mean()) if bool(mask.any()) else None


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in config.items()}
