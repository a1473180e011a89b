"""Our GRPO training step against TRL's GRPOTrainer on the same work, alternating A/B in one process.

Measured: the wall time of one optimizer step of each, on the same model and the same work:

* ours: ``rlft.trainer.Trainer(TrainConfig(algo="grpo", ...)).step(s)``: the step's problems,
  sampling with the rollout engine (``--engines``: hf and/or vllm), grading, reference log-probs,
  policy forward / loss / backward, clip + AdamW step, weight sync.
* TRL (1.16, ``pip install -e ".[trl]"``): ``GRPOTrainer.train()``; a step is the wall time from
  the end of the previous step to ``on_step_end`` (batch fetch, ``transformers`` generate, reward,
  reference log-probs, policy forward / backward, clip + AdamW step, scheduler). Its only
  generation backend on a CPU is ``transformers``' generate (TRL's vLLM modes need a GPU server
  or a colocated CUDA engine).

Both start from the same weights and see the same prompt texts (``rlft.data.format_prompt``,
tokenised by the same tokenizer), in the same order (step ``s`` of each uses our trainer's
``problems_for_step(s)``), with the same batch (``groups`` prompts x ``group_size`` samples),
completion budget, sampling settings (temperature, top_p, top_k = 0), reward (``rlft.rewards.Grader``),
loss (token-level PPO clip at 0.2, group-normalised advantages, token mean over the batch, one
iteration per batch), KL term (the same beta, the k3 estimator in both), optimizer (AdamW with our
trainer's lr, betas, eps, weight decay 0, constant lr, no warm-up, clipping at max_grad_norm) and
dtype (float32, no gradient checkpointing, no autocast), on the same torch threads.

Alternating A/B: ``rounds`` rounds, each ``round_steps`` steps of ours then ``round_steps`` steps of
TRL, each continuing its own training state, so that load from other processes on the machine
hits both alike. The first ``warmup`` steps of each are not counted (kernels for new shapes,
allocator growth); the report gives the median over the remaining steps and the ratio of medians.
Our steps are also split into phases (:mod:`benchmarks.phases`).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from rlft.errors import UsageError

TRL_VERSION = "1.16"
#: torch's thread count when this module was imported: each comparison starts from it, so a
#: trainer's choice for one model (1 thread for tiny) does not leak into the next.
PROCESS_THREADS = torch.get_num_threads()
TRL_INSTALL_HINT = 'pip install -e ".[trl]" (TRL 1.16, only for this benchmark)'


@dataclass(frozen=True)
class Work:
    """One model's share of the comparison: the batch of a step and how many steps to time."""

    model: str
    groups: int  # prompts per step
    group_size: int  # samples per prompt
    max_new_tokens: int
    rounds: int
    round_steps: int  # steps of each per round

    @property
    def steps(self) -> int:
        return self.rounds * self.round_steps


#: Default work per model: tiny at its training batch; SmolLM2 (~80 s a step at 2 x 4 x 128 tokens
#: here) with short completions and few steps.
DEFAULT_WORK = {
    "tiny": Work("tiny", groups=16, group_size=8, max_new_tokens=8, rounds=6, round_steps=2),
    "smollm2-135m": Work("smollm2-135m", groups=2, group_size=4, max_new_tokens=32, rounds=4, round_steps=1),
}
FALLBACK_WORK = Work("", groups=2, group_size=4, max_new_tokens=32, rounds=4, round_steps=1)


@dataclass
class Comparison:
    """Step times of both, in seconds, in the order they ran, and our phases (per counted step)."""

    work: Work
    engine: str
    warmup: int
    ours: list[float] = field(default_factory=list)
    trl: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    trl_phases: dict[str, float] = field(default_factory=dict)
    threads: int = 0
    tokens_ours: float = 0.0  # mean completion tokens per sample
    tokens_trl: float = 0.0
    note: str = ""  # why nothing was measured

    def median(self, times: list[float]) -> float:
        counted = times[self.warmup:]
        return statistics.median(counted) if counted else float("nan")

    @property
    def ratio(self) -> float:
        return self.median(self.ours) / self.median(self.trl)


def trl_import_error() -> str | None:
    """``None`` if TRL 1.16 imports here, else a one-line reason."""
    try:
        import trl
    except Exception as exc:  # noqa: BLE001 - any broken install
        return f"TRL does not import ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
    if not trl.__version__.startswith(TRL_VERSION + "."):
        return f"TRL {trl.__version__} is installed; this benchmark is written against TRL {TRL_VERSION}"
    return None


def require_trl() -> None:
    """Raise a one-line :class:`UsageError` saying how to install TRL when it is missing."""
    error = trl_import_error()
    if error is not None:
        raise UsageError(f"--vs-trl needs TRL {TRL_VERSION}: {error}; install it with {TRL_INSTALL_HINT}")


def work_for(model: str, rounds: int = 0, round_steps: int = 0) -> Work:
    """The default :class:`Work` for ``model``, with ``rounds`` / ``round_steps`` overriding when > 0."""
    work = DEFAULT_WORK.get(model, dataclasses.replace(FALLBACK_WORK, model=model))
    return dataclasses.replace(work, rounds=rounds or work.rounds, round_steps=round_steps or work.round_steps)


# ------------------------------------------------------------------------------------------ ours
def build_ours(work: Work, engine: str, out: str, threads: int = 0):
    from rlft.trainer import TrainConfig, Trainer

    config = TrainConfig(algo="grpo", model=work.model, dataset="arith", steps=work.steps, groups=work.groups,
                         group_size=work.group_size, max_new_tokens=work.max_new_tokens, engine=engine,
                         out=out, seed=0, threads=threads)
    return Trainer(config)


# ------------------------------------------------------------------------------------------- TRL
def trl_config(ours, work: Work, out: str):
    """A GRPOConfig doing our trainer's work (see the module docstring); values read from ``ours``."""
    from trl import GRPOConfig

    cfg, algo = ours.config, ours.algorithm.config
    group = ours.optimizer.param_groups[0]
    rows = work.groups * work.group_size
    return GRPOConfig(
        output_dir=out, use_cpu=True, seed=cfg.seed, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, generation_batch_size=rows,
        num_generations=work.group_size, max_completion_length=cfg.completion_budget,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
        beta=algo.beta, epsilon=algo.clip_eps, epsilon_high=algo.clip_eps_high, num_iterations=1,
        loss_type="dapo", scale_rewards=algo.scale_rewards, mask_truncated_completions=False,
        optim="adamw_torch_fused" if group.get("fused") else "adamw_torch", learning_rate=group["lr"], adam_beta1=group["betas"][0], adam_beta2=group["betas"][1],
        adam_epsilon=group["eps"], weight_decay=group["weight_decay"], lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=cfg.max_grad_norm, max_steps=work.steps, shuffle_dataset=False, dataloader_num_workers=0,
        logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, log_completions=False,
    )


def trl_dataset(ours, work: Work):
    """Our trainer's problems of steps 1..steps, in order, as TRL rows (prompt text, answer)."""
    from datasets import Dataset

    problems = [p for step in range(1, work.steps + 1) for p in ours.problems_for_step(step)]
    return Dataset.from_dict({"prompt": [ours.prompt(p.question) for p in problems],
                              "answer": [p.answer for p in problems]})


def arith_reward(grader):
    """TRL reward function: our grader on the completion texts against the rows' gold answers."""
    def reward(prompts, completions, answer, **_):
        return grader(list(completions), list(answer))
    reward.__name__ = "rlft_grader"
    return reward


def build_trl(ours, work: Work, out: str, callback):
    from trl import GRPOTrainer

    from rlft.models import load_model
    from rlft.rewards import Grader

    model, tokenizer = load_model(work.model, dtype=getattr(torch, ours.config.dtype))
    from transformers import PrinterCallback

    trainer = GRPOTrainer(model=model, reward_funcs=arith_reward(Grader()), args=trl_config(ours, work, out),
                          train_dataset=trl_dataset(ours, work), processing_class=tokenizer, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # its end-of-training summary would break the progress output
    return trainer


def _interleave_callback(comparison: Comparison, run_ours_block: Callable[[], None], work: Work, bar, times):
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        """Times TRL's steps and runs a block of our steps after every ``round_steps`` of TRL's."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self.mark
            comparison.trl.append(seconds)
            if len(comparison.trl) > comparison.warmup:
                times.add_step(seconds)
            else:  # warm-up: forget its phases
                times.seconds.clear()
            bar.update()
            if state.global_step % work.round_steps == 0 and len(comparison.ours) < work.steps:
                run_ours_block()
            self.mark = time.perf_counter()

    return Interleave()


# ---------------------------------------------------------------------------------- the A/B run
def run(work: Work, engine: str, warmup: int, threads: int = 0) -> Comparison:
    """:func:`compare`, or a :class:`Comparison` that says why not when ``engine`` (other than hf)
    cannot run here or cannot serve the model."""
    try:
        return compare(work, engine, warmup, threads)
    except UsageError as exc:
        if engine == "hf":
            raise
        return Comparison(work, engine, warmup, note=str(exc))


def compare(work: Work, engine: str, warmup: int, threads: int = 0) -> Comparison:
    """Run ``work`` with both trainers, alternating blocks of ``round_steps`` steps.

    ``threads``: torch threads for both (0: our trainer's choice: 1 for the tiny preset, else
    torch's default; once a vLLM engine has started in the process, the count it started with).
    """
    from benchmarks.phases import PhaseTimes, instrument, instrument_trl

    comparison = Comparison(work, engine, warmup)
    torch.set_num_threads(PROCESS_THREADS)  # a no-op once a vLLM engine has started (DEVELOPERS.md)
    with tempfile.TemporaryDirectory() as tmp:
        ours = build_ours(work, engine, f"{tmp}/ours", threads)
        comparison.threads = torch.get_num_threads()
        times, tokens = PhaseTimes(), []
        bar = tqdm(total=2 * work.steps, desc=f"{work.model} {engine}: ours vs TRL", unit="step")

        def run_ours_block() -> None:
            with instrument(ours, times):
                for _ in range(work.round_steps):
                    step = len(comparison.ours) + 1
                    start = time.perf_counter()
                    record = ours.step(step)
                    seconds = time.perf_counter() - start
                    comparison.ours.append(seconds)
                    tokens.append(record["completion_tokens"])
                    if step > warmup:
                        times.add_step(seconds)
                    else:  # warm-up: forget its phases
                        times.seconds.clear()
                    bar.update()

        trl_times = PhaseTimes()
        callback = _interleave_callback(comparison, run_ours_block, work, bar, trl_times)
        trl = build_trl(ours, work, f"{tmp}/trl", callback)
        lengths = _watch_generations(trl, ours, work)
        run_ours_block()
        with instrument_trl(trl, trl_times):
            trl.train()
        bar.close()
        if hasattr(ours.engine, "close"):  # a vLLM engine holds its KV cache until closed
            ours.engine.close()
    comparison.phases = times.per_step()
    comparison.trl_phases = trl_times.per_step()
    comparison.tokens_ours = statistics.fmean(tokens)
    comparison.tokens_trl = statistics.fmean(lengths) if lengths else float("nan")
    return comparison


def _watch_generations(trl, ours, work: Work) -> list[float]:
    """Check that TRL's step ``k`` samples the very prompt texts of our step ``k`` (each repeated
    ``group_size`` times); return the list its mean completion length per step is appended to."""
    lengths: list[float] = []
    generate = trl._generate

    def checked(prompts):
        step = len(lengths) + 1
        expected = [ours.prompt(p.question) for p in ours.problems_for_step(step) for _ in range(work.group_size)]
        if list(prompts) != expected:
            raise RuntimeError(f"TRL's step {step} got other prompts than ours: the comparison would be unfair")
        out = generate(prompts)
        lengths.append(statistics.fmean(len(ids) for ids in out[1]))
        return out

    trl._generate = checked
    return lengths


# ------------------------------------------------------------------------------------ reporting
def summary_line(c: Comparison) -> str:
    """One line for the terminal: both medians and their ratio (or why nothing was measured)."""
    head = f"{c.work.model} {c.engine}"
    if c.note:
        return f"{head}: not measured ({c.note})"
    return (f"{head}: median step ours {c.median(c.ours):.3f} s, TRL {c.median(c.trl):.3f} s, "
            f"ratio ours/TRL {c.ratio:.2f} ({len(c.ours) - c.warmup} steps each after {c.warmup} warm-up)")


def markdown(comparisons: list[Comparison], seconds: float, versions: str, command: str) -> list[str]:
    """The report section: settings, the step-time table and the phase tables per model."""
    import trl

    lines = [
        "# Training step: ours against TRL's GRPOTrainer",
        "",
        f"Regenerate with `{command}` (TRL installed with "
        f"`{TRL_INSTALL_HINT.split(' (')[0]}`; the vllm rows need the vLLM environment, see DEVELOPERS.md). "
        f"TRL {trl.__version__}, {versions}. Took {seconds:.0f} s. Same process, same model weights, "
        "same prompts in the same order, same batch, completion budget, sampling (top_k 0), reward "
        "(`rlft.rewards.Grader`), loss (token-level PPO clip 0.2, group-normalised advantages, token "
        "mean, one iteration per batch), KL term (beta of our grpo; the k3 estimator "
        "exp(ref - logp) - (ref - logp) - 1 per token in both), AdamW (lr, betas, eps of our trainer, "
        "weight decay 0, constant lr, clipping at max_grad_norm 1), float32 with no gradient "
        "checkpointing and no autocast, same torch threads (per row; once a vLLM engine has started "
        "in the process it keeps the count it started with). TRL generates with transformers' "
        "`generate` (its vLLM modes need a GPU); our engine is named per row.",
        "",
        "Alternating A/B: each round runs a block of our steps, then a block of TRL's, each continuing its own "
        "training. A TRL step is timed from the end of its previous step (or of our block) to `on_step_end`, "
        "so it includes its batch fetch. Medians exclude the first warm-up steps of each. The machine is "
        "shared with other jobs: absolute times vary between runs, the alternation keeps the ratio fair.",
        "",
        "| model | engine | prompts x samples | max new tokens | mean completion tokens ours / TRL | threads "
        "| steps each (after warm-up) | ours median s | TRL median s | ours / TRL |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in comparisons:
        w = c.work
        batch = f"{w.groups} x {w.group_size}"
        if c.note:
            lines.append(f"| {w.model} | {c.engine} | {batch} | {w.max_new_tokens} | - | - | - | - | - | "
                         f"not measured: {c.note} |")
            continue
        lines.append(f"| {w.model} | {c.engine} | {batch} | {w.max_new_tokens} | {c.tokens_ours:.1f} / "
                     f"{c.tokens_trl:.1f} | {c.threads} | {len(c.ours) - c.warmup} ({c.warmup}) | "
                     f"{c.median(c.ours):.3f} | {c.median(c.trl):.3f} | {c.ratio:.2f} |")
    for c in comparisons:
        if c.note or not c.phases:
            continue
        ours, trl = sum(c.phases.values()), sum(c.trl_phases.values())
        lines += ["", f"Where the step goes: {c.work.model}, our {c.engine} engine (mean seconds per counted step; "
                      "`benchmarks/phases.py` says what each phase covers; TRL has no separate data or "
                      "weight-sync phase: its batch fetch is in other).", "",
                  "| phase | ours seconds per step | ours share | TRL seconds per step | TRL share |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for phase, seconds in c.phases.items():
            theirs = c.trl_phases.get(phase, 0.0)
            lines.append(f"| {phase} | {seconds:.3f} | {100 * seconds / ours:.0f} % | {theirs:.3f} | "
                         f"{100 * theirs / trl:.0f} % |")
        lines.append(f"| total | {ours:.3f} | 100 % | {trl:.3f} | 100 % |")
    return lines
