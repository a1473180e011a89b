"""Every bad input and every damaged file gets one line: the classes of failures a battery of 50 bad
inputs found, and more in their spirit (typos, truncated files, a full disk, Ctrl-C mid-checkpoint).

The contract (rlft/cli.py): a bad input is ONE line on stderr naming the problem and what to do,
exit code 2, no traceback, checked before any model is loaded; a damaged result file is never
fatal to a sweep (it is set aside as *.corrupt and its cell redone); nothing finished is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import tabular
from benchmarks.store import ResultStore
from rlft.errors import UsageError
from rlft.files import atomic_write_text, ensure_writable_dir

ROOT = Path(__file__).parents[1]
TESTS = Path(__file__).parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
       "HF_HUB_OFFLINE": "1"}
TINY_RUN = ["--steps", "3", "--groups", "2", "--group-size", "2", "--eval-every", "3", "--eval-problems", "4",
            "--eval-samples", "2", "--save-every", "1"]
TABULAR = ["--algos", "agro", "--offpolicy", "0,1", "--seeds", "0", "--steps", "30"]


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def one_line(result: subprocess.CompletedProcess, message: str, code: int = 2, after_work: bool = False) -> str:
    """Assert the process failed with ``code`` and exactly one stderr line containing ``message``
    (with ``after_work``: its progress bars may come first; the error is the last line, and the only one)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    if after_work:
        assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr[-3000:]
        lines = lines[-1:]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


# ------------------------------------------------------------------- benchmarks.tabular
def test_tabular_refuses_a_folder_made_with_other_settings(tmp_path):
    tabular.main([*TABULAR, "--lr", "3", "--out", str(tmp_path)])
    before = (tmp_path / "sweep.json").read_text()
    line = one_line(run_module("benchmarks.tabular", *TABULAR, "--lr", "0.5", "--out", str(tmp_path)),
                    "holds a sweep with other settings")
    assert "--lr 3.0 there, 0.5 now" in line and "pass another --out" in line
    assert (tmp_path / "sweep.json").read_text() == before  # the manifest still says lr 3


@pytest.mark.parametrize("args, message", [
    (["--lr", "-3"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--beta", "nan"], "--beta must be a finite number > 0"),
    (["--beta", "inf"], "--beta must be a finite number > 0"),
    (["--grid", "agro.beta=nan"], "--grid agro.beta: NaN is not a value to sweep"),
    (["--seeds", "0,x"], "--seeds expects comma-separated integers"),
])
def test_tabular_refuses_bad_numbers(tmp_path, args, message):
    one_line(run_module("benchmarks.tabular", *TABULAR, *args, "--out", str(tmp_path)), message)
    assert not list(tmp_path.glob("cells/*.json"))


def test_a_damaged_cell_is_set_aside_and_redone(tmp_path, capsys):
    tabular.main([*TABULAR, "--out", str(tmp_path)])
    store = ResultStore(tmp_path)
    damaged = store.cell_path("algo=agro,offpolicy=1.0,seed=0")
    good = damaged.read_text()
    damaged.write_text(good[: len(good) // 2])  # cut short, as by a full disk
    capsys.readouterr()
    tabular.main([*TABULAR, "--out", str(tmp_path)])  # the rerun: no traceback, the cell is redone
    err = capsys.readouterr().err
    assert f"{damaged} was damaged (JSONDecodeError" in err and "set aside" in err
    assert damaged.with_name(damaged.name + ".corrupt").read_text() == good[: len(good) // 2]
    assert json.loads(damaged.read_text())["status"] == "ok"
    assert "algo=agro,offpolicy=1.0,seed=0.json (redone)" in (tmp_path / "table.md").read_text()


def test_report_names_a_damaged_cell_and_goes_on(tmp_path):
    tabular.main([*TABULAR, "--out", str(tmp_path)])
    (tmp_path / "cells" / "algo=agro,offpolicy=0.0,seed=0.json").write_text('{"cell": "algo=ag')
    result = run_module("benchmarks.report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "was damaged" in result.stderr and "Traceback" not in result.stderr
    table = (tmp_path / "table.md").read_text()
    assert "algo=agro,offpolicy=0.0,seed=0.json (missing here; rerun the sweep to redo it)" in table
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 1


@pytest.mark.parametrize("module", ["benchmarks.tabular", "benchmarks.report"])
def test_a_damaged_manifest_is_one_line_naming_it(tmp_path, module):
    tabular.main([*TABULAR, "--out", str(tmp_path)])
    (tmp_path / "sweep.json").write_text('{"kind": "tabu')
    args = [*TABULAR, "--out", str(tmp_path)] if module == "benchmarks.tabular" else [str(tmp_path)]
    line = one_line(run_module(module, *args), f"{tmp_path / 'sweep.json'} is damaged (JSONDecodeError")
    assert "delete it" in line


# ----------------------------------------------------------------------- benchmarks.report
def test_report_on_a_missing_folder_says_what_to_pass(tmp_path):
    one_line(run_module("benchmarks.report", str(tmp_path / "nope")),
             "is not a folder; pass the --out folder of a benchmarks.run or benchmarks.tabular sweep")


def test_report_on_a_folder_without_manifest_creates_nothing(tmp_path):
    one_line(run_module("benchmarks.report", str(tmp_path)), "has no sweep.json; pass a folder written by")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------- benchmarks.run
def test_a_sweep_in_which_every_cell_failed_is_one_line(tmp_path):
    """Every cell of the NaN plug-in fails: the sweep records each failure, then says so in one line."""
    args = ["--algos", "nan_algo:ExplodingPG", "--offpolicy", "0", "--seeds", "0", "--jobs", "1", *TINY_RUN]
    line = one_line(run_module("benchmarks.run", *args, "--out", str(tmp_path)), "every cell of", after_work=True)
    assert "failed" in line and "loss is nan" in line and "--retry-failed" in line
    assert pd.read_csv(tmp_path / "summary.csv")["status"].tolist() == ["failed"]
    one_line(run_module("benchmarks.report", str(tmp_path)), "every cell of")


# ------------------------------------------------------------------------------ rlft.train
@pytest.mark.parametrize("args, message", [
    (["--hp", "beta=nan"], "hyper-parameter beta is NaN; give a number"),
    (["--hp", "beta=inf"], "beta must be >= 0 and finite"),
    (["--lr", "nan"], "--lr is NaN; give a number"),
    (["--lr", "inf"], "--lr must be a finite number > 0"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--group-size", "0"], "--group-size must be >= 1"),
    (["--preset", "tinyy"], "not a preset (smollm2-135m, tiny)"),
    (["--algo", "agroo"], "unknown algorithm 'agroo'; known: agro"),
    (["--fsdp"], "--fsdp shards the policy over several processes, and this is one"),
    (["--lora", "r=0"], "needs r >= 1"),
    (["--lora", "r=4", "--fsdp"], "--lora with --fsdp is not supported"),
])
def test_train_refuses_bad_settings(tmp_path, args, message):
    one_line(run_module("rlft.train", *args, "--out", str(tmp_path / "run")), message)


def test_lora_targets_the_model_lacks_are_one_line(tmp_path):
    # (known only once the model is loaded: its loading bar comes first)
    one_line(run_module("rlft.train", "--lora", "r=4,targets=no_such_layer", "--out", str(tmp_path / "run")),
             "error: --lora: Target modules {'no_such_layer'} not found", after_work=True)


def test_a_sweep_with_fsdp_needs_several_processes(tmp_path):
    one_line(run_module("benchmarks.run", "--fsdp", "--out", str(tmp_path / "sweep")),
             "--fsdp shards each cell over several processes: add --processes N")
    assert not (tmp_path / "sweep").exists()


def test_train_out_must_be_a_writable_folder(tmp_path):
    (tmp_path / "a-file").write_text("")
    one_line(run_module("rlft.train", *TINY_RUN, "--out", str(tmp_path / "a-file")),
             f"--out {tmp_path / 'a-file'} is a file, not a folder")
    one_line(run_module("rlft.train", *TINY_RUN, "--out", str(tmp_path / "a-file" / "run")),
             f"cannot write to --out {tmp_path / 'a-file' / 'run'}")


def test_train_nan_stop_is_one_line_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    line = one_line(run_module("rlft.train", "--algo", "nan_algo:ExplodingPG", *TINY_RUN, "--out", str(out)),
                    "step 2: nan_algo:ExplodingPG loss is nan", code=1, after_work=True)
    assert str(out / "error.json") in line and "the checkpoint of step 1 is kept" in line
    assert "NonFiniteLoss" in json.loads((out / "error.json").read_text())["error"]
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 1


def test_train_on_a_damaged_run_folder_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"train": {"st')
    one_line(run_module("rlft.train", *TINY_RUN, "--out", str(out)), f"{out / 'config.json'} is damaged")


def test_ctrl_c_between_the_checkpoint_renames_resumes(tmp_path):
    """A checkpoint is swapped in by two renames (checkpoint -> checkpoint.old, checkpoint.tmp ->
    checkpoint). Interrupted between them, only checkpoint.old is left: the rerun takes it back."""
    out = tmp_path / "run"

    def train(steps: int) -> subprocess.CompletedProcess:
        return run_module("rlft.train", "--algo", "agro", *TINY_RUN, "--steps", str(steps), "--out", str(out))

    assert train(2).returncode == 0
    (out / "checkpoint").rename(out / "checkpoint.old")  # the state a Ctrl-C between the renames leaves
    result = train(3)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # resumed at step 2, nothing redone or lost


# ------------------------------------------------------------------------- the file helpers
def test_a_full_disk_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "cells" / "x.json"
    atomic_write_text(path, "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left behind


def test_ensure_writable_dir_names_the_flag(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="--out .* is a file, not a folder"):
        ensure_writable_dir(tmp_path / "f")
    with pytest.raises(UsageError, match="cannot write to --dir .*: Not a directory; pass a writable folder"):
        ensure_writable_dir(tmp_path / "f" / "sub", "--dir")
    assert ensure_writable_dir(tmp_path / "new" / "deep").is_dir()
