"""The LM benchmark sweep (benchmarks.run) on the tiny preset: a real sweep killed mid-run and
rerun, a failing plug-in, the summary, table and plots, report rebuilding, grid semantics and
one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import report, run
from benchmarks.store import ResultStore, cell_name
from rlft.errors import UsageError
from tolerances import difference  # tests/tolerances.py

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
       "HF_HUB_OFFLINE": "1"}
SMALL = ["--steps", "6", "--groups", "4", "--group-size", "4", "--eval-every", "3", "--eval-problems", "8",
         "--eval-samples", "2", "--save-every", "2"]
#: 2 seeds x (agro x 2 off-policy shares x 2 betas + the NaN plug-in x 2 shares) = 12 cells.
SWEEP = ["--algos", "agro,nan_algo:ExplodingPG", "--offpolicy", "0,1", "--seeds", "0,1",
         "--grid", "agro.beta=0.02,0.2", "--jobs", "1", *SMALL]
FIRST = cell_name({"algo": "agro", "offpolicy": 0.0, "seed": 0, "agro.beta": 0.02})
SECOND = cell_name({"algo": "agro", "offpolicy": 0.0, "seed": 0, "agro.beta": 0.2})
PNG = b"\x89PNG\r\n\x1a\n"


def sweep(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", *SWEEP, *extra, "--out", str(out)]


def steps_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """Start a real sweep, SIGKILL it while the second cell trains (after its first checkpoint),
    then rerun the same command to completion."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    log = out.parent / "first.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(sweep(out), cwd=ROOT, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        checkpoint = out / "runs" / SECOND / "checkpoint" / "trainer_state.json"
        deadline = time.monotonic() + 240
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    killed = {"records": sorted(p.stem for p in (out / "cells").glob("*.json")),
              "first_mtime": (out / "cells" / f"{FIRST}.json").stat().st_mtime_ns}
    rerun = subprocess.run(sweep(out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return out, killed, rerun


def test_killed_sweep_completes_every_cell_exactly_once(killed_then_rerun):
    out, killed, rerun = killed_then_rerun
    assert killed["records"] == [FIRST]  # killed during the second cell
    assert "resuming: 1 of 12 cells already done" in rerun.stdout
    assert (out / "cells" / f"{FIRST}.json").stat().st_mtime_ns == killed["first_mtime"]  # not redone
    second = json.loads((out / "cells" / f"{SECOND}.json").read_text())
    assert second["status"] == "ok" and second["resumed_from_step"] >= 2  # from its trainer checkpoint
    records = ResultStore(out).records()
    assert len(records) == 12 and len({r["cell"] for r in records}) == 12
    for record in records:
        if record["status"] == "ok":  # every step logged exactly once, even across the kill
            assert steps_of(Path(record["run_dir"])) == list(range(7)), record["cell"]
            assert not (Path(record["run_dir"]) / "checkpoint").exists()  # dropped once recorded
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 12 and not summary.duplicated(["algo", "offpolicy", "seed", "agro.beta"]).any()


def test_failing_plugin_is_recorded_and_the_sweep_goes_on(killed_then_rerun):
    out, _, _ = killed_then_rerun
    summary = pd.read_csv(out / "summary.csv")
    failed = summary[summary["algo"] == "nan_algo:ExplodingPG"]
    assert len(failed) == 4 and (failed["status"] == "failed").all()
    assert failed["error"].str.startswith("NonFiniteLoss:").all() and failed["error"].str.contains("nan").all()
    assert failed["agro.beta"].isna().all()  # agro.beta does not multiply the other algorithm
    ok = summary[summary["algo"] == "agro"]
    assert len(ok) == 8 and (ok["status"] == "ok").all() and ok["final_accuracy"].notna().all()
    assert sorted(ok["agro.beta"].unique()) == [0.02, 0.2]


def test_summary_table_and_plots(killed_then_rerun):
    out, _, _ = killed_then_rerun
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:4]) == ["algo", "offpolicy", "seed", "agro.beta"]
    assert {"final_accuracy", "final_greedy_accuracy", "final_kl_ref", "final_reward", "tokens_per_s",
            "status", "error", "seconds"} <= set(summary.columns)
    row = summary[summary["cell"] == SECOND].iloc[0]
    metrics = [json.loads(line) for line in (out / "runs" / SECOND / "metrics.jsonl").read_text().splitlines()]
    assert row["final_accuracy"] == metrics[-1]["eval_accuracy"]
    assert row["final_greedy_accuracy"] == metrics[-1]["eval_greedy_accuracy"]
    last_quarter = sum(m["reward"] for m in metrics[-2:]) / 2  # a mean of 2 rewards <= 1, through a CSV
    assert row["final_reward"] == pytest.approx(last_quarter, rel=0, abs=difference([2], 1.0, torch.float64))
    assert 0.0 <= row["final_accuracy"] <= 1.0 and row["tokens_per_s"] > 0

    config = json.loads((out / "runs" / SECOND / "config.json").read_text())
    assert config["algorithm"]["beta"] == 0.2 and config["train"]["offpolicy"] == 0.0
    assert {"temperature", "top_p", "max_new_tokens", "groups", "group_size", "lr"} <= set(config["train"])
    assert config["train"]["max_new_tokens"] == 8  # the preset's budget, written out

    table = (out / "table.md").read_text()
    assert "| algo | agro.beta | offpolicy 0 | offpolicy 1 |" in table
    agro_rows = [line for line in table.splitlines() if line.startswith("| agro | 0.02 |")]
    assert agro_rows and "(n=2)" in agro_rows[0]
    assert "| nan_algo:ExplodingPG | - | - (2 failed) | - (2 failed) |" in table
    for name in ("accuracy.png", "final_accuracy.png", "drift.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert "| log pi/mu |" in table
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves.loc[curves["eval_accuracy"].notna(), "step"]) == {0, 3, 6}


def test_rerun_skips_done_cells_report_rebuilds_and_failed_cells_retry(killed_then_rerun, tmp_path, monkeypatch, capsys):
    out = tmp_path / "copy"
    shutil.copytree(killed_then_rerun[0], out)
    monkeypatch.syspath_prepend(str(TESTS))
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    run.main([*SWEEP, "--out", str(out)])
    assert "12 of 12 cells already done" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == stamps

    before = (out / "summary.csv").read_text(), (out / "table.md").read_text()
    for name in ("summary.csv", "table.md", "accuracy.png", "final_accuracy.png", "curves.csv"):
        (out / name).unlink()
    report.main([str(out)])
    assert ((out / "summary.csv").read_text(), (out / "table.md").read_text()) == before
    assert (out / "accuracy.png").read_bytes()[:8] == PNG and (out / "curves.csv").exists()

    with pytest.raises(UsageError, match="holds a sweep with other settings .*steps 6 there, 7 now"):
        run.main([*SWEEP, "--steps", "7", "--out", str(out)])

    run.main([*SWEEP, "--retry-failed", "--out", str(out)])  # only the 4 failed cells run again
    assert "8 of 12 cells already done" in capsys.readouterr().out
    redone = {p.name for p in (out / "cells").glob("*.json") if p.stat().st_mtime_ns != stamps[p.name]}
    assert redone == {p for p in stamps if p.startswith("algo=nan_algo")} and len(redone) == 4


def test_cells_of_an_earlier_version_get_the_new_summary_columns(killed_then_rerun, tmp_path, monkeypatch, capsys):
    """A finished cell whose record predates a summary column gets it from its metrics.jsonl on the
    next run of the sweep, computed as for a new cell; nothing is retrained."""
    out = tmp_path / "copy"
    shutil.copytree(killed_then_rerun[0], out)
    monkeypatch.syspath_prepend(str(TESTS))
    offpolicy_cell = cell_name({"algo": "agro", "offpolicy": 1.0, "seed": 0, "agro.beta": 0.02})
    path = out / "cells" / f"{offpolicy_cell}.json"
    full = json.loads(path.read_text())
    drift = full["final_logratio_offpolicy"]
    steps = [json.loads(line) for line in (out / "runs" / offpolicy_cell / "metrics.jsonl").read_text().splitlines()]
    last_quarter = [m["ell_offpolicy"] for m in steps if m["step"] > 4]  # 6 steps: the last ceil(6/4) = 2
    assert drift == pytest.approx(sum(last_quarter) / len(last_quarter), rel=1e-12) and drift != 0
    path.write_text(json.dumps({k: v for k, v in full.items() if k != "final_logratio_offpolicy"}))
    run.main([*SWEEP, "--out", str(out)])
    assert "added the newer summary columns to 1 finished cells" in capsys.readouterr().out
    assert json.loads(path.read_text()) == full
    assert "final_logratio_offpolicy" in (out / "summary.csv").read_text().splitlines()[0]


# --------------------------------------------------------------------- grid and naming
def cells_of(*argv: str) -> list[run.Cell]:
    args = run.parse_args(list(argv))
    algos = args.algos.split(",")
    return run.build_cells(args, run.parse_grid(args.grid, algos), Path("unused"))


def test_grid_multiplies_only_the_algorithms_that_have_the_key():
    cells = cells_of("--algos", "agro,grpo,raft", "--offpolicy", "0,1", "--seeds", "0",
                     "--grid", "beta=0.05,0.5", "--grid", "agro.baseline=mean,loo", "--grid", "lr=1e-5,1e-4")
    by_algo = {algo: [c for c in cells if c.keys["algo"] == algo] for algo in ("agro", "grpo", "raft")}
    assert [len(v) for v in by_algo.values()] == [2 * 2 * 2 * 2, 2 * 2 * 2, 2 * 2]  # raft has no beta
    agro = by_algo["agro"][0]
    assert set(agro.keys) == {"algo", "offpolicy", "seed", "beta", "agro.baseline", "lr"}
    assert agro.config.algo_args == {"beta": agro.keys["beta"], "baseline": agro.keys["agro.baseline"]}
    assert agro.config.lr == agro.keys["lr"] and agro.algorithm_config["baseline"] == agro.keys["agro.baseline"]
    assert all("agro.baseline" not in c.keys and "beta" in c.config.algo_args for c in by_algo["grpo"])
    assert all(set(c.keys) == {"algo", "offpolicy", "seed", "lr"} for c in by_algo["raft"])
    assert {c.config.lr for c in cells} == {1e-5, 1e-4} and len({c.name for c in cells}) == len(cells)


@pytest.mark.parametrize(
    "grid, algos, message",
    [
        (["nope=1,2"], "agro", "unknown --grid key 'nope'; valid: TrainConfig fields behavior, steps"),
        (["grpo.beta=0.1"], "agro", "'grpo' is not one of --algos (agro)"),
        (["grpo.baseline=mean"], "agro,grpo", "grpo has no hyper-parameter 'baseline'; known: aggregation"),
        (["beta=0.1", "agro.beta=0.2"], "agro", "--grid beta and --grid agro.beta both set agro's beta"),
        (["lr=abc"], "agro", "--grid lr: lr='abc' is not a valid float"),
        (["baseline=mean"], "agro,is-pg", "baseline must be one of none, loo, got 'mean'"),
        (["beta=0.1,0.1"], "agro", "--grid beta lists a value twice"),
        (["group_size=1"], "agro", "agro needs at least 2 samples per prompt"),
        (["eval_every=0"], "agro", "--eval-every must be >= 1"),
    ],
)
def test_bad_grid_is_a_usage_error(grid, algos, message):
    with pytest.raises(UsageError) as info:
        cells_of("--algos", algos, *[arg for item in grid for arg in ("--grid", item)])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_malformed_behaviour_file_fails_before_any_run(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "What is 1 + 1?", "completion": " 2", "reward": 1}\n{"prompt": "x"}\n')
    with pytest.raises(UsageError, match=r"rows.jsonl:2: malformed row"):
        run.main(["--algos", "agro", "--behavior", f"dataset:{rows}", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_default_directory_is_named_after_the_settings():
    assert run.default_out(run.parse_args(["--algos", "agro,grpo", "--offpolicy", "0,0.5,1"]), []) == Path("results/sweep")
    args = run.parse_args(["--steps", "40", "--behavior", "stale:2", "--grid", "beta=0.1,1"])
    assert run.default_out(args, run.parse_grid(args.grid, ["agro"])) == Path("results/sweep-stale_2-steps40-beta")


def test_t_interval_text():
    assert report.mean_interval_text([0.5]) == "0.500 (n=1)"
    # mean 0.2, s = 0.1414, t(0.975, 1) = 12.706: half-width 12.706 * 0.1 = 1.271, clipped to [0, 1]
    assert report.t_interval([0.1, 0.3]) == pytest.approx((-1.0706, 1.4706), abs=1e-4)  # the literals' 4 decimals
    assert report.mean_interval_text([0.1, 0.3]) == "0.200 [0.000, 1.000] (n=2)"
    # mean 0.4, s = 0.1, t(0.975, 2) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.248
    assert report.mean_interval_text([0.3, 0.4, 0.5]) == "0.400 [0.152, 0.648] (n=3)"
    assert report.mean_interval_text([]) == "-"


# ------------------------------------------------------------------------- bad input (CLI)
BAD_INPUT = {
    "unknown algorithm": (["--algos", "agro,nope"], "unknown algorithm 'nope'; known: agro,"),
    "offpolicy out of range": (["--offpolicy", "0,1.5"], "--offpolicy value 1.5 is outside [0, 1]"),
    "unknown preset": (["--preset", "no-such-preset"], "not a preset (smollm2-135m, tiny)"),
    "unknown dataset": (["--dataset", "nope"], "unknown dataset 'nope'; known: arith"),
    "malformed dataset file": (["--dataset", "jsonl:{dir}/bad.jsonl"], "bad.jsonl line 2: invalid JSON"),
    "unwritable out": (["--out", "{dir}/a-file/out"], "cannot write to --out"),
    "unknown grid key": (["--grid", "nope=1"], "unknown --grid key 'nope'; valid: TrainConfig fields"),
    "processes not dividing groups": (["--processes", "3"], "--processes 3: need N >= 1 dividing --groups (32)"),
    "negative jobs": (["--jobs", "-1"], "--jobs must be >= 0"),
    "more jobs than cores": (["--jobs", "999"], "--jobs 999 is more than the"),
    "unknown compare-to": (["--algos", "agro,grpo", "--compare-to", "ppo"], "--compare-to 'ppo' is not one of --algos"),
    "objective beta nan": (["--objective-beta", "nan"], "--objective-beta is NaN; give a number"),
    "unknown engine argument": (["--engine-arg", "foo=1"], "--engine-arg: the hf engine does not take these"),
    "grid value nan": (["--grid", "beta=nan"], "--grid beta: NaN is not a value to sweep"),
    "zero steps": (["--steps", "0"], "--steps must be >= 1"),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every BAD_INPUT command, run concurrently: name -> (CompletedProcess-like, its --out)."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "bad.jsonl").write_text('{"question": "What is 1 + 1?", "answer": "2"}\nnot json\n')
    (folder / "a-file").write_text("")
    procs = {}
    for name, (args, _) in BAD_INPUT.items():
        out = folder / name.replace(" ", "-")
        argv = [a.format(dir=folder) for a in args]
        if "--out" not in argv:
            argv += ["--out", str(out)]
        procs[name] = (subprocess.Popen([sys.executable, "-m", "benchmarks.run", *argv], cwd=ROOT, env=ENV,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out)
    results = {}
    for name, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr, out)
    return results


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2_before_any_run(bad_input_runs, name):
    returncode, stdout, stderr, out = bad_input_runs[name]
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert len(lines) == 1 and BAD_INPUT[name][1] in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not (out / "runs").exists()  # no cell started


# ----------------------------------------------------------------------- cells in parallel
#: 2 algorithms x 2 shares x 1 seed, small: the same cells with --jobs 1 and --jobs 2.
PARALLEL = ["--algos", "agro,grpo", "--offpolicy", "0,1", "--seeds", "0", *SMALL]
TIMING = {"tokens_per_s", "rollout_seconds", "step_seconds"}


def cell_metrics(out: Path) -> dict[str, list[dict]]:
    return {p.name: [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                     for line in (p / "metrics.jsonl").read_text().splitlines()]
            for p in sorted((out / "runs").iterdir())}


def test_two_jobs_survive_kill_9_and_give_the_one_job_metrics(tmp_path):
    """--jobs 2 runs two pinned workers; kill -9 of the sweep takes its workers with it, the rerun
    resumes, and every cell's per-step metrics equal those of --jobs 1 exactly."""
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "benchmarks.run", *PARALLEL, "--jobs", "1", "--out", str(one)],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=600)
    two = tmp_path / "two"
    command = [sys.executable, "-m", "benchmarks.run", *PARALLEL, "--jobs", "2", "--out", str(two)]
    with open(tmp_path / "first.log", "w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not list(
                (two / "runs").glob("*/checkpoint/trainer_state.json")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    time.sleep(1.0)  # a worker that outlived the sweep would still be writing
    written = {p: p.stat().st_mtime_ns for p in two.rglob("metrics.jsonl")}
    time.sleep(2.0)
    assert {p: p.stat().st_mtime_ns for p in two.rglob("metrics.jsonl")} == written
    rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "training 2 cells at a time, each on 1 core(s)" in rerun.stdout
    resumed = [r for r in ResultStore(two).records() if r["resumed_from_step"] > 0]
    assert resumed, "no cell resumed from a checkpoint"
    assert cell_metrics(two) == cell_metrics(one)
    assert pd.read_csv(two / "summary.csv")["final_accuracy"].tolist() == \
        pd.read_csv(one / "summary.csv")["final_accuracy"].tolist()


def test_initial_evaluation_is_shared_and_the_objective_is_reported(tmp_path):
    out = tmp_path / "sweep"
    run.main([*PARALLEL, "--jobs", "1", "--out", str(out)])
    shared = list((out / "initial_eval").glob("*.json"))
    assert len(shared) == 1  # pi_ref evaluated once for the 4 cells
    summary = pd.read_csv(out / "summary.csv")
    assert summary["initial_accuracy"].nunique() == 1 and summary["optimal_objective"].nunique() == 1
    for row in summary.itertuples():
        expected = (row.optimal_objective - row.final_objective) / (row.optimal_objective - row.initial_objective)
        assert row.final_objective_gap == pytest.approx(expected, rel=1e-12)
        assert row.final_objective == pytest.approx(row.final_accuracy - 0.05 * row.final_kl_ref, abs=1e-12)
        assert row.initial_objective == pytest.approx(row.initial_accuracy, abs=1e-6)  # pi = pi_ref: KL 0
        assert row.canonical_share == 1.0 and row.objective_beta == 0.05
    table = (out / "table.md").read_text()
    assert "Best gain in test accuracy at offpolicy 0:" in table
    assert "| grpo | grpo - agro |" in table and "| agro | offpolicy 1 - offpolicy 0 |" in table
    for name in ("objective_gap.png", "paired_difference.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_paired_differences_resolve_what_the_seeds_agree_on():
    from benchmarks import stats

    rows = []
    for seed, (a, b) in enumerate([(0.50, 0.40), (0.60, 0.52), (0.40, 0.29)]):  # a - b: 0.10, 0.08, 0.11
        rows += [{"algo": "x", "offpolicy": 0.0, "seed": seed, "final_accuracy": a, "initial_accuracy": 0.3},
                 {"algo": "y", "offpolicy": 0.0, "seed": seed, "final_accuracy": b, "initial_accuracy": 0.3},
                 {"algo": "y", "offpolicy": 1.0, "seed": seed, "final_accuracy": b + (0.05, -0.05, 0.01)[seed],
                  "initial_accuracy": 0.3}]
    frame = pd.DataFrame(rows)
    [d] = stats.versus_algorithm(frame, "final_accuracy", "y", [])
    # mean 0.0967, sd 0.01528, t(0.975, 2) = 4.303: half-width 0.0380
    assert d.values == pytest.approx((0.10, 0.08, 0.11)) and d.resolved
    assert d.interval == pytest.approx((0.0587, 0.1346), abs=1e-4)
    assert d.text() == "**+0.097** [+0.059, +0.135] (n=3)"
    [share] = stats.versus_share(frame, "final_accuracy", [])
    assert share.point == ("y",) and not share.resolved  # +0.05, -0.05, +0.01: the seeds disagree
    [gain] = [g for g in stats.gains(frame, [], 0.0) if g.point == ("x",)]
    assert gain.values == pytest.approx((0.2, 0.3, 0.1))


def test_an_algorithm_is_compared_with_each_variant_of_the_reference():
    """A grid key of the reference algorithm only (agro.baseline) gives one comparison per value."""
    from benchmarks import stats

    rows = []
    for seed in range(3):
        rows += [{"algo": "agro", "agro.baseline": "mean", "offpolicy": 1.0, "seed": seed, "final_accuracy": 0.4 + seed / 10},
                 {"algo": "agro", "agro.baseline": "loo", "offpolicy": 1.0, "seed": seed, "final_accuracy": 0.5 + seed / 10},
                 {"algo": "grpo", "agro.baseline": stats.UNSET, "offpolicy": 1.0, "seed": seed,
                  "final_accuracy": 0.6 + seed / 10 + (0.01, -0.01, 0.0)[seed]}]
    differences = stats.versus_algorithm(pd.DataFrame(rows), "final_accuracy", "agro", ["agro.baseline"])
    by_reference = {d.b: d for d in differences}
    assert set(by_reference) == {"agro agro.baseline=loo", "agro agro.baseline=mean"}
    assert by_reference["agro agro.baseline=mean"].values == pytest.approx((0.21, 0.19, 0.2))
    assert by_reference["agro agro.baseline=loo"].values == pytest.approx((0.11, 0.09, 0.1))
