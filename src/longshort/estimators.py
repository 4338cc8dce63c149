"""scikit-learn estimators over longshort's config tree: :class:`LSTMClassifier` and :class:`LSTMRegressor`.

Each ``fit`` is one ``longshort.train`` run (task classify or regress) on the data handed in, so an estimator
trains exactly what the CLI trains from the same config. Parameters:

- ``config``: a config dict, a YAML path or None (the defaults), the base every fit starts from;
- any config key with ``__`` for its dots, as keyword arguments: ``LSTMClassifier(model__hidden_dim=32,
  train__epochs=5)``; ``get_params`` / ``set_params`` / ``clone`` / ``GridSearchCV`` see them as parameters
  (``param_grid={"model__hidden_dim": [16, 32]}``);
- ``channels_first``: ``X`` as [N, C, T] (aeon's and sktime's ``numpy3D``) rather than [N, T, C];
- ``random_state``: the run's ``seed`` (None: the config's);
- ``out``: a run directory to keep (None: a temporary one, removed after ``fit``; the fitted model stays in
  memory as ``run_``);
- ``verbose``: the run's progress and summary on stderr (off by default, as scikit-learn estimators are quiet).

``X`` is a 3-D array (all sequences full length), a list of 2-D arrays of different lengths, or a long-format
DataFrame (with ``data__long__id`` and the other ``data.long`` keys); ``y`` an array of labels (any dtype:
``classes_`` and ``predict`` give them back as they were) or of numbers (the regressor, [N] or [N, k]).

scikit-learn's own estimator checks assume 2-D tabular input; tests/test_estimators.py runs the ones that
apply to sequences and lists the rest with the reason each is skipped.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from longshort.errors import ConfigError

__all__ = ["LSTMClassifier", "LSTMRegressor"]

_OWN = ("config", "channels_first", "random_state", "out", "verbose")


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"model__hidden_dim": 8}`` -> ``{"model": {"hidden_dim": 8}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _config_key_names() -> set[str]:
    from longshort.config import config_keys

    return {k for k, _, _ in config_keys()}


class _LSTMEstimator(BaseEstimator):
    _task = "classify"

    def __init__(self, config: Any = None, *, channels_first: bool = False, random_state: int | None = None,
                 out: str | None = None, verbose: bool = False, **params: Any) -> None:
        self.config = config
        self.channels_first = channels_first
        self.random_state = random_state
        self.out = out
        self.verbose = verbose
        for key in params:
            self._check_key(key)
        # the config keys given, kept as they were passed (get_params returns these very objects, as clone needs)
        self._params = dict(params)

    # -- parameters: the own ones plus every config key given (``section__key``) -------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _OWN}, **{k: self._params[k] for k in sorted(self._params)}}

    def set_params(self, **params: Any) -> _LSTMEstimator:
        for key, value in params.items():
            if key in _OWN:
                setattr(self, key, value)
            else:
                self._check_key(key)
                self._params[key] = value
        return self

    @staticmethod
    def _check_key(key: str) -> None:
        """A parameter that is not a config key fails here, naming it (not at fit time, after a grid started)."""
        dotted = key.replace("__", ".")
        keys = _config_key_names()
        if dotted in keys or any(dotted.startswith(k + ".") for k in keys):  # a dict-valued key's own entries
            return
        near = sorted(k for k in keys if k.rsplit(".", 1)[-1] == dotted.rsplit(".", 1)[-1])
        hint = f" (did you mean {', '.join(k.replace('.', '__') for k in near[:3])}?)" if near else ""
        raise ConfigError(f"parameter '{key}' is not a config key: write config keys as section__key, e.g. "
                          f"model__hidden_dim{hint}")

    # -- the config a fit trains ------------------------------------------------------------------------

    def _raw_config(self) -> dict[str, Any]:
        from longshort.config import read_yaml

        base = self.config
        raw = read_yaml(base) if isinstance(base, str | Path) else dict(base or {})
        raw = _merge(raw, _nested(dict(self._params)))
        raw["task"] = self._task
        if self.random_state is not None:
            raw["seed"] = int(self.random_state)
        train = raw.setdefault("train", {})
        train.setdefault("progress", "plain" if self.verbose else "off")
        train.setdefault("tensorboard", False)
        diag = raw.setdefault("diagnostics", {})
        diag.setdefault("report", False)  # a grid search fits many: the page and the after-training analysis
        if self._task == "classify":  # (seconds each) only when asked for
            diag.setdefault("analysis", False)
        return raw

    def _fit_run(self, X: Any, y: Any) -> Any:
        from rich.console import Console

        from longshort.run import train

        x, lengths = self._sequences(X)
        if lengths is None and y is not None:  # x is a DataFrame
            raise ConfigError("a long-format DataFrame holds its labels in a column (data.long.label): "
                              "pass y=None")
        data: Any = x if lengths is None else (x, y, lengths)
        console = Console(stderr=True, quiet=not self.verbose, file=None if self.verbose else io.StringIO())
        quiet = contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())
        if self.out is not None:  # kept: the run directory with its data in RUN_DIR/data/
            self.run_dir_ = str(self.out)
            with quiet:
                return train(self._raw_config(), out=self.out, console=console, data=data)
        tmp = Path(tempfile.mkdtemp(prefix="longshort-fit-"))
        try:
            with quiet:
                run = train(self._raw_config(), out=tmp / "run", console=console, data=data)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.run_dir_ = None
        return run

    def _sequences(self, X: Any) -> Any:
        """``X`` for the run's fit and predict: (a DataFrame as it is, None), else (padded array, lengths)."""
        import pandas as pd

        from longshort.data.memory import as_sequences

        if isinstance(X, pd.DataFrame):
            return X, None
        return as_sequences(X, "full" if isinstance(X, np.ndarray) else None, self.channels_first)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags


class LSTMClassifier(ClassifierMixin, _LSTMEstimator):
    """A longshort sequence classifier as a scikit-learn estimator (see the module's docstring)."""

    _task = "classify"

    def fit(self, X: Any, y: Any = None) -> LSTMClassifier:
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            self.run_ = self._fit_run(X, None)
            names = self.run_.prep.class_names
            self.classes_ = np.asarray(names)
            self._index = np.arange(len(names))
            self.n_features_in_ = len(self.run_.prep.feature_names)
            return self
        y = np.asarray(y)
        if y.ndim != 1:
            raise ConfigError(f"y has shape {y.shape}: LSTMClassifier takes one label per sequence")
        self.classes_ = np.unique(y)
        text = np.asarray([str(v) for v in self.classes_])
        if len(set(text)) != len(text):
            raise ConfigError("two labels read the same as text (e.g. 1 and '1'); give labels of one type")
        # the run learns the labels as text; classes_ keeps the user's values and their order
        self.run_ = self._fit_run(X, np.asarray([str(v) for v in y]))
        names = list(self.run_.prep.class_names)
        self._index = np.asarray([names.index(t) for t in text])  # classes_[j] is the run's class _index[j]
        self.n_features_in_ = len(self.run_.prep.feature_names)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "run_")
        x, lengths = self._sequences(X)
        return self.run_.predict_proba(x, lengths)[:, self._index]

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-probabilities [N, K] (one column per class of ``classes_``; [N] of the second class's minus the
        first's for two classes, as scikit-learn's binary convention has it)."""
        logp = np.log(np.clip(self.predict_proba(X), 1e-12, 1.0))
        return logp[:, 1] - logp[:, 0] if logp.shape[1] == 2 else logp

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


class LSTMRegressor(RegressorMixin, _LSTMEstimator):
    """A longshort sequence regressor (task regress) as a scikit-learn estimator (see the module's
    docstring); ``y`` [N] or [N, k] numbers, in their own units."""

    _task = "regress"

    def fit(self, X: Any, y: Any = None) -> LSTMRegressor:
        import pandas as pd

        if not isinstance(X, pd.DataFrame):
            y = np.asarray(y, dtype=np.float64)
            self._ndim = y.ndim
        else:
            self._ndim = 1
        self.run_ = self._fit_run(X, y)
        self.n_features_in_ = len(self.run_.prep.feature_names)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "run_")
        x, lengths = self._sequences(X)
        point = self.run_.predict_values(x, lengths)[0]
        return point[:, 0] if self._ndim == 1 and point.shape[1] == 1 else point

    def predict_quantiles(self, X: Any) -> tuple[np.ndarray, tuple[float, ...]]:
        """(quantiles [N, k, L], their levels): regress.loss=quantile's levels, gaussian_nll's 80% interval."""
        check_is_fitted(self, "run_")
        x, lengths = self._sequences(X)
        _, q, levels = self.run_.predict_values(x, lengths)
        return q, levels
