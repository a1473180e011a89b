"""Tables and plots of a sweep directory, rebuilt from its cell files.

    python -m benchmarks.report results/tabular
    python -m benchmarks.report results/sweep

Writes ``summary.csv`` (one row per cell), ``curves.csv`` (every per-step point), ``table.md`` and
PNG plots. The sweep kind is read from ``sweep.json``, written by the command that ran the sweep:
``tabular`` (benchmarks.tabular: normalised KL on a bandit) or ``lm`` (benchmarks.run: a language
model's test accuracy, with any ``--grid`` keys as extra columns and plot facets).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from benchmarks.store import ResultStore
from rlft import cli
from rlft.errors import UsageError


def _plotting():
    """matplotlib (headless) and seaborn, imported on first use: the sweep CLIs start faster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def sweep_manifest(kind: str, args: dict[str, Any], **extra: Any) -> str:
    """The ``sweep.json`` text: what kind of sweep wrote this directory, with which arguments
    (and any ``extra`` fields the kind needs, e.g. the LM sweep's shared settings and grid keys)."""
    return json.dumps({"kind": kind, "args": args, **extra}, indent=1, sort_keys=True, default=str)


def summary_frame(store: ResultStore, with_cell: bool = False) -> pd.DataFrame:
    """One row per cell: its keys, status, error, seconds and final metrics (and its file id)."""
    rows = []
    hidden = ("keys", "settings", "algorithm_config") + (() if with_cell else ("cell",))
    for record in store.records():
        row = dict(record["keys"])
        row.update({k: v for k, v in record.items() if k not in hidden})
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
    plt, sns = _plotting()
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


# ------------------------------------------------------------------------------- LM sweeps
#: Leading summary.csv columns of an LM sweep (after algo, offpolicy, seed and the grid keys).
LM_COLUMNS = ["status", "error", "final_accuracy", "final_greedy_accuracy", "final_kl_ref", "final_reward",
              "final_reward_onpolicy", "tokens_per_s", "initial_accuracy", "steps_done", "seconds"]


def t_interval(values: Sequence[float], level: float = 0.95,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (the mean itself for one value),
    clipped to ``bounds``, the range the quantity can take (an accuracy's is [0, 1])."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return max(mean - half, bounds[0]), min(mean + half, bounds[1])


def accuracy_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % t-interval of a mean accuracy, clipped to [0, 1]."""
    return t_interval(values, bounds=(0.0, 1.0))


def mean_interval_text(values: Sequence[float]) -> str:
    """``"0.412 [0.380, 0.444] (n=3)"`` (an accuracy: the interval is clipped to [0, 1]);
    ``"0.412 (n=1)"`` for one seed; ``"-"`` for none."""
    x = [float(v) for v in values if v is not None and not pd.isna(v)]
    if not x:
        return "-"
    low, high = accuracy_interval(x)
    mean = sum(x) / len(x)
    return f"{mean:.3f} (n=1)" if len(x) == 1 else f"{mean:.3f} [{low:.3f}, {high:.3f}] (n={len(x)})"


def grid_label(value: Any) -> str:
    """A grid value as shown in tables and facet titles; ``-`` where the key does not apply."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sort_key(label: str) -> tuple:
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def lm_summary(summary: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    """The summary with its columns in reading order: keys, grid keys, main results, the rest."""
    for key in grid:
        if key not in summary:
            summary[key] = None
    first = ["algo", "offpolicy", "seed", *grid] + [c for c in LM_COLUMNS + ["cell"] if c in summary]
    return summary[first + sorted(c for c in summary.columns if c not in first)]


def _mean(values: pd.Series, digits: int) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return f"{values.mean():.{digits}f}" if len(values) else "-"


def lm_table(summary: pd.DataFrame, manifest: dict[str, Any]) -> str:
    """Markdown: final test accuracy per algo [x grid] x off-policy share (mean, 95 % t-interval
    over seeds), then one row per algo [x grid] x off-policy share with reward, KL and throughput."""
    grid = list(manifest.get("grid", []))
    s = manifest.get("settings", {})
    frame = summary.copy()
    for key in grid:
        frame[key] = frame[key].map(grid_label)
    ok = frame[frame["status"] == "ok"]
    offpolicies = sorted(frame["offpolicy"].unique())
    points = sorted({tuple(row) for row in frame[["algo", *grid]].itertuples(index=False)},
                    key=lambda point: tuple(_sort_key(str(v)) for v in point))
    window = max(1, math.ceil(int(s.get("steps", 4)) / 4))
    lines = [f"LM sweep: {s.get('model')} on {s.get('dataset')}, {s.get('steps')} steps of {s.get('groups')} "
             f"prompts x {s.get('group_size')} samples, off-policy data from `{s.get('behavior')}`.", "",
             f"Final test accuracy (mean accuracy of {s.get('eval_samples')} sampled completions on "
             f"{s.get('eval_problems')} test problems at the last step): mean [95 % t-interval over seeds, "
             "clipped to [0, 1]].", ""]
    header = ["algo", *grid]
    lines.append("| " + " | ".join(header + [f"offpolicy {p:g}" for p in offpolicies]) + " |")
    lines.append("|---" * (len(header) + len(offpolicies)) + "|")

    def rows_of(data: pd.DataFrame, point: tuple, p: float) -> pd.DataFrame:
        mask = data["offpolicy"] == p
        for key, value in zip(header, point):
            mask &= data[key] == value
        return data[mask]

    for point in points:
        cells = []
        for p in offpolicies:
            failed = int((rows_of(frame, point, p)["status"] != "ok").sum())
            text = mean_interval_text(rows_of(ok, point, p)["final_accuracy"])
            cells.append(text + (f" ({failed} failed)" if failed else ""))
        lines.append("| " + " | ".join(list(point) + cells) + " |")

    lines += ["", f"Means over seeds. Test accuracy: sampled, at step 0 -> last step; greedy: the same at "
              f"temperature 0; reward: training reward over the last {window} steps (all groups; "
              "off-policy groups included); KL: KL(pi || pi_ref) on test samples at the last step.", ""]
    detail = ["algo", *grid, "offpolicy", "seeds ok", "test accuracy", "greedy accuracy", "reward",
              "KL to pi_ref", "tokens/s", "failed"]
    lines.append("| " + " | ".join(detail) + " |")
    lines.append("|---" * len(detail) + "|")
    for point in points:
        for p in offpolicies:
            every, good = rows_of(frame, point, p), rows_of(ok, point, p)
            if every.empty:
                continue
            accuracy = f"{_mean(good['initial_accuracy'], 3)} -> {_mean(good['final_accuracy'], 3)}"
            lines.append("| " + " | ".join(list(point) + [
                f"{p:g}", str(len(good)), accuracy, _mean(good["final_greedy_accuracy"], 3),
                _mean(good["final_reward"], 3), _mean(good["final_kl_ref"], 4), _mean(good["tokens_per_s"], 0),
                str(len(every) - len(good))]) + " |")
    failures = frame[frame["status"] != "ok"]
    if len(failures):
        lines += ["", "Failed cells:", ""]
        lines += [f"- `{row.cell}`: {row.error}" for row in failures.itertuples()]
    return "\n".join(lines) + "\n"


def expand_unset(frame: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    """Repeat the rows a grid key does not apply to (another algorithm's hyper-parameter) under
    each of its values, so that every facet shows every algorithm."""
    for key in grid:
        if key not in frame:
            frame = frame.assign(**{key: None})
        values = frame[key].dropna().unique()
        unset = frame[frame[key].isna()]
        if len(unset) and len(values):
            frame = pd.concat([frame[frame[key].notna()]] + [unset.assign(**{key: v}) for v in values],
                              ignore_index=True)
    return frame


def _with_facet(frame: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    frame = expand_unset(frame, grid)
    labels = [frame[key].map(lambda v, key=key: f"{key}={grid_label(v)}") for key in grid]
    facet = labels[0].str.cat(labels[1:], sep=", ") if labels else ""
    return frame.assign(grid=facet)


def _facet_order(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["grid"].unique(), key=lambda label: [_sort_key(part.partition("=")[2])
                                                            for part in label.split(", ")])


def lm_plots(summary: pd.DataFrame, curves: pd.DataFrame, grid: Sequence[str], root: Path) -> list[Path]:
    """accuracy.png: test accuracy against step, one panel per off-policy share (rows: grid
    points); final_accuracy.png: final test accuracy against off-policy share, one line per
    algorithm (panels: grid points). Means over seeds with 95 % t-intervals; ``curves`` holds
    the curves of the cells that finished ok."""
    plt, sns = _plotting()
    paths = []
    evals = curves[curves["eval_accuracy"].notna()] if "eval_accuracy" in curves else curves.iloc[0:0]
    interval: Callable = accuracy_interval
    if len(evals):
        data = _with_facet(evals, grid)
        g = sns.relplot(data=data, x="step", y="eval_accuracy", hue="algo", col="offpolicy",
                        row="grid" if grid else None, row_order=_facet_order(data) if grid else None,
                        kind="line", marker="o", errorbar=interval, height=3.2, aspect=1.15,
                        facet_kws={"margin_titles": bool(grid)})
        g.set_titles(row_template="{row_name}", col_template="offpolicy = {col_name}")
        g.set_axis_labels("optimizer step", "test accuracy (sampled)")
        g.figure.suptitle("Test accuracy during training: mean and 95 % t-interval over seeds", y=1.02)
        g.savefig(root / "accuracy.png", dpi=100, bbox_inches="tight")
        plt.close(g.figure)
        paths.append(root / "accuracy.png")
    final = summary[summary["status"] == "ok"]
    if len(final):
        data = _with_facet(final, grid)
        g = sns.relplot(data=data, x="offpolicy", y="final_accuracy", hue="algo", col="grid" if grid else None,
                        col_order=_facet_order(data) if grid else None, col_wrap=3 if grid else None,
                        kind="line", marker="o", errorbar=interval, height=3.4, aspect=1.15)
        g.set_titles("{col_name}" if grid else "")
        g.set_axis_labels("off-policy share of each batch", "final test accuracy (sampled)")
        g.figure.suptitle("Final test accuracy: mean and 95 % t-interval over seeds", y=1.03)
        g.savefig(root / "final_accuracy.png", dpi=100, bbox_inches="tight")
        plt.close(g.figure)
        paths.append(root / "final_accuracy.png")
    return paths


# ---------------------------------------------------------------------------------- build
def build(store: ResultStore) -> list[Path]:
    """Rebuild summary.csv, curves.csv, table.md and the plots of a sweep directory."""
    manifest = store.manifest()
    if manifest is None:
        raise UsageError(f"{store.root} has no sweep.json; is it a directory written by a benchmark?")
    kind = manifest.get("kind")
    if kind not in ("tabular", "lm"):
        raise UsageError(f"unknown sweep kind {kind!r} in {store.root / 'sweep.json'}")
    summary = summary_frame(store, with_cell=kind == "lm")
    if summary.empty:
        raise UsageError(f"{store.root} has no finished cells yet")
    curves = store.curves()
    if kind == "lm":
        summary = lm_summary(summary, manifest.get("grid", []))
    store.write_text("summary.csv", summary.to_csv(index=False))
    store.write_text("curves.csv", curves.to_csv(index=False))
    paths = [store.root / "summary.csv", store.root / "curves.csv", store.root / "table.md"]
    if kind == "tabular":
        store.write_text("table.md", tabular_table(summary))
        if not curves.empty:
            tabular_plot(curves, store.root / "normalized_kl.png")
            paths.append(store.root / "normalized_kl.png")
    else:
        store.write_text("table.md", lm_table(summary, manifest))
        ok_cells = set(summary.loc[summary["status"] == "ok", "cell"])
        paths += lm_plots(summary, store.curves(ok_cells), manifest.get("grid", []), store.root)
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
