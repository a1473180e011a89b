"""Speed of the LM benchmark itself: seconds per tiny step, sweep cells per hour with ``--jobs 2``
against ``--jobs 1``, and what each fast path of a step saves, measured side by side in one run.

    python -m benchmarks.sweep_speed                  # writes the "sweep" and "fast-paths" sections of results/throughput.md

Runs the same small sweep of the default benchmark (``--algos`` x ``--offpolicy`` x ``--seeds``,
every other setting the default) twice, in fresh temporary folders: once with ``--jobs 1`` (the
cells one after another in one process) and once with ``--jobs N`` (N pinned workers), as
subprocesses; reports wall time, cells per hour and the median seconds per training step of each,
and checks that both runs gave every cell the same final accuracy (they must: the cells are
deterministic, and each runs on one thread either way).

Then the fast paths (:data:`FAST_PATHS`): one default cell's trainer (one thread) runs blocks of
steps and evaluations with all of them on, and with each switched off in turn, in rotation, so
that every variant meets the same machine load; the medians and their ratios are reported.
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from benchmarks import run
from benchmarks.parallel import usable_cores
from benchmarks.throughput import versions, write_section
from rlft import cli, prefill
from rlft.models.tiny import TINY_ATTENTION
from rlft.trainer import TrainConfig, Trainer


def run_sweep(argv: list[str], out: Path) -> float:
    """Run ``python -m benchmarks.run ARGV --out OUT``; return its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.run", *argv, "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def step_seconds(out: Path) -> list[float]:
    """Every training step's wall time in the sweep folder's runs."""
    values = []
    for path in (out / "runs").glob("*/metrics.jsonl"):
        values += [r["step_seconds"] for r in map(json.loads, path.read_text().splitlines()) if "step_seconds" in r]
    return values


def _attention(trainer, on: bool) -> None:
    """The tiny preset's eager attention (on) or transformers' default SDPA kernel (off)."""
    for model in (trainer.model, trainer.ref_model):
        model.config._attn_implementation = TINY_ATTENTION if on else "sdpa"


def _shared_prefix(trainer, on: bool) -> None:
    """The prompts' common prefix run once (on), or only each distinct prompt once (off)."""
    prefill.MIN_SHARED_PREFIX = SHARED_PREFIX if on else 10**9


def _drop_finished(trainer, on: bool) -> None:
    """The sampling loop stops running the model on rows that have stopped (on), or not (off)."""
    for engine in (trainer.engine, getattr(getattr(trainer.behavior, "sampler", None), "engine", None)):
        if engine is not None:
            engine.drop_finished = on


SHARED_PREFIX = prefill.MIN_SHARED_PREFIX
#: Each fast path of a step: name -> switch(trainer, on).
FAST_PATHS = {"eager attention (tiny preset)": _attention, "shared prompt prefix": _shared_prefix,
              "dropping finished rows": _drop_finished}


def fast_path_seconds(rounds: int = 5, steps: int = 3, evals: int = 2) -> list[tuple[str, float, float]]:
    """``[(variant, median s per step, median s per evaluation)]``: all fast paths on, then each off in
    turn, rotated ``rounds`` times, ``steps`` steps per block (and an evaluation in the first ``evals``)."""
    config = TrainConfig(**run.SWEEP_DEFAULTS, algo="agro", offpolicy=0.5, seed=0, threads=1,
                         out=tempfile.mkdtemp(prefix="rlft-fast-paths-"))
    trainer = Trainer(config)
    variants = ["all on", *FAST_PATHS]
    step_times: dict[str, list[float]] = {v: [] for v in variants}
    eval_times: dict[str, list[float]] = {v: [] for v in variants}
    step = 1
    for _ in range(2):  # warm-up
        trainer.step(step)
        step += 1
    for round_ in range(rounds):
        for variant in variants:
            for name, switch in FAST_PATHS.items():
                switch(trainer, name != variant)
            for _ in range(steps):
                start = time.perf_counter()
                trainer.step(step)
                step_times[variant].append(time.perf_counter() - start)
                step += 1
            if round_ < evals:
                start = time.perf_counter()
                trainer.evaluator.evaluate(step)
                eval_times[variant].append(time.perf_counter() - start)
    for switch in FAST_PATHS.values():
        switch(trainer, True)
    return [(v, statistics.median(step_times[v]), statistics.median(eval_times[v])) for v in variants]


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m benchmarks.sweep_speed", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default="agro,grpo")
    p.add_argument("--offpolicy", default="0,1")
    p.add_argument("--seeds", default="0")
    p.add_argument("--jobs", type=int, default=len(usable_cores()), help="workers of the parallel run (default: the cores)")
    p.add_argument("--out", default="results/throughput.md")
    args = p.parse_args(argv)
    sweep = ["--algos", args.algos, "--offpolicy", args.offpolicy, "--seeds", args.seeds]
    rows, finals = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in (1, args.jobs):
            out = Path(tmp) / f"jobs{jobs}"
            seconds = run_sweep([*sweep, "--jobs", str(jobs)], out)
            summary = pd.read_csv(out / "summary.csv")
            finals[jobs] = summary.sort_values("cell")["final_accuracy"].tolist()
            rows.append((jobs, len(summary), seconds, statistics.median(step_seconds(out))))
    same = finals[1] == finals[args.jobs]
    steps, groups = run.SWEEP_DEFAULTS["steps"], run.SWEEP_DEFAULTS["groups"]
    lines = ["## The benchmark's own speed", "",
             f"`python -m benchmarks.sweep_speed` ({platform.processor() or platform.machine()}, "
             f"{len(usable_cores())} usable cores, {versions()}): the default benchmark's cells "
             f"(`{' '.join(sweep)}`, {steps} steps of {groups} prompts x {TrainConfig.group_size} samples, evaluation "
             f"of 500 x 8 at steps 0 and {steps}), run with `--jobs 1` and then `--jobs N` in fresh folders, side by "
             "side in one run.", "",
             "| --jobs | cells | wall s | cells per hour | median s per step |", "|---:|---:|---:|---:|---:|"]
    for jobs, cells, seconds, step in rows:
        lines.append(f"| {jobs} | {cells} | {seconds:.0f} | {3600 * cells / seconds:.0f} | {step:.3f} |")
    lines += ["", f"Speed-up of --jobs {args.jobs}: {rows[0][2] / rows[1][2]:.2f}x. Final accuracies of the "
              f"cells {'identical' if same else 'DIFFER'} between the two runs."]
    write_section(Path(args.out), "sweep", lines)
    print("\n".join(lines))

    timed = fast_path_seconds()
    base_step, base_eval = timed[0][1], timed[0][2]
    lines = ["## What each fast path of a step saves", "",
             f"`python -m benchmarks.sweep_speed`, same run: one default cell (agro, offpolicy 0.5, "
             f"{run.SWEEP_DEFAULTS['groups']} prompts x {TrainConfig.group_size} samples, one thread) runs blocks of "
             "3 steps, and an evaluation of 500 x 8 (+ greedy) in the first two rounds, with every fast path on and "
             "with each switched off in turn, rotated 5 times; medians. A ratio above 1 is the slowdown without it.", "",
             "| variant | s per step | x all on | s per evaluation | x all on |", "|---|---:|---:|---:|---:|"]
    for variant, step, evaluation in timed:
        name = variant if variant == "all on" else f"without {variant}"
        lines.append(f"| {name} | {step:.3f} | {step / base_step:.2f} | {evaluation:.2f} | {evaluation / base_eval:.2f} |")
    write_section(Path(args.out), "fast-paths", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
