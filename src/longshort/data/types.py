"""The in-memory shapes data takes between reading and batching."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

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


@dataclass(frozen=True)
class Ragged:
    """Variable-length sequences back to back: sequence ``i`` is ``values[offsets[i] : offsets[i + 1]]``.

    What a variable-length set is kept as between reading and batching, so memory is the real steps, not
    sequences x the longest (PLAID's 100-1,344 steps pad 13x); a batch is padded to its own longest when drawn.
    """

    values: np.ndarray  # [total steps, C] float32
    offsets: np.ndarray  # int64 [N + 1], offsets[0] == 0, offsets[-1] == total steps

    @classmethod
    def from_padded(cls, x: np.ndarray, lengths: np.ndarray) -> Ragged:
        lengths = np.asarray(lengths, dtype=np.int64)
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        return cls(np.ascontiguousarray(x[mask], dtype=np.float32), offsets_of(lengths))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence_of_step(self) -> np.ndarray:
        """int64 [total steps]: the sequence each step of ``values`` belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def padded(self, idx: np.ndarray | None = None) -> np.ndarray:
        """[n, longest of them, C] float32, zero after each sequence's end (all sequences, or ``idx``)."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        t = int(lengths.max()) if len(idx) else 0
        out = np.zeros((len(idx), t, self.values.shape[1]), dtype=self.values.dtype)
        mask = np.arange(t)[None, :] < lengths[:, None]
        out[mask] = self.values[self.steps(idx)]
        return out

    def steps(self, idx: np.ndarray) -> np.ndarray:
        """int64: the rows of ``values`` that sequences ``idx`` cover, in order."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        first = np.repeat(self.offsets[idx] - np.cumsum(lengths) + lengths, lengths)
        return first + np.arange(int(lengths.sum()), dtype=np.int64)

    def select(self, idx: np.ndarray) -> Ragged:
        """Sequences ``idx`` (their steps gathered: a copy of only those)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Ragged(self.values[self.steps(idx)], offsets_of(self.lengths[idx]))


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """int64 [N + 1]: where each of sequences of ``lengths`` starts in a back-to-back array, and the total."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


@dataclass
class SequenceData:
    """A set of independent (possibly variable-length) multivariate sequences.

    ``X`` is zero-padded after each sequence's length, so ``X[i, lengths[i]:]`` is all zeros. Variable-length
    sets are kept as :class:`Ragged` (``ragged``: the real steps back to back) and built with ``X=None``; ``X``
    then pads them all when read (a copy, for code that wants one array), while the pipeline and batching use
    ``ragged`` and pad each batch to its own longest. Change fields with :meth:`replace`, which keeps the
    ragged form (``dataclasses.replace`` would read, and so pad, ``X``).
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
    ragged: Ragged | None = None  # variable-length sequences back to back (then built with X=None)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_features(self) -> int:
        return int(self.ragged.values.shape[1] if self.ragged is not None else self.padded_x.shape[2])

    @property
    def steps(self) -> int:
        """The longest sequence: ``X``'s second dimension."""
        if self.ragged is not None:
            return int(self.lengths.max()) if len(self) else 0
        return int(self.padded_x.shape[1])

    @property
    def padded_x(self) -> np.ndarray:
        x = self.__dict__.get("_x")
        if x is None:
            raise AttributeError("SequenceData built with X=None and no ragged sequences")
        return x

    def valid_steps(self) -> np.ndarray:
        """[steps, C]: every real step of every sequence (a window's rows once each for windows of one series;
        a view where the layout allows)."""
        if self.ragged is not None:
            return self.ragged.values
        if self.windows is not None:
            return self.windows.covered().values
        x = self.padded_x
        if len(self) and bool((self.lengths == x.shape[1]).all()):
            return x.reshape(-1, x.shape[2])
        return x[np.arange(x.shape[1])[None, :] < self.lengths[:, None]]

    def replace(self, **changes: Any) -> SequenceData:
        """``dataclasses.replace`` that keeps ragged sequences ragged (``X`` stays unbuilt)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "X" and f.name not in changes}
        kw["X"] = changes.pop("X", self.__dict__.get("_x"))
        return SequenceData(**kw, **changes)

    def subset(self, idx: np.ndarray) -> SequenceData:
        """Rows ``idx``, trimmed to the longest remaining sequence; evenly spaced windows stay a view."""
        lengths = self.lengths[idx]
        t = int(lengths.max()) if len(idx) else 0
        windows = None if self.windows is None else self.windows.select(idx)
        ragged = None if self.ragged is None else self.ragged.select(idx)
        if windows is not None:
            x: np.ndarray | None = windows.view()
        else:
            x = None if ragged is not None else self.padded_x[idx, :t]
        return SequenceData(
            X=x,  # type: ignore[arg-type]
            windows=windows,
            ragged=ragged,
            lengths=lengths,
            y=None if self.y is None else self.y[idx],
            feature_names=self.feature_names,
            source=self.source,
            aux=None if self.aux is None else self.aux[idx],
            order=None if self.order is None else self.order[idx],
            class_names=self.class_names,
            ids=None if self.ids is None else self.ids[idx],
        )


def _x(self: SequenceData) -> np.ndarray:
    x = self.__dict__.get("_x")
    if x is None and self.ragged is not None:
        return self.ragged.padded()
    if x is None:
        raise AttributeError("SequenceData built with X=None and no ragged sequences")
    return x


def _set_x(self: SequenceData, value: np.ndarray | None) -> None:
    self.__dict__["_x"] = value


# X is a dataclass field (the constructor takes it) read through a property, so ragged sets pad only on demand
SequenceData.X = property(_x, _set_x)  # type: ignore[assignment,method-assign]


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
