"""The user's auxiliary regression target (data.long.aux, data.series.aux, an .npz 'aux' array) through the
pipeline: a training target only, standardised on the train split, never a feature, not needed to predict."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import longshort
from longshort.config import validate
from longshort.data.config import DataConfig, LongFormat, SeriesFormat
from longshort.data.pipeline import load_for_model, prepare
from longshort.errors import ConfigError


def long_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A row per (series, step); label = sign of the mean of f0; 'ret' = a per-series number."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n):
        label = s % 2
        t = int(rng.integers(4, 9))
        f0 = rng.normal(2.0 if label else -2.0, 1.0, t)
        ret = float(s) / 4
        rows += [{"series_id": f"s{s}", "time": k, "f0": f0[k], "ret": ret, "label": ["lo", "hi"][label]}
                 for k in range(t)]
    return pd.DataFrame(rows)


def long_cfg(path: Path, **kw: object) -> DataConfig:
    return DataConfig(source=str(path), long=LongFormat(time="time", aux="ret", **kw))


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"long": {"aux": "ret", "features": ["f0", "ret"]}}, "data.long"),
        ({"long": {"aux": "label"}}, "data.long"),
        ({"long": {"aux": "series_id"}}, "data.long"),
        ({"series": {"aux": "close", "features": ["close"]}}, "data.series"),
        ({"series": {"aux": "close"}}, "data.series"),  # the target
        ({"series": {"aux": "date", "time": "date"}}, "data.series"),
    ],
)
def test_aux_column_cannot_be_a_feature_or_another_role(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}': aux column '\w+' is also"):
        validate({"data": raw})


def test_aux_config_keys_default_to_none() -> None:
    cfg = validate({})
    assert cfg.data.long.aux is None and cfg.data.series.aux is None
    assert validate({"data": {"long": {"aux": "ret"}, "series": {"aux": "fwd"}}}).data.long.aux == "ret"


# ---------------------------------------------------------------------------------------------- pipeline


def test_long_aux_is_standardised_on_train_and_not_a_feature(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    frame = long_frame()
    frame.to_csv(path, index=False)
    splits = prepare(long_cfg(path), seed=0)
    assert splits.prep.feature_names == ["f0"] and splits.train.n_features == 1
    per_series = frame.groupby("series_id", sort=False)["ret"].first()
    train_raw = per_series.loc[splits.train.ids].to_numpy()
    assert splits.prep.aux_mean == pytest.approx(train_raw.mean())
    assert splits.prep.aux_std == pytest.approx(train_raw.std())
    np.testing.assert_allclose(splits.train.aux, (train_raw - train_raw.mean()) / train_raw.std(), rtol=1e-5)
    val_raw = per_series.loc[splits.val.ids].to_numpy()  # val uses the train statistics
    np.testing.assert_allclose(splits.val.aux, (val_raw - splits.prep.aux_mean) / splits.prep.aux_std, rtol=1e-5)


def test_long_prediction_file_needs_no_aux_column(tmp_path: Path) -> None:
    frame = long_frame()
    frame.to_csv(tmp_path / "train.csv", index=False)
    cfg = long_cfg(tmp_path / "train.csv")
    prep = prepare(cfg, seed=0).prep
    new = long_frame(n=6, seed=5)
    new.drop(columns=["ret", "label"]).to_csv(tmp_path / "new.csv", index=False)
    data = load_for_model(str(tmp_path / "new.csv"), cfg, prep, seed=0, labels="optional")
    assert len(data) == 6 and data.aux is None and data.feature_names == ["f0"]
    new.loc[0, "ret"] = np.nan  # unknown yet at prediction time: not read, not checked
    new.to_csv(tmp_path / "holdout.csv", index=False)
    data = load_for_model(str(tmp_path / "holdout.csv"), cfg, prep, seed=0)
    assert data.aux is None and data.n_features == 1 and data.y is not None


def test_series_aux_through_prepare_and_prediction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    fut = np.r_[close[3:] - close[:-3], np.full(3, np.nan)]  # the user's own 3-step forward change
    frame = pd.DataFrame({"close": close, "vol": rng.normal(size=n), "fut": fut})
    frame.iloc[:-3].to_csv(tmp_path / "train.csv", index=False)
    cfg = DataConfig(source=str(tmp_path / "train.csv"),
                     series=SeriesFormat(window=10, horizon=3, stride=1, aux="fut", change="diff"))
    splits = prepare(cfg, seed=0)
    assert splits.prep.feature_names == ["close", "vol"]
    raw_train = fut[splits.train.order]  # the train part starts at row 0
    np.testing.assert_allclose(splits.train.aux * splits.prep.aux_std + splits.prep.aux_mean, raw_train,
                               rtol=1e-4, atol=1e-4)
    frame.to_csv(tmp_path / "new.csv", index=False)  # NaN in 'fut' at the end: ignored when predicting
    data = load_for_model(str(tmp_path / "new.csv"), cfg, splits.prep, seed=0, labels="optional")
    assert data.aux is None and data.n_features == 2
    frame.drop(columns="fut").to_csv(tmp_path / "bare.csv", index=False)
    assert load_for_model(str(tmp_path / "bare.csv"), cfg, splits.prep, seed=0, labels="optional").n_features == 2


def test_npz_aux_through_prepare_and_prediction(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5, 2)).astype(np.float32)
    y = np.arange(40) % 2
    aux = rng.normal(3.0, 2.0, 40)
    np.savez(tmp_path / "train.npz", X=X, y=y, aux=aux)
    splits = prepare(DataConfig(source=str(tmp_path / "train.npz")), seed=0)
    assert splits.train.aux is not None and splits.prep.aux_mean == pytest.approx(3.0, abs=1.0)
    np.savez(tmp_path / "new.npz", X=X[:3], aux=np.array([np.nan, 1.0]))  # a bad aux array is not read
    data = load_for_model(str(tmp_path / "new.npz"), DataConfig(), splits.prep, seed=0, labels="optional")
    assert data.aux is None and len(data) == 3


# ---------------------------------------------------------------------------------------------- end to end

TINY = {
    "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 2, "conv_dilations": [1]},
    "train": {"epochs": 2, "batch_size": 16, "threads": 1, "progress": "off", "schedule": {"max_lr": 0.03},
              "loss": {"aux_weight": 0.5}, "selection": "val"},
    "diagnostics": {"analysis": False, "report": False},
}


def history(run: longshort.Run) -> list[dict[str, str]]:
    with open(run.dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_with_a_long_aux_column_records_train_aux_mse(tmp_path: Path) -> None:
    long_frame(n=60).to_csv(tmp_path / "train.csv", index=False)
    cfg = {**TINY, "data": {"source": str(tmp_path / "train.csv"), "long": {"time": "time", "aux": "ret"}}}
    run = longshort.train(cfg, out=tmp_path / "run")
    rows = history(run)
    assert len(rows) == 2
    assert all(np.isfinite(float(r["train_aux_mse"])) for r in rows)
    assert run.prep.feature_names == ["f0"]
    # Evaluating on a file without the aux column works: it is only a training target.
    long_frame(n=10, seed=7).drop(columns="ret").to_csv(tmp_path / "holdout.csv", index=False)
    assert run.evaluate(str(tmp_path / "holdout.csv"))["n"] == 10


def test_train_without_aux_column_records_no_aux_mse(tmp_path: Path) -> None:
    long_frame(n=60).drop(columns="ret").to_csv(tmp_path / "train.csv", index=False)
    cfg = {**TINY, "data": {"source": str(tmp_path / "train.csv"), "long": {"time": "time"}}}
    rows = history(longshort.train(cfg, out=tmp_path / "run"))
    assert rows and "train_aux_mse" not in rows[0]
