"""The Python API on in-memory data: train(data=..., test_data=..., callbacks=...), Run.predict on arrays,
ragged lists and DataFrames, labels in their own dtype, padding and NaN refused with a message, cv on a dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import longshort
from longshort.config import load_config
from longshort.errors import DataError
from longshort.training.callbacks import Callback

TINY: dict[str, Any] = {
    "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1]},
    "train": {"epochs": 4, "batch_size": 16, "threads": 1, "progress": "off", "tensorboard": False,
              "schedule": {"max_lr": 0.03}},
    "diagnostics": {"report": False, "analysis": False},
}


def _data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 * 7 + 1  # integer labels 1 and 8
    lengths = rng.integers(5, 11, n)
    x = np.zeros((n, 10, 2), np.float32)
    for i in range(n):
        x[i, : lengths[i]] = rng.normal(size=(lengths[i], 2)) * 0.3 + (1.5 if y[i] == 8 else -1.5)
    return x, y, lengths.astype(np.int64)


class Count(Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        self.epochs.append(int(row["epoch"]))


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Count, Path]:
    d = tmp_path_factory.mktemp("mem")
    x, y, lengths = _data()
    count = Count()
    run = longshort.train(TINY, out=d / "run", data=(x, y, lengths), test_data=_data(30, 1), callbacks=[count])
    return run, count, d / "run"


def test_in_memory_data_is_kept_with_the_run_and_reruns(memory_run: Any) -> None:
    run, count, d = memory_run
    assert count.epochs == [1, 2, 3, 4]  # the user's callback saw every epoch
    cfg = load_config(d / "config.yaml")
    assert Path(cfg.data.source) == (d / "data" / "train.npz").resolve()
    assert Path(cfg.data.test_source) == (d / "data" / "test.npz").resolve()
    assert run.config.data.source == cfg.data.source
    saved = np.load(d / "data" / "train.npz")
    assert saved["lengths"].tolist() == _data()[2].tolist() and saved["y"].dtype.kind == "i"
    again = longshort.train(d / "config.yaml", out=d.parent / "again")  # config.yaml alone reruns it
    assert again.metrics["test"]["n"] == run.metrics["test"]["n"] == 30


def test_predict_gives_integer_labels_back_and_reads_lengths(memory_run: Any) -> None:
    run, _, _ = memory_run
    x, y, lengths = _data(30, 1)
    pred = run.predict(x, lengths)
    assert pred.dtype.kind == "i" and set(pred.tolist()) <= {1, 8} and (pred == y).mean() > 0.8
    ragged = [x[i, : lengths[i]] for i in range(30)]
    assert np.array_equal(run.predict(ragged), pred)  # a list of arrays: each its own length
    with pytest.raises(DataError, match="padded array without lengths: sequence 0 ends in"):
        run.predict(x)  # zero padding would be read as data
    assert run.predict(x, "full").shape == (30,)  # the zeros declared as data
    bad = x.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(DataError, match="sequence 3, step 2, channel 1 is nan"):
        run.predict_proba(bad, lengths)


def test_long_dataframe_trains_and_predicts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{"series_id": f"s{i}", "time": t, "f1": (1.5 if i % 2 else -1.5) + rng.normal() * 0.3,
             "label": "up" if i % 2 else "down"} for i in range(50) for t in range(int(rng.integers(5, 9)))]
    df = pd.DataFrame(rows)
    run = longshort.train(TINY, out=tmp_path / "run", data=df)
    assert (tmp_path / "run" / "data" / "train.parquet").is_file()
    pred = run.predict(df.drop(columns="label"))
    assert pred.shape == (50,) and set(pred.tolist()) <= {"up", "down"}


def test_cv_takes_a_config_dict(tmp_path: Path) -> None:
    x, y, lengths = _data()
    np.savez(tmp_path / "d.npz", X=x, y=y, lengths=lengths)
    res = longshort.cv({**TINY, "data": {"source": str(tmp_path / "d.npz")}, "cv": {"folds": 2}}, tmp_path / "cv")
    assert (tmp_path / "cv" / "cv.json").is_file() and res["summary"]
    res2 = longshort.cv({**TINY, "cv": {"folds": 2}}, tmp_path / "cv2", data=(x, y, lengths))  # in memory
    assert (tmp_path / "cv2" / "data" / "train.npz").is_file()
    assert res2["summary"] == res["summary"]  # the same data from memory: the same folds and figures
