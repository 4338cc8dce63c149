"""Malformed input and usage through the CLI: exit status 2 and one line ``error: ...`` naming what is wrong.

Most cases run in-process (fast); a few run ``python -m longshort`` as a real process to prove that what
the user sees is exactly one line on stderr, no traceback, and status 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def assert_one_line_error(res, *needles: object) -> str:
    """Status 2 and stderr exactly one ``error: `` line (no traceback) containing every needle."""
    assert res.code == 2, f"exit status {res.code}, stderr:\n{res.err}"
    assert "Traceback" not in res.err
    lines = res.err_lines
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{res.err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    return line


# -- bad data files ------------------------------------------------------------------------------------


def test_nan_in_npz_x_real_process(tmp_path: Path, cli_process, helpers) -> None:
    X, lengths, y = helpers.make_sequences(40)
    X[3, 5, 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, X=X, lengths=lengths, y=y)
    res = cli_process(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "array 'X'", "NaN", "sequence 3, step 5, channel 1")
    assert res.out == ""


def test_inf_in_csv_feature_column_names_row_and_column(tmp_path: Path, cli, helpers) -> None:
    df = helpers.long_frame(20)
    df.loc[7, "f2"] = np.inf
    path = tmp_path / "inf.csv"
    df.to_csv(path, index=False)
    assert "inf" in path.read_text().splitlines()[8]  # line 9 of the file: header + 8 data rows
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "column 'f2'", "inf", "row 9")


def test_ragged_object_npz(tmp_path: Path, cli, helpers) -> None:
    X = np.empty(3, dtype=object)
    for i, t in enumerate((4, 7, 5)):
        X[i] = np.zeros((t, 2), dtype=np.float32)
    path = tmp_path / "ragged.npz"
    np.savez(path, X=X, y=np.array(["a", "b", "a"]))  # savez pickles object arrays
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "array 'X'", "ragged or of object dtype")


def test_string_x_in_npz(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "strings.npz"
    np.savez(path, X=np.full((6, 5, 2), "x"), y=np.array(["a", "b"] * 3))
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "array 'X'", "non-numeric dtype <U1")


def test_non_numeric_csv_column(tmp_path: Path, cli, helpers) -> None:
    df = helpers.long_frame(20)
    df["f2"] = df["f2"].astype(object)
    df.loc[4, "f2"] = "abc"
    path = tmp_path / "text.csv"
    df.to_csv(path, index=False)
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "column 'f2' is not numeric", "row 6", "'abc'")


def test_missing_column_in_long_csv(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "nolabel.csv"
    helpers.long_frame(20).drop(columns="label").to_csv(path, index=False)
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "missing column 'label'", "series_id, time, f1, f2")


def test_missing_configured_time_column_in_long_csv(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "notime.csv"
    helpers.long_frame(20).rename(columns={"time": "t"}).to_csv(path, index=False)
    res = cli(*helpers.train_args(path, tmp_path / "run", "data.long.time=time"))
    assert_one_line_error(res, str(path), "missing column 'time'")


def test_empty_csv_file(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "file is empty")


def test_empty_npz(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path, X=np.zeros((0, 5, 2), dtype=np.float32), y=np.zeros(0, dtype=np.int64))
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "no sequences", "array 'X'", "(0, 5, 2)")


def test_unknown_label_at_predict(tmp_path: Path, cli, helpers, long_run) -> None:
    path = tmp_path / "new.csv"
    df = helpers.long_frame(6, seed=1, labels=("a", "b", "c"))
    df.to_csv(path, index=False)
    first_label = df.groupby("series_id", sort=False)["label"].first()  # sequences in first-appearance order
    sid = first_label.index[list(first_label).index("c")]
    res = cli("predict", long_run.dir, "--data", path, "--output", tmp_path / "p.csv")
    assert_one_line_error(res, str(path), f"label 'c' of series_id {sid} ", "training classes (a, b)")
    assert not (tmp_path / "p.csv").exists()


def test_unknown_label_at_evaluate(tmp_path: Path, cli, helpers, npz_run) -> None:
    X, lengths, _ = helpers.make_sequences(10, seed=3)
    path = tmp_path / "new.npz"
    np.savez(path, X=X, lengths=lengths, y=np.array(["a", "b", "a", "zebra", *["b"] * 6]))
    res = cli("evaluate", npz_run.dir, "--data", path)
    assert_one_line_error(res, str(path), "label 'zebra'", "sequence 3")


def test_series_shorter_than_window(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "short.csv"
    helpers.series_frame(15).to_csv(path, index=False)  # no series_id column: one continuous series
    res = cli(*helpers.train_args(path, tmp_path / "run", "data.series.window=20", "data.series.horizon=3"))
    assert_one_line_error(res, str(path), "15 rows", "23")


def test_series_splits_too_short_for_window(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "short.csv"
    helpers.series_frame(80).to_csv(path, index=False)  # 80 - 2 gaps of 23 = 34 usable rows; val gets 5
    res = cli(*helpers.train_args(path, tmp_path / "run", "data.series.window=20", "data.series.horizon=3"))
    assert_one_line_error(res, str(path), "split: series has", "window + horizon needs 23")


def test_missing_data_file(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "nowhere.npz"
    res = cli(*helpers.train_args(path, tmp_path / "run"))
    assert_one_line_error(res, str(path), "file not found")


def test_missing_predict_data_file(tmp_path: Path, cli, npz_run) -> None:
    path = tmp_path / "nowhere.csv"
    res = cli("predict", npz_run.dir, "--data", path, "--output", tmp_path / "p.csv")
    assert_one_line_error(res, str(path), "file not found")


def test_failed_train_leaves_out_dir_reusable(tmp_path: Path, cli, helpers) -> None:
    """A train that fails on its data writes no run, so the same command works once the file is fixed."""
    path, out = tmp_path / "later.npz", tmp_path / "run"
    assert_one_line_error(cli(*helpers.train_args(path, out)), str(path), "file not found")
    assert not (out / "config.yaml").exists()
    helpers.write_npz(path, n=40)
    res = cli(*helpers.train_args(path, out))
    assert res.code == 0, res.err
    assert (out / "metrics.json").is_file()


# -- bad config ------------------------------------------------------------------------------------------


def test_bad_config_key_real_process(tmp_path: Path, cli_process, helpers) -> None:
    data = helpers.write_npz(tmp_path / "d.npz", n=30)
    res = cli_process(*helpers.train_args(data, tmp_path / "run", "train.epoch=3"))
    line = assert_one_line_error(res, "unknown key 'train.epoch'", "allowed here:")
    allowed = line.split("allowed here:")[1]
    for key in ("epochs", "batch_size", "optim", "schedule"):
        assert key in allowed
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("model.dropout=1.5", ["'model.dropout'", "less than 1", "1.5"]),
        ("data.format=xlsx", ["'data.format'", "'auto', 'npz', 'csv', 'parquet' or 'ts'", "'xlsx'"]),
        ("train.progress=loud", ["'train.progress'", "'auto', 'rich', 'plain' or 'off'", "'loud'"]),
    ],
)
def test_bad_config_value(tmp_path: Path, cli, helpers, override: str, needles: list[str]) -> None:
    data = helpers.write_npz(tmp_path / "d.npz", n=30)
    res = cli(*helpers.train_args(data, tmp_path / "run", override))
    assert_one_line_error(res, *needles)


def test_bad_config_key_in_yaml_file(tmp_path: Path, cli, helpers) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  hidden_dims: 8\n")
    data = helpers.write_npz(tmp_path / "d.npz", n=30)
    res = cli("train", "--config", config, "--data", data, "--out", tmp_path / "run")
    assert_one_line_error(res, "unknown key 'model.hidden_dims'", "hidden_dim", "num_heads")


def test_missing_config_file(tmp_path: Path, cli) -> None:
    config = tmp_path / "nope.yaml"
    res = cli("train", "--config", config, "--out", tmp_path / "run")
    assert_one_line_error(res, str(config), "not found")


# -- bad usage -------------------------------------------------------------------------------------------


def test_unknown_cli_option_real_process(tmp_path: Path, cli_process) -> None:
    res = cli_process("train", "--epochs", "3")
    assert_one_line_error(res, "unrecognized arguments: --epochs")
    assert res.out == ""


def test_override_without_equals(tmp_path: Path, cli) -> None:
    res = cli("train", "--out", tmp_path / "run", "epochs")
    assert_one_line_error(res, "'epochs' is neither an option nor a KEY=VALUE override")


def test_unknown_command(cli) -> None:
    assert_one_line_error(cli("fit"), "invalid choice: 'fit'")


def test_predict_requires_output(tmp_path: Path, cli, npz_run) -> None:
    res = cli("predict", npz_run.dir, "--data", npz_run.data)
    assert_one_line_error(res, "--output")


def test_evaluate_not_a_run_dir(tmp_path: Path, cli) -> None:
    res = cli("evaluate", tmp_path)
    assert_one_line_error(res, str(tmp_path), "not a finished run directory", "config.yaml is missing")


def test_resume_with_other_options(tmp_path: Path, cli) -> None:
    res = cli("train", "--resume", tmp_path, "train.epochs=3")
    assert_one_line_error(res, "--resume", "give no other options")
