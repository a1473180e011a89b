"""Test-set evaluation: accuracy, KL(pi || pi_ref), the objective J(pi) and, for pi_ref, J*'s inputs.

For each test problem x: one greedy completion, K sampled completions y_k ~ pi (at the run's
temperature) graded 0/1, and the sequence log-ratio ell(y_k) = log pi(y_k|x) - log pi_ref(y_k|x)
(pi's log-prob is what the engine recorded when sampling, pi_ref's is scored). Then::

    accuracy = mean_{x,k} r(x, y_k)          KL(pi || pi_ref) ~= mean_{x,k} ell(y_k)
    J(pi)    = accuracy - beta * KL          (rlft/objective.py)

The sampled completions are drawn in chunks of about :data:`CHUNK_ROWS` rows, each with its own
seed derived from ``seed_parts`` and the chunk index, so the numbers do not depend on how many
problems there are after a chunk; the greedy ones, which draw nothing, in one call. The seeds do
NOT depend on the training seed: every run of a sweep is evaluated
with the same test problems and the same sampling noise (common random numbers), so differences
between runs are differences between policies.

With ``reference_mass`` (at step 0, when pi is pi_ref) it also returns p(x), pi_ref's probability
of a correct completion per problem, from which J* = beta E_x log Z(x) follows for any beta
(:func:`rlft.objective.reference_correct_mass`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rlft.batch import Batch
from rlft.config import TrainConfig
from rlft.data import Problem
from rlft.distributed import all_sum
from rlft.engines.base import RolloutEngine, SamplingParams
from rlft.files import atomic_write_text
from rlft.objective import canonical_token_ids, completion_rows, log_partition, objective, reference_correct_mass
from rlft.scoring import Scoring
from rlft.prefill import shared_prompt_rows
from rlft.rewards import Grader
from rlft.sources import stable_seed

#: Rows (problems x samples) per chunk: large enough for the engine, small enough for the caches.
CHUNK_ROWS = 256


@dataclass
class EvalSums:
    """Additive totals of an evaluation (over chunks, and over processes by all-reduce)."""

    greedy_correct: float = 0.0
    problems: float = 0.0
    sampled_correct: float = 0.0
    samples: float = 0.0
    log_ratio: float = 0.0  # sum of ell over samples
    tokens: float = 0.0
    canonical_correct: float = 0.0  # correct samples that are the canonical completion

    def add(self, other: "EvalSums") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_list(self) -> list[float]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> "EvalSums":
        return cls(*values)

    def metrics(self) -> dict[str, float]:
        """The logged evaluation metrics (before the objective, which needs beta)."""
        return {
            "eval_greedy_accuracy": self.greedy_correct / self.problems,
            "eval_accuracy": self.sampled_correct / self.samples,
            "eval_kl_ref": self.log_ratio / self.samples,
            "eval_completion_tokens": self.tokens / self.samples,
            "eval_canonical_share": (self.canonical_correct / self.sampled_correct if self.sampled_correct
                                     else None),
        }


@torch.no_grad()
def evaluate_policy(engine: RolloutEngine, ref_model: nn.Module, tokenizer, grader: Grader,
                    problems: Sequence[Problem], prompt_fn: Callable[[str], str], sampling: SamplingParams,
                    samples: int, seed_parts: tuple, device: torch.device,
                    reference_mass: bool = False, scoring: Scoring | None = None) -> tuple[EvalSums, torch.Tensor | None]:
    """Evaluate the engine's current policy on ``problems`` (see the module docstring); pi_ref's
    log-probs are scored by ``scoring`` (default: at the sampling temperature, all rows at once).

    Returns:
        the sums, and with ``reference_mass`` the [N] float64 p(x) per problem (else None).
    """
    sums, masses = EvalSums(), []
    scoring = scoring or Scoring(temperature=sampling.temperature)
    per_chunk = max(1, CHUNK_ROWS // samples)
    # greedy decoding draws nothing: every problem in one call, which the engine batches as it can
    greedy = engine.generate([prompt_fn(p.question) for p in problems], 1, dataclasses.replace(sampling, temperature=0.0),
                             seed=stable_seed("eval-greedy", *seed_parts))
    greedy_correct = grader(greedy.texts, [p.answer for p in problems])
    for chunk, start in enumerate(range(0, len(problems), per_chunk)):
        part = problems[start:start + per_chunk]
        prompts, golds = [prompt_fn(p.question) for p in part], [p.answer for p in part]
        drawn = engine.generate(prompts, samples, sampling, seed=stable_seed("eval-sampled", *seed_parts, chunk))
        rewards = torch.tensor(grader(drawn.texts, [g for g in golds for _ in range(samples)]), dtype=torch.float64)
        batch = Batch(prompt_ids=drawn.prompt_ids, prompt_mask=drawn.prompt_mask,
                      completion_ids=drawn.completion_ids, completion_mask=drawn.completion_mask,
                      group_ids=torch.arange(len(drawn)), rewards=rewards.float(),
                      behavior_logprobs=drawn.logprobs).to(device)
        ell = batch.sequence_sum(batch.behavior_logprobs) - _distinct_sequence_logprobs(ref_model, batch, scoring)
        canonical = canonical_token_ids(tokenizer, golds)
        rows = completion_rows(drawn.completion_ids, drawn.completion_mask)
        is_canonical = torch.tensor([rows[i] == tuple(canonical[i // samples]) for i in range(len(rows))])
        sums.add(EvalSums(greedy_correct=sum(greedy_correct[start:start + per_chunk]), problems=len(part),
                          sampled_correct=float(rewards.sum()), samples=len(rewards), log_ratio=float(ell.sum()),
                          tokens=float(drawn.completion_mask.sum()),
                          canonical_correct=float((rewards * is_canonical.double()).sum())))
        if reference_mass:
            logprob = _canonical_logprob(ref_model, drawn, canonical, samples, scoring, tokenizer.pad_token_id,
                                         device)
            masses.append(reference_correct_mass(logprob, rewards.view(len(part), samples),
                                                 is_canonical.view(len(part), samples)))
    return sums, (torch.cat(masses) if reference_mass else None)


def _distinct_sequence_logprobs(model: nn.Module, batch: Batch, scoring: Scoring) -> torch.Tensor:
    """[B] log model(y | x) of every row, scoring each distinct (prompt, completion) pair once: the
    samples of a sharpened policy repeat, and a repeat has the same log-prob."""
    shared = shared_prompt_rows(torch.cat([batch.prompt_ids, batch.completion_ids], dim=1),
                                torch.cat([batch.prompt_mask, batch.completion_mask], dim=1))
    if shared is None:  # every row distinct
        shared = torch.arange(len(batch), device=batch.prompt_ids.device), None
    first, inverse = shared
    logprobs = scoring.logprobs(model, batch.prompt_ids[first], batch.prompt_mask[first],
                                batch.completion_ids[first], batch.completion_mask[first])
    sums = logprobs.sum(dim=1)  # logprobs are 0 on padding
    return sums if inverse is None else sums[inverse]


def _canonical_logprob(ref_model: nn.Module, drawn, canonical: list[list[int]], samples: int,
                       scoring: Scoring, pad: int, device: torch.device) -> torch.Tensor:
    """[N] log pi_ref(c(x) | x) of each problem's canonical completion, in float64."""
    prompt_ids, prompt_mask = drawn.prompt_ids[::samples], drawn.prompt_mask[::samples]
    width = max(len(c) for c in canonical)
    ids = torch.full((len(canonical), width), pad, dtype=torch.long)
    mask = torch.zeros((len(canonical), width), dtype=torch.bool)
    for i, row in enumerate(canonical):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), True
    logprobs = scoring.logprobs(ref_model, prompt_ids.to(device), prompt_mask.to(device), ids.to(device),
                                mask.to(device), share_prompts=False)
    return logprobs.double().sum(dim=1).cpu()


@dataclass
class Evaluator:
    """A run's evaluations: this process's share of the test problems (every ``processes``-th),
    evaluated by :func:`evaluate_policy` and all-reduced, with J(pi) at ``config.objective_beta``
    and, at step 0 where pi is pi_ref, J* (``eval_optimal_objective``)."""

    config: TrainConfig
    engine: RolloutEngine
    ref_model: nn.Module
    tokenizer: Any
    grader: Callable[[list[str], list[str]], list[float]]
    test_set: Sequence[Problem]
    prompt_fn: Callable[[str], str]
    sampling: SamplingParams
    rank: int
    processes: int
    device: torch.device
    scoring: Scoring | None = None  # how pi_ref scores (default: at the sampling temperature, all rows at once)

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy and sampled test accuracy, KL(pi || pi_ref), J(pi) (and J* at step 0)."""
        return self._metrics(*self._sums(step))

    def initial(self) -> dict[str, float]:
        """The step-0 evaluation of pi_ref, read from the folder ``config.initial_eval`` when it holds
        one made with the same evaluation settings (:meth:`key`, which names the file), else
        computed (and written there). A sweep shares it between its cells: their pi_ref and
        evaluation seeds are the same. One process only (with several, each evaluates its share)."""
        key = self.key()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = (Path(self.config.initial_eval) / f"{digest}.json"
                if self.config.initial_eval and self.processes == 1 else None)
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if saved.get("key") == key:
                return self._metrics(EvalSums(**saved["sums"]), torch.tensor(saved["p_correct"], dtype=torch.float64))
        sums, masses = self._sums(0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({"key": key, "sums": dataclasses.asdict(sums),
                                                "p_correct": masses.tolist()}))
        return self._metrics(sums, masses)

    def key(self) -> dict[str, Any]:
        """Everything the step-0 evaluation depends on (pi_ref is the model's initial weights)."""
        cfg = self.config
        return {"model": cfg.model, "dataset": cfg.dataset, "eval_problems": cfg.eval_problems,
                "eval_samples": cfg.eval_samples, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_new_tokens": cfg.completion_budget, "dtype": cfg.dtype, "engine": cfg.engine,
                "engine_args": json.loads(json.dumps(cfg.engine_args, default=str)),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "chunk_rows": CHUNK_ROWS,
                # named only when not the default, so that folders made before rewards were pluggable keep theirs
                **({"reward": cfg.reward} if cfg.reward != "math" else {})}

    def _sums(self, step: int) -> tuple[EvalSums, torch.Tensor | None]:
        """All-reduced evaluation sums; at step 0 also this process's p(x) per test problem."""
        problems = self.test_set[self.rank::self.processes]
        tag = () if self.processes == 1 else (self.rank,)
        local, masses = evaluate_policy(self.engine, self.ref_model, self.tokenizer, self.grader, problems,
                                        self.prompt_fn, self.sampling, self.config.eval_samples, (step, *tag),
                                        self.device, reference_mass=step == 0, scoring=self.scoring)
        total = all_sum(torch.tensor(local.as_list(), dtype=torch.float64, device=self.device)).tolist()
        return EvalSums.from_list(total), masses

    def _metrics(self, sums: EvalSums, masses: torch.Tensor | None) -> dict[str, float]:
        beta = self.config.objective_beta
        metrics = sums.metrics()
        metrics["eval_objective"] = objective(metrics["eval_accuracy"], metrics["eval_kl_ref"], beta)
        if masses is not None:
            log_z = all_sum(torch.tensor([float(log_partition(masses, beta).sum()), float(len(masses))],
                                         dtype=torch.float64, device=self.device)).tolist()
            metrics["eval_optimal_objective"] = beta * log_z[0] / log_z[1]
        return metrics
