"""In-memory data (arrays, ragged lists, DataFrames) as the files every reader already checks.

The Python API and the scikit-learn estimators take data in memory; the pipeline reads files, whose readers hold
every validation message (the row, the column, the array). :func:`write_source` writes the data once in the
format its shape calls for, and the run reads that file like any other. ``longshort.train(data=...)`` keeps the
file in the run directory (``RUN_DIR/data/``) and points ``config.yaml`` at it, so the run can be rerun and
nothing the user handed in is lost.

Accepted shapes:

- ``(X, y)`` or ``(X, y, lengths)`` or ``{"X": ..., "y": ..., "lengths": ...}``: ``X`` a 3-D array [N, T, C]
  or a list of 2-D arrays [T_i, C] of different lengths (padded here, their lengths recorded); ``y`` optional;
- a bare ``X`` (as above) for prediction;
- a pandas DataFrame: a long or continuous table, read with the config's ``data.long`` / ``data.series`` keys;
- a path (str or Path): left as it is.

A padded 3-D array without ``lengths`` is taken as all full-length, unless some sequences end in a run of
all-zero steps, which is refused (it reads as padding: pass ``lengths``, or ``lengths="full"`` when the zeros
are data), so zero padding is never silently read as data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from longshort.errors import DataError

WHAT = "(in-memory data)"


def as_sequences(X: Any, lengths: Any = None, channels_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(X [N, T, C] float32 zero-padded, lengths [N] int64) from a 3-D array or a list of 2-D arrays
    (``channels_first``: [N, C, T] and [C, T_i], aeon's and sktime's collection layouts)."""
    if isinstance(X, np.ndarray) and X.ndim != 3 and X.dtype != object:
        raise DataError(WHAT, f"X has shape {X.shape}: expected [N, T, C] or a list of [T, C] arrays")
    if (isinstance(X, np.ndarray) and X.ndim == 3) or (not isinstance(X, np.ndarray) and _is_3d_like(X)):
        arr = np.asarray(X, dtype=np.float32)
        if arr.ndim != 3:
            raise DataError(WHAT, f"X has shape {arr.shape}: expected [N, T, C] or a list of [T, C] arrays")
        if channels_first:
            arr = arr.transpose(0, 2, 1)
        arr = np.ascontiguousarray(arr)
        n, t = arr.shape[:2]
        if isinstance(lengths, str):
            if lengths != "full":
                raise DataError(WHAT, f"lengths must be an array or 'full', got {lengths!r}")
            return arr, np.full(n, t, np.int64)
        if lengths is None:
            trailing = _trailing_zero_steps(arr)
            if trailing.any():
                i = int(np.argmax(trailing > 0))
                raise DataError(WHAT, f"X is a padded array without lengths: sequence {i} ends in {int(trailing[i])} "
                                      "all-zero steps, which would be read as data. Pass lengths=... (the real "
                                      "steps of each sequence), or lengths='full' if those zeros are data")
            return arr, np.full(n, t, np.int64)
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if len(lens) != n or (lens < 1).any() or (lens > t).any():
            raise DataError(WHAT, f"lengths must be {n} values in 1..{t}, got shape {lens.shape}, "
                                  f"range {lens.min(initial=0)}..{lens.max(initial=0)}")
        valid = np.arange(t)[None, :] < lens[:, None]
        return np.where(valid[..., None], arr, np.float32(0)), lens
    if isinstance(X, Sequence) and not isinstance(X, str):
        seqs = [np.asarray(s, dtype=np.float32) for s in X]
        if not seqs:
            raise DataError(WHAT, "X is an empty list")
        seqs = [s[:, None] if s.ndim == 1 else s for s in seqs]
        if channels_first:
            seqs = [s.T for s in seqs]
        bad = next((i for i, s in enumerate(seqs) if s.ndim != 2 or not len(s)), None)
        if bad is not None:
            raise DataError(WHAT, f"X[{bad}] has shape {seqs[bad].shape}: each sequence is [T, C] with T >= 1")
        c = {s.shape[1] for s in seqs}
        if len(c) > 1:
            first = next(i for i, s in enumerate(seqs) if s.shape[1] != seqs[0].shape[1])
            raise DataError(WHAT, f"X[{first}] has {seqs[first].shape[1]} channels, X[0] has {seqs[0].shape[1]}")
        lens = np.asarray([len(s) for s in seqs], np.int64)
        out = np.zeros((len(seqs), int(lens.max()), seqs[0].shape[1]), np.float32)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return out, lens
    raise DataError(WHAT, f"X of type {type(X).__name__}: expected a 3-D array, a list of 2-D arrays or a DataFrame")


def _is_3d_like(X: Any) -> bool:
    """A nested list whose sequences all have the same length (a 3-D array in list form)."""
    try:
        return np.asarray(X, dtype=np.float32).ndim == 3
    except (ValueError, TypeError):
        return False


def _trailing_zero_steps(x: np.ndarray) -> np.ndarray:
    """[N]: how many all-zero steps each sequence ends with (0 for a sequence that is all zeros: no sign of
    padding there)."""
    zero = ~np.any(x != 0, axis=2)  # [N, T]
    run = np.argmin(zero[:, ::-1], axis=1)  # steps from the end until the first non-zero step
    return np.where(zero.all(1), 0, run)


def write_source(data: Any, directory: Path, name: str, channels_first: bool = False) -> Path:
    """Write in-memory ``data`` (see the module's docstring) into ``directory`` as ``name``.npz or .parquet and
    return the path; a path is returned unchanged."""
    import pandas as pd

    if isinstance(data, str | Path):
        return Path(data)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pd.DataFrame):
        path = directory / f"{name}.parquet"
        frame = data.copy()
        frame.columns = [str(c) for c in frame.columns]
        for col in frame.columns:  # categoricals and mixed objects as text (the readers take text labels)
            if isinstance(frame[col].dtype, pd.CategoricalDtype) or frame[col].dtype == object:
                frame[col] = frame[col].astype(str)
        frame.to_parquet(path, index=False)
        return path
    if isinstance(data, Mapping):
        X, y, lengths = data.get("X"), data.get("y"), data.get("lengths")
        if X is None:
            raise DataError(WHAT, f"a dict of data needs 'X' (keys are: {', '.join(map(str, data)) or 'none'})")
    elif isinstance(data, tuple) and 2 <= len(data) <= 3:
        X, y, lengths = (*data, None)[:3]
    else:
        X, y, lengths = data, None, None
    x, lens = as_sequences(X, lengths, channels_first)
    arrays: dict[str, np.ndarray] = {"X": x, "lengths": lens}
    if y is not None:
        yy = np.asarray(y)
        if len(yy) != len(x):
            raise DataError(WHAT, f"y has {len(yy)} labels for {len(x)} sequences")
        if yy.dtype.kind == "O" or isinstance(getattr(y, "dtype", None), pd.CategoricalDtype):
            yy = np.asarray([str(v) for v in yy])
        arrays["y"] = yy
    path = directory / f"{name}.npz"
    np.savez(path, **arrays)
    return path
