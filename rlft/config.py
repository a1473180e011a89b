"""The settings of one training run (``TrainConfig``): each defined once, with its help text.

Each field is declared with ``algorithms.base.hp`` (default, help), as algorithm hyper-parameters
are. ``rlft.train`` and ``benchmarks.run`` derive their flags from these fields (``rlft.cli.flags_of``,
through transformers' ``HfArgumentParser``), a recipe file (``--config recipe.yaml``) sets them by
name, and every run saves them in ``OUT/config.json``. Invalid values are one-line errors that name
the flag (``--group-size``), raised when the config is built, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any

from algorithms.base import hp
from rlft import rollout_correction
from rlft.errors import UsageError
from rlft.lora import parse_lora
from rlft.models import default_max_new_tokens


def flag(name: str) -> str:
    """The command-line flag of TrainConfig field ``name`` (``group_size`` -> ``--group-size``), as
    ``rlft.train`` and ``benchmarks.run`` spell it; error messages name settings by it."""
    return {"algo_args": "--hp", "engine_args": "--engine-arg"}.get(name) or "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved as ``OUT/config.json``)."""

    algo: str = hp("agro", "registered algorithm name or module:Class")
    algo_args: dict[str, Any] = hp({}, "algorithm hyper-parameter overrides (--hp KEY=VALUE)")
    model: str = hp("tiny", "model preset (tiny, smollm2-135m), local folder or hub name",
                         aliases=["--preset"])
    dataset: str = hp("arith", "data spec: arith[:ops=+-*,digits=2], gsm8k[:PATH], math[:PATH], "
                                    "math500[:PATH], champ, rg:TASK, jsonl:PATH")
    behavior: str = hp("ref", "off-policy source: ref (pi_ref samples, drawn once per prompt), stale:K (the "
                                   "policy K steps ago) or dataset:PATH (jsonl of prompt, completion, reward)")
    offpolicy: float = hp(0.0, "share of each batch's groups from the behaviour source, in [0, 1]")
    steps: int = hp(100, "optimizer steps")
    groups: int = hp(16, "prompts per step")
    group_size: int = hp(8, "samples per prompt")
    lr: float = hp(3e-5, "AdamW learning rate")
    temperature: float = hp(1.0, "sampling temperature (log-probs are scored at it)")
    top_p: float = hp(1.0, "nucleus sampling (1 keeps behaviour log-probs exact)")
    max_new_tokens: int = hp(0, "completion budget; 0: the model preset's (8 for tiny, else 256)")
    micro_groups: int = hp(0, "groups per micro-batch, with gradients and without (pi_ref, pi_old, evaluation): "
                              "bounds activation memory (0: the whole batch at once)")
    score_chunk_tokens: int = hp(0, "positions per chunk of the output projection when scoring: no [B, T, V] tensor "
                                    "(0: as many as fit 64 MiB of float32 logits on a CPU, 512 MiB on a GPU; rlft/scoring.py)")
    gradient_checkpointing: bool = hp(False, "recompute each decoder layer's activations in the backward pass "
                                             "(transformers' own): less memory, about a third more compute")
    max_grad_norm: float = hp(1.0, "gradient clipping norm")
    eval_every: int = hp(25, "steps between test evaluations (also at step 0 and the last step)")
    eval_problems: int = hp(200, "test problems per evaluation (the same for every seed)")
    eval_samples: int = hp(4, "sampled completions per test problem, besides one greedy")
    save_every: int = hp(25, "steps between checkpoints: a killed run resumes from the last")
    seed: int = hp(0, "seed of the data order, sampling and initialisation")
    engine: str = hp("hf", "rollout engine: hf, vllm (needs vLLM, see DEVELOPERS.md) or auto (vllm if it "
                                "imports and serves the model, else hf), or a plug-in")
    engine_args: dict[str, Any] = hp({}, "keyword arguments of the engine (--engine-arg KEY=VALUE)")
    report_to: str = hp("none", "also send metrics to an accelerate tracker: none, tensorboard or wandb")
    out: str = hp("runs/train", "run directory")
    dtype: str = hp("float32", "float32; bfloat16: mixed precision, float32 master weights and bfloat16 forward "
                               "(rlft/precision.py; fast only on CPUs with native bf16: README); float64 for numerical "
                               "checks")
    threads: int = hp(0, "CPU threads for torch (0: one for models under 20M parameters, else torch's default)")
    fsdp: bool = hp(False, "shard the policy, its gradients and AdamW's state over the processes with torch's FSDP2 "
                           "(under torchrun or accelerate launch; rlft/fsdp.py)")
    lora: str = hp("", "train LoRA adapters only, through peft: r=16,alpha=32,targets=q_proj,v_proj (targets default "
                       "all-linear; rlft/lora.py); empty: train every weight")
    # the sampler-trainer mismatch of on-policy rows (rlft/rollout_correction.py)
    recompute_behavior: str = hp(
        "auto", "auto, on or off: replace the behaviour log-probs of on-policy samples by the trainer's own "
        "(pi_old) and correct the loss for the sampler-trainer mismatch (auto: when the engine's numerics differ "
        "from the trainer's, e.g. vllm, or the algorithm needs pi_old, e.g. ppo)")
    rollout_correction: str = hp(
        "sequence_mask", "how ratio-based algorithms weight on-policy samples by pi_old / mu when the behaviour is "
        f"recomputed ({', '.join(rollout_correction.MODES)}): clamp the ratio to [min, max] (truncate) or zero it "
        "outside (mask), per token or per sequence")
    rollout_correction_min: float = hp(0.0, "lower end of the accepted pi_old / mu band")
    rollout_correction_max: float = hp(3.0, "upper end of the accepted pi_old / mu band")
    objective_beta: float = hp(0.05, "beta of the objective J = E[r] - beta KL(pi || pi_ref) reported at each "
                                          "evaluation (rlft/objective.py)")
    reward: str = hp("math", "reward: a registered name (math: math-verify grading of the final answer, 0/1) "
                                  "or package.module:Class, called as reward(completions, golds) -> [float]")
    initial_eval: str = hp("", "a folder where the step-0 evaluation of pi_ref is kept and reused by runs with "
                                    "the same evaluation settings (a sweep's cells; empty: evaluate every time)")

    def __post_init__(self) -> None:
        hints = _type_hints()
        for item in dataclasses.fields(self):  # a recipe file can hold anything: check the types first
            value, kind = getattr(self, item.name), hints[item.name]
            allowed = {int: (int,), float: (int, float), str: (str,)}.get(kind, (typing.get_origin(kind) or kind,))
            if not isinstance(value, allowed) or (isinstance(value, bool) and kind is not bool):
                raise UsageError(f"{flag(item.name)} must be {getattr(kind, '__name__', str(kind))}, got {value!r}")
        for item in dataclasses.fields(self):  # NaN passes every comparison below: refuse it first
            value = getattr(self, item.name)
            if isinstance(value, float) and math.isnan(value):
                raise UsageError(f"{flag(item.name)} is NaN; give a number")
        if not 0.0 <= self.offpolicy <= 1.0:
            raise UsageError(f"{flag('offpolicy')} {self.offpolicy:g} is outside [0, 1]; it is the share of "
                             "off-policy groups per batch")
        for name in ("steps", "groups", "group_size", "eval_problems", "eval_samples", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("max_new_tokens", "micro_groups", "threads", "score_chunk_tokens"):
            if getattr(self, name) < 0:
                raise UsageError(f"{flag(name)} must be >= 0 (0: automatic), got {getattr(self, name)}")
        if self.lora:
            parse_lora(self.lora)  # one line on a bad spec, before anything loads
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"{flag('top_p')} must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"{flag('lr')} must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"{flag('temperature')} must be a finite number > 0 for training (log-probs are "
                             f"scored at it), got {self.temperature}")
        if self.recompute_behavior not in ("auto", "on", "off"):
            raise UsageError(f"{flag('recompute_behavior')} must be auto, on or off, got {self.recompute_behavior!r}")
        if self.rollout_correction not in rollout_correction.MODES:
            raise UsageError(f"{flag('rollout_correction')} {self.rollout_correction!r} is unknown; use one of "
                             f"{', '.join(rollout_correction.MODES)}")
        if not 0.0 <= self.rollout_correction_min < self.rollout_correction_max:
            raise UsageError(f"need 0 <= {flag('rollout_correction_min')} < {flag('rollout_correction_max')}, got "
                             f"{self.rollout_correction_min:g} and {self.rollout_correction_max:g}")
        if not (math.isfinite(self.objective_beta) and self.objective_beta > 0):
            raise UsageError(f"{flag('objective_beta')} must be a finite number > 0, got {self.objective_beta}")
        if self.dtype not in ("float32", "bfloat16", "float64"):
            raise UsageError(f"{flag('dtype')} must be float32, bfloat16 or float64 (for numerical checks), "
                             f"got {self.dtype!r}")

    @property
    def completion_budget(self) -> int:
        """``max_new_tokens``, or the model preset's default when it is 0 (``rlft.models``)."""
        return self.max_new_tokens or default_max_new_tokens(self.model)



@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)
