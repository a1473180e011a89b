"""GPU smoke test: every algorithm trains 2 steps on a CUDA device in bfloat16, one verdict line each.

    python -m benchmarks.gpu_smoke [--out results/gpu_smoke.md] [--preset tiny] [--engine auto]

Not part of the test suite (it needs a GPU). Each algorithm runs ``rlft.trainer.Trainer`` for
2 steps with half of every batch off-policy (pi_ref samples), the model in bfloat16 on
``cuda:0`` and the rollout engine ``auto`` (vLLM where it is installed, else the HF engine); the
trainer recomputes the behaviour log-probs of on-policy samples whenever the engine is not its
own forward. A verdict is "ok" with the last loss, the sampler-trainer KL and seconds, or
"FAILED" with the error's first line. The report (device, torch / transformers / vLLM versions,
one line per algorithm) goes to stdout and ``--out``; the exit code is 1 if any algorithm failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

import algorithms
from rlft import cli
from rlft.errors import UsageError
from rlft.trainer import TrainConfig, Trainer


def smoke(algo: str, preset: str, engine: str, out: Path) -> str:
    """Train ``algo`` 2 steps; its verdict line."""
    start = time.perf_counter()
    config = TrainConfig(algo=algo, model=preset, engine=engine, dtype="bfloat16", steps=2, groups=4, group_size=4,
                         offpolicy=0.5, eval_every=2, eval_problems=4, eval_samples=1, save_every=2, out=str(out))
    trainer = None
    try:
        trainer = Trainer(config)
        last = trainer.train()[-1]
        kl = last.get("sampler_kl")
        finite = all(math.isfinite(v) for v in last.values() if isinstance(v, float))
        verdict = "ok" if finite else "FAILED: a metric is not finite"
        return (f"{algo}: {verdict}, engine {type(trainer.engine).__name__}, loss {last['loss']:.4g}, "
                f"sampler KL {'-' if kl is None else f'{kl:.3g}'}, {time.perf_counter() - start:.1f} s")
    except Exception as exc:  # a verdict, not a crash: the other algorithms still run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{algo}: FAILED: {type(exc).__name__}: {first}"
    finally:
        close = getattr(getattr(trainer, "engine", None), "close", None)
        if close is not None:
            close()
        torch.cuda.empty_cache()


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/gpu_smoke.md", help="report file (default results/gpu_smoke.md)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--engine", default="auto", help="rollout engine: auto (vllm where installed), vllm or hf")
    p.add_argument("--algos", default=",".join(algorithms.available()), help="comma list (default: all)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise UsageError("no CUDA device here: this script checks the GPU path; run it on a machine with a GPU")
    vllm = importlib.util.find_spec("vllm") is not None
    versions = {"torch": torch.__version__, "transformers": importlib.import_module("transformers").__version__,
                "vllm": importlib.import_module("vllm").__version__ if vllm else "not installed"}
    lines = [f"# GPU smoke test: {torch.cuda.get_device_name(0)}", "",
             "`python -m benchmarks.gpu_smoke` " + " ".join(argv or []), "",
             ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    print("\n".join(lines), flush=True)
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for algo in cli.comma_list(args.algos):
            verdicts.append(smoke(algo, args.preset, args.engine, Path(tmp) / algo))
            print(verdicts[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines + [f"- {v}" for v in verdicts]) + "\n")
    return int(any("FAILED" in v for v in verdicts))


def run(argv: Sequence[str] | None = None) -> None:
    """The CLI: exit code 1 when an algorithm failed (2 for bad input, through :func:`rlft.cli.run`)."""
    if main(argv):
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(run)
