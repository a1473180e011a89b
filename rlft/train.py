"""Train one model with one algorithm on math problems, on-policy, off-policy or mixed.

    python -m rlft.train --algo agro --preset tiny --offpolicy 0.5 --steps 100 --out runs/agro
    python -m rlft.train --config recipe.yaml --steps 50    # a YAML recipe; flags override it

Every flag is a field of rlft.config.TrainConfig (its type, default and help are defined there).

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
import os
import sys
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


#: TrainConfig fields set by plain flags (the dict fields have their KEY=VALUE flags --hp and --engine-arg)
TRAIN_FLAGS = cli.flags_of(TrainConfig)


def build_parser() -> cli.ConfigParser:
    """Every TrainConfig field as a flag (rlft/config.py holds their types, defaults and help), plus
    ``--hp``, ``--engine-arg`` and ``--config``."""
    p = cli.ConfigParser([TRAIN_FLAGS], prog="python -m rlft.train", description=__doc__)
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                   help="algorithm hyper-parameter, repeatable (e.g. --hp beta=0.1 --hp baseline=loo)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable keyword argument of the rollout engine, e.g. for vllm (passed to vllm.LLM) "
                        "--engine-arg tensor_parallel_size=2 --engine-arg gpu_memory_utilization=0.3; "
                        "values are Python literals (numbers, True/False) or strings")
    p.add_argument("--config", metavar="FILE",
                   help="a recipe: a YAML (or JSON) mapping of the settings above by field name (algo_args and "
                        "engine_args as mappings), e.g. an OUT/config.json; flags given with it override it")
    return p


def config_from_args(argv: Sequence[str] | None) -> TrainConfig:
    """The run's TrainConfig: the recipe of ``--config`` (if any), overridden by the flags given."""
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    args, recipe = cli.parse_with_recipe(build_parser(), argv, known=fields)
    settings = {k: v for k, v in vars(args).items() if k in fields}
    for name, flag_items, values in (("algo_args", args.hp, str), ("engine_args", args.engine_arg, literal)):
        from_file = recipe.get(name, {})
        if not isinstance(from_file, dict):
            raise UsageError(f"--config: {name} must be a mapping of names to values, got {from_file!r}")
        given = parse_hp(flag_items, "--hp" if name == "algo_args" else "--engine-arg")
        settings[name] = {**from_file, **{k: values(v) for k, v in given.items()}}
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
