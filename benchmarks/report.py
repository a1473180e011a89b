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

import pandas as pd

from benchmarks import stats
from benchmarks.stats import UNSET, t_interval
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


def variant_labels(frame: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    """``frame`` with each row's algo shown with its grid values (``agro shift=0.1``), for tables and
    plots of a tabular sweep; keys that do not apply to a row (NaN) are left out."""
    if not grid or frame.empty:
        return frame

    def label(row) -> str:
        own = row["algo"] + "."
        values = [f"{key.removeprefix(own)}={grid_label(row[key])}" for key in grid
                  if key in row and not pd.isna(row[key])]
        return " ".join([row["algo"], *values])

    return frame.assign(algo=frame.apply(label, axis=1))


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
LM_COLUMNS = ["status", "error", "initial_accuracy", "final_accuracy", "final_greedy_accuracy", "final_kl_ref",
              "final_logratio_offpolicy", "final_objective", "optimal_objective", "final_objective_gap", "objective_beta", "initial_objective",
              "canonical_share", "final_reward", "final_reward_onpolicy", "tokens_per_s", "steps_done", "seconds"]


def accuracy_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % t-interval of a mean accuracy, clipped to [0, 1]."""
    return t_interval(values, bounds=(0.0, 1.0))


def mean_interval_text(values: Sequence[float], bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """``"0.412 [0.380, 0.444] (n=3)"`` (by default an accuracy: the interval is clipped to [0, 1]);
    ``"0.412 (n=1)"`` for one seed; ``"-"`` for none."""
    x = [float(v) for v in values if v is not None and not pd.isna(v)]
    if not x:
        return "-"
    low, high = t_interval(x, bounds=bounds)
    mean = sum(x) / len(x)
    return f"{mean:.3f} (n=1)" if len(x) == 1 else f"{mean:.3f} [{low:.3f}, {high:.3f}] (n={len(x)})"


def grid_label(value: Any) -> str:
    """A grid value as shown in tables and facet titles; ``-`` where the key does not apply."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNSET
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


def compare_to(manifest: dict[str, Any], summary: pd.DataFrame) -> str:
    """The sweep's reference algorithm: ``--compare-to``, else the first of ``--algos`` in the sweep."""
    args = manifest.get("args", {})
    algos = [a.strip() for a in str(args.get("algos", "")).split(",") if a.strip()]
    present = list(summary["algo"].unique())
    for name in [args.get("compare_to") or "", *algos, *sorted(present)]:
        if name in present:
            return name
    return ""


def labelled(summary: pd.DataFrame, grid: Sequence[str]) -> pd.DataFrame:
    """``summary`` with each grid column's values as table labels (:func:`grid_label`)."""
    frame = summary.copy()
    for key in grid:
        frame[key] = frame[key].map(grid_label)
    return frame


def _points(frame: pd.DataFrame, grid: Sequence[str]) -> list[tuple]:
    return sorted({tuple(row) for row in frame[["algo", *grid]].itertuples(index=False)},
                  key=lambda point: tuple(_sort_key(str(v)) for v in point))


def _rows_of(data: pd.DataFrame, header: Sequence[str], point: tuple, p: float) -> pd.DataFrame:
    mask = data["offpolicy"] == p
    for key, value in zip(header, point):
        mask &= data[key] == value
    return data[mask]


def _share_table(frame: pd.DataFrame, grid: Sequence[str], value: str, bounds: tuple[float, float]) -> list[str]:
    """Markdown rows: mean [95 % t-interval] of ``value`` per algo [x grid] x off-policy share."""
    ok = frame[frame["status"] == "ok"]
    offpolicies = sorted(frame["offpolicy"].unique())
    header = ["algo", *grid]
    lines = ["| " + " | ".join(header + [f"offpolicy {p:g}" for p in offpolicies]) + " |",
             "|---" * (len(header) + len(offpolicies)) + "|"]
    for point in _points(frame, grid):
        cells = []
        for p in offpolicies:
            failed = int((_rows_of(frame, header, point, p)["status"] != "ok").sum())
            text = mean_interval_text(_rows_of(ok, header, point, p)[value], bounds)
            cells.append(text + (f" ({failed} failed)" if failed else ""))
        lines.append("| " + " | ".join(list(point) + cells) + " |")
    return lines


def _difference_table(differences: Sequence[stats.Difference], grid: Sequence[str]) -> list[str]:
    """Markdown rows: one per compared algo [x grid], a column per off-policy share."""
    offpolicies = sorted({d.offpolicy for d in differences})
    rows: dict[tuple, dict[float, stats.Difference]] = {}
    for d in differences:
        rows.setdefault((d.a, d.b, *d.point), {})[d.offpolicy] = d
    header = ["algo", *grid, "compared"]
    lines = ["| " + " | ".join(header + [f"offpolicy {p:g}" for p in offpolicies]) + " |",
             "|---" * (len(header) + len(offpolicies)) + "|"]
    for (a, b, *point), by_share in sorted(rows.items(),
                                           key=lambda item: tuple(_sort_key(str(v)) for v in (*item[0][2:], item[0][1]))):
        lines.append("| " + " | ".join([*point, f"{a} - {b}"] + [by_share[p].text() if p in by_share else "-"
                                                                  for p in offpolicies]) + " |")
    return lines


def headline(frame: pd.DataFrame, grid: Sequence[str], reference: str) -> list[str]:
    """The sweep's answer in a few lines: the best on-policy gain, and the resolved paired differences."""
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return ["No cell finished."]
    share = min(ok["offpolicy"])
    gains = stats.gains(ok, grid, share)
    lines = []
    if gains:
        best = max(gains, key=lambda d: d.mean)
        where = ", ".join(f"{k}={v}" for k, v in zip(grid, best.point[1:]) if v != UNSET)
        lines.append(f"- Best gain in test accuracy at offpolicy {share:g}: {best.point[0]}"
                     f"{f' ({where})' if where else ''} {best.text()} (final - initial test accuracy, paired by seed).")
    for value, name in (("final_accuracy", "final test accuracy"), ("final_objective_gap", "final objective gap")):
        if value not in ok or ok[value].isna().all():
            continue
        resolved = [d for d in stats.versus_algorithm(ok, value, reference, grid)
                    + stats.versus_share(ok, value, grid) if d.resolved]
        if not resolved:
            lines.append(f"- No paired difference in {name} has a 95 % interval that excludes 0.")
            continue
        lines.append(f"- Paired differences in {name} whose 95 % interval excludes 0 ({len(resolved)}):")
        for d in resolved:
            what = (f"{d.point[0]} - {d.b} at offpolicy {d.offpolicy:g}" if d.a == d.point[0]
                    else f"{d.point[0]}: {d.a} - {d.b}")
            extra = ", ".join(f"{k}={v}" for k, v in zip(grid, d.point[1:]) if v != UNSET)
            lines.append(f"  - {what}{f' ({extra})' if extra else ''}: {d.text()}")
    return lines


def lm_table(summary: pd.DataFrame, manifest: dict[str, Any]) -> str:
    """Markdown: the headline; final test accuracy and objective gap per algo [x grid] x off-policy
    share (mean, 95 % t-interval over seeds); paired differences against the reference algorithm
    and against the smallest share; then one row per cell group with the other metrics."""
    grid = list(manifest.get("grid", []))
    s = manifest.get("settings", {})
    frame = labelled(summary, grid)
    ok = frame[frame["status"] == "ok"]
    offpolicies = sorted(frame["offpolicy"].unique())
    reference = compare_to(manifest, frame)
    window = max(1, math.ceil(int(s.get("steps", 4)) / 4))
    lines = [f"LM sweep: {s.get('model')} on {s.get('dataset')}, {s.get('steps')} steps of {s.get('groups')} "
             f"prompts x {s.get('group_size')} samples (lr {s.get('lr')}), off-policy data from "
             f"`{s.get('behavior')}`. Every cell is evaluated on the same {s.get('eval_problems')} test problems x "
             f"{s.get('eval_samples')} sampled completions; cells with the same seed share their data order, "
             "so differences are paired by seed. Intervals: 95 % Student-t over seeds; **bold**: a paired "
             "difference whose interval excludes 0.", ""]
    lines += headline(frame, grid, reference) + [""]
    lines += ["Final test accuracy (mean accuracy of the sampled completions at the last step), clipped to [0, 1]:",
              ""]
    lines += _share_table(frame, grid, "final_accuracy", (0.0, 1.0))
    if "final_objective_gap" in frame and frame["final_objective_gap"].notna().any():
        lines += ["", "Final objective gap (J* - J(pi)) / (J* - J(pi_ref)) = KL(pi || pi*) / KL(pi_ref || pi*): "
                  "1 at pi_ref, 0 at the optimum pi* (lower is better; J = E[r] - beta KL(pi || pi_ref) at the "
                  "cell's objective_beta):", ""]
        lines += _share_table(frame, grid, "final_objective_gap", (-math.inf, math.inf))
    versus = stats.versus_algorithm(ok, "final_accuracy", reference, grid) if reference else []
    if versus:
        lines += ["", f"Paired difference in final test accuracy against {reference} (same seed, same share):", ""]
        lines += _difference_table(versus, grid)
    shares = stats.versus_share(ok, "final_accuracy", grid)
    if shares:
        lines += ["", f"Paired difference in final test accuracy against offpolicy {offpolicies[0]:g} "
                  "(same algorithm, same seed):", ""]
        lines += _difference_table(shares, grid)
    if "final_objective_gap" in ok and ok["final_objective_gap"].notna().any():
        gap_versus = stats.versus_algorithm(ok, "final_objective_gap", reference, grid) if reference else []
        gap_shares = stats.versus_share(ok, "final_objective_gap", grid)
        if gap_versus:
            lines += ["", f"Paired difference in the final objective gap against {reference} (lower is better):", ""]
            lines += _difference_table(gap_versus, grid)
        if gap_shares:
            lines += ["", f"Paired difference in the final objective gap against offpolicy {offpolicies[0]:g}:", ""]
            lines += _difference_table(gap_shares, grid)

    lines += ["", f"Means over seeds. Test accuracy: sampled, at step 0 -> last step; greedy: the same at "
              f"temperature 0; J: the objective at the last step, J*: its optimum; reward: training reward over "
              f"the last {window} steps (all groups; off-policy groups included); KL: KL(pi || pi_ref) on test "
              "samples at the last step; log pi/mu: the mean log-ratio on the off-policy training samples over the last "
              f"{window} steps (the drift off the data; '-' on-policy).", ""]
    detail = ["algo", *grid, "offpolicy", "seeds ok", "test accuracy", "greedy accuracy", "J", "J*", "gap",
              "reward", "KL to pi_ref", "log pi/mu", "tokens/s", "failed"]
    lines.append("| " + " | ".join(detail) + " |")
    lines.append("|---" * len(detail) + "|")
    header = ["algo", *grid]
    for point in _points(frame, grid):
        for p in offpolicies:
            every, good = _rows_of(frame, header, point, p), _rows_of(ok, header, point, p)
            if every.empty:
                continue
            accuracy = f"{_mean(good['initial_accuracy'], 3)} -> {_mean(good['final_accuracy'], 3)}"
            lines.append("| " + " | ".join(list(point) + [
                f"{p:g}", str(len(good)), accuracy, _mean(good["final_greedy_accuracy"], 3),
                _mean(good.get("final_objective", pd.Series(dtype=float)), 3),
                _mean(good.get("optimal_objective", pd.Series(dtype=float)), 3),
                _mean(good.get("final_objective_gap", pd.Series(dtype=float)), 3),
                _mean(good["final_reward"], 3), _mean(good["final_kl_ref"], 4),
                _mean(good.get("final_logratio_offpolicy", pd.Series(dtype=float)), 3), _mean(good["tokens_per_s"], 0),
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
    points); drift.png: the mean log-ratio log pi/mu on the off-policy samples against step, for
    the shares > 0; final_accuracy.png (objective_gap.png): final test accuracy (gap) against
    off-policy share, one line per algorithm (panels: grid points). Means over seeds with 95 % t-intervals; ``curves`` holds
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
    drift = curves[(curves["offpolicy"] > 0) & curves["ell_offpolicy"].notna()] if "ell_offpolicy" in curves \
        else curves.iloc[0:0]
    if len(drift):
        data = _with_facet(drift, grid)
        g = sns.relplot(data=data, x="step", y="ell_offpolicy", hue="algo", col="offpolicy",
                        row="grid" if grid else None, row_order=_facet_order(data) if grid else None,
                        kind="line", errorbar=t_interval, height=3.2, aspect=1.15,
                        facet_kws={"margin_titles": bool(grid)})
        g.set_titles(row_template="{row_name}", col_template="offpolicy = {col_name}")
        g.set_axis_labels("optimizer step", "mean log pi(y)/mu(y), off-policy y")
        g.figure.suptitle("Drift off the data: the policy's log-ratio to the behaviour on its off-policy samples "
                          "(0: still on the data), mean and 95 % t-interval over seeds", y=1.02)
        g.savefig(root / "drift.png", dpi=100, bbox_inches="tight")
        plt.close(g.figure)
        paths.append(root / "drift.png")
    final = summary[summary["status"] == "ok"]
    if len(final):
        paths.append(_final_plot(final, grid, "final_accuracy", accuracy_interval, "final test accuracy (sampled)",
                                 "Final test accuracy", root / "final_accuracy.png"))
    if len(final) and "final_objective_gap" in final and final["final_objective_gap"].notna().any():
        paths.append(_final_plot(final, grid, "final_objective_gap", t_interval, "(J* - J) / (J* - J(pi_ref))",
                                 "Final objective gap (1: pi_ref, 0: optimum)", root / "objective_gap.png"))
    return paths


def _final_plot(final: pd.DataFrame, grid: Sequence[str], value: str, interval: Callable, label: str, title: str,
                path: Path) -> Path:
    """``value`` of the finished cells against the off-policy share, a line per algorithm (panels:
    grid points): mean and 95 % t-interval over seeds."""
    plt, sns = _plotting()
    data = _with_facet(final, grid)
    g = sns.relplot(data=data, x="offpolicy", y=value, hue="algo", col="grid" if grid else None,
                    col_order=_facet_order(data) if grid else None, col_wrap=3 if grid else None,
                    kind="line", marker="o", errorbar=interval, height=3.4, aspect=1.15)
    g.set_titles("{col_name}" if grid else "")
    g.set_axis_labels("off-policy share of each batch", label)
    g.figure.suptitle(f"{title}: mean and 95 % t-interval over seeds", y=1.03)
    g.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(g.figure)
    return path


def paired_plot(differences: Sequence[stats.Difference], reference: str, path: Path) -> Path:
    """paired_difference.png: final accuracy minus the reference algorithm's, per seed, against the
    off-policy share: mean and 95 % t-interval; filled markers where the interval excludes 0."""
    plt, _ = _plotting()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    lines: dict[tuple, list[stats.Difference]] = {}
    for d in differences:
        lines.setdefault(d.point, []).append(d)
    width = 0.02 * max(1, len(lines))
    for i, (point, ds) in enumerate(sorted(lines.items(), key=lambda item: str(item[0]))):
        ds = sorted(ds, key=lambda d: d.offpolicy)
        shift = (i - (len(lines) - 1) / 2) * width / max(1, len(lines))
        x = [d.offpolicy + shift for d in ds]
        y = [d.mean for d in ds]
        err = [[d.mean - d.interval[0] for d in ds], [d.interval[1] - d.mean for d in ds]]
        label = " ".join(str(v) for v in point if v != UNSET)
        bar = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, mfc="none")
        ax.scatter([xi for xi, d in zip(x, ds) if d.resolved], [d.mean for d in ds if d.resolved],
                   color=bar[0].get_color(), zorder=3)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("off-policy share of each batch")
    ax.set_ylabel(f"final accuracy - {reference}'s")
    ax.set_title(f"Paired by seed against {reference}: mean, 95 % t-interval\n(filled: the interval excludes 0)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- build
def build(store: ResultStore) -> list[Path]:
    """Rebuild summary.csv, curves.csv, table.md and the plots of a sweep directory."""
    manifest = store.manifest()
    if manifest is None:
        raise UsageError(f"{store.root} has no sweep.json; pass a folder written by benchmarks.run or "
                         "benchmarks.tabular (their --out)")
    kind = manifest.get("kind")
    if kind not in ("tabular", "lm"):
        raise UsageError(f"unknown sweep kind {kind!r} in {store.root / 'sweep.json'}")
    summary = summary_frame(store, with_cell=kind == "lm")
    if summary.empty:
        raise UsageError(f"{store.root} has no finished cells yet; run the sweep (its cells are written as they finish)")
    curves = store.curves()
    if kind == "lm":
        summary = lm_summary(summary, manifest.get("grid", []))
    store.write_text("summary.csv", summary.to_csv(index=False))
    store.write_text("curves.csv", curves.to_csv(index=False))
    if not (summary["status"] == "ok").any():
        first = summary.iloc[0]
        raise UsageError(f"every cell of {store.root} failed ({len(summary)} of them; {first['cell'] if 'cell' in first else first['algo']}: "
                         f"{first['error']}); fix the cause and rerun the sweep with --retry-failed "
                         f"(summary.csv lists each error)")
    paths = [store.root / "summary.csv", store.root / "curves.csv", store.root / "table.md"]
    if kind == "tabular":
        grid = manifest.get("grid", [])
        store.write_text("table.md", tabular_table(variant_labels(summary, grid)) + set_aside_note(store))
        if not curves.empty:
            tabular_plot(variant_labels(curves, grid), store.root / "normalized_kl.png")
            paths.append(store.root / "normalized_kl.png")
    else:
        store.write_text("table.md", lm_table(summary, manifest) + set_aside_note(store))
        ok_cells = set(summary.loc[summary["status"] == "ok", "cell"])
        grid = manifest.get("grid", [])
        paths += lm_plots(summary, store.curves(ok_cells), grid, store.root)
        frame = labelled(summary, grid)
        reference = compare_to(manifest, frame)
        versus = stats.versus_algorithm(frame[frame["status"] == "ok"], "final_accuracy", reference, grid)
        if versus:
            paths.append(paired_plot(versus, reference, store.root / "paired_difference.png"))
    return paths


def set_aside_note(store: ResultStore) -> str:
    """A closing line of table.md naming the damaged cell files that were set aside, if any."""
    if not store.set_aside:
        return ""
    redone = [n for n in store.set_aside if store.cell_path(n).exists()]
    missing = [n for n in store.set_aside if n not in redone]
    parts = [f"cells/{n}.json (redone)" for n in redone] + [f"cells/{n}.json (missing here; rerun the sweep "
                                                            "to redo it)" for n in missing]
    return f"\nDamaged cell files set aside as *.corrupt: {', '.join(parts)}.\n"


def read_table(store: ResultStore) -> str:
    return (store.root / "table.md").read_text()


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="a sweep directory (with sweep.json and cells/)")
    args = p.parse_args(argv)
    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir} is not a folder; pass the --out folder of a benchmarks.run or "
                         "benchmarks.tabular sweep")
    store = ResultStore(args.dir, create=False)
    paths = build(store)
    print(read_table(store))
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    cli.run(main)
