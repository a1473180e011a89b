"""How many seeds a sweep needs: its paired differences recomputed on every subset of k of its seeds.

    python -m benchmarks.power results/choosing-defaults/seeds-32-prompts --k 3    # writes DIR/power-k3.md

A pilot sweep with n seeds answers what k < n seeds would have answered. For every paired difference
of the sweep's table (:mod:`benchmarks.stats`: each algorithm against ``--compare-to``, each share
against the smallest share, in final accuracy and in the objective gap) and for the best on-policy
gain, it reports over all n seeds the mean, the standard deviation of the per-seed values and their
ratio |mean| / sd, then in how many of the C(n, k) subsets of k seeds the 95 % t-interval excludes 0.
A subset resolves a difference when ``|mean| / sd > t_{0.975, k-1} / sqrt(k)`` on its own seeds:
2.48 for k = 3, 1.59 for k = 4, 1.24 for k = 5. The last line counts the subsets of k seeds in
which at least one accuracy difference is resolved.

Each grid point is its own sweep here (a ``--grid lr=...`` pilot compares learning rates).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from scipy import stats as scipy_stats

from benchmarks import report, stats
from benchmarks.store import ResultStore
from rlft import cli
from rlft.errors import UsageError
from rlft.files import atomic_write_text

QUANTITIES = (("final_accuracy", "accuracy"), ("final_objective_gap", "objective gap"))


def differences(frame: pd.DataFrame, grid: Sequence[str], reference: str) -> list[tuple[str, stats.Difference]]:
    """``[(quantity, difference)]``: every paired difference of the sweep's table, and the on-policy gains."""
    out = [("gain", d) for d in stats.gains(frame, grid, min(frame["offpolicy"]))]
    for value, name in QUANTITIES:
        if value in frame and frame[value].notna().any():
            out += [(name, d) for d in stats.versus_algorithm(frame, value, reference, grid) + stats.versus_share(frame, value, grid)]
    return out


def resolved_by(d: stats.Difference, chosen: Sequence[int]) -> bool:
    """Whether ``d`` restricted to the seeds ``chosen`` has a 95 % t-interval that excludes 0."""
    values = tuple(v for seed, v in zip(d.seeds, d.values) if seed in chosen)
    return stats.Difference(d.a, d.b, d.point, d.offpolicy, values).resolved


def _label(quantity: str, d: stats.Difference, grid: Sequence[str]) -> str:
    where = ", ".join(f"{key}={value}" for key, value in zip(grid, d.point[1:]) if value != stats.UNSET)
    where = f" ({where})" if where else ""
    if quantity == "gain":
        return f"{d.point[0]}{where}: final - initial accuracy at offpolicy {d.offpolicy:g}"
    if d.a == d.point[0]:  # against the reference algorithm
        return f"{d.a}{where} - {d.b} at offpolicy {d.offpolicy:g}"
    return f"{d.point[0]}{where}: {d.a} - {d.b}"


def power_table(store: ResultStore, k: int) -> str:
    """Markdown: every difference's mean, sd, ratio and the k-subsets of seeds that resolve it."""
    manifest = store.manifest() or {}
    grid = list(manifest.get("grid", []))
    frame = report.labelled(report.summary_frame(store), grid)
    ok = frame[frame["status"] == "ok"]
    seeds = sorted(int(s) for s in ok["seed"].unique())
    if not 2 <= k < len(seeds):
        raise UsageError(f"--k {k}: need 2 <= k < the {len(seeds)} seeds of {store.root}")
    rows = differences(ok, grid, report.compare_to(manifest, frame))
    subsets = list(itertools.combinations(seeds, k))
    threshold = scipy_stats.t.ppf(0.975, k - 1) / math.sqrt(k)
    lines = [f"Paired differences of `{store.root}` ({len(seeds)} seeds) recomputed on each of the {len(subsets)} "
             f"subsets of {k} seeds (`python -m benchmarks.power {store.root} --k {k}`). sd: of the per-seed values "
             f"over all {len(seeds)} seeds. A subset resolves a difference (its 95 % t-interval excludes 0) when its "
             f"own |mean| / sd exceeds {threshold:.2f}.", "",
             f"| difference | quantity | mean | sd | mean / sd | resolved by {k} seeds |", "|---|---|---:|---:|---:|---:|"]
    for quantity, d in rows:
        sd = pd.Series(d.values).std(ddof=1)
        ratio = abs(d.mean) / sd if sd > 0 else math.inf
        hits = sum(resolved_by(d, chosen) for chosen in subsets)
        lines.append(f"| {_label(quantity, d, grid)} | {quantity} | {d.mean:+.3f} | {sd:.3f} | {ratio:.2f} | "
                     f"{hits} / {len(subsets)} |")
    lines.append("")
    for point in sorted({d.point[1:] for _, d in rows}):
        accuracy = [d for quantity, d in rows if quantity == "accuracy" and d.point[1:] == point]
        hits = sum(any(resolved_by(d, chosen) for d in accuracy) for chosen in subsets)
        where = ", ".join(f"{key}={value}" for key, value in zip(grid, point) if value != stats.UNSET)
        lines.append(f"- {f'{where}: ' if where else ''}subsets of {k} seeds in which at least one difference in "
                     f"accuracy is resolved: {hits} / {len(subsets)}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m benchmarks.power", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a finished LM sweep folder (its summary.csv and sweep.json)")
    p.add_argument("--k", type=int, default=3, help="seeds per subset (default 3, the quick start's)")
    args = p.parse_args(argv)
    root = Path(args.dir)
    if not (root / "sweep.json").is_file():
        raise UsageError(f"{root} holds no sweep.json; pass the folder of a finished python -m benchmarks.run")
    text = power_table(ResultStore(root), args.k)
    path = root / f"power-k{args.k}.md"
    atomic_write_text(path, text)
    print(text + f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
