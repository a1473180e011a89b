"""``--grid KEY=V1,V2``: one axis of a benchmark sweep, for benchmarks.run and benchmarks.tabular.

A key is a field of the run's settings (``lr``), an algorithm hyper-parameter of every selected
algorithm that has it (``beta``), or ``ALGO.KEY`` for that algorithm only (``agro.shift``). Values
are typed by the field they set; errors are one line listing the valid keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import algorithms
from algorithms.base import coerce_overrides
from rlft import cli
from rlft.errors import UsageError


@dataclass(frozen=True)
class GridKey:
    """One ``--grid`` axis.

    Attributes:
        name: its column: ``lr``, ``beta``, ``agro.baseline``.
        field: the field it sets: ``lr``, ``beta``, ``baseline``.
        train: True for a field of the run's settings (TrainConfig, TabularRun), False for an
            algorithm hyper-parameter.
        values: algorithm -> its typed values, for every algorithm the key multiplies.
    """

    name: str
    field: str
    train: bool
    values: dict[str, tuple]


def parse_grid(items: Sequence[str], algos: Sequence[str], run_config: type,
               not_griddable: Sequence[str] = ()) -> list[GridKey]:
    """Parse and type every ``--grid KEY=V1,V2``; unknown keys are an error listing the valid ones.

    Args:
        items: the ``--grid`` arguments.
        algos: the sweep's algorithm names.
        run_config: the dataclass of a run's settings (``TrainConfig``, ``TabularRun``), whose fields
            are grid keys too; a field of it wins over an algorithm hyper-parameter of the same name.
        not_griddable: its fields that are not (the cell axes, bookkeeping).
    """
    train_fields = [f.name for f in dataclasses.fields(run_config) if f.name not in not_griddable]
    algo_fields = {algo: list(algorithms.get(algo).Config.help()) for algo in algos}
    keys: list[GridKey] = []
    for item in items:
        name, sep, text = item.partition("=")
        name, raw = name.strip(), cli.comma_list(text)
        if not sep or not name or not raw:
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        if any(k.name == name for k in keys):
            raise UsageError(f"--grid {name} is given twice; list all its values in one --grid {name}=V1,V2")
        qualifier, dot, field = name.rpartition(".")
        if name in train_fields:
            typed = _typed(run_config, name, raw, name)
            key = GridKey(name, name, True, {algo: typed for algo in algos})
        elif dot:
            if qualifier not in algo_fields:
                raise UsageError(f"--grid {name}: {qualifier!r} is not one of --algos ({', '.join(algos)})")
            if field not in algo_fields[qualifier]:
                raise UsageError(f"--grid {name}: {qualifier} has no hyper-parameter {field!r}; "
                                 f"known: {', '.join(sorted(algo_fields[qualifier]))}")
            key = GridKey(name, field, False, {qualifier: _typed(algorithms.get(qualifier).Config, field, raw, name)})
        else:
            owners = [algo for algo in algos if name in algo_fields[algo]]
            if not owners:
                hps = sorted({f for fields in algo_fields.values() for f in fields})
                raise UsageError(f"unknown --grid key {name!r}; valid: {run_config.__name__} fields {', '.join(train_fields)}; "
                                 f"hyper-parameters of --algos {', '.join(hps)}; or ALGO.KEY")
            key = GridKey(name, name, False,
                          {algo: _typed(algorithms.get(algo).Config, name, raw, name) for algo in owners})
        keys.append(key)
    for algo in algos:  # beta and agro.beta would both set agro's beta
        fields = [(k.train, k.field) for k in keys if algo in k.values]
        clash = next((f for f in fields if fields.count(f) > 1), None)
        if clash:
            names = [k.name for k in keys if algo in k.values and (k.train, k.field) == clash]
            raise UsageError(f"--grid {' and --grid '.join(names)} both set {algo}'s {clash[1]}; keep one")
    return keys


def _typed(config_cls: type, field: str, raw: Sequence[str], name: str) -> tuple:
    """The values of ``--grid name`` converted to the type of ``config_cls.field``, no repeats."""
    try:
        values = tuple(coerce_overrides(config_cls, {field: text})[field] for text in raw)
    except UsageError as exc:
        raise UsageError(f"--grid {name}: {exc}") from None
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        raise UsageError(f"--grid {name}: NaN is not a value to sweep; give numbers")
    if len(set(values)) < len(values):
        raise UsageError(f"--grid {name} lists a value twice: {','.join(raw)}")
    return values
