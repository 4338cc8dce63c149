"""Windowing a continuous series and labelling windows by the target's forward change."""

from __future__ import annotations

import numpy as np
import pytest

from longshort.data.config import SeriesFormat
from longshort.data.types import SeriesData
from longshort.data.windows import CLASS_NAMES, direction_labels, make_windows
from longshort.errors import DataError


def series(target: list[float], source: str = "s.csv", first_row: int = 2) -> SeriesData:
    t = np.asarray(target, dtype=np.float64)
    values = np.stack([t, np.arange(len(t), dtype=np.float64)], axis=1).astype(np.float32)
    return SeriesData(values=values, target=t, feature_names=["close", "step"], target_name="close",
                      source=source, first_row=first_row)


def test_direction_labels_diff() -> None:
    target = np.array([1.0, 2.0, 2.0, 1.5, 1.5, 3.0])
    labels, fwd = direction_labels(target, np.array([1, 2, 3, 4, 5]), 1, 0.1, "diff")
    np.testing.assert_array_equal(fwd, np.float32([1.0, 0.0, -0.5, 0.0, 1.5]))
    np.testing.assert_array_equal(labels, [2, 1, 0, 1, 2])
    assert labels.dtype == np.int64 and fwd.dtype == np.float32


def test_direction_labels_pct_differs_from_diff() -> None:
    target = np.array([100.0, 100.5, -200.0, -199.0])
    pct, fwd_pct = direction_labels(target, np.array([1, 3]), 1, 0.01, "pct")
    diff, fwd_diff = direction_labels(target, np.array([1, 3]), 1, 0.01, "diff")
    np.testing.assert_allclose(fwd_pct, [0.005, 0.005])  # relative to |a|: -200 -> -199 is up
    np.testing.assert_array_equal(pct, [1, 1])
    np.testing.assert_array_equal(fwd_diff, [0.5, 1.0])
    np.testing.assert_array_equal(diff, [2, 2])


def test_direction_labels_band_edge_is_flat() -> None:
    target = np.array([0.0, 0.5, 1.0, 0.5])
    labels, _ = direction_labels(target, np.array([1, 2, 3]), 1, 0.5, "diff")
    np.testing.assert_array_equal(labels, [1, 1, 1])


def test_direction_labels_horizon() -> None:
    target = np.array([5.0, 0.0, 0.0, 9.0, 1.0])
    labels, fwd = direction_labels(target, np.array([1, 2]), 2, 0.0, "diff")
    np.testing.assert_array_equal(fwd, [-5.0, 9.0])  # 5 -> target[2]; 0 -> target[3]
    np.testing.assert_array_equal(labels, [0, 2])


def test_direction_labels_pct_from_zero_names_row() -> None:
    target = np.array([1.0, 2.0, 0.0, 1.0, 2.0])
    with pytest.raises(DataError, match=r"data file s\.csv: column 'close' is 0 at row 12.*change: diff"):
        direction_labels(target, np.array([2, 3]), 1, 0.0, "pct", source="s.csv", first_row=10,
                         target_name="close")


def test_make_windows_contents_and_labels() -> None:
    target = [1, 2, 3, 2, 2, 5, 1]
    data = make_windows(series(target), SeriesFormat(window=3, horizon=1, stride=1, flat_band=0, change="diff"))
    assert data.X.shape == (4, 3, 2) and data.X.dtype == np.float32
    np.testing.assert_array_equal(data.X[1, :, 0], [2, 3, 2])
    np.testing.assert_array_equal(data.X[3, :, 1], [3, 4, 5])
    np.testing.assert_array_equal(data.order, [2, 3, 4, 5])
    # last step -> next step: 3->2 down, 2->2 flat, 2->5 up, 5->1 down
    np.testing.assert_array_equal(data.y, [0, 1, 2, 0])
    np.testing.assert_array_equal(data.aux, np.float32([-1, 0, 3, -4]))
    np.testing.assert_array_equal(data.lengths, [3, 3, 3, 3])
    assert data.class_names == CLASS_NAMES and data.feature_names == ["close", "step"]


def test_no_label_looks_past_the_end() -> None:
    n, cfg = 40, SeriesFormat(window=7, horizon=5, stride=1, change="diff")
    data = make_windows(series(list(np.arange(n, dtype=float) ** 1.5)), cfg)
    assert len(data) == n - cfg.window - cfg.horizon + 1
    assert data.order.max() + cfg.horizon == n - 1  # the last label uses the last row, not beyond


def test_stride() -> None:
    cfg = SeriesFormat(window=4, horizon=2, stride=3, change="diff")
    data = make_windows(series([float(i) for i in range(15)]), cfg)
    np.testing.assert_array_equal(data.order, [3, 6, 9, 12])
    np.testing.assert_array_equal(data.X[:, 0, 1], [0, 3, 6, 9])


def test_unlabelled_windows_end_on_last_row() -> None:
    cfg = SeriesFormat(window=4, horizon=2, stride=3)
    data = make_windows(series([float(i) for i in range(1, 12)]), cfg, labelled=False)
    assert data.y is None and data.aux is None
    np.testing.assert_array_equal(data.order, [4, 7, 10])
    np.testing.assert_array_equal(data.X[-1, :, 1], [7, 8, 9, 10])


def test_series_shorter_than_window_plus_horizon() -> None:
    cfg = SeriesFormat(window=5, horizon=3)
    with pytest.raises(DataError, match=r"data file s\.csv: series has 7 rows but window \+ horizon needs 8"):
        make_windows(series([1.0] * 7), cfg)
    assert len(make_windows(series([1.0] * 7), cfg, labelled=False)) == 3


def test_series_shorter_than_window_unlabelled() -> None:
    with pytest.raises(DataError, match=r"series has 4 rows but window needs 5"):
        make_windows(series([1.0] * 4), SeriesFormat(window=5), labelled=False)


def test_make_windows_pct_zero_names_file_row() -> None:
    cfg = SeriesFormat(window=2, horizon=1, change="pct")
    with pytest.raises(DataError, match=r"column 'close' is 0 at row 4\b"):
        make_windows(series([1.0, 2.0, 0.0, 1.0]), cfg)


def test_user_aux_column_is_its_value_at_each_windows_last_row() -> None:
    s = series([1, 2, 3, 2, 2, 5, 1])
    s.aux = np.array([10.0, 11, 12, 13, 14, 15, 16])
    cfg = SeriesFormat(window=3, horizon=1, stride=1, flat_band=0, change="diff")
    data = make_windows(s, cfg)
    np.testing.assert_array_equal(data.order, [2, 3, 4, 5])
    np.testing.assert_array_equal(data.aux, np.float32([12, 13, 14, 15]))  # not the forward change
    assert data.aux.dtype == np.float32
    np.testing.assert_array_equal(data.y, [0, 1, 2, 0])  # labels still from the target
    assert "aux" not in data.feature_names and data.n_features == 2
    assert make_windows(s, cfg, labelled=False).aux is None


def test_user_aux_follows_a_chronological_slice() -> None:
    s = series([float(i) for i in range(1, 13)])
    s.aux = np.arange(100.0, 112.0)
    part = s.rows(4, 12)
    data = make_windows(part, SeriesFormat(window=3, horizon=2, stride=2, change="diff"))
    np.testing.assert_array_equal(data.order, [2, 4])  # rows 6 and 8 of the whole series
    np.testing.assert_array_equal(data.aux, np.float32([106, 108]))
