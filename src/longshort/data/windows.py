"""Cutting one continuous series into fixed-length windows labelled by the target's forward change."""

from __future__ import annotations

from typing import Literal

import numpy as np

from longshort.data.config import SeriesFormat
from longshort.data.types import SequenceData, SeriesData, Windows
from longshort.errors import DataError

CLASS_NAMES = ["down", "flat", "up"]
DOWN, FLAT, UP = 0, 1, 2


def direction_labels(
    target: np.ndarray,
    end: np.ndarray,
    horizon: int,
    flat_band: float,
    change: Literal["pct", "diff"],
    *,
    source: str = "",
    first_row: int = 0,
    target_name: str = "target",
) -> tuple[np.ndarray, np.ndarray]:
    """Direction class (0 down, 1 flat, 2 up) and forward change of windows ending before ``end``.

    The change runs from ``target[end - 1]`` (the window's last step) to ``target[end - 1 + horizon]``.
    ``source``, ``first_row`` and ``target_name`` only serve the message when a 'pct' change starts at 0.
    """
    now = np.asarray(end, dtype=np.int64) - 1
    ahead = now + horizon
    if now.size and (now.min() < 0 or ahead.max() >= len(target)):
        raise ValueError(f"windows need target rows 0..{int(ahead.max())}, the series has {len(target)}")
    a = target[now].astype(np.float64)
    fwd = target[ahead].astype(np.float64)
    del ahead
    if change == "pct":
        zero = np.flatnonzero(a == 0)
        if zero.size:
            row = first_row + int(now[zero[0]])
            raise DataError(source, f"column '{target_name}' is 0 at row {row}, so its percent change is "
                                    "undefined; use change: diff")
        fwd -= a
        fwd /= np.abs(a, out=a)
    else:
        fwd -= a
    del a
    labels = np.full(len(fwd), FLAT, dtype=np.int64)  # in place: one label array, not a where() per class
    labels[fwd > flat_band] = UP
    labels[fwd < -flat_band] = DOWN
    return labels, fwd.astype(np.float32)


def window_ends(n_rows: int, cfg: SeriesFormat, labelled: bool) -> np.ndarray:
    """End (exclusive) row of every window cut from a series of ``n_rows`` rows.

    Labelled windows start at row 0 every ``stride`` rows and stop where the label would look past the
    series end. Unlabelled (prediction) windows are anchored at the end instead, so the last window
    always ends on the last row.
    """
    if labelled:
        return np.arange(0, n_rows - cfg.window - cfg.horizon + 1, cfg.stride) + cfg.window
    return np.arange(n_rows, cfg.window - 1, -cfg.stride)[::-1].copy()


def make_windows(series: SeriesData, cfg: SeriesFormat, labelled: bool = True) -> SequenceData:
    """Windows of ``cfg.window`` rows every ``cfg.stride`` rows; labelled by direction when ``labelled``.

    ``order`` holds each window's last row (0-based, relative to the series' first row). The aux target of
    a labelled window is the target's forward change over ``horizon`` (the label's own quantity), or, when
    the series carries the user's aux column (``data.series.aux``), that column's value at the window's
    last row, taken as given: whether it is a future quantity is up to the user, and one that looks k rows
    ahead stays out of the next split while k <= horizon + split.gap. Unlabelled windows have no aux.
    """
    n = len(series)
    need = cfg.window + (cfg.horizon if labelled else 0)
    if n < need:
        what = "window + horizon" if labelled else "window"
        raise DataError(series.source, f"series has {n} rows but {what} needs {need}")
    ends = window_ends(n, cfg, labelled)
    # a view of the series, not a copy per window (rows x window x channels): ends are evenly spaced
    values = np.asarray(series.values, dtype=np.float32)
    windows = Windows(values, int(ends[0]) - cfg.window if len(ends) else 0, cfg.stride, cfg.window, len(ends))
    y = aux = None
    if labelled:
        y, aux = direction_labels(series.target, ends, cfg.horizon, cfg.flat_band, cfg.change,
                                  source=series.source, first_row=series.first_row,
                                  target_name=series.target_name)
        if series.aux is not None:
            aux = series.aux[ends - 1].astype(np.float32)
    return SequenceData(
        X=windows.view(),
        windows=windows,
        lengths=np.full(len(ends), cfg.window, dtype=np.int64),
        y=y,
        feature_names=list(series.feature_names),
        source=series.source,
        aux=aux,
        order=(ends - 1).astype(np.int64),
        class_names=list(CLASS_NAMES),
    )
