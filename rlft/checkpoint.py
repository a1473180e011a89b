"""What a checkpoint keeps besides weights and optimizer: every random number generator's state.

The trainer's own draws (data order, the on/off-policy mix, sampling, mini-batches) are seeded from
``(seed, purpose, step)`` (``rlft.sources.stable_seed``), so they need no saved state. Anything that
draws from a global generator instead (dropout in a model, a plug-in algorithm calling
``random.random()``, ``numpy.random`` or ``torch.rand``) continues after a resume exactly as in an
uninterrupted run because these states are saved with each checkpoint, per process, and restored
on resume: what ``accelerate``'s ``save_state`` / ``load_state`` keep of the RNGs.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set every global generator to the states of :func:`rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
