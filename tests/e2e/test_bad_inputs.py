"""The table of named malformed inputs: every case is exit 2, exactly one ``error: ...`` line naming what is
wrong (the file, array, row, column, key or option: the case's needles), no traceback, and nothing written or
changed anywhere under the test's directory (input files, a copied run, no run directory left behind).

``docs/reliability.md`` lists the cases by name; ``test_the_docs_list_every_case`` keeps the two in step.
Each case builds its inputs in a fresh directory, so the cases are independent and run in any order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_cli_errors import assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path, Any], list[object]]  # (directory, builder) -> CLI arguments
    needles: tuple[str, ...]  # what the error line must contain ("{d}" is replaced by the directory)
    what: str  # what the case is, for docs/reliability.md


class Build:
    """Inputs for one case, written under ``d``; ``run()`` copies the session's trained npz run there."""

    def __init__(self, d: Path, helpers: Any, npz_run: Any) -> None:
        self.d, self.h, self._run = d, helpers, npz_run

    def train(self, data: object, *extra: object) -> list[object]:
        return self.h.train_args(data, self.d / "out", *extra)

    def npz(self, name: str = "d.npz", n: int = 40, **arrays: Any) -> Path:
        X, lengths, y = self.h.make_sequences(n)
        base: dict[str, Any] = {"X": X, "lengths": lengths, "y": y}
        base.update(arrays)
        path = self.d / name
        np.savez(path, **{k: v for k, v in base.items() if v is not None})
        return path

    def x(self, n: int = 40) -> np.ndarray:
        return self.h.make_sequences(n)[0]

    def csv(self, name: str = "d.csv", frame: pd.DataFrame | None = None, text: str | None = None) -> Path:
        path = self.d / name
        if text is not None:
            path.write_text(text)
        else:
            (self.h.long_frame(30) if frame is None else frame).to_csv(path, index=False)
        return path

    def frame(self) -> pd.DataFrame:
        return self.h.long_frame(30)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.d / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def run(self) -> Path:
        dst = self.d / "run"
        if not dst.exists():
            shutil.copytree(self._run.dir, dst)
        return dst

    def exported(self) -> Path:
        """The copied run with an ONNX export in RUN/export/onnx (what predict then runs)."""
        run = self.run()
        res = self.h.invoke("export", run, "--format", "onnx")
        assert res.code == 0, res.err
        return run


def _set(frame: pd.DataFrame, row: int, col: str, value: Any) -> pd.DataFrame:
    frame[col] = frame[col].astype(object)
    frame.loc[row, col] = value
    return frame


def _flip(path: Path, at: int = -9) -> Path:
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))
    return path


def _truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _lengths_with(n: int, i: int, value: int) -> np.ndarray:
    lengths = np.full(n, 10, dtype=np.int64)
    lengths[i] = value
    return lengths


def _ts(body: str) -> str:
    return "@problemName t\n@timeStamps false\n@univariate true\n@classLabel true a b\n@data\n" + body


def _pairs_only(d: Path, b: Build) -> list[object]:
    return b.train(b.npz(), "seq2seq.decode.beam_size=3")


C = Case
CASES: list[Case] = [
    # -- .npz arrays ---------------------------------------------------------------------------------------
    C("npz_nan_in_x", lambda d, b: b.train(b.npz(X=_nan_x(b))), ("array 'X'", "NaN", "sequence 2, step 3"),
      "a NaN in X names the sequence, step and channel"),
    C("npz_inf_in_x", lambda d, b: b.train(b.npz(X=_inf_x(b))), ("array 'X'", "inf"), "an inf in X"),
    C("npz_x_2d", lambda d, b: b.train(b.npz(X=np.zeros((40, 10), np.float32))), ("array 'X' must be 3-D",),
      "X of two dimensions"),
    C("npz_x_strings", lambda d, b: b.train(b.npz(X=np.full((40, 5, 2), "x"))), ("non-numeric dtype",),
      "X of strings"),
    C("npz_x_ragged", lambda d, b: b.train(b.npz(X=_ragged())), ("ragged or of object dtype",),
      "a ragged (object) X"),
    C("npz_x_no_channels", lambda d, b: b.train(b.npz(X=np.zeros((40, 10, 0), np.float32))),
      ("no channels",), "X with zero channels"),
    C("npz_no_x", lambda d, b: b.train(b.npz(X=None, Z=np.zeros(3))), ("no array 'X'", "Z"),
      "an archive without X names the arrays it has"),
    C("npz_no_y", lambda d, b: b.train(b.npz(y=None)), ("no array 'y'",), "training data without labels"),
    C("npz_y_wrong_length", lambda d, b: b.train(b.npz(y=np.array(["a", "b"] * 3))), ("array 'y' has shape",),
      "fewer labels than sequences"),
    C("npz_y_fractional", lambda d, b: b.train(b.npz(y=np.linspace(0, 1, 40))), ("non-integer floats",),
      "float labels that are not whole numbers"),
    C("npz_lengths_wrong_length", lambda d, b: b.train(b.npz(lengths=np.full(5, 10))),
      ("array 'lengths' has shape",), "lengths for fewer sequences than X"),
    C("npz_lengths_too_long", lambda d, b: b.train(b.npz(lengths=_lengths_with(40, 7, 999))),
      ("array 'lengths'", "999", "index 7"), "a length beyond X's steps"),
    C("npz_lengths_zero", lambda d, b: b.train(b.npz(lengths=_lengths_with(40, 3, 0))),
      ("array 'lengths'", "index 3"), "a sequence of length 0"),
    C("npz_lengths_float", lambda d, b: b.train(b.npz(lengths=np.full(40, 10.5))), ("must hold integers",),
      "fractional lengths"),
    C("npz_empty", lambda d, b: b.train(b.npz(X=np.zeros((0, 5, 2), np.float32), y=np.zeros(0), lengths=None)),
      ("no sequences",), "an archive of zero sequences"),
    C("npz_single_class", lambda d, b: b.train(b.npz(y=np.array(["a"] * 40))),
      ("all 40 sequences have label 'a'", "at least two classes"), "one class only (before training, no run)"),
    C("npz_one_sequence", lambda d, b: b.train(b.npz(n=1, y=np.array(["a"]))),
      ("has one sequence", "at least two classes"),
      "a single sequence"),
    C("npz_too_few_to_split", lambda d, b: b.train(b.npz(n=6, y=np.array(["a", "b", "a", "b", "c", "c"]))),
      ("6 sequences of 3 classes are too few for a validation split", "data.split.val=0"),
      "six sequences of three classes: a stratified split cannot hold every class on both sides"),
    C("npz_every_class_single", lambda d, b: b.train(b.npz(n=2, y=np.array(["a", "b"]))),
      ("each of its 2 sequences is the only one of its class",), "two sequences of two classes: nothing to hold out"),
    C("npz_not_an_archive", lambda d, b: b.train(b.file("d.npz", b"not a zip at all")),
      ("not a readable .npz archive",), "bytes that are not an .npz"),
    C("npz_truncated", lambda d, b: b.train(_truncate(b.npz(), 300)), ("not a readable .npz archive",),
      "an .npz cut short"),
    C("npz_aux_nan", lambda d, b: b.train(b.npz(aux=np.r_[np.zeros(39), np.nan])), ("array 'aux'", "index 39"),
      "a NaN auxiliary target"),
    # -- CSV tables ----------------------------------------------------------------------------------------
    C("csv_empty", lambda d, b: b.train(b.csv(text="")), ("file is empty",), "an empty CSV"),
    C("csv_header_only", lambda d, b: b.train(b.csv(text="series_id,time,f1,label\n")), ("has no rows",),
      "a header without rows"),
    C("csv_no_label_column", lambda d, b: b.train(b.csv(frame=b.frame().drop(columns="label"))),
      ("missing column 'label'",), "long format without the label column"),
    C("csv_text_in_feature", lambda d, b: b.train(b.csv(frame=_set(b.frame(), 4, "f2", "abc"))),
      ("column 'f2' is not numeric", "row 6", "'abc'"), "a word in a numeric column names row and value"),
    C("csv_inf_in_feature", lambda d, b: b.train(b.csv(frame=_set(b.frame(), 7, "f1", np.inf))),
      ("column 'f1'", "inf", "row 9"), "inf in a feature"),
    C("csv_missing_feature_value", lambda d, b: b.train(b.csv(frame=_set(b.frame(), 2, "f1", None))),
      ("column 'f1'", "row 4"), "an empty feature cell"),
    C("csv_duplicate_column", lambda d, b: b.train(b.csv(text=_dup_header(b))),
      ("column 'f1' appears twice", "columns 3 and 4"), "a repeated column name (pandas would rename it)"),
    C("csv_extra_field", lambda d, b: b.train(b.csv(text="series_id,f1,label\ns1,1.0,a\ns1,2.0,a,9\n")),
      ("cannot parse CSV", "Expected 3 fields in line 3, saw 4"), "a row with more fields than the header"),
    C("csv_missing_label_value", lambda d, b: b.train(b.csv(frame=_set(b.frame(), 5, "label", None))),
      ("column 'label'", "missing value at row 7"), "an empty label"),
    C("csv_two_labels_in_a_series", lambda d, b: b.train(b.csv(frame=_relabel_one_row(b.frame()))),
      ("has more than one label",), "a series whose rows disagree on the label"),
    C("csv_missing_time_column", lambda d, b: b.train(b.csv(frame=b.frame().drop(columns="time")),
                                                     "data.long.time=when"), ("missing column 'when'",),
      "a configured time column that is not there"),
    C("csv_missing_listed_feature", lambda d, b: b.train(b.csv(), "data.long.features=[f1,f9]"),
      ("missing column 'f9'",), "a listed feature that is not there"),
    C("csv_not_utf8", lambda d, b: b.train(b.file("d.csv", b"series_id,f1\n\xff\xfe\x00\x81,1\n")),
      ("d.csv",), "bytes that are not text"),
    C("csv_no_feature_columns", lambda d, b: b.train(b.csv(text="series_id,label\ns1,a\ns2,b\n")),
      ("no feature columns",), "only id and label columns"),
    C("csv_single_class", lambda d, b: b.train(b.csv(frame=b.frame().assign(label="a"))),
      ("have label 'a'",), "a table of one class"),
    C("series_shorter_than_window", lambda d, b: b.train(b.csv(frame=b.h.series_frame(15)),
                                                         "data.series.window=20", "data.series.horizon=3"),
      ("15 rows", "23"), "a series shorter than window + horizon"),
    C("series_no_target", lambda d, b: b.train(b.csv(frame=b.h.series_frame(100).drop(columns="close"))),
      ("missing column 'close'",), "a series without its target column"),
    # -- other formats -------------------------------------------------------------------------------------
    C("parquet_garbage", lambda d, b: b.train(b.file("d.parquet", b"PAR1 garbage")), ("cannot parse Parquet",),
      "a .parquet that is not Parquet"),
    C("ts_no_data_line", lambda d, b: b.train(b.file("d.ts", "@problemName t\n")), ("no @data line",),
      "a .ts without @data"),
    C("ts_bad_value", lambda d, b: b.train(b.file("d.ts", _ts("1,2,x:a\n1,2,3:b\n"))), ("line 6", "value 3 is 'x'"),
      "a .ts value that is not a number names the line"),
    C("ts_unknown_label", lambda d, b: b.train(b.file("d.ts", _ts("1,2,3:a\n1,2,3:zz\n"))),
      ("label 'zz'", "@classLabel"), "a .ts label outside its @classLabel list"),
    C("unknown_suffix", lambda d, b: b.train(b.file("d.xlsx", b"x")), ("cannot tell the format",),
      "a file suffix no reader takes"),
    C("data_missing", lambda d, b: b.train(d / "nowhere.npz"), ("nowhere.npz", "file not found"),
      "a data path that does not exist"),
    C("data_is_a_directory", lambda d, b: b.train(_mkdir(d / "dir.npz")), ("is a directory",),
      "a data path that is a directory"),
    C("builtin_unknown", lambda d, b: b.train("builtin:nope"), ("unknown built-in dataset 'nope'",),
      "a built-in dataset that does not exist"),
    # -- config values ---------------------------------------------------------------------------------------
    C("config_unknown_key", lambda d, b: b.train(b.npz(), "train.epoch=3"), ("unknown key 'train.epoch'",),
      "a misspelt key lists the keys allowed there"),
    C("config_unknown_section", lambda d, b: b.train(b.npz(), "trian.epochs=3"), ("unknown key 'trian'",),
      "a misspelt section"),
    C("config_bad_choice", lambda d, b: b.train(b.npz(), "train.progress=loud"), ("'train.progress'", "'loud'"),
      "a value outside a key's choices lists them"),
    C("config_out_of_range", lambda d, b: b.train(b.npz(), "model.dropout=1.5"), ("'model.dropout'", "1.5"),
      "a value outside a key's range"),
    C("config_negative_count", lambda d, b: b.train(b.npz(), "train.epochs=-1"), ("'train.epochs'",),
      "a negative epoch count"),
    C("config_text_for_number", lambda d, b: b.train(b.npz(), "train.batch_size=many"),
      ("'train.batch_size'", "'many'"), "a word where a number goes"),
    C("config_float_for_int", lambda d, b: b.train(b.npz(), "model.hidden_dim=1e20"), ("'model.hidden_dim'",),
      "1e20 (a float) for an integer size"),
    C("config_int_too_large", lambda d, b: b.train(b.npz(), "data.builtin.n=100000000000000000000"),
      ("'data.builtin.n'", "at most 2,147,483,647"), "an integer no run can use (would overflow an allocation)"),
    C("config_batch_too_large", lambda d, b: b.train(b.npz(), "train.batch_size=100000000000000000000"),
      ("'train.batch_size'", "at most"), "a batch size beyond any int"),
    C("config_lr_inf", lambda d, b: b.train(b.npz(), "train.optim.lr=1e400"), ("'train.optim.lr'", "finite"),
      "1e400 reads as inf: refused"),
    C("config_lr_nan", lambda d, b: b.train(b.npz(), "train.optim.lr=.nan"), ("'train.optim.lr'",),
      "a NaN learning rate"),
    C("config_heads_do_not_divide", lambda d, b: b.train(b.npz(), "model.hidden_dim=10", "model.num_heads=3"),
      ("num_heads",), "attention heads that do not divide the width"),
    C("config_other_task_key", _pairs_only, ("seq2seq.decode.beam_size",),
      "a seq2seq key on a classifier run (it would be ignored)"),
    C("config_model_too_big", lambda d, b: b.train(b.npz(), "model.hidden_dim=200000", "model.num_heads=1"),
      ("need at least", "weights, gradients and optimizer state", "model.hidden_dim"),
      "a model no memory holds, refused before allocating"),
    C("config_attention_too_big", lambda d, b: b.train(_long_npz(b), "model.stem_stride=1"),
      ("need at least", "attention scores", "model.stem_stride"),
      "full attention over 100,000 steps, refused before allocating"),
    C("yaml_syntax", lambda d, b: ["train", "--config", b.file("c.yaml", "model:\n  hidden_dim: [8\n"),
                                   "--out", d / "out"], ("c.yaml", "not valid YAML at line"),
      "a YAML syntax error is one line with its position"),
    C("yaml_top_level_list", lambda d, b: ["train", "--config", b.file("c.yaml", "- a\n- b\n"), "--out", d / "out"],
      ("top level must be a mapping",), "a YAML list at the top"),
    C("yaml_not_text", lambda d, b: ["train", "--config", b.file("c.yaml", b"\xff\xfe\x00"), "--out", d / "out"],
      ("not UTF-8",), "a config file that is not text"),
    C("yaml_missing", lambda d, b: ["train", "--config", d / "none.yaml", "--out", d / "out"], ("not found",),
      "a config file that does not exist"),
    C("override_without_equals", lambda d, b: ["train", "--out", d / "out", "epochs"],
      ("neither an option nor a KEY=VALUE",), "a bare word among the overrides"),
    C("override_bad_yaml", lambda d, b: b.train(b.npz(), "model.conv_dilations=[1,"),
      ("override 'model.conv_dilations=[1,'", "not valid YAML"), "an override value that is not YAML"),
    C("override_into_a_value", lambda d, b: b.train(b.npz(), "seed.x=1"), ("config 'seed'", "integer"),
      "an override below a plain value"),
    # -- usage -----------------------------------------------------------------------------------------------
    C("unknown_command", lambda d, b: ["fit"], ("invalid choice: 'fit'",), "a command that does not exist"),
    C("unknown_option", lambda d, b: ["train", "--epochs", "3"], ("unrecognized arguments: --epochs",),
      "an option that does not exist"),
    C("resume_with_overrides", lambda d, b: ["train", "--resume", b.run(), "train.epochs=3"],
      ("--resume", "give no other options"), "--resume with overrides"),
    C("resume_not_a_run", lambda d, b: ["train", "--resume", _mkdir(d / "empty")], ("empty",),
      "--resume on a directory that holds no run"),
    C("resume_finished_run", lambda d, b: ["train", "--resume", b.run()], ("it finished", "nothing was changed"),
      "--resume of a run that finished"),
    C("out_is_a_file", lambda d, b: b.h.train_args(b.npz(), b.file("taken", "x")), ("taken",),
      "--out naming a file"),
    C("out_foreign_directory", lambda d, b: b.h.train_args(b.npz(), _foreign(d)), ("mine",),
      "--out naming a non-empty directory that is not a run"),
    C("out_finished_run", lambda d, b: b.h.train_args(b.npz(), b.run()), ("--resume",),
      "--out naming a finished run"),
    # -- a trained run, and what is done with it ---------------------------------------------------------
    C("predict_output_is_a_directory", lambda d, b: ["predict", b.run(), "--data", b.npz(),
                                                     "--output", _mkdir(d / "preds")],
      ("--output", "is a directory"), "predict --output naming a directory"),
    C("predict_output_under_a_file", lambda d, b: ["predict", b.run(), "--data", b.npz(),
                                                   "--output", b.file("f", "x") / "p.csv"],
      ("is a file, not a directory",), "predict --output below a file"),
    C("predict_no_output", lambda d, b: ["predict", b.run(), "--data", b.npz()], ("--output",),
      "predict without --output"),
    C("predict_unknown_label", lambda d, b: ["predict", b.run(), "--data",
                                             b.npz(y=np.array(["a", "b", "zebra", *["a"] * 37])),
                                             "--output", d / "p.csv"],
      ("label 'zebra'", "sequence 2"), "a label the model never saw"),
    C("predict_wrong_channels", lambda d, b: ["predict", b.run(), "--data", b.npz(X=b.x()[:, :, :2]),
                                              "--output", d / "p.csv"],
      ("2",), "new data with fewer channels than training"),
    C("predict_data_missing", lambda d, b: ["predict", b.run(), "--data", d / "none.csv", "--output", d / "p.csv"],
      ("none.csv", "file not found"), "predict on a file that does not exist"),
    C("predict_not_a_run", lambda d, b: ["predict", _mkdir(d / "norun"), "--data", b.npz(),
                                         "--output", d / "p.csv"],
      ("not a finished run directory",), "predict with a directory that is not a run"),
    C("evaluate_preprocess_truncated", lambda d, b: ["evaluate", _damage(b.run() / "preprocess.json", 50)],
      ("preprocess.json", "damaged"), "a truncated preprocess.json"),
    C("evaluate_preprocess_not_json_object", lambda d, b: ["evaluate", _write(b.run() / "preprocess.json", "[1]")],
      ("preprocess.json", "not an object"), "a preprocess.json holding a list"),
    C("evaluate_weights_flipped", lambda d, b: ["evaluate", _flipped(b.run() / "model.safetensors")],
      ("model.safetensors", "does not match the checksum"), "a flipped byte in the weights"),
    C("evaluate_weights_truncated", lambda d, b: ["evaluate", _damage(b.run() / "model.safetensors", 100)],
      ("model.safetensors",), "weights cut short"),
    C("evaluate_config_damaged", lambda d, b: ["evaluate", _write(b.run() / "config.yaml", "model: [\n")],
      ("config.yaml", "not valid YAML"), "a run's config.yaml damaged"),
    C("evaluate_unlabelled", lambda d, b: ["evaluate", b.run(), "--data", b.npz(y=None)], ("no array 'y'",),
      "evaluate on data without labels"),
    C("predict_onnx_flipped", lambda d, b: ["predict", _then(b.exported(), _flip, "export/onnx/model.onnx"),
                                            "--data", b.npz(), "--output", d / "p.csv"],
      ("model.onnx", "does not match the sha256"), "a flipped byte in the exported ONNX file"),
    C("predict_export_scaling_edited", lambda d, b: ["predict", _then(b.exported(), _edit_scaling,
                                                                      "export/onnx/preprocess.json"),
                                                     "--data", b.npz(), "--output", d / "p.csv"],
      ("export/onnx/preprocess.json", "does not match the sha256"), "an export's scaling edited after export"),
    C("export_weights_flipped", lambda d, b: ["export", _flipped(b.run() / "model.safetensors"), "--format", "onnx"],
      ("model.safetensors", "does not match the checksum"), "export of damaged weights"),
]


def _nan_x(b: Build) -> np.ndarray:
    X = b.x()
    X[2, 3, 1] = np.nan
    return X


def _inf_x(b: Build) -> np.ndarray:
    X = b.x()
    X[0, 0, 0] = np.inf
    return X


def _ragged() -> np.ndarray:
    X = np.empty(3, dtype=object)
    for i, t in enumerate((4, 7, 5)):
        X[i] = np.zeros((t, 2), dtype=np.float32)
    return X


def _dup_header(b: Build) -> str:
    text = b.frame().to_csv(index=False)
    return text.replace("f2", "f1", 1)


def _relabel_one_row(frame: pd.DataFrame) -> pd.DataFrame:
    first = frame["series_id"].iloc[0]
    rows = frame.index[frame["series_id"] == first]
    frame.loc[rows[-1], "label"] = "b" if frame.loc[rows[0], "label"] == "a" else "a"
    return frame


def _long_npz(b: Build) -> Path:
    rng = np.random.default_rng(0)
    path = b.d / "long.npz"
    np.savez(path, X=rng.normal(size=(8, 100_000, 1)).astype(np.float32), y=np.array(["a", "b"] * 4))
    return path


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _foreign(d: Path) -> Path:
    out = _mkdir(d / "mine")
    (out / "notes.txt").write_text("keep me")
    return out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path.parent


def _damage(path: Path, keep: int) -> Path:
    _truncate(path, keep)
    return path.parent


def _flipped(path: Path) -> Path:
    _flip(path)
    return path.parent


def _then(run: Path, damage: Callable[[Path], Any], name: str) -> Path:
    damage(run / name)
    return run


def _edit_scaling(path: Path) -> None:
    """Shift one feature's mean: valid JSON, silently different predictions, but for the recorded sha256."""
    prep = json.loads(path.read_text())
    prep["mean"][0] += 1.0
    path.write_text(json.dumps(prep, indent=1))


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, cli: Any, helpers: Any, npz_run: Any) -> None:
    args = case.args(tmp_path, Build(tmp_path, helpers, npz_run))
    before = _snapshot(tmp_path)
    res = cli(*args)
    assert_one_line_error(res, *(n.replace("{d}", str(tmp_path)) for n in case.needles))
    assert _snapshot(tmp_path) == before, "the failed command wrote or changed files"


def test_cases_are_many_and_named_once() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 60


def test_the_docs_list_every_case() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    missing = [c.name for c in CASES if f"`{c.name}`" not in doc]
    assert not missing, f"docs/reliability.md does not list: {missing}"
