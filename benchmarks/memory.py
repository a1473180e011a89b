"""What each training process holds for the policy, and its step time: full fine-tuning and LoRA in one
process, DDP and FSDP2 on two.

    python -m benchmarks.memory                        # tiny and smollm2-135m -> results/memory.md
    python -m benchmarks.memory --models tiny --out /tmp/memory.md

For every model and layout this builds ``rlft.train``'s Trainer (under ``torchrun --standalone
--nproc-per-node 2`` for the 2-process layouts) and takes two real optimizer steps of AGRO
(``--groups 4 --group-size 2``, 16 new tokens; a reward that differs between distinct completions,
so every layout gets a gradient). It then counts, on every process, the bytes of the tensors it holds for
the policy: the parameters, their gradients and AdamW's two moments (a shard's local tensor under
FSDP2; under LoRA the frozen weights count as parameters, only the adapters have gradients and
moments: :func:`rlft.fsdp.local_bytes`). These counts are exact and the same on every machine. Beside
them: the second step's wall time (the first builds kernels) and the process's peak resident
memory (``ru_maxrss``: it also holds pi_ref, the engine's copy, activations and the libraries);
both vary between machines and runs, so compare them within one run only.

pi_ref and the rollout engine's weights are not sharded under FSDP2 (see :mod:`rlft.fsdp`); under
LoRA pi_ref shares the frozen weights (see :mod:`rlft.lora`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from rlft.files import atomic_write_text

#: layout -> (processes, extra TrainConfig settings)
LAYOUTS = {"full, 1 process": (1, {}), "LoRA r=16 all-linear, 1 process": (1, {"lora": "r=16,alpha=32"}),
           "DDP, 2 processes": (2, {}), "FSDP2, 2 processes": (2, {"fsdp": True})}
#: a reward that differs between distinct completions (so a model that solves nothing yet gets a gradient)
REWARD = "benchmarks.memory:VariedReward"


class VariedReward:
    """reward(y) = (sum of the character codes of y mod 7) / 6: a fixed score of the text, in [0, 1]."""

    def __call__(self, completions: list[str], golds: list[str]) -> list[float]:
        return [(sum(map(ord, c)) % 7) / 6 for c in completions]


def measure(model: str, settings: dict, out: Path) -> None:
    """(Run in every launched process.) Two steps, then write this process's counts to ``out/rank-R.json``."""
    from rlft import fsdp as sharding
    from rlft.trainer import TrainConfig, Trainer

    config = TrainConfig(algo="agro", model=model, groups=4, group_size=2, max_new_tokens=16, eval_problems=2,
                         reward=REWARD, out=str(out / "run"), **settings)
    trainer = Trainer(config)
    trainer.step(1)
    seconds = trainer.step(2)["step_seconds"]
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    counts = sharding.local_bytes(policy, optimizer)
    counts["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    counts["parameter_count"] = sum(p.numel() for p in trainer.ref_model.parameters())
    counts["step_seconds"] = seconds
    counts["threads"] = torch.get_num_threads()
    (out / f"rank-{trainer.rank}.json").write_text(json.dumps(counts))
    trainer.accelerator.wait_for_everyone()


def run_layout(model: str, processes: int, settings: dict) -> list[dict]:
    """Launch :func:`measure` on ``processes`` processes; every process's counts."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "benchmarks.memory", "--measure", model, "--folder", folder,
                   "--settings", json.dumps(settings)]
        if processes > 1:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", str(processes), *command[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: {model} on {processes} process(es) failed:\n{done.stderr[-3000:]}")
        return [json.loads((Path(folder) / f"rank-{r}.json").read_text()) for r in range(processes)]


def machine() -> str:
    """``"AMD EPYC (CPU family 26, avx512_bf16), 2 cores"``: what the step times were measured on."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    simd = "avx512_bf16" if "avx512_bf16" in flags else "avx512f" if "avx512f" in flags else \
        "avx2 only" if "avx2" in flags else "no avx2"
    name = fields.get("model name", platform.machine())
    return f"{name} (CPU family {fields.get('cpu family', '?')}, {simd}), {len(os.sched_getaffinity(0))} cores"


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def report(rows: dict[str, dict[str, list[dict]]]) -> str:
    lines = ["# Policy memory and step time per training process: full fine-tuning, LoRA, DDP, FSDP2", "",
             "Written by `python -m benchmarks.memory` (see its docstring): two real AGRO steps in float32, then "
             "the bytes each process holds for the policy's parameters, gradients and AdamW moments (MiB; exact, "
             "machine-independent), the second step's wall time and each process's peak resident memory (both vary "
             "between runs and machines; the peak also holds pi_ref, the rollout engine's copy, activations and the "
             "libraries).", "",
             f"Machine: {machine()}; torch {torch.__version__}, peft {version('peft')}.", "",
             "| model | parameters | layout | rank | parameters MiB | gradients MiB | AdamW MiB | "
             "policy total MiB | step s | threads | peak RSS MiB |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model, layouts in rows.items():
        for layout, ranks in layouts.items():
            for rank, c in enumerate(ranks):
                total = c["parameters"] + c["gradients"] + c["optimizer"]
                lines.append(f"| {model} | {c['parameter_count'] / 1e6:.2f}M | {layout} | {rank} | "
                             f"{mib(c['parameters'])} | {mib(c['gradients'])} | {mib(c['optimizer'])} | {mib(total)} | "
                             f"{c['step_seconds']:.2f} | {c['threads']} | {mib(c['peak_rss'])} |")
    lines.append("")
    for model, layouts in rows.items():
        def total(c: dict) -> int:
            return c["parameters"] + c["gradients"] + c["optimizer"]

        one, adapted = layouts["full, 1 process"][0], layouts["LoRA r=16 all-linear, 1 process"][0]
        worst = max(total(c) for c in layouts["FSDP2, 2 processes"])
        lines.append(f"- {model}: FSDP2 on 2 processes holds at most {worst / total(one):.3f} of the one-process "
                     f"policy state per process (DDP holds all of it on each); LoRA holds {total(adapted) / total(one):.3f} "
                     f"of it, and its step took {adapted['step_seconds'] / one['step_seconds']:.2f}x the full "
                     "fine-tuning step's time in this run.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2-135m")
    p.add_argument("--out", default="results/memory.md")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one launched measurement
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        measure(args.measure, json.loads(args.settings), Path(args.folder))
        return
    rows: dict[str, dict[str, list[dict]]] = {}
    for model in args.models.split(","):
        rows[model] = {}
        for layout, (processes, settings) in tqdm(LAYOUTS.items(), desc=model, unit="layout"):
            rows[model][layout] = run_layout(model, processes, settings)
    text = report(rows)
    atomic_write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
