"""Behaviour sources and the on/off-policy mixer.

A source turns problems into groups of n completions with the token log-probs of the policy that
actually produced them (mu). The mixer fills every batch: a share ``offpolicy`` of its groups comes
from the behaviour source, the rest from the current policy (rule in :mod:`rlft.mixing`).

Sources (``--behavior``):

* ``ref``: the paper's off-policy setting, an offline dataset of pi_ref samples: n samples per
  prompt drawn ONCE from pi_ref the first time the prompt is used, cached, and reused every time
  the prompt comes back (mu = pi_ref).
* ``stale:K``: the policy of K optimizer steps earlier (the initial policy until K steps passed).
* ``dataset:PATH``: a jsonl file of ``{"prompt", "completion", "reward"}`` rows (``prompt`` is the
  question, formatted with the same prompt template; rows with the same prompt form a group). Its
  behaviour log-probs are not known, so they are scored under pi_ref: the file is treated as a
  sample of pi_ref. Groups are drawn from the file's own prompts, not from the training set.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from rlft.batch import Batch
from rlft.data import Problem
from rlft.distributed import broadcast_state, shard
from rlft.engines.base import Generation, RolloutEngine, SamplingParams
from rlft.errors import UsageError
from rlft.mixing import offpolicy_groups
from rlft.scoring import Scoring, at_least_float32

#: (completion texts, gold answers) -> rewards
RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
#: question -> prompt text (the chat template or plain format of the model's tokenizer)
PromptFn = Callable[[str], str]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any values, stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generation_batch(gen: Generation, rewards: Sequence[float], n: int, source: str,
                     offpolicy: bool, version: int) -> Batch:
    """Wrap an engine's Generation (groups of n adjacent rows) as a Batch, on the Generation's device."""
    B, device = len(gen), gen.completion_ids.device
    return Batch(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask,
        completion_ids=gen.completion_ids, completion_mask=gen.completion_mask,
        group_ids=torch.arange(B // n, device=device).repeat_interleave(n),
        rewards=torch.tensor(rewards, dtype=torch.float32, device=device),
        behavior_logprobs=at_least_float32(gen.logprobs),
        is_offpolicy=torch.full((B,), offpolicy, device=device),
        policy_version=torch.full((B,), version, dtype=torch.long, device=device),
        sources=[source] * B,
    )


class BehaviorSource:
    """Base class: ``sample(problems, n, seed)`` -> a Batch of ``len(problems)`` groups.

    A source builds its batch on the device of the tensors it starts from (an engine's output, on
    the CPU; the reference model's device); the trainer moves it to its own.
    """

    tag = "behavior"
    #: Whether the behaviour log-probs of this source's rows are pi_ref's own, at the run's
    #: temperature (mu = pi_ref, sampled without truncation or scored by pi_ref): the trainer then
    #: takes them as the rows' reference log-probs instead of scoring pi_ref again.
    logprobs_are_reference: bool = False

    def sample(self, problems: Sequence[Problem], n: int, seed: int) -> Batch:
        raise NotImplementedError

    def after_update(self, step: int, state_dict: Mapping[str, Tensor]) -> None:
        """Called after every optimizer step with the new policy weights. Default: nothing."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EngineSource(BehaviorSource):
    """Samples from a rollout engine; rewards from the grader (shared by policy, ref and stale)."""

    def __init__(self, engine: RolloutEngine, prompt_fn: PromptFn, reward_fn: RewardFn,
                 params: SamplingParams, tag: str, offpolicy: bool, version: Callable[[], int]) -> None:
        self.engine, self.prompt_fn, self.reward_fn, self.params = engine, prompt_fn, reward_fn, params
        self.tag, self.offpolicy, self.version = tag, offpolicy, version

    def sample(self, problems: Sequence[Problem], n: int, seed: int) -> Batch:
        gen = self.engine.generate([self.prompt_fn(p.question) for p in problems], n, self.params, seed=seed)
        rewards = self.reward_fn(gen.texts, [p.answer for p in problems for _ in range(n)])
        return generation_batch(gen, rewards, n, self.tag, self.offpolicy, self.version())


class RefPoolSource(BehaviorSource):
    """pi_ref samples drawn once per prompt (seeded by the prompt's id) and reused: an offline set.

    ``ref_engine`` is an engine on pi_ref, or a function that builds one the first time a prompt is
    drawn (the trainer's, when no off-policy group will be: no second engine is started).
    """

    tag = "ref"

    def __init__(self, ref_engine: RolloutEngine | Callable[[], RolloutEngine], prompt_fn: PromptFn,
                 reward_fn: RewardFn, params: SamplingParams, seed: int) -> None:
        self.ref_engine, self.prompt_fn, self.reward_fn, self.params = ref_engine, prompt_fn, reward_fn, params
        self.sampler: EngineSource | None = None
        self.seed = seed
        self.pool: dict[str, Batch] = {}
        # the engine records log softmax(logits / temperature) of the token it drew: pi_ref's
        # log-prob, unless top-k / top-p truncated the distribution it drew from
        self.logprobs_are_reference = params.top_p >= 1.0 and params.top_k == 0

    def sample(self, problems: Sequence[Problem], n: int, seed: int) -> Batch:
        missing = [p for p in problems if p.id not in self.pool]
        if missing:
            if self.sampler is None:
                engine = self.ref_engine if isinstance(self.ref_engine, RolloutEngine) else self.ref_engine()
                self.sampler = EngineSource(engine, self.prompt_fn, self.reward_fn, self.params, "ref", True,
                                            lambda: -1)
            fresh = self.sampler.sample(missing, n, stable_seed(self.seed, "ref-pool", *(p.id for p in missing)))
            for problem, group in zip(missing, fresh.group_slices(1)):
                self.pool[problem.id] = group
        return Batch.concat([self.pool[p.id] for p in problems])

    def state_dict(self) -> dict:
        return {"pool": self.pool}

    def load_state_dict(self, state: dict) -> None:
        self.pool = dict(state["pool"])


class StaleSource(BehaviorSource):
    """The policy of ``lag`` optimizer steps ago, sampled by its own engine.

    The weights of the last ``lag + 1`` steps are kept once: by the main process (rank 0), in CPU
    memory, and only it checkpoints them. After each optimizer step, the weights the next step
    samples from are sent to every process's engine (a broadcast, :func:`rlft.distributed.broadcast_state`,
    only when they change), so no other process keeps a copy it does not sample from.
    """

    def __init__(self, engine: RolloutEngine, lag: int, prompt_fn: PromptFn, reward_fn: RewardFn,
                 params: SamplingParams, initial_state: Mapping[str, Tensor], rank: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if lag < 1:
            raise UsageError(f"stale:K needs K >= 1 (steps of lag), got {lag}")
        self.tag, self.lag = f"stale:{lag}", lag
        self.engine, self.keeps, self.device = engine, rank == 0, device
        #: shapes and dtypes of the weights, for the processes that receive them
        self.template = {k: (v.shape, v.dtype) for k, v in initial_state.items()}
        self.snapshots: collections.deque = collections.deque(maxlen=lag + 1)
        if self.keeps:
            self.snapshots.append((0, _cpu_copy(initial_state)))
        self.loaded_step = 0  # the engine starts from the initial weights
        self.sampler = EngineSource(engine, prompt_fn, reward_fn, params, self.tag, True, lambda: self.loaded_step)

    def after_update(self, step: int, state_dict: Mapping[str, Tensor]) -> None:
        if self.keeps:
            self.snapshots.append((step, _cpu_copy(state_dict)))
        self._load(max(0, step - self.lag))

    def _load(self, step: int) -> None:
        """Give every process's engine the weights of ``step`` (the oldest snapshot: ``lag`` steps ago)."""
        if step == self.loaded_step:
            return
        if self.keeps and self.snapshots[0][0] != step:
            raise RuntimeError(f"stale:{self.lag}: the weights of step {step} are not kept")
        state = broadcast_state(self.snapshots[0][1] if self.keeps else None, self.template, self.device)
        self.engine.load_weights(state)
        self.loaded_step = step

    def sample(self, problems: Sequence[Problem], n: int, seed: int) -> Batch:
        return self.sampler.sample(problems, n, seed)

    def state_dict(self) -> dict:
        return {"snapshots": list(self.snapshots), "loaded_step": self.loaded_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore (every process: the engine's weights are sent again, a collective)."""
        if self.keeps:
            self.snapshots = collections.deque(state["snapshots"], maxlen=self.lag + 1)
        self.loaded_step = -1  # the engine holds the initial weights, not necessarily those of the step
        # (checkpoints made before 2026-12-08 hold every process's snapshots and no loaded_step)
        self._load(state["loaded_step"] if "loaded_step" in state else state["snapshots"][0][0])


class DatasetSource(BehaviorSource):
    """Groups of completions from a jsonl file; behaviour log-probs scored under pi_ref by ``scoring``
    (the run's sampling temperature, chunk and rows), on the reference model's device (where the
    batch is built)."""

    tag = "dataset"
    logprobs_are_reference = True  # scored by pi_ref (the file is treated as a sample of pi_ref)

    def __init__(self, path: str | Path, tokenizer, ref_model: torch.nn.Module, prompt_fn: PromptFn,
                 scoring: Scoring = Scoring()) -> None:
        self.path = Path(path)
        self.scoring = scoring
        if not self.path.is_file():
            raise UsageError(f"dataset:{path}: no such file (expected jsonl rows of prompt, completion, reward)")
        self.tokenizer, self.ref_model, self.prompt_fn = tokenizer, ref_model, prompt_fn
        groups: dict[str, list[tuple[str, float]]] = {}
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                groups.setdefault(str(row["prompt"]), []).append((str(row["completion"]), float(row["reward"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise UsageError(f"{self.path}:{number}: malformed row ({type(exc).__name__}: {exc}); "
                                 "need prompt, completion and a numeric reward") from None
        if not groups:
            raise UsageError(f"{self.path} has no rows")
        self.prompts = sorted(groups)
        self.groups = groups

    def sample(self, problems: Sequence[Problem], n: int, seed: int) -> Batch:
        g = torch.Generator().manual_seed(seed)
        chosen = [self.prompts[i] for i in torch.randint(len(self.prompts), (len(problems),), generator=g, device="cpu")]
        prompt_texts, completions, rewards = [], [], []
        for prompt in chosen:
            rows = self.groups[prompt]
            for i in torch.randint(len(rows), (n,), generator=g, device="cpu").tolist():
                prompt_texts.append(self.prompt_fn(prompt))
                completions.append(rows[i][0])
                rewards.append(rows[i][1])
        tok = self.tokenizer
        device = next(self.ref_model.parameters()).device
        eos = tok.eos_token or ""
        prompts = tok(prompt_texts, padding=True, padding_side="left")
        comps = tok([c + eos for c in completions], padding=True, padding_side="right", add_special_tokens=False)
        prompt_ids, completion_ids = (torch.tensor(e["input_ids"], device=device) for e in (prompts, comps))
        prompt_mask, completion_mask = (torch.tensor(e["attention_mask"], device=device).bool() for e in (prompts, comps))
        behavior = self.scoring.logprobs(self.ref_model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        B = len(completions)
        return Batch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask,
            completion_ids=completion_ids, completion_mask=completion_mask,
            group_ids=torch.arange(B // n, device=device).repeat_interleave(n),
            rewards=torch.tensor(rewards, dtype=torch.float32, device=device),
            behavior_logprobs=at_least_float32(behavior),
            is_offpolicy=torch.ones(B, dtype=torch.bool, device=device),
            policy_version=torch.full((B,), -1, device=device),
            sources=["dataset"] * B,
        )


def _cpu_copy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class Mixer:
    """Fills each batch with on-policy groups and a share ``offpolicy`` of behaviour groups.

    With several processes, ``rank`` of ``processes`` samples only its contiguous share of the
    groups (:func:`rlft.distributed.shard`); which groups are off-policy is decided for the whole
    batch first, so the split does not change the share.
    """

    def __init__(self, policy: BehaviorSource, behavior: BehaviorSource, offpolicy: float, seed: int,
                 rank: int = 0, processes: int = 1) -> None:
        if not 0.0 <= offpolicy <= 1.0:
            raise UsageError(f"offpolicy {offpolicy:g} is outside [0, 1]; it is the share of off-policy groups per batch")
        self.policy, self.behavior, self.offpolicy = policy, behavior, offpolicy
        self.seed, self.rank, self.processes = seed, rank, processes

    def batch(self, problems: Sequence[Problem], n: int, step: int) -> Batch:
        """This process's groups of ``n`` samples among ``len(problems)`` for optimizer step ``step``
        (deterministic)."""
        g = torch.Generator().manual_seed(stable_seed(self.seed, "mix", step))
        off = offpolicy_groups(len(problems), self.offpolicy, g).tolist()
        mine = shard(len(problems), self.processes, self.rank)
        problems, off = problems[mine], off[mine]
        # one process keeps the seeds it always had; each of several draws its own samples
        tag = () if self.processes == 1 else (self.rank,)
        parts = []
        on_problems = [p for p, o in zip(problems, off) if not o]
        off_problems = [p for p, o in zip(problems, off) if o]
        if on_problems:
            parts.append(self.policy.sample(on_problems, n, stable_seed(self.seed, "policy", step, *tag)))
        if off_problems:
            parts.append(self.behavior.sample(off_problems, n, stable_seed(self.seed, "behavior", step, *tag)))
        return Batch.concat(parts)
