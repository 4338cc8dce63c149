"""The in-memory shapes data takes between reading and batching."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass(frozen=True)
class Windows:
    """Fixed-length windows of one series, kept as the series itself: window ``i`` is
    ``values[start + i * stride : start + i * stride + length]``.

    :attr:`SequenceData.X` of windowed data is :meth:`view`, a strided view of ``values`` (no copy), so memory
    grows with the series' rows, not with rows x window; a batch is gathered when it is drawn.
    """

    values: np.ndarray  # [rows, C] float32
    start: int
    stride: int
    length: int
    count: int

    def view(self) -> np.ndarray:
        """[count, length, C] read-only view of ``values``."""
        if self.count == 0:
            return np.zeros((0, self.length, self.values.shape[1]), dtype=self.values.dtype)
        every = sliding_window_view(self.values, self.length, axis=0)  # [rows - length + 1, C, length]
        return every[self.start : self.start + (self.count - 1) * self.stride + 1 : self.stride].transpose(0, 2, 1)

    @property
    def span(self) -> tuple[int, int]:
        """The [first, stop) rows some window covers."""
        if self.count == 0:
            return self.start, self.start
        return self.start, self.start + (self.count - 1) * self.stride + self.length

    def covered(self) -> Windows:
        """The same windows over only the rows they cover (what scaling and statistics read)."""
        a, b = self.span
        return Windows(self.values[a:b], 0, self.stride, self.length, self.count)

    def select(self, idx: np.ndarray) -> Windows | None:
        """The windows ``idx`` when they are evenly spaced in increasing order (a view again), else None."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            return Windows(self.values, self.start, self.stride, self.length, 0)
        step = int(idx[1] - idx[0]) if len(idx) > 1 else 1
        even = bool((np.diff(idx) == step).all())
        if step < 1 or idx[0] < 0 or idx[-1] >= self.count or not even:
            return None
        return Windows(self.values, self.start + int(idx[0]) * self.stride, self.stride * step, self.length, len(idx))


@dataclass
class SequenceData:
    """A set of independent (possibly variable-length) multivariate sequences.

    ``X`` is zero-padded after each sequence's length, so ``X[i, lengths[i]:]`` is all zeros.
    ``y`` holds raw labels as read (ints or strings) until the pipeline encodes them to class indices.
    ``aux`` is an optional per-sequence regression target, used only as a training target: a user column
    or array (``data.long.aux``, an .npz ``aux`` array, ``data.series.aux`` at the window's last row), the
    forward change of the target column for windowed series otherwise, or a .ts ``@targetLabel``.
    ``order`` is an optional time key per sequence (window end row for windowed series) used to keep
    chronological order.
    """

    X: np.ndarray  # float32 [N, T, C]
    lengths: np.ndarray  # int64 [N]
    y: np.ndarray | None  # [N] raw labels, or None when unlabelled
    feature_names: list[str]
    source: str = ""
    aux: np.ndarray | None = None  # float32 [N]
    order: np.ndarray | None = None  # int64 [N]
    class_names: list[str] | None = field(default=None)  # fixed class vocabulary, when the reader knows it
    ids: np.ndarray | None = None  # [N] identifier per sequence (series_id), for prediction output
    windows: Windows | None = None  # windows of one series: X is windows.view(), a view of the series' rows

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[2])

    def subset(self, idx: np.ndarray) -> SequenceData:
        """Rows ``idx``, trimmed to the longest remaining sequence; evenly spaced windows stay a view."""
        lengths = self.lengths[idx]
        t = int(lengths.max()) if len(idx) else 0
        windows = None if self.windows is None else self.windows.select(idx)
        return SequenceData(
            X=windows.view() if windows is not None else self.X[idx, :t],
            windows=windows,
            lengths=lengths,
            y=None if self.y is None else self.y[idx],
            feature_names=self.feature_names,
            source=self.source,
            aux=None if self.aux is None else self.aux[idx],
            order=None if self.order is None else self.order[idx],
            class_names=self.class_names,
            ids=None if self.ids is None else self.ids[idx],
        )


@dataclass
class SeriesData:
    """One continuous multivariate series, a row per time step, before windowing."""

    values: np.ndarray  # float32 [T, C] feature columns
    target: np.ndarray  # float64 [T] the column labels are derived from
    feature_names: list[str]
    target_name: str
    source: str = ""
    first_row: int = 0  # row number in the source file of values[0] (for messages)
    aux: np.ndarray | None = None  # float64 [T] the user's aux column (data.series.aux), when read

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def rows(self, start: int, stop: int) -> SeriesData:
        return SeriesData(
            values=self.values[start:stop],
            target=self.target[start:stop],
            feature_names=self.feature_names,
            target_name=self.target_name,
            source=self.source,
            first_row=self.first_row + start,
            aux=None if self.aux is None else self.aux[start:stop],
        )
