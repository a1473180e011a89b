"""The language-model benchmark: algorithms x off-policy share x seed x grid point, each a real run.

    python -m benchmarks.run --algos agro,grpo --offpolicy 0,0.5,1
    python -m benchmarks.run --algos agro,grpo --grid beta=0.05,0.5 --grid agro.baseline=mean,loo
    python -m benchmarks.report results/sweep       # rebuild the tables and plots from the files
    python -m benchmarks.run --config sweep.yaml --seeds 0,1   # a recipe; flags override it

Every TrainConfig field but the cell axes is a flag (derived from rlft/config.py).

Each cell trains the model (default: the tiny preset on arith:ops=+-) with rlft.trainer.Trainer,
--jobs N cells at a time in worker processes pinned to their share of the cores (default: one
single-thread tiny cell per core; --jobs 1: one after another in this process), in
DIR/runs/<cell>/ (config.json with every setting, metrics.jsonl, checkpoint/). When a cell ends,
its curve DIR/curves/<cell>.csv and then its record DIR/cells/<cell>.json are written atomically;
the record marks the cell done. Rerunning the same command skips finished cells, and a cell that
was killed resumes from its last trainer checkpoint (--save-every). A cell that fails (NaN loss,
any exception) is recorded with status "failed" and its error, and the sweep goes on. At the end
DIR/summary.csv, curves.csv, table.md and the plots are rebuilt from the cell files
(benchmarks.report; paired statistics in benchmarks.stats). Every cell is evaluated on the same
test problems with the same evaluation seeds, and pi_ref's step-0 evaluation is computed once and
shared (DIR/initial_eval/). Cells run seed by seed, so a partial sweep already covers every
algorithm and off-policy share.

--grid KEY=V1,V2 (repeatable) multiplies the cells by the values of one hyper-parameter:
  * a TrainConfig field (lr, temperature, top_p, group_size, groups, max_new_tokens, behavior, ...);
  * an algorithm hyper-parameter, for every selected algorithm that has it (beta=0.05,0.5);
  * ALGO.KEY, for that algorithm only (agro.baseline=mean,loo): the others are not multiplied.
Grid keys become columns of summary.csv and table.md and facets of the plots. A TrainConfig field
wins over an algorithm hyper-parameter of the same name; ALGO.KEY always means the algorithm's.

DIR defaults to results/sweep, plus a suffix for each setting that differs from the defaults
(results/sweep-stale_2-steps40-beta). A directory only takes cells with its own settings: another
--algos, --offpolicy, --seeds or other grid values add cells; other settings need another --out.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import shutil
import subprocess
import sys
import time
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm import tqdm

import algorithms
from benchmarks import cluster
from benchmarks import grid as grid_keys
from benchmarks import report
from benchmarks.grid import GridKey
from benchmarks.parallel import PinnedPool, usable_cores
from benchmarks.store import ResultStore, cell_name
from rlft import cli
from rlft.data import load
from rlft.engines import check_engine_args
from rlft.errors import UsageError
from rlft.models import load_model
from rlft.objective import objective_gap
from rlft.sources import DatasetSource
from rlft.train import literal, parse_hp
from rlft.trainer import SMALL_MODEL_PARAMS, TrainConfig, Trainer, parse_behavior

KIND = "lm"
#: Defaults that differ from TrainConfig's, chosen by measurement (README, "Choosing the default
#: benchmark"): the tiny preset on + and - problems (pi_ref samples 45 % right; it cannot multiply),
#: 16 steps of 32 prompts x 8 samples at Adam lr 4e-4, every run evaluated on the same 500 test
#: problems x 8 samples. The README command (2 algorithms x 3 shares x 3 seeds) then gains about
#: 9 points on-policy and resolves paired differences in about 3 minutes on 2 cores (32 prompts a
#: step, not 16, is what makes 3 seeds enough: the runs of one setting vary far less from seed to seed).
#: --eval-every defaults to 0: step 0 and the last step only.
SWEEP_DEFAULTS = dict(dataset="arith:ops=+-", steps=16, groups=32, lr=4e-4, eval_problems=500, eval_samples=8,
                      save_every=10)
DEFAULT_SEEDS = "0,1,2"
#: TrainConfig fields that --grid cannot sweep: the cell axes, sweep-level choices, bookkeeping.
NOT_GRIDDABLE = ("algo", "algo_args", "offpolicy", "seed", "out", "model", "dataset", "engine", "engine_args",
                 "report_to", "initial_eval", "objective_beta")


@dataclass
class Cell:
    """One run of the sweep: its keys (algo, offpolicy, seed, grid values) and trainer settings."""

    keys: dict[str, Any]
    config: TrainConfig
    algorithm_config: dict[str, Any]

    @property
    def name(self) -> str:
        return cell_name(self.keys)


#: TrainConfig fields the sweep sets itself (the cell axes, its folders) or has a flag of its own for.
SWEEP_OWNED = ("algo", "algo_args", "offpolicy", "seed", "out", "initial_eval", "objective_beta", "engine_args")
#: Every other TrainConfig field is a flag of the sweep (rlft/config.py: type, help), with the sweep's defaults.
SWEEP_FLAGS = cli.flags_of(
    TrainConfig, exclude=SWEEP_OWNED, defaults={**SWEEP_DEFAULTS, "eval_every": 0},
    helps={"steps": "optimizer steps per cell",
           "eval_every": "steps between test evaluations, besides step 0 and the last step (0: only those two)",
           "model": "model preset (tiny, smollm2-135m), local folder or hub name"})


def build_parser() -> cli.ConfigParser:
    """The sweep's own flags, then every TrainConfig field that is not a cell axis (SWEEP_FLAGS)."""
    p = cli.ConfigParser([SWEEP_FLAGS], prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--algos", default=",".join(algorithms.available()),
                   help="comma list of registered algorithm names or module:Class (default: all registered)")
    p.add_argument("--offpolicy", default="0,0.5,1",
                   help="comma list of off-policy shares in [0, 1]: the share of each batch's groups taken "
                        "from the --behavior source")
    p.add_argument("--seeds", default=DEFAULT_SEEDS,
                   help="comma list of seeds; the table's 95 %% intervals are t-intervals over them, and runs "
                        "with the same seed share their data order (paired comparisons)")
    p.add_argument("--compare-to", default="",
                   help="the algorithm the others are compared with, seed by seed (default: the first of --algos)")
    p.add_argument("--objective-beta", type=float, default=0.05,
                   help="beta of the reported objective J = E[r] - beta KL(pi || pi_ref) and its optimum J* "
                        "(a --grid beta=... sets it per cell to the cell's beta)")
    p.add_argument("--jobs", type=int, default=0,
                   help="cells trained at once, each in its own process pinned to its share of the CPU cores "
                        "(0: fill the machine, one core per cell for models under 20M parameters such as "
                        "the tiny preset, else 1)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="repeatable: sweep a TrainConfig field (lr=1e-5,3e-5), an algorithm hyper-parameter "
                        "of every algorithm that has it (beta=0.05,0.5) or of one algorithm (agro.baseline=mean,loo)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable keyword argument of the rollout engine (see python -m rlft.train --help)")
    p.add_argument("--out", default="",
                   help="sweep directory (default results/sweep, plus a suffix per non-default setting)")
    p.add_argument("--processes", type=int, default=1,
                   help="training processes per cell (1: in this process). N > 1 launches each cell "
                        "with `accelerate launch --multi_gpu --num_processes N -m rlft.train` (DDP; on a "
                        "machine without GPUs, N CPU processes over gloo); --groups must be a multiple of N")
    p.add_argument("--executor", default="pool", choices=list(cluster.EXECUTORS),
                   help="where cells train: pool (worker processes of this command, --jobs at a time), "
                        "local or slurm (each cell a job through submitit; benchmarks/cluster.py)")
    p.add_argument("--partition", default="", help="--executor slurm: the partition")
    p.add_argument("--gpus-per-job", type=int, default=0, help="--executor slurm: GPUs per cell")
    p.add_argument("--cpus-per-job", type=int, default=1, help="--executor slurm: CPU cores per cell")
    p.add_argument("--time-limit", type=int, default=240, help="--executor local|slurm: minutes per cell")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun the cells recorded as failed (each resumes from its checkpoint, if any)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished cell's final checkpoint (default: delete it once the cell is recorded)")
    p.add_argument("--config", metavar="FILE",
                   help="a recipe: a YAML mapping of the flags above by name (algos: [agro, grpo], offpolicy: "
                        "[0, 1], grid: {beta: [0.05, 0.5]}, engine_args: {...}); flags given with it override it")
    return p


def recipe_as_flags(recipe: dict[str, Any]) -> dict[str, Any]:
    """A sweep recipe's values in the flags' form: lists as comma lists, ``grid`` as ``KEY=V1,V2``
    items, ``engine_args`` as ``--engine-arg`` items."""
    def comma(value: Any) -> Any:
        return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value

    flags = {k.replace("-", "_"): v for k, v in recipe.items() if k not in ("grid", "engine_args")}
    flags.update({k: comma(flags[k]) for k in ("algos", "offpolicy", "seeds") if k in flags})
    grid = recipe.get("grid", [])
    if isinstance(grid, dict):
        grid = [f"{key}={comma(values)}" for key, values in grid.items()]
    if grid:
        flags["grid"] = list(grid)
    if "engine_args" in recipe:
        if not isinstance(recipe["engine_args"], dict):
            raise UsageError(f"--config: engine_args must be a mapping of names to values, got {recipe['engine_args']!r}")
        flags["engine_arg"] = [f"{k}={v}" for k, v in recipe["engine_args"].items()]
    return flags


def parse_args(argv: Sequence[str] | None):
    parser = build_parser()
    known = [a.dest for a in parser._actions if a.dest not in ("help", "config")] + ["engine_args"]
    return cli.parse_with_recipe(parser, argv, known=known + [k.replace("_", "-") for k in known],
                                 adapt=recipe_as_flags)[0]


# ------------------------------------------------------------------------------- settings
def base_settings(args) -> dict[str, Any]:
    """The TrainConfig fields every cell shares before grid values (saved in sweep.json)."""
    settings = dataclasses.asdict(TrainConfig(**SWEEP_DEFAULTS))
    settings.update({f.name: getattr(args, f.name) for f in dataclasses.fields(SWEEP_FLAGS)})
    settings.update(eval_every=args.eval_every or args.steps,
                    engine_args={k: literal(v) for k, v in parse_hp(args.engine_arg, "--engine-arg").items()})
    # write the completion budget out, so every config.json states it
    settings["max_new_tokens"] = TrainConfig(model=args.model, max_new_tokens=args.max_new_tokens).completion_budget
    for name in NOT_GRIDDABLE:
        if name not in ("model", "dataset", "engine", "engine_args", "report_to"):
            settings.pop(name)
    return settings


def sweep_settings(args) -> dict[str, Any]:
    """What a sweep directory's cells share (sweep.json): the cell settings and the process count,
    which changes the sampling seeds (each process draws its own samples)."""
    return {**base_settings(args), "processes": args.processes, "objective_beta": args.objective_beta}


def parse_grid(items: Sequence[str], algos: Sequence[str]) -> list[GridKey]:
    """Every ``--grid KEY=V1,V2`` of an LM sweep: TrainConfig fields (but the cell axes) or algorithm
    hyper-parameters (:func:`benchmarks.grid.parse_grid`)."""
    return grid_keys.parse_grid(items, algos, TrainConfig, NOT_GRIDDABLE)


def build_cells(args, grid: Sequence[GridKey], root: Path) -> list[Cell]:
    """Every cell, validated: seed-major, then algorithm, off-policy share and grid point."""
    algos = cli.comma_list(args.algos)
    offpolicies = cli.fractions(args.offpolicy)
    seeds = cli.int_list(args.seeds, "--seeds")
    if not seeds or len(set(seeds)) < len(seeds):
        raise UsageError(f"--seeds needs distinct integers, got {args.seeds!r}")
    if len(set(offpolicies)) < len(offpolicies):
        raise UsageError(f"--offpolicy lists a share twice: {args.offpolicy}")
    base = base_settings(args)
    cells = []
    for seed in seeds:
        for algo in algos:
            axes = [k for k in grid if algo in k.values]
            for offpolicy in offpolicies:
                for point in itertools.product(*(k.values[algo] for k in axes)):
                    keys = {"algo": algo, "offpolicy": offpolicy, "seed": seed,
                            **{k.name: v for k, v in zip(axes, point)}}
                    train = {k.field: v for k, v in zip(axes, point) if k.train}
                    algo_args = {k.field: v for k, v in zip(axes, point) if not k.train}
                    beta = next((v for k, v in zip(axes, point) if k.field == "beta" and not k.train),
                                args.objective_beta)  # J is reported at the cell's own beta
                    config = TrainConfig(**{**base, **train}, algo=algo, algo_args=algo_args, offpolicy=offpolicy,
                                         seed=seed, out=str(root / "runs" / cell_name(keys)),
                                         objective_beta=float(beta), initial_eval=str(root / "initial_eval"))
                    algorithm = algorithms.make(algo, **algo_args)
                    algorithm.check_group_size(config.group_size)
                    cells.append(Cell(keys, config, dataclasses.asdict(algorithm.config)))
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        raise UsageError("two cells map to the same file name; give algorithms names that differ in more "
                         "than '/', ':' or spaces")
    return cells


def check_data(cells: Sequence[Cell]) -> None:
    """Load the dataset's splits and parse every --behavior dataset file (malformed rows fail here)."""
    for spec in sorted({c.config.dataset for c in cells}):
        load(spec, "train", seed=0)
        load(spec, "test", seed=0, limit=1)
    for behavior in sorted({c.config.behavior for c in cells}):
        kind, arg = parse_behavior(behavior)
        if kind == "dataset":
            DatasetSource(arg, tokenizer=None, ref_model=None, prompt_fn=None)


def default_out(args, grid: Sequence[GridKey]) -> Path:
    """``results/sweep`` plus one suffix per setting that differs from the defaults, then grid keys."""
    defaults, mine = sweep_settings(parse_args([])), sweep_settings(args)
    parts = ["sweep"]
    for name, value in mine.items():
        if name == "eval_every" and not args.eval_every:
            continue  # the default, "the last step", whatever --steps is
        if value != defaults[name]:
            text = ("_".join(f"{k}{v}" for k, v in value.items()) if isinstance(value, dict)
                    else "_".join(Path(part).name or part for part in str(value).split(":")))
            parts.append(text if name in ("model", "dataset", "behavior", "engine") else f"{name}{text}")
    parts += [k.name for k in grid]
    return Path("results") / "-".join(p.replace(" ", "") for p in parts)


def check_manifest(store: ResultStore, settings: dict[str, Any], grid: Sequence[GridKey]) -> None:
    """A directory only takes cells with its own settings and grid keys (else their rows would mix)."""
    old = store.manifest()
    if old is None:
        return
    if old.get("kind") != KIND:
        raise UsageError(f"{store.root} holds a {old.get('kind')} sweep, not an LM sweep; pass another --out")
    mine = json.loads(json.dumps(settings))
    # a setting added to rlft after that sweep was written had its default value there
    theirs = {**sweep_settings(parse_args([])), **old.get("settings", {})}
    diffs = [f"{k} {theirs.get(k)!r} there, {v!r} now" for k, v in mine.items() if theirs.get(k) != v]
    if sorted(old.get("grid", [])) != sorted(k.name for k in grid):
        diffs.append(f"grid keys {old.get('grid', [])} there, {[k.name for k in grid]} now")
    if diffs:
        raise UsageError(f"{store.root} holds a sweep with other settings ({'; '.join(diffs)}); "
                         "pass another --out or the same settings")


# --------------------------------------------------------------------------------- a cell
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (none if absent; a torn last line is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def final_metrics(metrics: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Results of a finished run: the last evaluation, and means over its last quarter of steps."""
    evals = [m for m in metrics if m.get("eval_accuracy") is not None]
    train = [m for m in metrics if m["step"] > 0]
    window = train[-max(1, math.ceil(steps / 4)):]

    def mean(key: str, rows: list[dict[str, Any]]) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    last = evals[-1] if evals else {}
    first = evals[0] if evals and evals[0]["step"] == 0 else {}
    optimum, reference, final = (first.get("eval_optimal_objective"), first.get("eval_objective"),
                                 last.get("eval_objective"))
    gap = objective_gap(final, optimum, reference) if None not in (optimum, reference, final) else None
    return {
        "initial_accuracy": first.get("eval_accuracy"),
        "final_objective": final,
        "optimal_objective": optimum,
        "initial_objective": reference,
        "final_objective_gap": None if gap is None or math.isnan(gap) else gap,
        "canonical_share": first.get("eval_canonical_share"),
        "final_accuracy": last.get("eval_accuracy"),
        "final_greedy_accuracy": last.get("eval_greedy_accuracy"),
        "final_kl_ref": last.get("eval_kl_ref"),
        "final_eval_step": last.get("step"),
        "final_reward": mean("reward", window),
        "final_reward_onpolicy": mean("reward_onpolicy", window),
        # the drift off the data: mean log pi(y)/mu(y) on the off-policy samples of the last quarter
        "final_logratio_offpolicy": mean("ell_offpolicy", window),
        "tokens_per_s": mean("tokens_per_s", train),
    }


def refresh_record(store: ResultStore, cell: Cell) -> bool:
    """Give a finished cell stored by an earlier rlft the summary columns added since, computed by
    :func:`final_metrics` from its saved ``metrics.jsonl`` (nothing is retrained). True if it changed."""
    record = store.record(cell.name)
    metrics_path = store.run_dir(cell.name) / "metrics.jsonl"
    if record is None or record.get("status") != "ok" or not metrics_path.exists():
        return False
    added = {k: v for k, v in final_metrics(read_metrics(metrics_path), cell.config.steps).items() if k not in record}
    if added:
        store.save(cell.name, {**record, **added})
    return bool(added)


def accelerate_launch(processes: int, *command: str) -> list[str]:
    """``accelerate launch`` of ``command`` (a script or ``-m module`` and its arguments) on
    ``processes`` processes: DDP, and on a machine without GPUs that many CPU processes over gloo."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            *command]


def train_in_process(config: TrainConfig) -> int:
    """Train (or resume) ``config`` here; return the step it resumed from."""
    trainer = Trainer(config)
    try:
        trainer.train()
        return trainer.start_step  # set from the checkpoint when training starts
    finally:
        del trainer
        gc.collect()


def train_launched(config: TrainConfig, processes: int) -> int:
    """Train (or resume) ``config`` on ``processes`` processes through accelerate; return the step it
    resumed from. Raises RuntimeError with the run's error.json if the launch fails."""
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = run_dir / "checkpoint" / "trainer_state.json"
    resumed_from = json.loads(state.read_text())["step"] if state.exists() else 0
    config_file = run_dir / "launch.json"
    config_file.write_text(json.dumps({"train": dataclasses.asdict(config)}, indent=1))
    status = subprocess.run(accelerate_launch(processes, "-m", "rlft.train", "--config", str(config_file))).returncode
    if status != 0:
        error = run_dir / "error.json"
        raise RuntimeError(json.loads(error.read_text())["error"] if error.exists()
                           else f"accelerate launch exited with status {status}")
    return resumed_from


def run_cell(store: ResultStore, cell: Cell, keep_checkpoint: bool = False, processes: int = 1) -> dict[str, Any]:
    """Train one cell (resuming its checkpoint if any) and store its record; never raises on a
    failed run: the error is recorded instead."""
    config, run_dir = cell.config, Path(cell.config.out)
    record: dict[str, Any] = {"cell": cell.name, "keys": cell.keys, "settings": dataclasses.asdict(config),
                              "algorithm_config": cell.algorithm_config, "run_dir": str(run_dir),
                              "processes": processes}
    start = time.perf_counter()
    resumed_from = 0
    try:
        resumed_from = train_in_process(config) if processes == 1 else train_launched(config, processes)
        status, error = "ok", ""
    except Exception as exc:  # NaN loss or a crash: record it, the sweep goes on
        text = str(exc).strip()
        status, error = "failed", f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    metrics = read_metrics(run_dir / "metrics.jsonl")
    steps_done = max((m["step"] for m in metrics), default=0)
    record.update(status=status, error=error, seconds=round(time.perf_counter() - start, 2),
                  steps_done=steps_done, resumed_from_step=resumed_from)
    if status == "ok":
        record.update(final_metrics(metrics, config.steps))
    record["objective_beta"] = config.objective_beta
    store.save(cell.name, record, pd.DataFrame(metrics) if metrics else None)
    if status == "ok" and not keep_checkpoint:
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return record


def run_cell_in_worker(root: str, cell: Cell, keep_checkpoint: bool) -> dict[str, Any]:
    """:func:`run_cell` in a :class:`~benchmarks.parallel.PinnedPool` worker."""
    return run_cell(ResultStore(root), cell, keep_checkpoint)


def resolve_jobs(args, model) -> int:
    """``--jobs``, or for 0 the machine's fill: one cell per core for models under
    :data:`~rlft.trainer.SMALL_MODEL_PARAMS` (one thread each; ``--threads T``: cores // T), else 1."""
    cores = len(usable_cores())
    if args.jobs:
        return args.jobs
    if args.processes > 1:
        return 1
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    threads = args.threads or (1 if small else cores)
    return max(1, cores // threads)


def run_here(store: ResultStore, todo: Sequence[Cell], args) -> None:
    """Train the cells one after another in this process."""
    bar = tqdm(todo, desc="cells", unit="cell")
    for cell in bar:
        bar.set_postfix_str(cell.name)
        record = run_cell(store, cell, args.keep_checkpoints, args.processes)
        if record["status"] != "ok":
            tqdm.write(f"cell {cell.name} failed: {record['error']}")


def run_pooled(store: ResultStore, todo: Sequence[Cell], args, jobs: int) -> None:
    """Train the cells ``jobs`` at a time, each worker pinned to its share of the cores."""
    print(f"training {jobs} cells at a time, each on {len(usable_cores()) // jobs} core(s)", flush=True)
    with PinnedPool(jobs) as pool, tqdm(total=len(todo), desc="cells", unit="cell") as bar:
        futures = {pool.submit(run_cell_in_worker, str(store.root), cell, args.keep_checkpoints): cell
                   for cell in todo}
        try:
            for future in as_completed(futures):
                record = future.result()
                bar.update()
                bar.set_postfix_str(futures[future].name)
                if record["status"] != "ok":
                    tqdm.write(f"cell {record['cell']} failed: {record['error']}")
        except BrokenProcessPool:
            raise RuntimeError("a worker process died (out of memory?); finished cells are kept: rerun the same "
                               "command to resume, with fewer --jobs if it recurs") from None
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# ---------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    algos = cli.comma_list(args.algos)
    if not algos:
        raise UsageError("--algos is empty; known: " + ", ".join(algorithms.available()))
    if len(set(algos)) < len(algos):
        raise UsageError(f"--algos lists an algorithm twice: {args.algos}")
    for algo in algos:
        algorithms.get(algo)
    check_engine_args(args.engine, {k: literal(v) for k, v in parse_hp(args.engine_arg, "--engine-arg").items()})
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    if args.jobs < 0:
        raise UsageError(f"--jobs must be >= 0 (0: fill the machine), got {args.jobs}")
    if args.jobs > len(usable_cores()):
        raise UsageError(f"--jobs {args.jobs} is more than the {len(usable_cores())} usable CPU cores")
    if args.executor != "pool" and args.processes > 1:
        raise UsageError("--executor local|slurm trains each cell in one process; drop --processes")
    if args.executor != "pool":
        cluster.check_executor(args.executor)
    if args.time_limit < 1 or args.gpus_per_job < 0 or args.cpus_per_job < 1:
        raise UsageError("--time-limit and --cpus-per-job must be >= 1 and --gpus-per-job >= 0")
    if args.processes > 1 and args.jobs > 1:
        raise UsageError("--jobs > 1 and --processes > 1 do not combine; run the cells one at a time (--jobs 1)")
    if args.compare_to and args.compare_to not in algos:
        raise UsageError(f"--compare-to {args.compare_to!r} is not one of --algos ({', '.join(algos)})")
    if args.processes < 1 or args.groups % args.processes:
        raise UsageError(f"--processes {args.processes}: need N >= 1 dividing --groups ({args.groups}); "
                         "each process takes whole groups")
    if getattr(args, "fsdp", False) and args.processes < 2:
        raise UsageError("--fsdp shards each cell over several processes: add --processes N (N >= 2)")
    grid = parse_grid(args.grid, algos)
    root = Path(args.out) if args.out else default_out(args, grid)
    cells = build_cells(args, grid, root)
    check_data(cells)
    store = ResultStore(root)
    settings = sweep_settings(args)
    check_manifest(store, settings, grid)
    model, _ = load_model(args.model)  # an unknown model fails here
    store.write_text("sweep.json", report.sweep_manifest(KIND, vars(args), settings=settings,
                                                         grid=[k.name for k in grid]))

    def pending(cell: Cell) -> bool:
        record = store.record(cell.name)
        return record is None or (args.retry_failed and record.get("status") != "ok")

    todo = [c for c in cells if pending(c)]
    refreshed = sum(refresh_record(store, c) for c in cells if c not in todo)
    if refreshed:
        print(f"added the newer summary columns to {refreshed} finished cells (from their metrics.jsonl)", flush=True)
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done in {root}", flush=True)
    jobs = min(resolve_jobs(args, model), max(1, len(todo)))
    unfinished = 0
    try:
        if args.executor != "pool":
            in_flight = args.jobs or (jobs if args.executor == "local" else max(1, len(todo)))
            unfinished = cluster.run_as_jobs(store, todo, args, in_flight)
        elif jobs == 1:
            run_here(store, todo, args)
        else:
            run_pooled(store, todo, args, jobs)
    except KeyboardInterrupt:
        print(f"interrupted: finished cells are kept in {root}; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    paths = report.build(store)
    print(report.read_table(store))
    print("wrote " + ", ".join(str(p) for p in paths))
    if unfinished:
        print(f"error: {unfinished} cell(s) did not finish (their jobs were killed or timed out; see above); "
              "rerun the same command to submit them again", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
