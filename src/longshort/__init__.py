"""longshort: train, validate, tune, diagnose and ship LSTM sequence models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from longshort._version import __version__

__all__ = ["Config", "LSTMClassifier", "LSTMRegressor", "Run", "__version__", "cv", "load", "load_config", "train"]

if TYPE_CHECKING:
    from longshort.config import Config, load_config
    from longshort.estimators import LSTMClassifier, LSTMRegressor
    from longshort.run import Run, load, train


def __getattr__(name: str) -> Any:
    # Lazy: `import longshort` stays fast (the CLI imports torch only for the commands that need it).
    if name in ("Config", "load_config"):
        from longshort import config

        return getattr(config, name)
    if name in ("Run", "load", "train"):
        from longshort import run

        return getattr(run, name)
    if name in ("LSTMClassifier", "LSTMRegressor"):
        from longshort import estimators

        return getattr(estimators, name)
    if name == "cv":
        from longshort.evaluate.validation import run_cv

        return run_cv
    raise AttributeError(name)
