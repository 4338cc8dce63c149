"""data.missing: each policy's fill (hand-checked), NaN refused under error (files, built-ins and Python
predict), the same fill at predict time, and mask beating zero where the label is where values are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import longshort
from longshort.config import validate
from longshort.data.pipeline import fill_missing, prepare
from longshort.errors import DataError

NAN = np.nan
TINY = {"model": {"hidden_dim": 16, "num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1]},
        "train": {"epochs": 12, "batch_size": 32, "threads": 1, "progress": "off", "tensorboard": False,
                  "schedule": {"max_lr": 0.02}, "selection": "last"},
        "diagnostics": {"report": False, "analysis": False}}


def test_each_policy_fills_as_documented() -> None:
    x = np.array([[[NAN, 1.0], [2.0, NAN], [NAN, NAN], [5.0, 4.0]]], np.float32)  # [1, 4, 2]
    lengths, fill = np.array([4]), np.array([9.0, 8.0])
    ff = fill_missing(x, lengths, "ffill", fill)[0]
    assert ff[:, 0].tolist() == [2.0, 2.0, 2.0, 5.0]  # before the first observed value: that value
    assert ff[:, 1].tolist() == [1.0, 1.0, 1.0, 4.0]
    assert fill_missing(x, lengths, "zero", fill)[0, :, 0].tolist() == [0.0, 2.0, 0.0, 5.0]
    assert fill_missing(x, lengths, "mean", fill)[0, :, 1].tolist() == [1.0, 8.0, 8.0, 4.0]
    m = fill_missing(x, lengths, "mask", fill)[0]
    assert m.shape == (4, 4) and m[:, 2].tolist() == [1, 0, 1, 0] and m[:, 3].tolist() == [0, 1, 1, 0]
    never = np.full((1, 3, 1), NAN, np.float32)  # a feature never observed in a sequence: ffill uses the mean
    assert fill_missing(never, np.array([3]), "ffill", np.array([7.0]))[0, :, 0].tolist() == [7.0] * 3


def _gappy_npz(path: Path, n: int = 80, share: float = 0.05, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 20, 2)).astype(np.float32) * 0.3
    x[:, :, 0] += np.where(y, 1.5, -1.5)[:, None]
    x[rng.random(x.shape) < share] = NAN
    np.savez(path, X=x, y=y)
    return path


def test_error_policy_refuses_and_the_others_train(tmp_path: Path) -> None:
    data = _gappy_npz(tmp_path / "gappy.npz")
    with pytest.raises(DataError, match=r"array 'X': NaN at sequence \d+, step \d+, channel \d"):
        prepare(validate({"data": {"source": str(data)}}).data, 0)
    with pytest.raises(DataError, match=r"has missing values .NaN.: set data.missing"):
        prepare(validate({"data": {"source": "builtin:gaps", "builtin": {"n": 40}}}).data, 0)
    x = np.load(data)["X"]
    for policy in ("ffill", "zero", "mean", "mask"):
        run = longshort.train({**TINY, "data": {"source": str(data), "missing": policy}}, out=tmp_path / policy)
        assert run.prep.missing == policy and np.isfinite(run.metrics["test"]["log_loss"])
        assert len(run.prep.feature_names) == (4 if policy == "mask" else 2)
        p = run.predict_proba(x[:5], "full")  # Python predict fills the same way
        assert np.isfinite(p).all()
    run = longshort.train({**TINY, "train": {**TINY["train"], "epochs": 1}, "data": {"source": str(data)}},
                          out=tmp_path / "clean", data=(np.nan_to_num(x), np.load(data)["y"]))
    with pytest.raises(DataError, match=r"sequence \d+, step \d+, channel \d is nan"):
        run.predict_proba(x[:5], "full")  # error (the default): a NaN is refused, never a NaN probability


def test_long_table_with_empty_cells(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [{"series_id": f"s{i}", "time": t, "f1": (1.5 if i % 2 else -1.5) + rng.normal() * 0.3,
             "label": "up" if i % 2 else "down"} for i in range(40) for t in range(6)]
    df = pd.DataFrame(rows)
    df.loc[df.sample(frac=0.05, random_state=0).index, "f1"] = NAN
    df.to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(DataError, match=r"column 'f1': NaN at row \d+"):
        prepare(validate({"data": {"source": str(tmp_path / "long.csv")}}).data, 0)
    splits = prepare(validate({"data": {"source": str(tmp_path / "long.csv"), "missing": "ffill"}}).data, 0)
    assert np.isfinite(splits.train.X).all()


def test_mask_beats_zero_where_the_label_is_where_values_are_missing(tmp_path: Path) -> None:
    acc = {}
    for policy in ("zero", "mask"):
        cfg = {**TINY, "train": {**TINY["train"], "epochs": 30, "schedule": {"max_lr": 0.01}},
               "data": {"source": "builtin:gaps", "builtin": {"n": 400, "length": 30}, "missing": policy}}
        acc[policy] = longshort.train(cfg, out=tmp_path / policy).metrics["test"]["accuracy"]
    assert acc["mask"] > 0.9 and acc["zero"] < 0.7, acc  # chance is 0.5: zeros among noise hide the gaps
