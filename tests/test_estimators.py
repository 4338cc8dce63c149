"""The scikit-learn estimators: fit/predict on every X form, labels round-tripping in their own dtype, clone,
get_params/set_params over config keys, cross_val_score, GridSearchCV, a Pipeline, and the scikit-learn
estimator checks that apply to sequence input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from longshort.errors import ConfigError, DataError
from longshort.estimators import LSTMClassifier, LSTMRegressor

TINY: dict[str, Any] = {"model__hidden_dim": 8, "model__num_heads": 2, "model__num_lstm_layers": 1,
                        "model__conv_dilations": [1], "train__epochs": 6, "train__batch_size": 16,
                        "train__threads": 1, "train__schedule__max_lr": 0.03}


def _data(n: int = 60, seed: int = 0, t: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by channel 0's level."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, t, 2)).astype(np.float32) * 0.3
    x[:, :, 0] += (y[:, None] - 1) * 2.0
    return x, y


@pytest.fixture(scope="module")
def fitted() -> tuple[LSTMClassifier, np.ndarray, np.ndarray]:
    x, y = _data()
    return LSTMClassifier(**TINY, random_state=0).fit(x, y), x, y


def test_fit_predict_score_and_probabilities(fitted: Any) -> None:
    clf, x, y = fitted
    assert clf.classes_.tolist() == [0, 1, 2] and clf.classes_.dtype.kind == "i"
    pred = clf.predict(x)
    assert pred.dtype.kind == "i" and clf.score(x, y) > 0.8  # accuracy_score on the user's own integers
    p = clf.predict_proba(x)
    assert p.shape == (60, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.array_equal(clf.classes_[p.argmax(1)], pred)
    assert clf.decision_function(x).shape == (60, 3) and clf.run_dir_ is None


@pytest.mark.parametrize("kind", ["int", "str", "categorical", "bool"])
def test_labels_round_trip_in_their_own_dtype(kind: str) -> None:
    x, y = _data(t=8)
    labels: Any = {"int": y * 10 + 3,  # 3, 13, 23: text order would put 13 and 23 before 3
                   "str": np.array(["low", "mid", "high"])[y],
                   "categorical": pd.Categorical(np.array(["c", "a", "b"])[y]),
                   "bool": y > 0}[kind]
    clf = LSTMClassifier(**TINY, random_state=0).fit(x, labels)
    want = np.unique(np.asarray(labels))
    assert np.array_equal(clf.classes_, want) and clf.classes_.dtype == want.dtype
    pred = clf.predict(x)
    assert pred.dtype == want.dtype and set(pred.tolist()) <= set(want.tolist())
    assert (pred == np.asarray(labels)).mean() > 0.8


def test_ragged_lists_and_channels_first(tmp_path: Path) -> None:
    x, y = _data(t=12)
    rng = np.random.default_rng(1)
    ragged = [s[: int(rng.integers(6, 13))] for s in x]
    clf = LSTMClassifier(**TINY, random_state=0, out=str(tmp_path / "run")).fit(ragged, y)
    assert clf.predict(ragged).shape == (60,) and clf.score(ragged, y) > 0.8
    assert (tmp_path / "run" / "data" / "train.npz").is_file()  # kept with the run, config.yaml points at it
    lens = np.load(tmp_path / "run" / "data" / "train.npz")["lengths"]
    assert lens.tolist() == [len(s) for s in ragged]
    cf = LSTMClassifier(**TINY, random_state=0, channels_first=True).fit(x.transpose(0, 2, 1), y)
    assert np.array_equal(cf.predict(x.transpose(0, 2, 1)), clf.predict(list(x)))


def test_params_are_config_keys_and_clone_keeps_them() -> None:
    clf = LSTMClassifier(**TINY)
    params = clf.get_params()
    assert params["model__hidden_dim"] == 8 and params["config"] is None
    twin = clone(clf)
    assert twin.get_params() == params
    clf.set_params(model__hidden_dim=16, train__epochs=2)
    assert clf.get_params()["model__hidden_dim"] == 16 and twin.get_params()["model__hidden_dim"] == 8
    with pytest.raises(ConfigError, match="'model__hiden_dim' is not a config key"):
        LSTMClassifier(model__hiden_dim=8)
    with pytest.raises(ConfigError, match="not a config key"):
        clf.set_params(nonsense=1)


def test_cross_val_score_grid_search_and_pipeline() -> None:
    x, y = _data()
    scores = cross_val_score(LSTMClassifier(**TINY, random_state=0), x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.7
    grid = GridSearchCV(LSTMClassifier(**TINY, random_state=0), {"model__hidden_dim": [4, 8]}, cv=2)
    grid.fit(x, y)
    assert grid.best_params_["model__hidden_dim"] in (4, 8) and len(grid.cv_results_["params"]) == 2
    pipe = Pipeline([("scale", FunctionTransformer(lambda a: a * 2.0)),
                     ("lstm", LSTMClassifier(**TINY, random_state=0))])
    assert pipe.fit(x, y).score(x, y) > 0.8


def test_regressor_predicts_in_the_targets_units() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 10, 2)).astype(np.float32) * 0.3
    level = rng.normal(size=80)
    x[:, :, 0] += level[:, None]
    y = 100.0 + 10.0 * level
    tiny = TINY | {"train__epochs": 15}
    reg = LSTMRegressor(**tiny, random_state=0).fit(x, y)
    pred = reg.predict(x)
    assert pred.shape == (80,) and abs(pred.mean() - 100.0) < 5.0
    assert reg.score(x, y) > 0.5  # R^2
    y2 = np.stack([y, -y], 1)
    assert LSTMRegressor(**tiny | {"train__epochs": 2}, random_state=0).fit(x, y2).predict(x).shape == (80, 2)


def test_long_dataframe_and_bad_input() -> None:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(40):
        label = "up" if i % 2 else "down"
        for t in range(int(rng.integers(5, 9))):
            rows.append({"series_id": f"s{i}", "time": t, "f1": (1.5 if i % 2 else -1.5) + rng.normal() * 0.3,
                         "label": label})
    df = pd.DataFrame(rows)
    clf = LSTMClassifier(**TINY, random_state=0).fit(df)
    assert set(clf.classes_) == {"down", "up"} and clf.predict(df.drop(columns="label")).shape == (40,)
    x, y = _data()
    with pytest.raises(DataError, match="y has 59 labels for 60 sequences"):
        LSTMClassifier(**TINY).fit(x, y[:-1])
    with pytest.raises(DataError, match=r"X has shape \(60, 10\)"):
        LSTMClassifier(**TINY).fit(x[:, :, 0], y)


# scikit-learn's data checks build 2-D tabular X [n_samples, n_features]; a 2-D X is not sequences and is refused
# on purpose (test_long_dataframe_and_bad_input). The estimators' tags say 3-D input (two_d_array False), so
# check_estimator itself runs only what needs no 2-D data (check_estimator_cloneable) and skips the data checks
# (every fit/predict/score check on tabular X: they would test the refusal, not the estimator). The API checks
# below, which need no data, are run one by one on both estimators.
APPLICABLE = ("check_no_attributes_set_in_init", "check_get_params_invariance", "check_set_params",
              "check_parameters_default_constructible", "check_estimator_repr", "check_estimator_cloneable")


def test_check_estimator_passes_what_it_runs() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    for est in (LSTMClassifier(**TINY), LSTMRegressor(**TINY)):
        results = check_estimator(est, on_fail=None)
        assert results and all(r["status"] in ("passed", "skipped") for r in results), results


@pytest.mark.parametrize("check", APPLICABLE)
def test_scikit_learn_checks_that_apply(check: str) -> None:
    from sklearn.utils import estimator_checks

    fn = getattr(estimator_checks, check, None)
    if fn is None:
        pytest.skip(f"this scikit-learn has no {check}")
    for est in (LSTMClassifier(**TINY), LSTMRegressor(**TINY)):
        fn(type(est).__name__, est)
