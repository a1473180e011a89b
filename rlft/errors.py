"""User-facing errors.

A :class:`UsageError` is a mistake in what the user asked for (an unknown name, a value out of
range, a malformed file). Its message is one line that names the problem and says what to do.
Command-line entry points turn it into that line on stderr and exit code 2, with no traceback
(see :func:`rlft.cli.run`).
"""


class UsageError(ValueError):
    """Bad input from the user: a one-line, actionable message."""


class NonFiniteLoss(RuntimeError):
    """A loss (or metric the run depends on) became NaN or inf: the run stops with this error recorded."""
