"""benchmarks.run --executor local: each cell a submitit job; a killed job is reported, the rerun
resumes it from its checkpoint, and every cell's metrics equal those of the in-process pool."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.store import cell_name

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SWEEP = ["--algos", "agro", "--offpolicy", "0,1", "--seeds", "0", "--steps", "6", "--groups", "4",
         "--group-size", "4", "--eval-problems", "8", "--eval-samples", "2", "--save-every", "2", "--jobs", "1"]
FIRST = cell_name({"algo": "agro", "offpolicy": 0.0, "seed": 0})
TIMING = {"tokens_per_s", "rollout_seconds", "step_seconds"}


def sweep(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", *SWEEP, *extra, "--out", str(out)]


def metrics(out: Path) -> dict[str, list[dict]]:
    return {run.name: [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                       for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in sorted((out / "runs").iterdir())}


def kill_job_after_checkpoint(proc: subprocess.Popen, checkpoint: Path) -> None:
    """SIGKILL the job process training the first cell once it has written a checkpoint."""
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "the first cell never checkpointed"
    jobs = [p for p in psutil.Process(proc.pid).children(recursive=True)
            if any("submitit" in part and "_submit" in part for part in p.cmdline())]
    assert jobs, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
    for job in jobs:
        job.send_signal(signal.SIGKILL)


def test_a_killed_job_is_reported_resubmitted_and_resumed(tmp_path):
    out = tmp_path / "jobs"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(sweep(out, "--executor", "local"), cwd=ROOT, env=ENV, stdout=log,
                                stderr=subprocess.PIPE, text=True)
        kill_job_after_checkpoint(proc, out / "runs" / FIRST / "checkpoint" / "trainer_state.json")
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: 1 cell(s) did not finish")
    done = sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert FIRST not in done and len(done) == 1  # the other cell was trained all the same

    rerun = subprocess.run(sweep(out, "--executor", "local"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming: 1 of 2 cells already done" in rerun.stdout
    assert json.loads((out / "cells" / f"{FIRST}.json").read_text())["resumed_from_step"] >= 2

    pool = tmp_path / "pool"
    subprocess.run(sweep(pool), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=True)
    assert metrics(out) == metrics(pool)
    assert (out / "submitit").is_dir() and any((out / "submitit").glob("*_log.out"))


def test_executor_settings_are_checked_before_any_run(tmp_path):
    for extra, message in [(["--executor", "local", "--time-limit", "0"], "--time-limit"),
                           (["--executor", "slurm", "--processes", "2"], "drop --processes"),
                           (["--executor", "nowhere"], "invalid choice: 'nowhere'"),
                           (["--executor", "slurm"], "sbatch is not on PATH")]:
        result = subprocess.run(sweep(tmp_path / "x", *extra), cwd=ROOT, env=ENV, capture_output=True, text=True,
                                timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
