"""(d) One vLLM engine per training process: ``accelerate launch --num_processes 2 ... --engine vllm``.

Each DDP rank (here: 2 CPU processes over gloo) runs its own in-process engine with vLLM's
``external_launcher`` executor (as TRL's ``vllm_mode="colocate"``) on its own share of the cores
(core r for rank r on 2 cores), samples its own groups and takes the new weights after every step.

The launched processes run without the ``VLLM_CPU_OMP_THREADS_BIND`` that tox sets for the
one-process tests (``0-1``: both cores), so that each rank takes its default share.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.run import accelerate_launch
from rlft.engines import vllm as vllm_engine
from rlft.errors import UsageError

ROOT = Path(__file__).parents[2]


def launched_env() -> dict[str, str]:
    """The environment of launched processes: this one's, less the core binding, with the repository
    (the code under test, not an installed copy) and tests/ (tolerances.py) importable."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def launch(*command: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(accelerate_launch(2, *command), cwd=ROOT, env=launched_env(), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("bind, rank, ranks, cores, expected", [
    (None, 1, 2, {0, 1, 2, 3}, [2, 3]),  # default: the LOCAL_RANK-th of LOCAL_WORLD_SIZE equal slices
    ("auto", 0, 2, {0, 1, 2, 3}, [0, 1]),
    (None, 1, 2, {0, 1}, [1]),  # 2 cores, 2 processes: core r for rank r
    (None, 1, 2, {5}, [5]),  # fewer cores than processes: shared
    (None, 0, 1, {0, 1, 2}, [0, 1, 2]),  # one process: every core
    ("0-1|2-3", 1, 2, {0, 1, 2, 3}, [2, 3]),  # vLLM's syntax: one entry per local rank
    ("0,2", 1, 2, {0, 1, 2, 3}, [0, 2]),  # one entry: every rank
    ("nobind", 0, 2, {0, 1}, None),  # leave the threads alone
])
def test_cpu_share(monkeypatch, bind, rank, ranks, cores, expected):
    if bind is None:
        monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", bind)
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(cores))
    assert vllm_engine.cpu_share() == expected


@pytest.mark.parametrize("bind", ["0|1|2", "0-x"])
def test_cpu_share_refuses_a_bad_binding_in_one_line(monkeypatch, bind):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", bind)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="VLLM_CPU_OMP_THREADS_BIND") as err:
        vllm_engine.cpu_share()
    assert "\n" not in str(err.value)


def test_each_rank_runs_its_own_engine(tmp_path):
    """tests/vllm/rank_engine.py on 2 processes: each rank's engine (external_launcher, vLLM groups of
    size 1 over the trainer's world) runs on its own core, serves its own weights before and after a
    sync, and leaves the trainer's process group working when it shuts down."""
    launch(str(ROOT / "tests" / "vllm" / "rank_engine.py"), "--out", str(tmp_path))
    allowed = sorted(os.sched_getaffinity(0))  # the launched processes start with this affinity
    size = len(allowed) // 2
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        print(r)
        assert (r["rank"], r["world_size"], r["all_reduce"], r["version"]) == (rank, 2, 2.0, 1)
        assert r["executor"] == "external_launcher"
        assert (r["vllm_world"], r["vllm_tp"], r["vllm_tp_ranks"]) == (2, 1, [rank])
        if size:  # at least one core per process
            share = allowed[rank * size: (rank + 1) * size]
            assert r["cores"] == share and r["torch_threads"] <= len(share)
            # every thread of the process, vLLM's and training's, on those cores
            assert [vllm_engine._parse_cpu_list(a) for a in r["thread_affinities"]] == [share]
        for diff, bound in (r["before"], r["after"]):
            assert diff <= bound
        stale_diff, stale_bound = r["stale"]
        assert stale_diff > 10 * stale_bound  # the sync changed what the engine computes
        assert r["refusal"].startswith("--engine-arg tensor_parallel_size=2 with 2 training processes")


def train(out: Path, steps: int) -> subprocess.CompletedProcess:
    return launch("-m", "rlft.train", "--engine", "vllm", "--preset", "tiny", "--algo", "grpo", "--steps", str(steps),
                  "--groups", "4", "--group-size", "4", "--lr", "1e-3", "--eval-every", "2", "--eval-problems", "8",
                  "--eval-samples", "2", "--save-every", "1", "--out", str(out))


def check_on_policy(records: list[dict]) -> None:
    """Each step's sampler-trainer KL (k3 of the engines' recorded log-probs against the trainer's
    recomputation, summed over both ranks' tokens) is rounding only. From step 2 on the weights have
    moved from pi_ref: an engine that missed a sync would show a KL the size of the policy's KL to
    pi_ref (``kl_k3``), so the bound is a small fraction of it."""
    for r in records:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, (int, float)))
        assert r["offpolicy_share"] == 0 and r["clip_fraction"] == 0  # on-policy GRPO: pi / mu = 1
        assert 0 <= r["sampler_kl"] <= 1e-8, r
        if r["step"] >= 2:
            assert r["kl_k3"] > 1e-6 and r["sampler_kl"] <= 1e-3 * r["kl_k3"], r


def test_rlft_train_on_two_processes_with_vllm_and_resume(tmp_path):
    out = tmp_path / "run"
    first = train(out, 2)
    assert "test accuracy" in first.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]  # gathered and written once, not once per process
    check_on_policy(records[1:])
    checkpoint = out / "checkpoint"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state == {"step": 2, "engine_version": 2, "processes": 2}
    assert sorted(p.name for p in checkpoint.glob("behavior-*.pt")) == ["behavior-0.pt", "behavior-1.pt"]

    train(out, 3)  # resumes from step 2: both engines must start from the checkpoint's weights
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    check_on_policy(records[3:])
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state == {"step": 3, "engine_version": 3, "processes": 2}
