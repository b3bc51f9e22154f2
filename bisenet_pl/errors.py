"""Errors caused by the user's input. The CLI reports them as one line, without a traceback."""


class UserError(Exception):
    """Bad input: data, options or files. The message names what is wrong and what was expected."""


class DataError(UserError, ValueError):
    """A problem with the data on disk."""


class ConfigError(UserError, ValueError):
    """An option, or a checkpoint, that does not fit."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged; the message gives the step and what to try."""
