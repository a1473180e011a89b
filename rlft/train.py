"""Train one model with one algorithm on math problems, on-policy, off-policy or mixed.

    python -m rlft.train --algo agro --preset tiny --offpolicy 0.5 --steps 100 --out runs/agro

Writes OUT/config.json, OUT/metrics.jsonl (one line per step; test-set evaluation every
--eval-every steps) and OUT/checkpoint/. Rerunning the same command resumes from the checkpoint.

Several processes (DDP through accelerate; each generates and learns from its share of the groups,
with loss normalisers summed over all of them, so the step equals the one-process step):

    accelerate launch --multi_gpu --num_processes 2 -m rlft.train --algo agro --steps 5

On a machine without GPUs this starts 2 CPU processes with the gloo backend. (`accelerate launch
--cpu --num_processes 2` starts ONE process unless accelerate is set up to launch through mpirun.)
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from rlft import cli
from rlft.errors import NonFiniteLoss, UsageError
from rlft.objective import objective_gap
from rlft.trainer import TrainConfig, Trainer


def parse_hp(items: list[str], flag: str = "--hp") -> dict[str, str]:
    """``["beta=0.1", "baseline=loo"]`` -> ``{"beta": "0.1", "baseline": "loo"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def literal(text: str) -> Any:
    """``"2"`` -> 2, ``"0.3"`` -> 0.3, ``"True"`` -> True; anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def build_parser() -> cli.ArgumentParser:
    d = TrainConfig()
    p = cli.ArgumentParser(prog="python -m rlft.train", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default=d.algo, help="registered algorithm name or module:Class (default agro)")
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="algorithm hyper-parameter, repeatable (e.g. --hp beta=0.1 --hp baseline=loo)")
    p.add_argument("--preset", "--model", dest="model", default=d.model,
                   help="model preset (tiny, smollm2-135m), local folder or hub name (default tiny)")
    p.add_argument("--dataset", default=d.dataset, help="data spec: arith, gsm8k[:PATH], math[:PATH], math500[:PATH], champ, rg:TASK, jsonl:PATH")
    p.add_argument("--behavior", default=d.behavior, help="off-policy source: ref | stale:K | dataset:PATH (default ref)")
    p.add_argument("--offpolicy", type=float, default=d.offpolicy, help="share of each batch's groups from the behaviour source, in [0, 1]")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--groups", type=int, default=d.groups, help="prompts per step")
    p.add_argument("--group-size", type=int, default=d.group_size, help="samples per prompt")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (log-probs are scored at it)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling (1 keeps behaviour log-probs exact)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="completion budget; 0: 8 for tiny, else 256")
    p.add_argument("--micro-groups", type=int, default=d.micro_groups, help="groups per micro-batch (0: whole batch)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between test evaluations")
    p.add_argument("--eval-problems", type=int, default=d.eval_problems, help="test problems per evaluation")
    p.add_argument("--eval-samples", type=int, default=d.eval_samples, help="sampled completions per test problem")
    p.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--engine", default=d.engine, help="rollout engine: hf (default), vllm (needs vLLM, see "
                   "DEVELOPERS.md) or auto (vllm if it imports and serves the model, else hf)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable keyword argument of the rollout engine, e.g. for vllm (passed to vllm.LLM) "
                        "--engine-arg tensor_parallel_size=2 --engine-arg gpu_memory_utilization=0.3; "
                        "values are Python literals (numbers, True/False) or strings")
    p.add_argument("--dtype", default=d.dtype, help="float32 (default), bfloat16, or float64 for numerical checks")
    p.add_argument("--recompute-behavior", default=d.recompute_behavior, choices=["auto", "on", "off"],
                   help="replace the behaviour log-probs of on-policy samples by the trainer's own (pi_old) and "
                        "correct the loss for the sampler-trainer mismatch (auto: when the engine's numerics "
                        "differ from the trainer's, e.g. vllm, or the algorithm needs pi_old, e.g. ppo)")
    p.add_argument("--rollout-correction", default=d.rollout_correction,
                   choices=["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
                   help="how ratio-based algorithms weight on-policy samples by pi_old / mu when the behaviour is "
                        "recomputed: clamp the ratio to [min, max] (truncate) or zero it outside (mask), per "
                        "token or per sequence (default sequence_mask, as TRL)")
    p.add_argument("--rollout-correction-min", type=float, default=d.rollout_correction_min,
                   help="lower end of the accepted ratio band (default 0)")
    p.add_argument("--rollout-correction-max", type=float, default=d.rollout_correction_max,
                   help="upper end of the accepted ratio band (default 3)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="CPU threads for torch (0: one for models under 20M parameters, else torch's default)")
    p.add_argument("--objective-beta", type=float, default=d.objective_beta,
                   help="beta of the objective J = E[r] - beta KL(pi || pi_ref) reported at each evaluation "
                        "(default 0.05)")
    p.add_argument("--initial-eval", default=d.initial_eval, metavar="DIR",
                   help="a folder where the step-0 evaluation of pi_ref is kept and reused by runs with the same "
                        "evaluation settings (default: none, evaluate every time)")
    p.add_argument("--report-to", default=d.report_to, choices=["none", "tensorboard", "wandb"],
                   help="also send metrics to an accelerate tracker")
    p.add_argument("--out", default=d.out, help="run directory (default runs/train)")
    p.add_argument("--config", metavar="FILE", help="take every setting from FILE instead of the flags: a JSON "
                   "object of the fields above (as in OUT/config.json, whose \"train\" entry is used); "
                   "benchmarks.run --processes N launches its cells this way")
    return p


def config_from_args(argv: Sequence[str] | None) -> TrainConfig:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if args["config"]:
        if vars(parser.parse_args(["--config", args["config"]])) != args:
            raise UsageError("--config FILE takes every setting from FILE; give no other flags with it")
        return config_from_file(Path(args["config"]), fields)
    args["algo_args"] = parse_hp(args.pop("hp"))
    args["engine_args"] = {key: literal(value) for key, value in parse_hp(args.pop("engine_arg"), "--engine-arg").items()}
    return TrainConfig(**{k: v for k, v in args.items() if k in fields})


def config_from_file(path: Path, fields: set[str]) -> TrainConfig:
    """A TrainConfig from a JSON file of its fields (or an OUT/config.json: its "train" entry)."""
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read a JSON object ({exc})") from None
    settings = settings.get("train", settings) if isinstance(settings, dict) else None
    if not isinstance(settings, dict):
        raise UsageError(f"--config {path}: expected a JSON object of settings")
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise UsageError(f"--config {path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return TrainConfig(**settings)


def warn_if_one_cpu_process() -> None:
    """`accelerate launch --cpu --num_processes N` (N > 1) starts one process without telling."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in os.environ \
            and "WORLD_SIZE" not in os.environ:
        print("rlft.train: note: this is ONE process: `accelerate launch --cpu` starts several only through "
              "mpirun; for N CPU processes (DDP over gloo) use `accelerate launch --multi_gpu --num_processes N`",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    warn_if_one_cpu_process()
    trainer = Trainer(config_from_args(argv))
    try:
        records = trainer.train()
    except NonFiniteLoss as exc:  # recorded in error.json; the last checkpoint is kept
        step = trainer.checkpoint_step()
        kept = f"the checkpoint of step {step} is kept" if step else "no checkpoint was written yet"
        print(f"error: {exc}; the run stopped (details in {trainer.out / 'error.json'}; {kept}); try a lower --lr "
              "or other settings with another --out", file=sys.stderr)
        raise SystemExit(1) from None
    evals = [r for r in records if "eval_accuracy" in r]
    if evals and trainer.is_main:
        first, last = evals[0], evals[-1]
        print(f"test accuracy {first['eval_accuracy']:.3f} -> {last['eval_accuracy']:.3f} "
              f"(greedy {first['eval_greedy_accuracy']:.3f} -> {last['eval_greedy_accuracy']:.3f}), "
              f"KL to pi_ref {last['eval_kl_ref']:.3f}; metrics in {trainer.out / 'metrics.jsonl'}")
        if "eval_optimal_objective" in first:
            optimum = first["eval_optimal_objective"]
            gap = objective_gap(last["eval_objective"], optimum, first["eval_objective"])
            print(f"objective J = E[r] - {trainer.config.objective_beta:g} KL: {first['eval_objective']:.3f} -> "
                  f"{last['eval_objective']:.3f}, optimum J* {optimum:.3f}, normalised gap 1 -> {gap:.3f}")


if __name__ == "__main__":
    cli.run(main)
