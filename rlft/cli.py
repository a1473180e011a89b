"""Shared command-line plumbing: one-line errors, exit code 2, common argument parsers."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from rlft.errors import UsageError

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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
