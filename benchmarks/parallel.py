"""Several sweep cells at once: worker processes, each pinned to its own share of the CPU cores.

``PinnedPool(jobs)`` is a :class:`concurrent.futures.ProcessPoolExecutor` of ``jobs`` workers
(started with ``spawn``, so nothing of the parent's torch state is shared). Worker i is pinned
with ``os.sched_setaffinity`` to the i-th of ``jobs`` equal slices of the cores this process may
use, and torch in it uses that many threads. A worker dies with its parent (Linux
``PR_SET_PDEATHSIG``), so a sweep killed with ``kill -9`` leaves no cell training behind it, and
the rerun resumes the interrupted cells from their checkpoints as with one job.

Workers keep their console quiet (no per-step progress bars); the parent shows one bar of cells.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


def usable_cores() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def core_shares(jobs: int, cores: list[int] | None = None) -> list[list[int]]:
    """``jobs`` disjoint, equal slices of ``cores`` (the leftover cores stay unused); needs jobs <= cores."""
    cores = usable_cores() if cores is None else cores
    if not 1 <= jobs <= len(cores):
        raise ValueError(f"jobs must be between 1 and the {len(cores)} usable cores, got {jobs}")
    width = len(cores) // jobs
    return [cores[i * width:(i + 1) * width] for i in range(jobs)]


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(shares) -> None:
    _die_with_parent()
    cores = shares.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    import torch
    from tqdm import tqdm

    torch.set_num_threads(len(cores))
    # one progress bar on the console, the parent's: every tqdm bar of this worker is disabled
    shown = tqdm.__init__

    @functools.wraps(shown)
    def hidden(self, *args, **kwargs):
        kwargs["disable"] = True
        shown(self, *args, **kwargs)

    tqdm.__init__ = hidden


class PinnedPool(ProcessPoolExecutor):
    """A process pool of ``jobs`` workers, worker i pinned to ``core_shares(jobs)[i]``."""

    def __init__(self, jobs: int) -> None:
        context = multiprocessing.get_context("spawn")
        shares = context.Queue()
        for share in core_shares(jobs):
            shares.put(share)
        super().__init__(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(shares,))
