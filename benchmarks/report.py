"""Tables and plots of a sweep directory, rebuilt from its cell files.

    python -m benchmarks.report results/tabular

Writes ``summary.csv`` (one row per cell), ``curves.csv`` (every per-step point), ``table.md`` and
PNG plots. The sweep kind is read from ``sweep.json``, written by the command that ran the sweep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from benchmarks.store import ResultStore  # noqa: E402
from rlft import cli  # noqa: E402
from rlft.errors import UsageError  # noqa: E402


def sweep_manifest(kind: str, args: dict[str, Any]) -> str:
    """The ``sweep.json`` text: what kind of sweep wrote this directory and with which arguments."""
    return json.dumps({"kind": kind, "args": args}, indent=1, sort_keys=True, default=str)


def summary_frame(store: ResultStore) -> pd.DataFrame:
    """One row per cell: its keys, status, error, seconds and final metrics."""
    rows = []
    for record in store.records():
        row = dict(record["keys"])
        row.update({k: v for k, v in record.items() if k not in ("keys", "settings", "algorithm_config", "cell")})
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(x: float) -> str:
    return f"{x:.2e}"


def tabular_table(summary: pd.DataFrame) -> str:
    """Markdown: median [min, max] of the final normalised KL per algorithm x off-policy share."""
    lines = ["Final normalised KL(pi, pi*) / KL(pi_ref, pi*): median [min, max] over seeds "
             "(lower is better; failed cells counted separately).", ""]
    offpolicies = sorted(summary["offpolicy"].unique())
    lines.append("| algo | " + " | ".join(f"offpolicy {p:g}" for p in offpolicies) + " |")
    lines.append("|---" * (len(offpolicies) + 1) + "|")
    for algo in sorted(summary["algo"].unique()):
        cells = []
        for p in offpolicies:
            rows = summary[(summary["algo"] == algo) & (summary["offpolicy"] == p)]
            ok = rows[rows["status"] == "ok"]["final_normalized_kl"] if "final_normalized_kl" in rows else pd.Series([])
            failed = int((rows["status"] != "ok").sum())
            text = f"{_fmt(ok.median())} [{_fmt(ok.min())}, {_fmt(ok.max())}]" if len(ok) else "-"
            cells.append(text + (f" ({failed} failed)" if failed else ""))
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tabular_plot(curves: pd.DataFrame, path: Path) -> None:
    """Normalised KL against step (log scale), one panel per off-policy share, mean over seeds."""
    curves = curves.assign(normalized_kl=curves["normalized_kl"].clip(lower=1e-16))  # round-off can dip below 0
    grid = sns.relplot(data=curves, x="step", y="normalized_kl", hue="algo", col="offpolicy", kind="line",
                       errorbar=("pi", 100), estimator="median", height=3.6, aspect=1.1,
                       facet_kws={"sharey": True})
    grid.set(yscale="log")
    grid.set_axis_labels("SGD step", "KL(pi, pi*) / KL(pi_ref, pi*)")
    grid.set_titles("offpolicy = {col_name}")
    grid.figure.suptitle("Softmax bandit (Tang et al. 2025, Fig. 1): median and range over seeds", y=1.03)
    grid.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(grid.figure)


def build(store: ResultStore) -> list[Path]:
    """Rebuild summary.csv, curves.csv, table.md and the plots of a sweep directory."""
    manifest_path = store.root / "sweep.json"
    if not manifest_path.exists():
        raise UsageError(f"{store.root} has no sweep.json; is it a directory written by a benchmark?")
    kind = json.loads(manifest_path.read_text())["kind"]
    summary = summary_frame(store)
    if summary.empty:
        raise UsageError(f"{store.root} has no finished cells yet")
    curves = store.curves()
    store.write_text("summary.csv", summary.to_csv(index=False))
    store.write_text("curves.csv", curves.to_csv(index=False))
    paths = [store.root / "summary.csv", store.root / "curves.csv", store.root / "table.md"]
    if kind == "tabular":
        store.write_text("table.md", tabular_table(summary))
        if not curves.empty:
            tabular_plot(curves, store.root / "normalized_kl.png")
            paths.append(store.root / "normalized_kl.png")
    else:
        raise UsageError(f"unknown sweep kind {kind!r} in {manifest_path}")
    return paths


def read_table(store: ResultStore) -> str:
    return (store.root / "table.md").read_text()


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a sweep directory (with sweep.json and cells/)")
    args = p.parse_args(argv)
    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir} is not a directory")
    store = ResultStore(args.dir)
    paths = build(store)
    print(read_table(store))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    cli.run(main)
