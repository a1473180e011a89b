"""The algorithm plug-ins. ``algorithms.available()`` lists every registered name.

Built-in algorithms register on import; third-party ones through the ``rlft.algorithms`` entry
point group or as ``package.module:Class``. See :mod:`algorithms.base` for the interface.
"""

from algorithms.base import (
    ALGORITHMS,
    Algorithm,
    AlgorithmConfig,
    LossOutput,
    Needs,
    Normalizers,
    hp,
    make,
    register,
)

# Importing the modules registers the built-in algorithms.
from algorithms import agro, dpo, dro, grpo, is_pg, ppo, raft, reinforce, rloo, topr  # noqa: E402,F401


def available() -> list[str]:
    """Names of every registered algorithm (built-in and entry points)."""
    return ALGORITHMS.available()


def get(name: str) -> type[Algorithm]:
    """The Algorithm class for a registered name or ``package.module:Class``."""
    return ALGORITHMS.get(name)


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "LossOutput", "Needs", "Normalizers",
           "available", "get", "hp", "make", "register"]
