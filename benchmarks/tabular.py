"""The tabular benchmark: Figure 1 of Tang et al. (arXiv:2503.19612) for every algorithm.

    python -m benchmarks.tabular --algos agro,reinforce --offpolicy 0,1 --out results/tabular
    python -m benchmarks.tabular --algos agro --grid agro.shift=0,0.1 --grid agro.anchor=0,1

Each cell (algorithm x off-policy share x seed) trains a softmax policy on a random K-armed bandit
(rlft.tabular) and records the normalised KL(pi_t, pi*) / KL(pi_ref, pi*) every few steps. A share
``offpolicy`` of each batch's groups is drawn from pi_ref instead of pi. Cells are written as they
finish and skipped when the command is rerun; the tables and plot are rebuilt at the end (and by
``python -m benchmarks.report DIR``).

--grid KEY=V1,V2 (repeatable; benchmarks.grid) multiplies the cells by the values of a run setting
(lr, beta, arms, ...) or an algorithm hyper-parameter (ALGO.KEY for one algorithm only); the table
and plot label each variant ``algo key=value``. The algorithms' beta follows the run's --beta.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Sequence

import pandas as pd
from tqdm import tqdm

import algorithms
from benchmarks import grid as grid_keys
from benchmarks import report
from benchmarks.store import ResultStore, cell_name
from rlft import cli
from rlft.errors import UsageError
from rlft.tabular import TabularRun, train

DEFAULTS = TabularRun()
#: TabularRun fields that --grid cannot sweep: the cell axes and bookkeeping.
NOT_GRIDDABLE = ("offpolicy", "seed", "log_every")


def parse_args(argv: Sequence[str] | None):
    p = cli.ArgumentParser(prog="python -m benchmarks.tabular", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default=",".join(algorithms.available()),
                   help="comma list of algorithm names or module:Class (default: all registered)")
    p.add_argument("--offpolicy", default="0,0.5,1", help="comma list of off-policy shares in [0, 1] (default 0,0.5,1)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2); each seed is a new bandit")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help=f"SGD steps (default {DEFAULTS.steps})")
    p.add_argument("--arms", type=int, default=DEFAULTS.arms, help=f"K, number of arms (default {DEFAULTS.arms})")
    p.add_argument("--beta", type=float, default=DEFAULTS.beta, help=f"KL strength of the objective (default {DEFAULTS.beta})")
    p.add_argument("--group-size", type=int, default=DEFAULTS.group_size, help=f"n, samples per group (default {DEFAULTS.group_size})")
    p.add_argument("--groups", type=int, default=DEFAULTS.groups, help=f"groups per step (default {DEFAULTS.groups})")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"SGD step size on the logits (default {DEFAULTS.lr})")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="repeatable: sweep a run setting (lr=1,3) or an algorithm hyper-parameter "
                        "(agro.shift=0,0.1; see the module docstring)")
    p.add_argument("--out", default="results/tabular", help="output directory (default results/tabular)")
    return p.parse_args(argv)


def build_cells(args) -> list[tuple[dict, algorithms.Algorithm, TabularRun]]:
    """Validate every setting up front and return (keys, algorithm, run settings) per cell."""
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise UsageError(f"--beta must be a finite number > 0 (the KL strength defines pi*), got {args.beta:g}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0 (the SGD step size), got {args.lr:g}")
    for flag, value, low in (("--steps", args.steps, 1), ("--arms", args.arms, 2),
                             ("--group-size", args.group_size, 1), ("--groups", args.groups, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    names = cli.comma_list(args.algos)
    if not names:
        raise UsageError("--algos is empty; known: " + ", ".join(algorithms.available()))
    grid = grid_keys.parse_grid(args.grid, names, TabularRun, NOT_GRIDDABLE)
    base = TabularRun(arms=args.arms, beta=args.beta, group_size=args.group_size, groups=args.groups,
                      steps=args.steps, lr=args.lr)
    cells = []
    for name in names:
        axes = [k for k in grid if name in k.values]
        for point in itertools.product(*(k.values[name] for k in axes)):
            settings = dataclasses.replace(base, **{k.field: v for k, v in zip(axes, point) if k.train})
            overrides = {k.field: v for k, v in zip(axes, point) if not k.train}
            if "beta" in algorithms.get(name).Config.help():
                overrides.setdefault("beta", settings.beta)
            algo = algorithms.make(name, **overrides)
            algo.check_group_size(settings.group_size)
            for offpolicy in cli.fractions(args.offpolicy):
                for seed in cli.int_list(args.seeds, "--seeds"):
                    keys = {"algo": name, "offpolicy": offpolicy, "seed": seed,
                            **{k.name: v for k, v in zip(axes, point)}}
                    cells.append((keys, algo, dataclasses.replace(settings, offpolicy=offpolicy, seed=seed)))
    return cells


#: The flags whose values every cell of a folder shares (the cell axes and --grid add cells).
SHARED_SETTINGS = ("steps", "arms", "beta", "group_size", "groups", "lr")


def check_manifest(store: ResultStore, args, grid: list[str]) -> None:
    """A folder only takes cells made with its own settings (else their rows would mix, mislabelled)."""
    old = store.manifest()
    if old is None:
        return
    if old.get("kind") != "tabular":
        raise UsageError(f"{store.root} holds a {old.get('kind')} sweep, not a tabular one; pass another --out")
    theirs = {**vars(parse_args([])), **old.get("args", {})}
    diffs = [f"--{k.replace('_', '-')} {theirs.get(k)!r} there, {getattr(args, k)!r} now"
             for k in SHARED_SETTINGS if theirs.get(k) != getattr(args, k)]
    if sorted(old.get("grid", [])) != sorted(grid):
        diffs.append(f"grid keys {old.get('grid', [])} there, {grid} now")
    if diffs:
        raise UsageError(f"{store.root} holds a sweep with other settings ({'; '.join(diffs)}); "
                         "pass another --out or the same settings")


def run_cell(store: ResultStore, keys: dict, algo: algorithms.Algorithm, run: TabularRun) -> None:
    name = cell_name(keys)
    record = {"cell": name, "keys": keys, "settings": dataclasses.asdict(run),
              "algorithm_config": dataclasses.asdict(algo.config)}
    start = time.perf_counter()
    try:
        curve = train(algo, run)
    except Exception as exc:  # NaN/inf or a crash: record it, the sweep goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      seconds=time.perf_counter() - start)
        store.save(name, record)
        return
    frame = pd.DataFrame(curve, columns=["step", "normalized_kl"])
    record.update(status="ok", error="", seconds=time.perf_counter() - start,
                  final_normalized_kl=curve[-1][1])
    store.save(name, record, frame)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cells = build_cells(args)
    store = ResultStore(args.out)
    grid = [item.partition("=")[0].strip() for item in args.grid]
    check_manifest(store, args, grid)
    store.write_text("sweep.json", report.sweep_manifest("tabular", vars(args), grid=grid))
    todo = [c for c in cells if not store.is_done(cell_name(c[0]))]
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done in {args.out}")
    for keys, algo, run in tqdm(todo, desc="tabular cells", unit="cell"):
        run_cell(store, keys, algo, run)
    paths = report.build(store)
    print(report.read_table(store))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    cli.run(main)
