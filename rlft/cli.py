"""Shared command-line plumbing: one-line errors, exit code 2, flags derived from config dataclasses,
recipe files, common argument parsers."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from transformers import HfArgumentParser

from rlft.errors import UsageError

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default after its help."""


class ConfigParser(HfArgumentParser):
    """transformers' ``HfArgumentParser`` (TRL's ``TrlParser`` is one too): one flag per field of
    each config dataclass given, named after it (``--group-size``, also ``--group_size``), typed by
    its annotation, with the help text and aliases of its metadata (``algorithms.base.hp``); errors
    are one line, as :class:`ArgumentParser`'s."""

    def __init__(self, dataclass_types, **kwargs: Any) -> None:
        super().__init__(dataclass_types, formatter_class=HelpFormatter, **kwargs)
        for action in self._actions:  # usage and help show --group-size; --group_size is accepted too
            action.option_strings.sort(key=lambda option: "_" in option)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def dict_fields(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` that hold a dict (set on the command line by KEY=VALUE flags)."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is dict or hints[f.name] is dict]


def flags_of(cls: type, exclude: Sequence[str] = (), defaults: dict[str, Any] | None = None,
             helps: dict[str, str] | None = None) -> type:
    """A dataclass of the fields of ``cls`` that a command line sets as plain flags: all but ``exclude``
    and the dict fields, with the same types and help, and ``defaults`` (``helps``) where a CLI has its own."""
    hints, defaults, helps = typing.get_type_hints(cls), defaults or {}, helps or {}

    def metadata(f: dataclasses.Field) -> dict[str, Any]:
        return {**f.metadata, "help": helps[f.name]} if f.name in helps else dict(f.metadata)

    fields = [(f.name, hints[f.name], dataclasses.field(default=defaults.get(f.name, f.default), metadata=metadata(f)))
              for f in dataclasses.fields(cls) if f.name not in exclude and f.name not in dict_fields(cls)]
    return dataclasses.make_dataclass(f"{cls.__name__}Flags", fields)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The settings of a recipe file (``--config FILE``): a YAML (or JSON) mapping of setting names to
    values; a run's ``OUT/config.json`` is one too (its ``"train"`` entry is used)."""
    import yaml

    path = Path(path)
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--config {path}: cannot read a YAML or JSON mapping of settings ({first})") from None
    if isinstance(settings, dict) and isinstance(settings.get("train"), dict):
        settings = settings["train"]
    if not isinstance(settings, dict):
        raise UsageError(f"--config {path}: expected a mapping of settings (name: value), got {type(settings).__name__}")
    return settings


def parse_with_recipe(parser: argparse.ArgumentParser, argv: Sequence[str] | None, known: Sequence[str],
                      adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                      ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``argv`` with the settings of ``--config FILE`` (if given) as defaults: the command line
    overrides the recipe, as in TRL. Returns the flags and the recipe's settings; a setting not in
    ``known`` is a one-line error listing them; ``adapt`` turns the recipe's values into the flags'
    form (a YAML list into a comma list). String values are typed as the flag's own would be."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    recipe = read_recipe(path) if path else {}
    unknown = sorted(set(recipe) - set(known))
    if unknown:
        raise UsageError(f"--config {path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    recipe = adapt(recipe) if adapt else recipe
    dests = {action.dest for action in parser._actions}
    parser.set_defaults(**{k: v for k, v in recipe.items() if k in dests})
    return parser.parse_args(argv), recipe


def run(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Call ``main(argv)``; a :class:`UsageError` becomes one line on stderr and exit code 2."""
    try:
        main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def comma_list(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def fractions(text: str) -> list[float]:
    """Parse ``--offpolicy 0,0.5,1``: each a number in [0, 1]."""
    values = []
    for item in comma_list(text):
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--offpolicy value {item!r} is not a number; give fractions in [0, 1] like 0,0.5,1") from None
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--offpolicy value {value:g} is outside [0, 1]; it is the share of off-policy groups per batch")
        values.append(value)
    if not values:
        raise UsageError("--offpolicy needs at least one fraction in [0, 1]")
    return values


def int_list(text: str, flag: str) -> list[int]:
    """Parse ``--seeds 0,1,2``."""
    try:
        return [int(item) for item in comma_list(text)]
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated integers, got {text!r}") from None
