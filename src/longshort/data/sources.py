"""Readers that turn a data file into :class:`SequenceData` or :class:`SeriesData`.

Every problem a user can fix in the file raises :class:`DataError` naming the file and the array, line,
row or column at fault.

Row numbers in messages about CSV/Parquet tables come from the DataFrame index that :func:`read_table`
sets: for CSV the index is the line number in the file with the header as line 1 (so the first data row
is "row 2"), for Parquet it is the 0-based row position. A DataFrame built by hand keeps its own index.

The auxiliary regression target (an .npz ``aux`` array, ``data.long.aux``, ``data.series.aux``) is a
training target only: readers take ``with_aux=False`` when a file is read for prediction or evaluation,
which skips it (neither required nor checked), and the aux column is never a feature either way.
"""

from __future__ import annotations

import contextvars
import csv
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from longshort.data.config import DataConfig, LongFormat, SeriesFormat
from longshort.data.types import Ragged, SequenceData, SeriesData, offsets_of
from longshort.errors import DataError

#: while set (``data.missing`` other than error), the readers let NaN feature values through for the
#: preprocessing to fill; infinities and unparseable cells are still refused. A context variable rather than a
#: flag threaded through every reader's signature.
ALLOW_MISSING: contextvars.ContextVar[bool] = contextvars.ContextVar("longshort_allow_missing", default=False)

MISSING_HINT = " (data.missing=ffill, zero, mean or mask fills missing values)"

SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet", ".ts": "ts"}
CSV_FIRST_ROW = 2  # line number of the first data row of a CSV file (the header is line 1)
Target = Literal["label", "value"]  # what a sequence's target is: a class label (classify) or numbers (regress)


def check_file(path: Path) -> None:
    """Raise a DataError unless ``path`` is an existing file (not a directory)."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a directory, not a file")


def detect_format(path: Path, fmt: str) -> str:
    """The reader to use for ``path``: ``fmt`` itself, or for 'auto' the one its suffix names."""
    path = Path(path)
    check_file(path)
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        accepted = ", ".join(SUFFIX_FORMATS)
        shown = f"'{suffix}'" if suffix else "no suffix"
        raise DataError(path, f"cannot tell the format from {shown}; accepted suffixes are {accepted} "
                              "(or set data.format)")
    return SUFFIX_FORMATS[suffix]


# ---------------------------------------------------------------------------------------------- npz


def read_npz(path: Path, with_aux: bool = True, target: Target = "label") -> SequenceData:
    """Sequences from an .npz archive with ``X`` [N, T, C], optional ``y`` [N], ``lengths`` [N] and ``aux`` [N].

    ``aux`` (a float per sequence, the auxiliary regression target) is read only ``with_aux``. With
    ``target="value"`` ``y`` holds numbers, [N] or [N, k] (k targets), returned as float32 [N, k].
    """
    arrays = _load_npz(path)
    if "X" not in arrays:
        raise DataError(path, f"no array 'X' (arrays are: {', '.join(arrays) or 'none'})")
    X = _check_x(path, arrays["X"])
    n, t = X.shape[:2]
    lengths = _check_lengths(path, arrays.get("lengths"), n, t)
    y = _check_y(path, arrays.get("y"), n) if target == "label" else _check_values(path, arrays.get("y"), n)
    aux = _check_aux(path, arrays.get("aux"), n) if with_aux else None
    valid = np.arange(t)[None, :] < lengths[:, None]
    X = np.where(valid[:, :, None], X, np.float32(0))
    _check_finite_x(path, X, valid)
    names = [f"x{i}" for i in range(X.shape[2])]
    if bool((lengths < t).any()):  # variable length: kept as the real steps only (the padding is dropped)
        return SequenceData(X=None, lengths=lengths, y=y, feature_names=names,  # type: ignore[arg-type]
                            source=str(path), aux=aux, ragged=Ragged.from_padded(X, lengths))
    return SequenceData(X=X, lengths=lengths, y=y, feature_names=names, source=str(path), aux=aux)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"not a readable .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(path, "holds a single .npy array, not an .npz archive of named arrays")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        for name in archive.files:
            try:
                arrays[name] = archive[name]
            except (zipfile.BadZipFile, EOFError, OSError) as exc:  # a member cut short or corrupted
                raise DataError(path, f"not a readable .npz archive (array '{name}': {exc})") from exc
            except ValueError as exc:
                raise DataError(path, f"array '{name}' is ragged or of object dtype; store equal-length "
                                      "float arrays padded with zeros plus a 'lengths' array") from exc
    return arrays


def _check_x(path: Path, X: np.ndarray) -> np.ndarray:
    if X.ndim != 3:
        raise DataError(path, f"array 'X' must be 3-D [sequences, steps, channels], got shape {X.shape} "
                              "(a univariate set needs shape [N, T, 1])")
    if X.dtype.kind not in "fiu":
        raise DataError(path, f"array 'X' has non-numeric dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(path, f"contains no sequences (array 'X' has shape {X.shape})")
    if X.shape[2] == 0:
        raise DataError(path, f"array 'X' has no channels (shape {X.shape})")
    return X.astype(np.float32)


def _check_lengths(path: Path, lengths: np.ndarray | None, n: int, t: int) -> np.ndarray:
    if lengths is None:
        return np.full(n, t, dtype=np.int64)
    if lengths.shape != (n,):
        raise DataError(path, f"array 'lengths' has shape {lengths.shape}, expected ({n},) to match 'X'")
    if lengths.dtype.kind not in "iu":
        raise DataError(path, f"array 'lengths' must hold integers, got dtype {lengths.dtype}")
    bad = np.flatnonzero((lengths < 1) | (lengths > t))
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"array 'lengths': value {lengths[i]} at index {i} is outside 1..{t} "
                              "(the number of steps in 'X')")
    return lengths.astype(np.int64)


def _check_y(path: Path, y: np.ndarray | None, n: int) -> np.ndarray | None:
    if y is None:
        return None
    if y.ndim != 1 or len(y) != n:
        raise DataError(path, f"array 'y' has shape {y.shape}, expected ({n},): one label per sequence in 'X'")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y) & (y == np.round(y))):
            raise DataError(path, "array 'y' holds non-integer floats; store class labels as ints or strings")
        return y.astype(np.int64)
    if y.dtype.kind == "S":
        return y.astype(str)
    if y.dtype.kind == "U":
        return y
    raise DataError(path, f"array 'y' has dtype {y.dtype}; store class labels as ints or strings")


def _check_values(path: Path, y: np.ndarray | None, n: int) -> np.ndarray | None:
    """A numeric target: [N] or [N, k] finite numbers -> float32 [N, k]."""
    if y is None:
        return None
    if y.ndim not in (1, 2) or len(y) != n:
        raise DataError(path, f"array 'y' has shape {y.shape}, expected ({n},) or ({n}, k): a target (or k) per "
                              "sequence in 'X'")
    if y.dtype.kind not in "fiub":
        raise DataError(path, f"array 'y' has non-numeric dtype {y.dtype}: task regress needs numbers (a class "
                              "label per sequence is task classify)")
    y2 = y.reshape(n, -1).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(y2).all(1))
    if bad.size:
        i = int(bad[0])
        j = int(np.argmin(np.isfinite(y2[i])))
        raise DataError(path, f"array 'y': {_describe(y2[i, j])} at index {i}" + (f", target {j}" if y.ndim == 2
                                                                                     else ""))
    return y2.astype(np.float32)


def _check_aux(path: Path, aux: np.ndarray | None, n: int) -> np.ndarray | None:
    if aux is None:
        return None
    if aux.ndim != 1 or len(aux) != n:
        raise DataError(path, f"array 'aux' has shape {aux.shape}, expected ({n},): one auxiliary target per "
                              "sequence in 'X'")
    if aux.dtype.kind not in "fiu":
        raise DataError(path, f"array 'aux' has non-numeric dtype {aux.dtype}; store the auxiliary target as "
                              "floats")
    bad = np.flatnonzero(~np.isfinite(aux))
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"array 'aux': {_describe(aux[i])} at index {i}")
    return aux.astype(np.float32)


def _check_finite_x(path: Path, X: np.ndarray, valid: np.ndarray) -> None:
    bad = (np.isinf(X) if ALLOW_MISSING.get() else ~np.isfinite(X)) & valid[:, :, None]
    if not bad.any():
        return
    i, t, c = np.unravel_index(int(np.argmax(bad)), bad.shape)
    raise DataError(path, f"array 'X': {_describe(X[i, t, c])} at sequence {i}, step {t}, channel {c}"
                          f"{MISSING_HINT if np.isnan(X[i, t, c]) else ''}")


def _describe(value: float) -> str:
    return "NaN" if np.isnan(value) else ("inf" if value > 0 else "-inf")


# ---------------------------------------------------------------------------------------------- .ts

# The sktime/aeon .ts format is parsed by hand: aeon and sktime are heavy dependencies (and pull in
# their own numpy/pandas pins) for what is a small line-based text format.

_TS_FLAGS = {"timestamps", "missing", "univariate", "equallength", "classlabel", "targetlabel"}


def read_ts(path: Path, target: Target = "label") -> SequenceData:
    """Sequences from an sktime/aeon ``.ts`` file (equal or unequal length, no timestamps).

    A ``@targetLabel true`` file's numbers are the auxiliary target for a classifier (``target="label"``) and
    ``y`` (float32 [N, 1]) for a regressor (``target="value"``), which refuses a ``@classLabel`` file.
    Line, dimension and value positions in messages are 1-based.
    """
    lines = _read_text(path)
    header, data_start = _ts_header(path, lines)
    classes: list[str] | None = header.get("classlabel")  # type: ignore[assignment]
    has_target = bool(header.get("targetlabel"))
    if target == "value" and classes is not None:
        raise DataError(path, "holds class labels (@classLabel): task regress needs a numeric target "
                              "(@targetLabel true); class labels are task classify")
    cases: list[list[np.ndarray]] = []
    labels: list[str] = []
    line_nos: list[int] = []
    for line_no, line in enumerate(lines[data_start:], start=data_start + 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("@"):
            raise DataError(path, f"line {line_no}: header line after @data")
        fields = text.split(":")
        if classes is not None or has_target:
            if len(fields) < 2:
                raise DataError(path, f"line {line_no}: expected dimensions followed by ':' and a label")
            labels.append(fields.pop().strip())
        cases.append([_ts_dimension(path, line_no, d, f) for d, f in enumerate(fields, start=1)])
        line_nos.append(line_no)
    if not cases:
        raise DataError(path, "contains no sequences (no data lines after @data)")
    lengths = _ts_lengths(path, cases, line_nos, header)
    y, aux = _ts_labels(path, labels, line_nos, classes, has_target)
    if target == "value" and aux is not None:
        y, aux = aux[:, None], None
    names = [f"dim{i}" for i in range(len(cases[0]))]
    # the steps back to back (no padding); an equal-length set is that one array reshaped, without a copy
    values = np.concatenate([np.stack(case, axis=1) for case in cases]).astype(np.float32, copy=False)
    if bool((lengths == lengths[0]).all()):
        return SequenceData(X=values.reshape(len(cases), int(lengths[0]), -1), lengths=lengths, y=y,
                            feature_names=names, source=str(path), aux=aux, class_names=classes)
    return SequenceData(X=None, lengths=lengths, y=y, feature_names=names,  # type: ignore[arg-type]
                        source=str(path), aux=aux, class_names=classes, ragged=Ragged(values, offsets_of(lengths)))


def _read_text(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(path, f"is not UTF-8 text ({exc})") from exc


def _ts_header(path: Path, lines: list[str]) -> tuple[dict[str, object], int]:
    """Header values keyed by lower-case name, and the index of the first line after @data."""
    header: dict[str, object] = {}
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not text.startswith("@"):
            raise DataError(path, f"line {i + 1}: expected a '@' header line or a '#' comment before @data")
        words = text[1:].split()
        if not words:
            raise DataError(path, f"line {i + 1}: '@' without a header name")
        key = words.pop(0).lower()
        if key == "data":
            _ts_check_header(path, header)
            return header, i + 1
        if key in _TS_FLAGS:
            header[key] = _ts_flag(path, i + 1, key, words)
        elif key in {"dimensions", "serieslength"}:
            header[key] = _ts_int(path, i + 1, key, words)
    raise DataError(path, "no @data line: not a .ts file")


def _ts_flag(path: Path, line_no: int, key: str, words: list[str]) -> object:
    if not words or words[0].lower() not in {"true", "false"}:
        raise DataError(path, f"line {line_no}: @{key} must be followed by true or false")
    on = words[0].lower() == "true"
    if key == "classlabel":
        if on and len(words) < 2:
            raise DataError(path, f"line {line_no}: @classLabel true must list the class labels")
        return words[1:] if on else None
    return on


def _ts_int(path: Path, line_no: int, key: str, words: list[str]) -> int:
    if len(words) != 1 or not words[0].isdigit() or int(words[0]) < 1:
        raise DataError(path, f"line {line_no}: @{key} must be followed by a positive integer")
    return int(words[0])


def _ts_check_header(path: Path, header: dict[str, object]) -> None:
    if header.get("timestamps"):
        raise DataError(path, "timestamped .ts files are not supported (@timeStamps true)")
    if header.get("classlabel") is not None and header.get("targetlabel"):
        raise DataError(path, "both @classLabel true and @targetLabel true; a file has one kind of label")


def _ts_dimension(path: Path, line_no: int, dim: int, field: str) -> np.ndarray:
    tokens = field.split(",")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:  # find the token at fault
        values = np.array([_ts_value(path, line_no, dim, pos, tok) for pos, tok in enumerate(tokens, start=1)])
    bad = np.flatnonzero(np.isinf(values) if ALLOW_MISSING.get() else ~np.isfinite(values))
    if bad.size:
        pos = int(bad[0]) + 1
        raise DataError(path, f"line {line_no}: dimension {dim}, value {pos} is '{tokens[pos - 1].strip()}', "
                              "not a finite number")
    return values


def _ts_value(path: Path, line_no: int, dim: int, pos: int, token: str) -> float:
    token = token.strip()
    if token == "?":
        raise DataError(path, f"line {line_no}: dimension {dim}, value {pos} is missing ('?'); "
                              "missing values are not supported")
    try:
        return float(token)
    except ValueError:
        raise DataError(path, f"line {line_no}: dimension {dim}, value {pos} is '{token}', "
                              "not a number") from None


def _ts_lengths(path: Path, cases: list[list[np.ndarray]], line_nos: list[int],
                header: dict[str, object]) -> np.ndarray:
    n_dims = header.get("dimensions") or (1 if header.get("univariate") else len(cases[0]))
    lengths = np.empty(len(cases), dtype=np.int64)
    for i, (case, line_no) in enumerate(zip(cases, line_nos, strict=True)):
        if len(case) != n_dims:
            raise DataError(path, f"line {line_no}: {len(case)} dimensions, expected {n_dims}")
        dim_lengths = {len(d) for d in case}
        if len(dim_lengths) > 1:
            raise DataError(path, f"line {line_no}: dimensions have different lengths "
                                  f"({', '.join(str(len(d)) for d in case)}); all dimensions of a case "
                                  "must have the same length")
        lengths[i] = dim_lengths.pop()
    if header.get("equallength"):
        expected = header.get("serieslength") or int(lengths[0])
        off = np.flatnonzero(lengths != expected)
        if off.size:
            i = int(off[0])
            raise DataError(path, f"line {line_nos[i]}: length {lengths[i]}, but @equalLength true "
                                  f"and the series length is {expected}")
    return lengths


def _ts_labels(path: Path, labels: list[str], line_nos: list[int], classes: list[str] | None,
               has_target: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(y, aux): class labels as a str array, or a regression target (@targetLabel true) as aux."""
    if has_target:
        try:
            return None, np.array(labels, dtype=np.float32)
        except ValueError:
            bad = next(i for i, s in enumerate(labels) if not _is_float(s))
            raise DataError(path, f"line {line_nos[bad]}: target '{labels[bad]}' is not a number") from None
    if classes is None:
        return None, None
    y = np.array(labels, dtype=str)
    unknown = np.flatnonzero(~np.isin(y, classes))
    if unknown.size:
        i = int(unknown[0])
        raise DataError(path, f"line {line_nos[i]}: label '{y[i]}' is not in the @classLabel list "
                              f"({' '.join(classes)})")
    return y, None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- tables


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame whose index is the file row number used in messages."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"read_table reads csv or parquet, not {fmt!r}")
    try:
        df = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataError(path, "file is empty") from exc
    except pd.errors.ParserWarning as exc:
        raise DataError(path, f"cannot parse CSV: {exc} (a row has more fields than the header)") from exc
    except (ValueError, OSError, pa.ArrowException) as exc:
        kind = "CSV" if fmt == "csv" else "Parquet"
        raise DataError(path, f"cannot parse {kind}: {str(exc).strip()}") from exc
    if len(df) == 0:
        raise DataError(path, "has no rows")
    first_row = CSV_FIRST_ROW if fmt == "csv" else 0
    df.columns = [str(c) for c in df.columns]
    df.index = pd.RangeIndex(first_row, first_row + len(df))
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    # pandas renames a repeated header name ('f1' -> 'f1.1') and would train on both: read the header as written
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    _duplicate_columns(path, [h.strip() for h in header])
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields would be dropped silently
        return pd.read_csv(path, index_col=False)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    _duplicate_columns(path, list(pq.read_schema(path).names))
    df = pd.read_parquet(path)
    # A named index or a time index (often the timestamps) becomes a column; an unnamed integer index, as
    # pandas leaves after shuffling or filtering a frame, carries no data and is dropped.
    keep = any(n is not None for n in df.index.names) or isinstance(df.index, pd.DatetimeIndex)
    return df.reset_index(drop=not keep)


# A column with one of these names (any case) orders the rows when no time column is configured and the features
# are left to default: taken as a feature, a step counter or timestamp would be silently learned from.
TIME_COLUMN_NAMES = ("time", "timestamp")


def _auto_time_column(df: pd.DataFrame, features: list[str] | None) -> str | None:
    """The column that orders the rows when ``time`` is not set: one named like :data:`TIME_COLUMN_NAMES`,
    unless the user listed the features themselves (then a column so named is a feature if listed)."""
    if features:
        return None
    found = [c for c in df.columns if c.lower() in TIME_COLUMN_NAMES]
    return found[0] if found else None


def _duplicate_columns(path: Path, names: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(path, f"column '{name}' appears twice (columns {seen[name] + 1} and {i + 1}); "
                                  "rename one")
        seen[name] = i


def _require_columns(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    for col in columns:
        if col not in df.columns:
            raise DataError(path, f"missing column '{col}' (columns are: {', '.join(df.columns)})")


def _numeric_column(df: pd.DataFrame, col: str, path: Path, series_id: str | None = None,
                    allow_nan: bool = False, feature: bool = False) -> np.ndarray:
    """Column ``col`` as float64, naming the first row that is not a finite number (and its series, when
    ``series_id`` names the series column); ``allow_nan``: missing values stay NaN (data.missing fills them)."""
    s = df[col]

    def of_series(i: int) -> str:
        return "" if series_id is None else f" (series '{df[series_id].iloc[i]}')"

    if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype):
        parsed = pd.to_numeric(s, errors="coerce")
        bad = (parsed.isna() & s.notna()).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(path, f"column '{col}' is not numeric: row {df.index[i]} holds {str(s.iloc[i])!r}"
                                  f"{of_series(i)}")
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raise DataError(path, f"column '{col}' has dtype {s.dtype}, not a number")
    finite = np.isfinite(values) | (np.isnan(values) if allow_nan else False)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DataError(path, f"column '{col}': {_describe(values[i])} at row {df.index[i]}{of_series(i)}"
                              f"{MISSING_HINT if feature and np.isnan(values[i]) else ''}")
    return values


def _features_matrix(df: pd.DataFrame, features: list[str], path: Path) -> np.ndarray:
    if not features:
        raise DataError(path, f"no feature columns (columns are: {', '.join(df.columns)})")
    allow = ALLOW_MISSING.get()
    return np.stack([_numeric_column(df, c, path, allow_nan=allow, feature=True) for c in features],
                    axis=1).astype(np.float32)


def _check_no_missing(df: pd.DataFrame, col: str, path: Path) -> None:
    missing = df[col].isna()
    if missing.any():
        raise DataError(path, f"column '{col}': missing value at row {missing.idxmax()}")


def _stable_order(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """Positions of the rows sorted by ``col``, ties kept in file order."""
    try:
        return np.argsort(df[col].to_numpy(), kind="stable")
    except TypeError as exc:
        raise DataError(path, f"column '{col}' mixes values that cannot be ordered ({exc})") from exc


def read_long(df: pd.DataFrame, cfg: LongFormat, path: Path, require_label: bool,
              with_aux: bool = True, target: Target = "label") -> SequenceData:
    """One sequence per ``series_id`` (first-appearance order), rows ordered by ``time`` when given.

    ``with_aux`` reads the auxiliary target column ``cfg.aux`` (when set), which must then be there;
    without it the column is ignored. It is never a feature. ``target="value"``: the label column holds a
    number per series (float32 [N, 1]), the same on each of its rows.
    """
    has_label = cfg.label in df.columns
    if require_label and not has_label:
        _require_columns(df, [cfg.label], path)
    time = cfg.time or _auto_time_column(df, cfg.features)
    key_cols = [cfg.series_id] + ([time] if time else [])
    _require_columns(df, key_cols + (cfg.features or []), path)
    aux_col = cfg.aux if with_aux else None
    if aux_col is not None:
        _require_aux_column(df, aux_col, "data.long.aux", path)
    for col in key_cols + ([cfg.label] if has_label else []):
        _check_no_missing(df, col, path)
    not_features = {*key_cols, cfg.label} | ({cfg.aux} if cfg.aux else set())
    features = cfg.features or [c for c in df.columns if c not in not_features]
    values = _features_matrix(df, features, path)
    codes, uniques = pd.factorize(df[cfg.series_id], sort=False)
    if not has_label:
        y = None
    elif target == "value":
        y = _per_series_value(df, cfg.series_id, cfg.label, codes, path, "target")[:, None]
    else:
        y = _long_labels(df, cfg, codes, path)
    aux = None if aux_col is None else _per_series_value(df, cfg.series_id, aux_col, codes, path, "aux")

    order = _time_then_series_order(df, time, codes, path)
    lengths = np.bincount(codes).astype(np.int64)
    # the rows in (series, time) order are the sequences back to back: kept so, padded only per batch
    flat = np.ascontiguousarray(values[order], dtype=np.float32)
    if bool((lengths == lengths[0]).all()):
        return SequenceData(X=flat.reshape(len(lengths), int(lengths[0]), -1), lengths=lengths, y=y,
                            feature_names=list(features), source=str(path), aux=aux, ids=np.asarray(uniques))
    return SequenceData(X=None, lengths=lengths, y=y, feature_names=list(features),  # type: ignore[arg-type]
                        source=str(path), aux=aux, ids=np.asarray(uniques), ragged=Ragged(flat, offsets_of(lengths)))


def _time_then_series_order(df: pd.DataFrame, time: str | None, codes: np.ndarray, path: Path) -> np.ndarray:
    by_time = _stable_order(df, time, path) if time else np.arange(len(df))
    return by_time[np.argsort(codes[by_time], kind="stable")]


def _long_labels(df: pd.DataFrame, cfg: LongFormat, codes: np.ndarray, path: Path) -> np.ndarray:
    """The label of each series, checking it is the same on every row of the series."""
    labels = df[cfg.label].to_numpy()
    _, first = np.unique(codes, return_index=True)
    expected = labels[first][codes]
    differs = np.flatnonzero(expected != labels)
    if differs.size:
        i = int(differs[0])
        series = df[cfg.series_id].iloc[i]
        raise DataError(path, f"series '{series}' has more than one label: row {df.index[i]} has "
                              f"'{labels[i]}', earlier rows have '{expected[i]}'")
    return _label_array(labels[first])


def _per_series_value(df: pd.DataFrame, series_id: str, col: str, codes: np.ndarray, path: Path,
                      role: str) -> np.ndarray:
    """The ``role`` (aux or target) of each series, column ``col``: a finite number, the same on every row."""
    values = _numeric_column(df, col, path, series_id=series_id)
    _, first = np.unique(codes, return_index=True)
    expected = values[first][codes]
    differs = np.flatnonzero(expected != values)
    if differs.size:
        i = int(differs[0])
        series = df[series_id].iloc[i]
        what = "the auxiliary target" if role == "aux" else "a sequence's target"
        raise DataError(path, f"series '{series}' has more than one value in {role} column '{col}': row "
                              f"{df.index[i]} has {float(values[i])}, earlier rows have {float(expected[i])} "
                              f"({what} must be constant within each series)")
    return values[first].astype(np.float32)


def _require_aux_column(df: pd.DataFrame, col: str, key: str, path: Path) -> None:
    if col not in df.columns:
        raise DataError(path, f"missing column '{col}' (the auxiliary target, {key}; columns are: "
                              f"{', '.join(df.columns)})")


def _label_array(labels: np.ndarray) -> np.ndarray:
    """Integer labels as int64 (also floats that are whole numbers), anything else as strings."""
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        return labels.astype(np.int64)
    return labels.astype(str)


def read_series(df: pd.DataFrame, cfg: SeriesFormat, path: Path, with_aux: bool = True) -> SeriesData:
    """One continuous series, a row per step, sorted by ``cfg.time`` when given.

    Default features are the numeric columns except ``time`` and ``aux``, the target included. A text
    column is taken as numeric when most of its values are numbers, so a stray typo is reported instead of
    the whole column being silently dropped. ``with_aux`` reads the auxiliary target column ``cfg.aux``
    (when set; it must then be there, numeric and finite); without it the column is ignored.
    """
    if len(df) == 0:
        raise DataError(path, "has no rows")
    time = cfg.time or _auto_time_column(df, cfg.features)
    _require_columns(df, [cfg.target] + ([time] if time else []) + (cfg.features or []), path)
    aux_col = cfg.aux if with_aux else None
    if aux_col is not None:
        _require_aux_column(df, aux_col, "data.series.aux", path)
    first_row = int(df.index[0])
    if time:
        _check_no_missing(df, time, path)
    features = cfg.features or [c for c in df.columns if c not in (time, cfg.aux) and _looks_numeric(df[c])]
    values = _features_matrix(df, features, path)
    target = _numeric_column(df, cfg.target, path)
    aux = None if aux_col is None else _numeric_column(df, aux_col, path)
    if time:
        order = _stable_order(df, time, path)
        values, target = values[order], target[order]
        aux = None if aux is None else aux[order]
    return SeriesData(values=values, target=target, feature_names=list(features), target_name=cfg.target,
                      source=str(path), first_row=first_row, aux=aux)


def _looks_numeric(s: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        return True
    if not (pd.api.types.is_object_dtype(s.dtype) or pd.api.types.is_string_dtype(s.dtype)):
        return False
    present = s.dropna()
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().mean() > 0.5


# ---------------------------------------------------------------------------------------------- dispatch


def read_any(path: Path, cfg: DataConfig, require_label: bool = True,
             with_aux: bool = True, target: Target = "label") -> SequenceData | SeriesData:
    """Read ``path`` as ``cfg`` describes: sequences (npz, .ts, long tables) or one continuous series.

    ``with_aux=False`` (prediction, evaluation) skips the auxiliary training target: the .npz ``aux``
    array, the ``data.long.aux`` / ``data.series.aux`` column (still never a feature), a .ts
    ``@targetLabel``. ``target="value"`` (task regress) reads numeric targets instead of class labels.
    """
    token = ALLOW_MISSING.set(cfg.missing != "error")
    try:
        return _read_any(Path(path), cfg, require_label, with_aux, target)
    finally:
        ALLOW_MISSING.reset(token)


def _read_any(path: Path, cfg: DataConfig, require_label: bool, with_aux: bool, target: Target
              ) -> SequenceData | SeriesData:
    fmt = detect_format(path, cfg.format)
    if fmt in ("npz", "ts"):
        if cfg.layout not in ("auto", "sequences"):
            raise DataError(path, f"layout '{cfg.layout}' needs a CSV or Parquet table; a .{fmt} file holds "
                                  "sequences (use layout 'sequences' or 'auto')")
        data = read_npz(path, with_aux=with_aux, target=target) if fmt == "npz" else read_ts(path, target)
        if not with_aux:
            data.aux = None
        if require_label and data.y is None:
            if target == "value":
                where = "no array 'y'" if fmt == "npz" else "no numeric target (@targetLabel true)"
                raise DataError(path, f"has {where}; task regress needs a target per sequence")
            where = "no array 'y'" if fmt == "npz" else "no class labels (@classLabel true)"
            hint = " (its @targetLabel numbers are task regress: --task regress)" if (
                fmt == "ts" and data.aux is not None) else ""
            raise DataError(path, f"has {where}; labels are needed here{hint}")
        return data
    df = read_table(path, fmt)
    layout = cfg.layout
    if layout == "auto":
        layout = "long" if cfg.long.series_id in df.columns else "series"
    if layout == "sequences":
        raise DataError(path, "layout 'sequences' needs an .npz or .ts file; for a CSV/Parquet table use "
                              f"layout 'long' (a row per sequence step, with a '{cfg.long.series_id}' column) "
                              "or 'series' (one continuous series cut into windows)")
    if layout == "long":
        return read_long(df, cfg.long, path, require_label, with_aux=with_aux, target=target)
    if target == "value":
        raise DataError(path, f"is one continuous series (no '{cfg.long.series_id}' column): task regress reads "
                              "a target per sequence, from .npz, .ts or a long table with a "
                              f"'{cfg.long.series_id}' column (data.long.series_id)")
    return read_series(df, cfg.series, path, with_aux=with_aux)
