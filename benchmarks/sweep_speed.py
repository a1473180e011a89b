"""Speed of the LM benchmark itself: seconds per tiny step, and sweep cells per hour with
``--jobs 2`` against ``--jobs 1``, measured side by side in one run.

    python -m benchmarks.sweep_speed                  # writes the "sweep" section of results/throughput.md

Runs the same small sweep of the default benchmark (``--algos`` x ``--offpolicy`` x ``--seeds``,
every other setting the default) twice, in fresh temporary folders: once with ``--jobs 1`` (the
cells one after another in one process) and once with ``--jobs N`` (N pinned workers), as
subprocesses; reports wall time, cells per hour and the median seconds per training step of each,
and checks that both runs gave every cell the same final accuracy (they must: the cells are
deterministic, and each runs on one thread either way).
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

from benchmarks.parallel import usable_cores
from benchmarks.throughput import versions, write_section
from rlft import cli


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
    lines = ["## The benchmark's own speed", "",
             f"`python -m benchmarks.sweep_speed` ({platform.processor() or platform.machine()}, "
             f"{len(usable_cores())} usable cores, {versions()}): the default benchmark's cells "
             f"(`{' '.join(sweep)}`, 30 steps of 16 prompts x 8 samples, evaluation of 500 x 8 at steps 0 and "
             "30), run with `--jobs 1` and then `--jobs N` in fresh folders, side by side in one run.", "",
             "| --jobs | cells | wall s | cells per hour | median s per step |", "|---:|---:|---:|---:|---:|"]
    for jobs, cells, seconds, step in rows:
        lines.append(f"| {jobs} | {cells} | {seconds:.0f} | {3600 * cells / seconds:.0f} | {step:.3f} |")
    lines += ["", f"Speed-up of --jobs {args.jobs}: {rows[0][2] / rows[1][2]:.2f}x. Final accuracies of the "
              f"cells {'identical' if same else 'DIFFER'} between the two runs."]
    write_section(Path(args.out), "sweep", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
