"""Peak memory of one training step at a real vocabulary: the chunked scorer, and another checkout's.

    python -m benchmarks.scorer_memory                          # -> results/scorer-memory.md
    python -m benchmarks.scorer_memory --before ../rlft-old     # also a checkout with the former scorer

The model: SmolLM2-135M's configuration (vocabulary 49,152, hidden size 576) with 2 decoder layers
and random weights (seed 0), saved with SmolLM2's tokenizer in a temporary folder
(:func:`real_vocabulary_model`). One ``python -m rlft.train`` step of AGRO in float32: 8 prompts x 8
samples = 64 completions of 256 tokens (random weights hardly ever draw EOS, so every completion is
256 tokens long), with the step-0 and step-1 evaluations of 8 test problems x 1 sample. The figure
is the peak resident memory of that process (``ru_maxrss`` of the child): the libraries, the policy,
pi_ref, AdamW's moments, generation, scoring with gradients and without.

The scorer before 2026-12-08 held [B, T, V] float32 logits, their log-softmax and its exponential
for the entropy, with gradients: 64 x 256 x 49,152 x 4 bytes = 3.0 GiB each. ``--before PATH`` runs
the same command from the checkout at PATH (e.g. ``git worktree add ../rlft-old f50d723``), so the
two figures come from the same machine in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from rlft.files import atomic_write_text

#: The step measured: 64 completions x 256 tokens (the issue's size), evaluation kept small. The reward
#: scores the text's characters (benchmarks.memory.VariedReward): math grading of random text would
#: measure sympy's parser, not the training path.
STEP = ["--algo", "agro", "--steps", "1", "--groups", "8", "--group-size", "8", "--max-new-tokens", "256",
        "--eval-problems", "8", "--eval-samples", "1", "--eval-every", "1", "--reward", "benchmarks.memory:VariedReward"]
#: The bar this measurement must stay under (the issue's).
LIMIT_GIB = 3.0


def real_vocabulary_model(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """SmolLM2-135M's configuration with ``layers`` decoder layers and random weights, saved (with
    SmolLM2's tokenizer) in ``folder``: a model with a real vocabulary that trains fast on a CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlft.models import load_model

    source, tokenizer = load_model("smollm2-135m")
    config = source.config
    config.num_hidden_layers = layers
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = source.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def peak_rss(repo: Path, model: Path, out: Path, extra: Sequence[str] = ()) -> dict:
    """Run the step (and ``extra`` flags) from checkout ``repo`` in a child process; its peak RSS
    (bytes) and wall time."""
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    script = ("import resource, runpy, sys; sys.argv = ['rlft.train'] + sys.argv[1:]\n"
              "try:\n    runpy.run_module('rlft.train', run_name='__main__')\n"
              "finally:\n    print('PEAK_RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script, *STEP, *extra, "--model", str(model), "--out", str(out)],
                          cwd=repo, env=env, capture_output=True, text=True)
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS")]
    return {"returncode": done.returncode, "peak_rss": int(peak[-1].split()[1]) if peak else None,
            "seconds": time.perf_counter() - start,
            "error": "" if done.returncode == 0 else done.stderr.strip().splitlines()[-1][:300]}


def commit_of(repo: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True).stdout.strip()
    return (done.stdout.strip() or "?") + (" + uncommitted changes" if dirty else "")


def report(rows: list[tuple[str, str, dict]], machine: str) -> str:
    lines = ["# Peak memory of one training step at a real vocabulary", "",
             "Written by `python -m benchmarks.scorer_memory` (see its docstring): SmolLM2-135M's configuration with "
             "2 decoder layers and random weights (vocabulary 49,152), one `rlft.train` step of AGRO in float32 on "
             "64 completions x 256 tokens, with the step-0 and step-1 evaluations of 8 problems; the peak resident "
             f"memory of that process. The bar: at most {LIMIT_GIB:g} GiB.", "",
             f"Machine: {machine}.", "",
             "| scorer | settings | checkout | peak RSS GiB | at most 3 GiB | wall s |",
             "| --- | --- | --- | ---: | --- | ---: |"]
    for name, settings, commit, r in rows:
        if r["peak_rss"] is None:
            lines.append(f"| {name} | {settings} | {commit} | - | failed: {r['error']} | {r['seconds']:.0f} |")
            continue
        gib = r["peak_rss"] / 2**30
        status = "yes" if gib <= LIMIT_GIB else "no"
        if r["returncode"]:
            status += f" (exit {r['returncode']}: {r['error']})"
        lines.append(f"| {name} | {settings} | {commit} | {gib:.2f} | {status} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.memory import machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.scorer_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="another checkout (the former scorer) to measure beside this one")
    p.add_argument("--out", default="results/scorer-memory.md")
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        model = real_vocabulary_model(Path(tmp) / "model")
        runs = [("chunked", "defaults (one micro-batch of 64)", here, ()),
                ("chunked", "--micro-groups 4 (two of 32)", here, ("--micro-groups", "4"))]
        if args.before:
            runs += [("[B, T, V] float32", "defaults (one micro-batch of 64)", args.before.resolve(), ())]
        rows = []
        for i, (name, settings, repo, extra) in enumerate(runs):
            rows.append((name, settings, commit_of(repo), peak_rss(repo, model, Path(tmp) / f"run-{i}", extra)))
            print(rows[-1], flush=True)
    text = report(rows, machine())
    atomic_write_text(Path(args.out), text)
    print(text)
    if rows[0][3]["returncode"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
