"""User-facing errors.

Anything a user can fix (a bad file, a bad option, a bad config key) raises a subclass of
:class:`LongshortError`. The CLI turns these into one line ``error: ...`` on stderr and exit status 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LongshortError(Exception):
    """Base class of errors caused by input or usage, not by a bug."""


class ConfigError(LongshortError):
    """A config key or value is wrong."""


class DataError(LongshortError):
    """A data file is malformed. The message names the file and the row, column or array at fault."""

    def __init__(self, path: object, detail: str) -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"data file {self.path}: {detail}")


class RunDirError(LongshortError):
    """A run directory is missing or incomplete."""
