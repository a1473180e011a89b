"""The Algorithm interface every plug-in implements.

An algorithm is a small class with

* ``Config``: a dataclass of hyper-parameters, each field documented with ``metadata["help"]``;
* ``needs``: what the trainer must provide (reference log-probs, a value head, a minimum group
  size, a once-per-batch ``prepare`` pass);
* ``loss(batch, logprobs, values, norm) -> LossOutput``: pure tensor code, no I/O.

Losses are normalised by the explicit global denominators in :class:`Normalizers` (never by the
size of the micro-batch at hand), so the loss and every metric of a batch is the SUM of those of
its group-aligned micro-batches (or ranks). Algorithms register themselves by name::

    @register("my-algo")
    class MyAlgo(Algorithm):
        ...

and third parties add theirs through the ``rlft.algorithms`` entry-point group or by passing
``package.module:Class`` wherever an algorithm name is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from rlft.batch import Batch
from rlft.distributed import all_sum
from rlft.errors import UsageError
from rlft.registry import Registry


@dataclass(frozen=True)
class Needs:
    """What an algorithm needs from the trainer besides the Batch and current log-probs."""

    ref_logprobs: bool = True
    """Fill ``Batch.ref_logprobs`` with log pi_ref of every completion token."""
    value_head: bool = False
    """Pass ``values`` [B, T]: a learned value of the state before each completion token."""
    min_group_size: int = 1
    """Samples per prompt required (2 for group baselines and pairs)."""
    prepare: bool = False
    """Call ``prepare`` once per batch, before any update, with detached log-probs and values."""
    recompute_behavior: bool = False
    """The behaviour log-probs of on-policy rows must be the trainer's own, pi_old, computed before
    the first epoch (PPO's ratio denominator), whatever ``TrainConfig.recompute_behavior`` says."""


@dataclass(frozen=True)
class Normalizers:
    """Global loss denominators: totals over the WHOLE batch (all micro-batches and ranks).

    Attributes:
        sequences: number of completions B.
        tokens: number of real completion tokens, sum of ``completion_mask``.
        groups: number of groups (prompts).
        max_tokens: the generation budget T_max (Dr. GRPO's constant length normaliser).
        extra: the algorithm's own counts (``Algorithm.denominators``: DPO's pairs, RAFT's kept
            tokens), summed the same way.
    """

    sequences: float
    tokens: float
    groups: float
    max_tokens: float
    extra: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, batch: Batch, max_tokens: int | None = None, algorithm: "Algorithm | None" = None) -> "Normalizers":
        """Denominators of ``batch`` alone (the single-process, single-micro-batch case), with
        ``algorithm``'s own counts if given."""
        extra = algorithm.denominators(batch) if algorithm is not None else {}
        return cls(
            sequences=float(len(batch)),
            tokens=float(batch.completion_mask.sum()),
            groups=float(batch.num_groups),
            max_tokens=float(max_tokens or batch.completion_ids.shape[1]),
            extra={k: float(v) for k, v in extra.items()},
        )

    @classmethod
    def across_processes(cls, batch: Batch, max_tokens: int, algorithm: "Algorithm | None" = None) -> "Normalizers":
        """Denominators of the whole batch when each process holds ``batch``, a share of its groups.

        ``sequences``, ``tokens``, ``groups`` and the algorithm's counts are summed over all
        processes (one all-reduce); with one process this equals :meth:`of`. Every process must call it.
        """
        local = cls.of(batch, max_tokens, algorithm)
        keys = sorted(local.extra)
        counts = torch.tensor([local.sequences, local.tokens, local.groups, *(local.extra[k] for k in keys)],
                              dtype=torch.float64, device=batch.completion_mask.device)
        sequences, tokens, groups, *extra = all_sum(counts).tolist()
        return cls(sequences=sequences, tokens=tokens, groups=groups, max_tokens=float(max_tokens),
                   extra=dict(zip(keys, extra)))


@dataclass
class LossOutput:
    """A scalar loss to minimise and detached scalar metrics (each additive over micro-batches)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def hp(default: Any, help: str, **kwargs: Any) -> Any:
    """A documented field: ``beta: float = hp(0.05, "KL strength")``; the help (and any other
    ``argparse.add_argument`` keyword in ``kwargs``, e.g. ``aliases``) goes into its metadata, where
    ``HfArgumentParser`` reads it. An algorithm's hyper-parameters and a run's settings
    (``rlft.config.TrainConfig``) are declared with it. A dict default is an empty dict per instance."""
    if isinstance(default, dict):
        if default:
            raise ValueError("hp: only an empty dict can be a default")
        return field(default_factory=dict, metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class AlgorithmConfig:
    """Base of every algorithm's hyper-parameters. Subclasses add documented fields."""

    epochs: int = hp(1, "optimisation passes over each batch")
    mini_batch_groups: int = hp(0, "groups per mini-batch: each epoch takes ceil(groups / this) optimizer steps "
                                   "over shuffled mini-batches (0: one step on the whole batch)")

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # NaN passes every range check: refuse it first
            value = getattr(self, item.name)
            if isinstance(value, float) and math.isnan(value):
                raise UsageError(f"hyper-parameter {item.name} is NaN; give a number (--hp {item.name}=VALUE)")
        if self.epochs < 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if self.mini_batch_groups < 0:
            raise UsageError(f"mini_batch_groups must be >= 0 (0: the whole batch), got {self.mini_batch_groups}")
        if not 0 <= getattr(self, "beta", 0.0) < math.inf:
            raise UsageError(f"beta must be >= 0 and finite, got {self.beta}; it is the KL strength")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> its documentation."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


class Algorithm:
    """Base class: subclasses set ``name``, ``Config``, ``needs`` and implement ``loss``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    needs: ClassVar[Needs] = Needs()

    def __init__(self, config: AlgorithmConfig | None = None, **overrides: Any) -> None:
        config = config if config is not None else self.Config()
        if overrides:
            config = dataclasses.replace(config, **coerce_overrides(type(config), overrides))
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    @property
    def epochs(self) -> int:
        return self.config.epochs

    def check_group_size(self, n: int) -> None:
        """Raise a UsageError if ``n`` samples per prompt are too few for this algorithm."""
        if n < self.needs.min_group_size:
            raise UsageError(
                f"{self.name} needs at least {self.needs.min_group_size} samples per prompt "
                f"(group size), got {n}"
            )

    def denominators(self, batch: Batch) -> dict[str, Tensor | float]:
        """Counts this algorithm normalises by, beyond sequences, tokens and groups (e.g. DPO's
        pairs), for the rows of ``batch``; the trainer sums them over micro-batches and processes
        into ``Normalizers.extra``. Default: none."""
        return {}

    def prepare(self, batch: Batch, logprobs: Tensor, values: Tensor | None) -> dict[str, Tensor]:
        """Per-sample tensors fixed for all epochs of a batch (stored in ``batch.extras``).

        Called once per batch with detached current ``logprobs`` [B, T] and ``values`` [B, T],
        only if ``needs.prepare``. Default: nothing.
        """
        return {}

    def loss(self, batch: Batch, logprobs: Tensor, values: Tensor | None, norm: Normalizers) -> LossOutput:
        """Loss of a group-aligned (micro-)batch.

        Args:
            batch: B completions (whole groups).
            logprobs: [B, T] token log-probs of the completions under the current policy, with grad.
            values: [B, T] value-head outputs with grad if ``needs.value_head``, else None.
            norm: global denominators of the whole batch.
        """
        raise NotImplementedError


ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm", entry_point_group="rlft.algorithms")


def register(name: str):
    """Class decorator: register an Algorithm subclass under ``name`` (and set ``cls.name``)."""

    def add(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        ALGORITHMS.add(name, cls)
        return cls

    return add


def coerce_overrides(config_cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check names against the config's fields and convert strings ("0.5", "true") to field types."""
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in overrides.items():
        if key not in names:
            raise UsageError(f"{config_cls.__qualname__} has no hyper-parameter {key!r}; known: {', '.join(sorted(names))}")
        out[key] = _coerce(value, hints[key], key) if isinstance(value, str) else value
    return out


def _coerce(text: str, hint: Any, key: str) -> Any:
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    if choices:
        if text not in choices:
            raise UsageError(f"{key} must be one of {', '.join(map(str, choices))}, got {text!r}")
        return text
    try:
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if hint is float:
            return float(text)  # accepts "inf"
        if hint is int:
            return int(text)
    except ValueError:
        raise UsageError(f"{key}={text!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return text


def make(name: str, **overrides: Any) -> Algorithm:
    """Instantiate a registered (or ``module:Class``) algorithm with hyper-parameter overrides."""
    cls = ALGORITHMS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UsageError(f"{name!r} is not an rlft Algorithm subclass")
    return cls(**overrides)
