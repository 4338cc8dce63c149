"""Windows of one series as views of its rows (issue 22): no copy per window, batches gathered from the view equal
the materialised windows, statistics of the rows in one streaming pass, and the per-window policies (ffill,
scale=series) still computed per window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from longshort.data import pipeline
from longshort.data.batching import take, to_tensors
from longshort.data.config import DataConfig, SeriesFormat
from longshort.data.pipeline import Preprocessor, prepare
from longshort.data.types import SequenceData, SeriesData
from longshort.data.windows import make_windows, window_ends

W, H = 6, 2


def _series(rows: int = 80, seed: int = 0, nan: bool = False) -> SeriesData:
    rng = np.random.default_rng(seed)
    values = (np.cumsum(rng.standard_normal((rows, 3)), 0) * [1.0, 10.0, 0.1] + [5.0, -3.0, 0.0]).astype(np.float32)
    if nan:
        values[rng.random(values.shape) < 0.1] = np.nan
    target = np.cumsum(rng.standard_normal(rows)) + 100.0
    return SeriesData(values=values, target=target, feature_names=["a", "b", "c"], target_name="t", source="s.csv")


def _materialised(values: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """What make_windows returned before: one contiguous copy per window."""
    return np.ascontiguousarray(sliding_window_view(values, window, axis=0)[ends - window].transpose(0, 2, 1))


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("stride", [1, 3])
def test_windows_are_a_view_of_the_series_equal_to_the_copies(labelled: bool, stride: int) -> None:
    s = _series()
    cfg = SeriesFormat(window=W, horizon=H, stride=stride)
    data = make_windows(s, cfg, labelled=labelled)
    assert data.windows is not None and np.shares_memory(data.X, s.values)
    ends = window_ends(len(s), cfg, labelled)
    np.testing.assert_array_equal(data.X, _materialised(s.values, ends, W))
    np.testing.assert_array_equal(data.order, ends - 1)


def test_subset_keeps_evenly_spaced_windows_a_view_and_copies_the_rest() -> None:
    data = make_windows(_series(), SeriesFormat(window=W, horizon=H))
    full = np.ascontiguousarray(data.X)
    even = data.subset(np.arange(4, 40, 5))
    assert even.windows is not None and np.shares_memory(even.X, data.X)
    np.testing.assert_array_equal(even.X, full[4:40:5])
    odd = data.subset(np.array([1, 2, 7]))
    assert odd.windows is None
    np.testing.assert_array_equal(odd.X, full[[1, 2, 7]])


def test_prepare_scales_the_rows_once_and_keeps_every_split_a_view() -> None:
    s = _series(300)
    cfg = DataConfig.model_validate({"layout": "series", "scale": "standard",
                                     "series": {"window": W, "horizon": H, "change": "diff"}})
    splits = prepare(cfg, 0, raw=s)
    for part in (splits.train, splits.val, splits.test):
        assert part is not None and part.windows is not None
        assert part.X.base is not None and not part.X.flags.c_contiguous  # a strided view, not a copy
    # the statistics are of the rows the training windows cover, each row once
    first, last = splits.train.order[0] - W + 1, splits.train.order[-1]
    rows = s.values[first : last + 1].astype(np.float64)
    np.testing.assert_allclose(splits.prep.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(splits.prep.std, rows.std(0), rtol=1e-12)
    # and every window is the materialised window scaled as before
    ends = splits.train.order + 1
    expect = (_materialised(s.values, ends, W) - np.float32(splits.prep.mean)) / np.float32(splits.prep.std)
    np.testing.assert_array_equal(splits.train.X, expect.astype(np.float32))


def test_batches_gathered_from_the_view_equal_the_materialised_windows() -> None:
    s = _series(200)
    cfg = DataConfig.model_validate({"layout": "series", "series": {"window": W, "horizon": H, "stride": 2}})
    train = prepare(cfg, 0, raw=s).train
    lazy = to_tensors(train)
    dense = to_tensors(SequenceData(X=np.ascontiguousarray(train.X), lengths=train.lengths, y=train.y,
                                    feature_names=train.feature_names, aux=train.aux))
    assert not lazy.X.is_contiguous()
    assert lazy.X.untyped_storage().nbytes() < dense.X.untyped_storage().nbytes() / 2  # rows, not windows
    idx = torch.randperm(len(lazy), generator=torch.Generator().manual_seed(0))[:17]
    a, b = take(lazy, idx, torch.device("cpu")), take(dense, idx, torch.device("cpu"))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.lengths, b.lengths)


def test_streaming_moments_equal_numpy_over_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "CHUNK_ROWS", 7)  # 80 rows in 12 chunks, the last one short
    data = make_windows(_series(), SeriesFormat(window=W, horizon=H))
    mean, std = pipeline._feature_moments(data)
    rows = data.windows.covered().values.astype(np.float64)
    np.testing.assert_allclose(mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, rows.std(0), rtol=1e-12)
    holes = make_windows(_series(nan=True), SeriesFormat(window=W, horizon=H))
    mean, _ = pipeline._feature_moments(holes, observed=True)
    np.testing.assert_allclose(mean, np.nanmean(holes.windows.covered().values.astype(np.float64), 0), rtol=1e-12)


@pytest.mark.parametrize("missing", ["zero", "mean", "mask", "ffill"])
def test_missing_policies_on_windows_equal_the_per_window_result(missing: str) -> None:
    """zero, mean and mask are per value, so the rows are filled once; ffill looks back within each window, so
    those windows are materialised and filled one by one, as before."""
    data = make_windows(_series(nan=True), SeriesFormat(window=W, horizon=H))
    copy = SequenceData(X=np.ascontiguousarray(data.X), lengths=data.lengths, y=data.y,
                        feature_names=data.feature_names, class_names=data.class_names)
    lazy = Preprocessor.fit(data, "series", "standard", missing=missing)
    dense = Preprocessor.fit(copy, "series", "standard", missing=missing)
    out, ref = lazy.transform(data), dense.transform(copy)
    assert (out.windows is not None) == (missing != "ffill")
    if missing != "ffill":  # row statistics (each row once) against window statistics: close, not equal
        assert (np.abs(np.subtract(lazy.mean, dense.mean)) < 0.1 * np.asarray(dense.std)).all()
        ref = Preprocessor(**{**dense.__dict__, "mean": lazy.mean, "std": lazy.std, "fill": lazy.fill}
                           ).transform(copy)
    np.testing.assert_allclose(out.X, ref.X, rtol=1e-6, atol=1e-6)
    assert not np.isnan(out.X).any()


def test_mapped_rows_are_written_once_and_equal_the_in_memory_splits(tmp_path) -> None:
    s = _series(300)
    cfg = DataConfig.model_validate({"layout": "series", "series": {"window": W, "horizon": H, "change": "diff"}})
    plain = prepare(cfg, 0, raw=s)
    first = prepare(cfg, 0, raw=s, cache_dir=tmp_path)
    again = prepare(cfg, 0, raw=s, cache_dir=tmp_path)  # a second process: maps the file the first wrote
    assert len(first.cached) == 3 and first.cached == again.cached
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first.cached)  # no temporaries
    for name in ("train", "val", "test"):
        a, b = getattr(plain, name), getattr(first, name)
        assert isinstance(b.windows.values, np.memmap) and not isinstance(a.windows.values, np.memmap)
        np.testing.assert_array_equal(a.X, b.X)
    for path in first.cached:  # what training does once every process has mapped them
        path.unlink()
    batch = take(to_tensors(first.train), torch.arange(5), torch.device("cpu"))  # the mapping outlives the file
    assert torch.equal(batch.x, take(to_tensors(plain.train), torch.arange(5), torch.device("cpu")).x)


def test_training_from_mapped_rows_equals_training_in_memory(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    import longshort

    mapped: list[str] = []
    real = pipeline.map_rows
    monkeypatch.setattr(pipeline, "map_rows", lambda d, c, n: mapped.append(n) or real(d, c, n))

    rng = np.random.default_rng(0)
    close = 100.0 + np.cumsum(rng.normal(0.0, 0.5, 300))
    path = tmp_path / "prices.csv"
    pd.DataFrame({"close": close, "volume": rng.uniform(1.0, 2.0, 300)}).to_csv(path, index=False)
    base = {"data": {"source": str(path), "series": {"window": 12, "horizon": 2}},
            "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1]},
            "train": {"epochs": 2, "batch_size": 32, "threads": 1, "progress": "off", "tensorboard": False},
            "diagnostics": {"report": False, "analysis": False}}
    runs = {}
    for cache in ("off", "on"):
        cfg = {**base, "data": {**base["data"], "series": {**base["data"]["series"], "cache": cache}}}
        runs[cache] = longshort.train(cfg, out=tmp_path / cache)
    assert mapped[0] == "train" and mapped[-1] == "test"  # the "on" run alone (this small set has no val split)
    assert runs["on"].metrics["test"] == runs["off"].metrics["test"]
    assert not any((tmp_path / ".cache").glob("*"))  # removed once mapped
