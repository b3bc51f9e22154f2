"""Errors caused by the user's input. The CLI reports them as one line, without a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """Bad input: data, options or files. The message names what is wrong and what was expected."""


class DataError(UserError, ValueError):
    """A problem with the data on disk."""


class ConfigError(UserError, ValueError):
    """An option, or a checkpoint, that does not fit."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged; the message gives the step and what to try."""


def check_options(section: str, **options: tuple[object, str, bool]) -> None:
    """Raise a :class:`ConfigError` for the first ``<section>.<name>`` whose check failed;
    ``options`` maps a name to (its value, what is expected, whether the value meets it)."""
    for name, (value, expected, holds) in options.items():
        if not holds:
            raise ConfigError(f"{section}.{name} must be {expected}; got {value}")


def data_problems(summary: str, problems: Sequence[str]) -> DataError:
    """One :class:`DataError` listing every problem found, one per line under ``summary``."""
    listing = "\n".join(f"  - {problem}" for problem in problems)
    return DataError(f"{summary}:\n{listing}")
