"""``benchmarks.run --executor slurm|local``: each cell of a sweep as a job, through submitit.

submitit (https://github.com/facebookincubator/submitit) is the executor that Hydra's submitit
launcher and many labs use. Each pending cell is pickled with :func:`benchmarks.run.run_cell_in_worker`
and submitted as one job; the job trains the cell in the sweep folder, which must be on a file system
every node sees, and writes the same crash-safe files as a local run (its run folder with
checkpoints, then ``curves/<cell>.csv`` and ``cells/<cell>.json``, atomically). So the sweep's
bookkeeping is its folder, not the scheduler: rerunning the same command skips the cells recorded as
done and submits the rest again, and a cell whose job was killed resumes from its last checkpoint.
A rerun while jobs of the previous one still run would train those cells twice: wait for them (or
cancel them) first. Job logs and pickles go to ``DIR/submitit/``.

* ``slurm``: ``--partition``, ``--gpus-per-job``, ``--time-limit`` (minutes) and ``--cpus-per-job``
  become the jobs' sbatch settings; every cell is submitted at once and Slurm schedules them
  (``--jobs N`` caps how many run at once, as an array would).
* ``local``: submitit's LocalExecutor runs each job as a process on this machine, ``--jobs`` at a
  time (default: one per core for the tiny preset): the same code path, testable without a cluster.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from typing import Any, Sequence

from tqdm import tqdm

from benchmarks.store import ResultStore
from rlft.errors import UsageError

EXECUTORS = ("pool", "local", "slurm")


def check_executor(kind: str) -> None:
    """One line, before any model loads, if ``--executor kind`` cannot run here."""
    if importlib.util.find_spec("submitit") is None:
        raise UsageError(f"--executor {kind} needs submitit: pip install -e '.[cluster]' (or pip install submitit)")
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise UsageError("--executor slurm: sbatch is not on PATH (no Slurm here); run on a Slurm login node, or use "
                         "--executor local")


def make_executor(kind: str, folder, args) -> Any:
    """A submitit executor of ``kind`` ("local" or "slurm") writing its logs to ``folder``."""
    import submitit

    check_executor(kind)
    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=args.time_limit)
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    optional = {**({"slurm_partition": args.partition} if args.partition else {}),
                **({"gpus_per_node": args.gpus_per_job} if args.gpus_per_job else {})}
    executor.update_parameters(timeout_min=args.time_limit, cpus_per_task=args.cpus_per_job, tasks_per_node=1,
                               nodes=1, name="rlft-cell", **optional)
    return executor


def run_as_jobs(store: ResultStore, todo: Sequence, args, in_flight: int) -> int:
    """Submit every cell of ``todo`` as a job (at most ``in_flight`` unfinished at once) and wait for
    them; returns the number of cells whose job did not finish (killed, timed out, node failure)."""
    from benchmarks.run import run_cell_in_worker
    from submitit.core.utils import FailedJobError, UncompletedJobError

    folder = store.root / "submitit"
    executor = make_executor(args.executor, folder, args)
    print(f"submitting {len(todo)} cells as {args.executor} jobs, at most {in_flight} at a time "
          f"(logs in {folder})", flush=True)
    waiting, running, unfinished = list(todo), [], 0
    with tqdm(total=len(todo), desc="cells", unit="cell") as bar:
        while waiting or running:
            while waiting and len(running) < in_flight:
                cell = waiting.pop(0)
                running.append((cell, executor.submit(run_cell_in_worker, str(store.root), cell, args.keep_checkpoints)))
            cell, job = _next_done(running)
            running.remove((cell, job))
            bar.update()
            bar.set_postfix_str(cell.name)
            try:
                record = job.result()
            except (FailedJobError, UncompletedJobError) as exc:
                unfinished += 1
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                tqdm.write(f"cell {cell.name}: job {job.job_id} did not finish ({reason[:200]}); rerun the same "
                           "command to submit it again (it resumes from its last checkpoint)")
                continue
            if record["status"] != "ok":
                tqdm.write(f"cell {record['cell']} failed: {record['error']}")
    return unfinished


def _next_done(running: list) -> tuple:
    """The first of the ``(cell, job)`` pairs whose job is done, waiting for one."""
    while True:
        for pair in running:
            if pair[1].done():
                return pair
        time.sleep(0.5)
