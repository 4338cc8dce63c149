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


def read_json_object(path: object) -> dict:  # type: ignore[type-arg]
    """The JSON object in the run file ``path``; a missing, truncated, non-UTF-8 or non-object file is a
    :class:`RunDirError` naming it (what a run's ``preprocess.json``, ``metrics.json`` and pointers go through)."""
    import json
    from pathlib import Path

    p = Path(str(path))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{p} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise RunDirError(f"{p} is damaged: not valid JSON ({exc}); restore it or retrain the run") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{p} is damaged: it holds a JSON {type(data).__name__}, not an object")
    return data
