"""Readers: correct parsing, and a DataError naming the file and the place at fault for each bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longshort.data.config import DataConfig, LongFormat, SeriesFormat
from longshort.data.sources import (
    detect_format,
    read_any,
    read_long,
    read_npz,
    read_series,
    read_table,
    read_ts,
)
from longshort.data.types import SequenceData, SeriesData
from longshort.data.windows import make_windows
from longshort.errors import DataError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def raises(path: Path, detail: str):
    """pytest.raises for a DataError on ``path`` whose message contains ``detail`` literally."""
    return pytest.raises(DataError, match=re.escape(f"data file {path}: ") + ".*" + re.escape(detail))


# ---------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.npz", "npz"), ("a.csv", "csv"), ("a.txt", "csv"), ("a.PARQUET", "parquet"), ("a.pq", "parquet"),
     ("a.ts", "ts")],
)
def test_detect_format_by_suffix(tmp_path: Path, name: str, fmt: str) -> None:
    assert detect_format(write(tmp_path, name, "x"), "auto") == fmt


def test_detect_format_explicit_overrides_suffix(tmp_path: Path) -> None:
    assert detect_format(write(tmp_path, "a.dat", "x"), "csv") == "csv"


def test_detect_format_unknown_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "a.xlsx", "x")
    with raises(path, "'.xlsx'") as info:
        detect_format(path, "auto")
    assert ".npz" in str(info.value) and ".parquet" in str(info.value)


def test_detect_format_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with raises(path, "file not found"):
        detect_format(path, "auto")


# ---------------------------------------------------------------------------------------------- npz


def test_npz_variable_lengths_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 6, 2)).astype(np.float32)
    lengths = np.array([6, 1, 3, 5])
    X[2, 3:] = np.nan  # padding may hold anything; it is zeroed
    X[1, 1:] = 99.0
    path = npz(tmp_path, X=X, y=np.array([0, 1, 1, 0]), lengths=lengths)
    data = read_npz(path)
    assert data.X.dtype == np.float32 and data.X.shape == (4, 6, 2)
    np.testing.assert_array_equal(data.lengths, lengths)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(data.X[i, :n], X[i, :n])
        assert not data.X[i, n:].any()
    np.testing.assert_array_equal(data.y, [0, 1, 1, 0])
    assert data.y.dtype == np.int64 and data.source == str(path)


def test_npz_int_x_no_y_no_lengths(tmp_path: Path) -> None:
    data = read_npz(npz(tmp_path, X=np.arange(24).reshape(2, 4, 3)))
    assert data.X.dtype == np.float32 and data.y is None
    np.testing.assert_array_equal(data.lengths, [4, 4])
    assert data.X[1, 3, 2] == 23


def test_npz_string_labels(tmp_path: Path) -> None:
    data = read_npz(npz(tmp_path, X=np.zeros((2, 3, 1)), y=np.array(["cat", "dog"])))
    assert list(data.y) == ["cat", "dog"]


def test_npz_missing_x(tmp_path: Path) -> None:
    path = npz(tmp_path, data=np.zeros((2, 3, 1)))
    with raises(path, "no array 'X' (arrays are: data)"):
        read_npz(path)


def test_npz_x_not_3d(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((2, 3)))
    with raises(path, "array 'X' must be 3-D [sequences, steps, channels], got shape (2, 3)"):
        read_npz(path)


def test_npz_ragged_object_array(tmp_path: Path) -> None:
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((3, 1)), np.zeros((2, 1))
    path = npz(tmp_path, X=ragged)
    with raises(path, "array 'X' is ragged or of object dtype; store equal-length float arrays"):
        read_npz(path)


def test_npz_non_numeric_dtype(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.full((2, 3, 1), "a"))
    with raises(path, "array 'X' has non-numeric dtype <U1"):
        read_npz(path)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_npz_non_finite_named_by_sequence_step_channel(tmp_path: Path, value: float, word: str) -> None:
    X = np.zeros((5, 9, 3))
    X[3, 7, 2] = value
    X[4, 8, 0] = value  # a later one is not the one reported
    path = npz(tmp_path, X=X)
    with raises(path, f"array 'X': {word} at sequence 3, step 7, channel 2"):
        read_npz(path)


def test_npz_nan_in_padding_is_fine(tmp_path: Path) -> None:
    X = np.zeros((2, 4, 1))
    X[0, 2:] = np.nan
    data = read_npz(npz(tmp_path, X=X, lengths=np.array([2, 4])))
    assert np.isfinite(data.X).all()


def test_npz_y_length_mismatch(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((3, 2, 1)), y=np.array([0, 1]))
    with raises(path, "array 'y' has shape (2,), expected (3,)"):
        read_npz(path)


@pytest.mark.parametrize(("bad", "index"), [(0, 1), (5, 2)])
def test_npz_lengths_out_of_range(tmp_path: Path, bad: int, index: int) -> None:
    lengths = np.array([1, 4, 4])
    lengths[index] = bad
    path = npz(tmp_path, X=np.zeros((3, 4, 1)), lengths=lengths)
    with raises(path, f"array 'lengths': value {bad} at index {index} is outside 1..4"):
        read_npz(path)


@pytest.mark.parametrize("shape", [(0, 4, 1), (3, 0, 1)])
def test_npz_empty(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    path = npz(tmp_path, X=np.zeros(shape))
    with raises(path, "contains no sequences"):
        read_npz(path)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    path = write(tmp_path, "data.npz", "hello")
    with raises(path, "not a readable .npz archive"):
        read_npz(path)


def test_npz_aux_array_arrives_as_float32(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((3, 2, 1)), y=np.array([0, 1, 0]), aux=np.array([0.5, -1.0, 2.0]))
    data = read_npz(path)
    assert data.aux.dtype == np.float32 and data.feature_names == ["x0"]
    np.testing.assert_array_equal(data.aux, np.float32([0.5, -1.0, 2.0]))
    assert read_npz(npz(tmp_path, X=np.zeros((2, 2, 1)))).aux is None


@pytest.mark.parametrize("shape", [(2,), (4,), (3, 1)])
def test_npz_aux_wrong_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = npz(tmp_path, X=np.zeros((3, 2, 1)), aux=np.zeros(shape))
    with raises(path, f"array 'aux' has shape {shape}, expected (3,): one auxiliary target per sequence"):
        read_npz(path)


def test_npz_aux_non_numeric(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((2, 2, 1)), aux=np.array(["a", "b"]))
    with raises(path, "array 'aux' has non-numeric dtype <U1"):
        read_npz(path)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_npz_aux_non_finite_names_index(tmp_path: Path, value: float, word: str) -> None:
    aux = np.zeros(4)
    aux[2] = aux[3] = value
    path = npz(tmp_path, X=np.zeros((4, 2, 1)), aux=aux)
    with raises(path, f"array 'aux': {word} at index 2"):
        read_npz(path)


def test_npz_aux_skipped_without_with_aux(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((2, 2, 1)), aux=np.array([np.nan, 1.0]))
    assert read_npz(path, with_aux=False).aux is None


# ---------------------------------------------------------------------------------------------- .ts

TS_EQUAL = """# a comment
@problemName Tiny
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 3
@classLabel true a b

@data
1,2,3:a
# comment inside data
4.5,5,6:b
7,8,9:a
"""

TS_UNEQUAL = """@problemname Tiny2
@TIMESTAMPS FALSE
@univariate false
@dimensions 2
@equalLength false
@classlabel true 1 2 3
@data
1,2,3:10,20,30:2
4:40:3
"""


def test_ts_equal_length(tmp_path: Path) -> None:
    data = read_ts(write(tmp_path, "t.ts", TS_EQUAL))
    assert data.X.shape == (3, 3, 1) and data.X.dtype == np.float32
    np.testing.assert_array_equal(data.X[:, :, 0], [[1, 2, 3], [4.5, 5, 6], [7, 8, 9]])
    np.testing.assert_array_equal(data.lengths, [3, 3, 3])
    assert list(data.y) == ["a", "b", "a"] and data.class_names == ["a", "b"]


def test_ts_unequal_length_multivariate(tmp_path: Path) -> None:
    data = read_ts(write(tmp_path, "t.ts", TS_UNEQUAL))
    assert data.X.shape == (2, 3, 2)
    np.testing.assert_array_equal(data.X[0], [[1, 10], [2, 20], [3, 30]])
    np.testing.assert_array_equal(data.X[1], [[4, 40], [0, 0], [0, 0]])
    np.testing.assert_array_equal(data.lengths, [3, 1])
    assert list(data.y) == ["2", "3"] and data.class_names == ["1", "2", "3"]


def test_ts_without_labels(tmp_path: Path) -> None:
    data = read_ts(write(tmp_path, "t.ts", "@classLabel false\n@data\n1,2\n3,4\n"))
    assert data.y is None and data.X.shape == (2, 2, 1)


def test_ts_missing_value(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_UNEQUAL.replace("4:40:3", "4:?:3"))
    with raises(path, "line 9: dimension 2, value 1 is missing ('?')"):
        read_ts(path)


def test_ts_not_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_EQUAL.replace("4.5,5,6", "4.5,x,6"))
    with raises(path, "line 13: dimension 1, value 2 is 'x', not a number"):
        read_ts(path)


def test_ts_nan_token(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_EQUAL.replace("7,8,9", "7,8,nan"))
    with raises(path, "line 14: dimension 1, value 3 is 'nan', not a finite number"):
        read_ts(path)


def test_ts_timestamps_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_EQUAL.replace("@timeStamps false", "@timeStamps true"))
    with raises(path, "timestamped .ts files are not supported"):
        read_ts(path)


def test_ts_unknown_label(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_EQUAL.replace("7,8,9:a", "7,8,9:c"))
    with raises(path, "line 14: label 'c' is not in the @classLabel list (a b)"):
        read_ts(path)


def test_ts_dimensions_of_different_length(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_UNEQUAL.replace("1,2,3:10,20,30", "1,2,3:10,20"))
    with raises(path, "line 8: dimensions have different lengths (3, 2)"):
        read_ts(path)


def test_ts_wrong_dimension_count(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_UNEQUAL.replace("4:40:3", "4:3"))
    with raises(path, "line 9: 1 dimensions, expected 2"):
        read_ts(path)


def test_ts_equal_length_violated(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", TS_EQUAL.replace("7,8,9:a", "7,8:a"))
    with raises(path, "line 14: length 2, but @equalLength true and the series length is 3"):
        read_ts(path)


def test_ts_without_data_section(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", "@problemName x\n")
    with raises(path, "no @data line"):
        read_ts(path)


def test_ts_with_no_cases(tmp_path: Path) -> None:
    path = write(tmp_path, "t.ts", "@classLabel true a\n@data\n\n")
    with raises(path, "contains no sequences"):
        read_ts(path)


# ---------------------------------------------------------------------------------------------- tables


def test_read_table_csv_index_is_line_number(tmp_path: Path) -> None:
    df = read_table(write(tmp_path, "a.csv", "a,b\n1,2\n3,4\n"), "csv")
    assert list(df.index) == [2, 3] and list(df.columns) == ["a", "b"]


def test_read_table_parquet_index_is_position(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pd.DataFrame({"a": [1.0, 2.0]}, index=[10, 11]).to_parquet(path)
    df = read_table(path, "parquet")
    assert list(df.index) == [0, 1] and "a" in df.columns


def test_read_table_empty_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "")
    with raises(path, "file is empty"):
        read_table(path, "csv")


def test_read_table_header_only(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "a,b\n")
    with raises(path, "has no rows"):
        read_table(path, "csv")


@pytest.mark.parametrize("text", ["a,b\n1,2\n1,2,3,4\n", "a,b\n1,2,3\n"])
def test_read_table_parse_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "a.csv", text)
    with raises(path, "cannot parse CSV") as info:
        read_table(path, "csv")
    assert not str(info.value).endswith("\n")


def test_read_table_bad_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, "a.parquet", "not parquet")
    with raises(path, "cannot parse Parquet"):
        read_table(path, "parquet")


# ---------------------------------------------------------------------------------------------- long

LONG_CSV = """series_id,t,f1,f2,label
s1,2,12,120,up
s2,1,21,210,down
s1,0,10,100,up
s1,1,11,110,up
s2,0,20,200,down
"""


def long_table(tmp_path: Path, text: str = LONG_CSV) -> tuple[pd.DataFrame, Path]:
    path = write(tmp_path, "long.csv", text)
    return read_table(path, "csv"), path


def test_long_sorted_by_time_in_first_appearance_order(tmp_path: Path) -> None:
    df, path = long_table(tmp_path)
    data = read_long(df, LongFormat(time="t"), path, require_label=True)
    assert data.feature_names == ["f1", "f2"]
    np.testing.assert_array_equal(data.lengths, [3, 2])
    np.testing.assert_array_equal(data.X[0], [[10, 100], [11, 110], [12, 120]])
    np.testing.assert_array_equal(data.X[1], [[20, 200], [21, 210], [0, 0]])
    assert list(data.y) == ["up", "down"]


def test_long_without_time_keeps_file_order(tmp_path: Path) -> None:
    df, path = long_table(tmp_path)
    data = read_long(df, LongFormat(features=["f1"]), path, require_label=True)
    np.testing.assert_array_equal(data.X[0, :, 0], [12, 10, 11])
    np.testing.assert_array_equal(data.X[1, :2, 0], [21, 20])


def test_long_integer_labels_and_stable_ties(tmp_path: Path) -> None:
    text = "series_id,t,f,label\n7,1,1,0\n7,0,2,0\n7,1,3,0\n8,0,4,1\n"
    df, path = long_table(tmp_path, text)
    data = read_long(df, LongFormat(time="t"), path, require_label=True)
    np.testing.assert_array_equal(data.X[0, :, 0], [2, 1, 3])
    assert data.y.dtype == np.int64 and list(data.y) == [0, 1]


def test_long_missing_column_lists_columns(tmp_path: Path) -> None:
    df, path = long_table(tmp_path)
    with raises(path, "missing column 'time' (columns are: series_id, t, f1, f2, label)"):
        read_long(df, LongFormat(time="time"), path, require_label=True)


def test_long_missing_label_column(tmp_path: Path) -> None:
    df, path = long_table(tmp_path)
    df = df.drop(columns="label")
    with raises(path, "missing column 'label'"):
        read_long(df, LongFormat(time="t"), path, require_label=True)
    assert read_long(df, LongFormat(time="t"), path, require_label=False).y is None


def test_long_non_numeric_feature_names_csv_line(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_CSV.replace("s1,1,11,110", "s1,1,eleven,110"))
    with raises(path, "column 'f1' is not numeric: row 5 holds 'eleven'"):
        read_long(df, LongFormat(time="t"), path, require_label=True)


def test_long_nan_names_row_and_column(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_CSV.replace("s2,1,21,210", "s2,1,21,"))
    with raises(path, "column 'f2': NaN at row 3"):
        read_long(df, LongFormat(time="t"), path, require_label=True)


def test_long_parquet_rows_are_zero_based(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    pd.DataFrame({"series_id": [1, 1, 2], "f": [0.0, np.inf, 1.0], "label": [0, 0, 1]}).to_parquet(path)
    df = read_table(path, "parquet")
    with raises(path, "column 'f': inf at row 1"):
        read_long(df, LongFormat(), path, require_label=True)


def test_long_label_changes_within_series(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_CSV.replace("s1,1,11,110,up", "s1,1,11,110,down"))
    with raises(path, "series 's1' has more than one label: row 5 has 'down', earlier rows have 'up'"):
        read_long(df, LongFormat(time="t"), path, require_label=True)


def test_long_missing_series_id(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_CSV.replace("s2,0,20", ",0,20"))
    with raises(path, "column 'series_id': missing value at row 6"):
        read_long(df, LongFormat(time="t"), path, require_label=True)


# The auxiliary target column: per series, constant, finite; never a feature.
LONG_AUX_CSV = """series_id,t,f1,ret,label
s1,2,12,0.5,up
s2,1,21,-1.25,down
s1,0,10,0.5,up
s1,1,11,0.5,up
s2,0,20,-1.25,down
"""
AUX = LongFormat(time="t", aux="ret")


def test_long_aux_arrives_per_series_and_is_not_a_feature(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_AUX_CSV)
    data = read_long(df, AUX, path, require_label=True)
    assert data.feature_names == ["f1"] and data.X.shape == (2, 3, 1)
    np.testing.assert_array_equal(data.X[0, :, 0], [10, 11, 12])
    assert data.aux.dtype == np.float32
    np.testing.assert_array_equal(data.aux, np.float32([0.5, -1.25]))  # series order: s1, s2
    assert list(data.ids) == ["s1", "s2"] and list(data.y) == ["up", "down"]


def test_long_without_aux_config_reads_the_column_as_a_feature(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_AUX_CSV)
    data = read_long(df, LongFormat(time="t"), path, require_label=True)
    assert data.aux is None and data.feature_names == ["f1", "ret"]


def test_long_aux_parquet(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    frame = pd.DataFrame({"series_id": [7, 8, 7, 8], "f": [1.0, 2.0, 3.0, 4.0], "y": [3.0, -2.0, 3.0, -2.0],
                          "label": [0, 1, 0, 1]})
    frame.to_parquet(path)
    data = read_long(read_table(path, "parquet"), LongFormat(aux="y"), path, require_label=True)
    assert data.feature_names == ["f"]
    np.testing.assert_array_equal(data.aux, np.float32([3.0, -2.0]))
    frame.loc[3, "y"] = np.nan
    frame.to_parquet(path)
    with raises(path, "column 'y': NaN at row 3 (series '8')"):  # Parquet rows are 0-based positions
        read_long(read_table(path, "parquet"), LongFormat(aux="y"), path, require_label=True)


def test_long_aux_missing_column(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_CSV)
    with raises(path, "missing column 'ret' (the auxiliary target, data.long.aux; columns are: series_id, t, "
                      "f1, f2, label)"):
        read_long(df, AUX, path, require_label=True)


def test_long_aux_non_numeric_names_row_and_series(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_AUX_CSV.replace("s1,1,11,0.5", "s1,1,11,n/a5"))
    with raises(path, "column 'ret' is not numeric: row 5 holds 'n/a5' (series 's1')"):
        read_long(df, AUX, path, require_label=True)


@pytest.mark.parametrize(("value", "word"), [("", "NaN"), ("inf", "inf")])
def test_long_aux_non_finite_names_row_and_series(tmp_path: Path, value: str, word: str) -> None:
    df, path = long_table(tmp_path, LONG_AUX_CSV.replace("s2,1,21,-1.25", f"s2,1,21,{value}"))
    with raises(path, f"column 'ret': {word} at row 3 (series 's2')"):
        read_long(df, AUX, path, require_label=True)


def test_long_aux_not_constant_within_series(tmp_path: Path) -> None:
    df, path = long_table(tmp_path, LONG_AUX_CSV.replace("s1,1,11,0.5", "s1,1,11,0.75"))
    with raises(path, "series 's1' has more than one value in aux column 'ret': row 5 has 0.75, earlier rows "
                      "have 0.5"):
        read_long(df, AUX, path, require_label=True)


def test_long_aux_ignored_without_with_aux(tmp_path: Path) -> None:
    """Prediction/evaluation: the aux column may be missing or bad; it is still not a feature."""
    df, path = long_table(tmp_path, LONG_AUX_CSV.replace("s1,1,11,0.5", "s1,1,11,"))
    data = read_long(df, AUX, path, require_label=False, with_aux=False)
    assert data.aux is None and data.feature_names == ["f1"]
    df, path = long_table(tmp_path, LONG_CSV)
    data = read_long(df, LongFormat(time="t", aux="ret"), path, require_label=False, with_aux=False)
    assert data.aux is None and data.feature_names == ["f1", "f2"]


# ---------------------------------------------------------------------------------------------- series

SERIES_CSV = """date,close,volume,ticker
2020-01-03,12,300,X
2020-01-01,10,100,X
2020-01-02,11,200,X
"""


def test_series_sorted_features_default_numeric(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV)
    series = read_series(read_table(path, "csv"), SeriesFormat(time="date"), path)
    assert series.feature_names == ["close", "volume"] and series.target_name == "close"
    np.testing.assert_array_equal(series.values, [[10, 100], [11, 200], [12, 300]])
    np.testing.assert_array_equal(series.target, [10, 11, 12])
    assert series.values.dtype == np.float32 and series.target.dtype == np.float64
    assert series.first_row == 2 and series.source == str(path)


def test_series_explicit_features_without_target(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV)
    series = read_series(read_table(path, "csv"), SeriesFormat(features=["volume"]), path)
    assert series.feature_names == ["volume"]
    np.testing.assert_array_equal(series.target, [12, 10, 11])


def test_series_missing_target(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV)
    with raises(path, "missing column 'price' (columns are: date, close, volume, ticker)"):
        read_series(read_table(path, "csv"), SeriesFormat(target="price"), path)


def test_series_typo_in_numeric_column_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV.replace("11,200", "11,2oo"))
    with raises(path, "column 'volume' is not numeric: row 4 holds '2oo'"):
        read_series(read_table(path, "csv"), SeriesFormat(time="date"), path)


def test_series_nan_in_target(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV.replace("2020-01-01,10", "2020-01-01,"))
    with raises(path, "column 'close': NaN at row 3"):
        read_series(read_table(path, "csv"), SeriesFormat(time="date"), path)


def test_series_non_numeric_feature_requested(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV)
    with raises(path, "column 'ticker' is not numeric: row 2 holds 'X'"):
        read_series(read_table(path, "csv"), SeriesFormat(features=["close", "ticker"]), path)


SERIES_AUX_CSV = """date,close,volume,fut
2020-01-03,12,300,0.3
2020-01-01,10,100,0.1
2020-01-02,11,200,0.2
2020-01-04,13,400,0.4
"""


def test_series_aux_column_sorted_and_not_a_feature(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_AUX_CSV)
    series = read_series(read_table(path, "csv"), SeriesFormat(time="date", aux="fut"), path)
    assert series.feature_names == ["close", "volume"]
    np.testing.assert_array_equal(series.aux, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(series.rows(1, 3).aux, [0.2, 0.3])


def test_series_aux_reaches_windows_via_read_any(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_AUX_CSV)
    cfg = DataConfig(series=SeriesFormat(time="date", aux="fut", window=2, horizon=1, change="diff"))
    windows = make_windows(read_any(path, cfg), cfg.series)
    assert windows.feature_names == ["close", "volume"]
    np.testing.assert_array_equal(windows.order, [1, 2])
    np.testing.assert_array_equal(windows.aux, np.float32([0.2, 0.3]))  # 'fut' at each window's last row


def test_series_aux_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_CSV)
    with raises(path, "missing column 'fut' (the auxiliary target, data.series.aux; columns are: date, close, "
                      "volume, ticker)"):
        read_series(read_table(path, "csv"), SeriesFormat(aux="fut"), path)
    assert read_series(read_table(path, "csv"), SeriesFormat(aux="fut"), path, with_aux=False).aux is None


def test_series_aux_non_numeric(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_AUX_CSV.replace("200,0.2", "200,abc"))
    with raises(path, "column 'fut' is not numeric: row 4 holds 'abc'"):
        read_series(read_table(path, "csv"), SeriesFormat(time="date", aux="fut"), path)


def test_series_aux_nan(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", SERIES_AUX_CSV.replace("400,0.4", "400,"))
    with raises(path, "column 'fut': NaN at row 5"):
        read_series(read_table(path, "csv"), SeriesFormat(time="date", aux="fut"), path)
    series = read_series(read_table(path, "csv"), SeriesFormat(time="date", aux="fut"), path, with_aux=False)
    assert series.aux is None and series.feature_names == ["close", "volume"]


# ---------------------------------------------------------------------------------------------- dispatch


def test_read_any_dispatch(tmp_path: Path) -> None:
    cfg = DataConfig()
    assert isinstance(read_any(npz(tmp_path, X=np.zeros((2, 3, 1)), y=np.array([0, 1])), cfg), SequenceData)
    assert isinstance(read_any(write(tmp_path, "t.ts", TS_EQUAL), cfg), SequenceData)
    assert isinstance(read_any(write(tmp_path, "long.csv", LONG_CSV), cfg), SequenceData)
    assert isinstance(read_any(write(tmp_path, "s.csv", SERIES_CSV), cfg), SeriesData)


def test_read_any_sequences_layout_with_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "long.csv", LONG_CSV)
    with raises(path, "layout 'sequences' needs an .npz or .ts file"):
        read_any(path, DataConfig(layout="sequences"))


def test_read_any_long_layout_with_npz(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((2, 3, 1)))
    with raises(path, "layout 'long' needs a CSV or Parquet table"):
        read_any(path, DataConfig(layout="long"))


def test_read_any_requires_labels(tmp_path: Path) -> None:
    path = npz(tmp_path, X=np.zeros((2, 3, 1)))
    with raises(path, "no array 'y'"):
        read_any(path, DataConfig())
    assert read_any(path, DataConfig(), require_label=False).y is None
