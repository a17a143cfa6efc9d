"""The one exception type for mistakes a user can make.

Anything a user can cause (a bad file, a missing column, a wrong type, an unknown id, a bad
config key) raises a `UnirecError` whose message is one line naming the file/field/value.
The CLI prints it as `error: <message>` and exits with code 2; no traceback.
Programming errors stay ordinary exceptions and keep their tracebacks.
"""
from __future__ import annotations


class UnirecError(Exception):
    """A user-caused error with a one-line, self-explaining message."""

    def __init__(self, message: str) -> None:
        # One line, always: a multi-line message would break the CLI's contract.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UnirecError):
    """A config file, key or value is wrong."""


def check(cond: bool, key: str, msg: str) -> None:
    """A config section's check, in the loader's style: `key` is the dotted name (task.ctr.X); the
    loader adds the file."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


class DataError(UnirecError):
    """An input file, column or value is wrong, or a dataset is unusable."""


class CheckpointError(UnirecError):
    """A checkpoint or bundle is missing, incomplete or does not match its dataset."""


class OutputExistsError(UnirecError):
    """An output exists and replacing it was not asked for. Library messages never name CLI flags:
    the CLI adds the way out (--overwrite)."""
