"""Train, evaluate and predict through the CLI on tiny generated data sets, and the leakage rules of the split.

Every training run uses the tiny model of ``helpers.TINY`` (2 epochs, about a second on one core).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longshort.config import load_config
from longshort.data.pipeline import _chronological_bounds, prepare

METRIC_KEYS = ("accuracy", "f1_macro", "f1_weighted")


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    return list(reader.fieldnames or []), rows


def check_probabilities(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    """Probabilities [N, K] of a predictions CSV, checking they sum to 1 and ``predicted`` is their argmax."""
    p = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert [r["predicted"] for r in rows] == [classes[i] for i in p.argmax(1)]
    return p


def test_datasets_lists_builtin_regimes(cli) -> None:
    res = cli("datasets")
    assert res.code == 0, res.err
    lines = [line.strip() for line in res.out.splitlines()]
    assert any(line.startswith("builtin:regimes") for line in lines), res.out
    for name in ("reverse", "sort", "addition", "cmudict"):  # task seq2seq
        assert any(line.startswith(f"builtin:{name}") for line in lines), res.out
    assert lines.index("task classify:") < lines.index("task seq2seq:")


def test_help_starts_without_torch_and_train_help_lists_the_config_keys() -> None:
    import subprocess
    import sys

    # the config-key table of 'train --help' needs torch (the config imports the model modules); building the
    # parser for any other command must not pay for it
    code = ("import sys; from longshort.cli import build_parser; p = build_parser(); "
            "print('torch' in sys.modules); p.parse_args(['train', '--help'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    first, _, helptext = res.stdout.partition("\n")
    assert first == "False"
    assert "config keys (set in --config YAML or as KEY=VALUE):" in helptext
    for key in ("model.hidden_dim", "train.epochs", "diagnostics.anomaly.action"):
        assert f"  {key} " in helptext, key


# -- independent variable-length sequences (npz) ----------------------------------------------------------


def test_npz_run_directory_and_metrics(npz_run) -> None:
    run = npz_run.dir
    for name in ("config.yaml", "model.safetensors", "preprocess.json", "history.csv", "metrics.json",
                 "plots/confusion_matrix.png", "plots/learning_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "plots/confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "tb").exists()  # train.tensorboard=false
    assert f"run directory: {run}" in npz_run.result.out

    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert m["n"] == 18  # 15% of 120 each
        assert m["class_names"] == ["a", "b"]
        for key in METRIC_KEYS:
            assert 0.0 <= m[key] <= 1.0
        assert m["accuracy"] > 0.7, m  # chance is 0.5; the class shifts channel 0 by 3 standard deviations
        assert sum(map(sum, m["confusion_matrix"])) == 18

    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(history.columns)

    prep = json.loads((run / "preprocess.json").read_text())
    assert prep["layout"] == "sequences"
    assert prep["class_names"] == ["a", "b"]
    assert prep["feature_names"] == ["x0", "x1", "x2"]


def test_config_yaml_reloads_into_the_config_used(npz_run) -> None:
    import torch

    from longshort.data.pipeline import data_shape, read_source
    from longshort.sizing import DataShape, resolve
    from longshort.training.precision import resolve as resolve_precision

    saved = load_config(npz_run.dir / "config.yaml")
    given = load_config(None, npz_run.overrides)
    raw = read_source(given.data.source, given.data, given.seed)
    used, _ = resolve(given, DataShape(*data_shape(raw, given.data)))  # what the run chose from its data
    # and what its trainer chose on the CPU: train.precision=auto resolved once and recorded
    used.train.precision = resolve_precision(used.train.precision, torch.device("cpu")).name  # type: ignore[assignment]
    assert saved.train.precision == "fp32" and saved == used
    assert resolve(saved, DataShape(10**6, 5000, 3, 2))[0] == saved  # nothing left to choose on reload
    assert saved.model.hidden_dim == 8 and saved.model.conv_dilations == [1]
    assert saved.train.epochs == 2 and saved.train.progress == "off"
    assert saved.data.source == str(npz_run.data)


def test_evaluate_on_the_run_test_split(cli, npz_run) -> None:
    res = cli("evaluate", npz_run.dir)
    assert res.code == 0, res.err
    written = npz_run.dir / "evaluate-test.json"
    assert f"written: {written}" in res.out
    m = json.loads(written.read_text())
    test = json.loads((npz_run.dir / "metrics.json").read_text())["test"]
    assert m["n"] == test["n"] == 18
    assert m["accuracy"] == pytest.approx(test["accuracy"])  # the same split is cut again from the seed
    assert f"accuracy         {m['accuracy']:.4f}" in res.out


def test_evaluate_on_another_file(tmp_path: Path, cli, helpers, npz_run) -> None:
    other = helpers.write_npz(tmp_path / "other.npz", n=50, seed=9)
    res = cli("evaluate", npz_run.dir, "--data", other)
    assert res.code == 0, res.err
    m = json.loads((npz_run.dir / "evaluate-other.json").read_text())
    assert m["n"] == 50
    assert m["accuracy"] > 0.85
    for key in METRIC_KEYS:
        assert f"{key:<16} {m[key]:.4f}" in res.out


def test_predict_labelled_npz(tmp_path: Path, cli, npz_run) -> None:
    out = tmp_path / "sub" / "pred.csv"
    res = cli("predict", npz_run.dir, "--data", npz_run.data, "--output", out)
    assert res.code == 0, res.err
    assert f"120 predictions written to {out}" in res.out
    header, rows = read_csv_rows(out)
    assert header == ["id", "predicted", "p_a", "p_b", "label"]
    assert len(rows) == 120
    assert [r["id"] for r in rows] == [str(i) for i in range(120)]
    check_probabilities(rows, ["a", "b"])
    y = np.load(npz_run.data)["y"]
    assert [r["label"] for r in rows] == list(y)
    assert np.mean([r["predicted"] == r["label"] for r in rows]) > 0.85
    assert b"\r" not in out.read_bytes() and b"\r" not in (npz_run.dir / "history.csv").read_bytes()  # LF ends


def test_predict_npz_without_labels(tmp_path: Path, cli, helpers, npz_run) -> None:
    unlabelled = helpers.write_npz(tmp_path / "new.npz", n=25, seed=4, labelled=False)
    labelled = helpers.write_npz(tmp_path / "same.npz", n=25, seed=4)
    assert cli("predict", npz_run.dir, "--data", unlabelled, "--output", tmp_path / "u.csv").code == 0
    assert cli("predict", npz_run.dir, "--data", labelled, "--output", tmp_path / "l.csv").code == 0
    header, rows = read_csv_rows(tmp_path / "u.csv")
    assert header == ["id", "predicted", "p_a", "p_b"]
    assert len(rows) == 25
    p = check_probabilities(rows, ["a", "b"])
    _, with_labels = read_csv_rows(tmp_path / "l.csv")
    np.testing.assert_allclose(p, check_probabilities(with_labels, ["a", "b"]))  # labels change nothing


def test_test_data_file_is_the_test_set(tmp_path: Path, cli, helpers) -> None:
    train = helpers.write_npz(tmp_path / "train.npz", n=100, seed=1)
    test = helpers.write_npz(tmp_path / "test.npz", n=37, seed=2)
    run = tmp_path / "run"
    res = cli("train", "--data", train, "--test-data", test, "--out", run, *helpers.TINY)
    assert res.code == 0, res.err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 37
    assert metrics["val"]["n"] == 15  # 15% of the 100 training sequences; no test split is cut from them
    assert load_config(run / "config.yaml").data.test_source == str(test)
    res = cli("evaluate", run)
    assert res.code == 0, res.err
    assert json.loads((run / "evaluate-test.json").read_text())["n"] == 37


def test_ten_step_onecycle_run_trains(tmp_path: Path, cli, helpers, npz_run) -> None:
    """84 training sequences in batches of 20 for 2 epochs: 10 steps, so the default warm-up is one step
    (torch's OneCycleLR divides by zero there unless the schedule widens the warm-up)."""
    res = cli(*helpers.train_args(npz_run.data, tmp_path / "run", "train.batch_size=20"))
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 2


# -- long-format CSV ----------------------------------------------------------------------------------------


def test_long_csv_trains_and_predicts_by_series_id(tmp_path: Path, cli, helpers, long_run) -> None:
    metrics = json.loads((long_run.dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == metrics["val"]["n"] == 18  # 15% of 120 series each
    assert metrics["test"]["class_names"] == ["a", "b"]
    prep = json.loads((long_run.dir / "preprocess.json").read_text())
    assert prep["layout"] == "long"
    assert prep["feature_names"] == ["f1", "f2"]  # series_id, time and label are not features

    new = helpers.long_frame(10, seed=2).drop(columns="label")  # rows shuffled, no labels
    path = tmp_path / "new.csv"
    new.to_csv(path, index=False)
    res = cli("predict", long_run.dir, "--data", path, "--output", tmp_path / "pred.csv")
    assert res.code == 0, res.err
    header, rows = read_csv_rows(tmp_path / "pred.csv")
    assert header == ["id", "predicted", "p_a", "p_b"]
    assert [r["id"] for r in rows] == list(pd.unique(new["series_id"]))  # first appearance in the file
    check_probabilities(rows, ["a", "b"])
    truth = {f"s2-{i:03d}": "ab"[i % 2] for i in range(10)}
    assert np.mean([truth[r["id"]] == r["predicted"] for r in rows]) >= 0.7


# -- one continuous series ----------------------------------------------------------------------------------

SERIES = ["data.series.window=20", "data.series.horizon=3"]


def test_series_csv_trains_with_direction_classes(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "prices.csv"
    helpers.series_frame(400).to_csv(path, index=False)
    run = tmp_path / "run"
    res = cli(*helpers.train_args(path, run, *SERIES))
    assert res.code == 0, res.err
    assert "chronological split of 400 rows, gap 23 rows" in res.err
    prep = json.loads((run / "preprocess.json").read_text())
    assert prep["layout"] == "series"
    assert prep["class_names"] == ["down", "flat", "up"]
    assert prep["feature_names"] == ["step", "close", "volume"]
    metrics = json.loads((run / "metrics.json").read_text())
    # 400 rows - 2 gaps of 23 = 354 usable: val and test get 53 rows each, i.e. 53 - 23 + 1 = 31 windows
    for split in ("val", "test"):
        assert metrics[split]["class_names"] == ["down", "flat", "up"]
        assert metrics[split]["n"] == 31
        assert set(metrics[split]) >= set(METRIC_KEYS)

    # Prediction cuts every window of the file, the last one ending on its last row; ids are those end rows.
    res = cli("predict", run, "--data", path, "--output", tmp_path / "pred.csv")
    assert res.code == 0, res.err
    header, rows = read_csv_rows(tmp_path / "pred.csv")
    assert header == ["id", "predicted", "p_down", "p_flat", "p_up"]
    assert [int(r["id"]) for r in rows] == list(range(19, 400))
    check_probabilities(rows, ["down", "flat", "up"])


def test_series_chronological_split_leaves_a_gap(tmp_path: Path, helpers) -> None:
    """No train window, nor the future row its label reads, reaches the validation rows (same for val/test).

    The ``step`` feature holds each row's number in the file, so unscaled windows say which rows they cover.
    """
    path = tmp_path / "prices.csv"
    helpers.series_frame(400).to_csv(path, index=False)
    cfg = load_config(None, [f"data.source={path}", *SERIES, "data.scale=none"])
    splits = prepare(cfg.data, cfg.seed)
    window, horizon = 20, 3
    assert splits.train.feature_names[0] == "step"

    def rows_of(part) -> np.ndarray:
        rows = part.X[:, :, 0]
        np.testing.assert_array_equal(np.diff(rows, axis=1), 1)  # consecutive rows, in order
        return rows

    train, val, test = rows_of(splits.train), rows_of(splits.val), rows_of(splits.test)
    gap = window + horizon  # the default split.gap
    # rows untouched between the last row a train label reads and the first val row (val -> test alike)
    assert val.min() - (train.max() + horizon) - 1 == gap
    assert test.min() - (val.max() + horizon) - 1 == gap

    bounds = _chronological_bounds(400, [0.7, 0.15, 0.15], gap, str(path))
    assert bounds == [(0, 248), (271, 324), (347, 400)]
    for part, rows, (start, stop) in zip((splits.train, splits.val, splits.test), (train, val, test), bounds,
                                         strict=True):
        # ``order`` is the window's last row relative to its split's first row
        np.testing.assert_array_equal(rows[:, -1], start + part.order)
        assert rows.min() == start
        assert rows.max() + horizon == stop - 1  # labels use every row of the split, none beyond it
    assert "train rows 0-247, val rows 271-323, test rows 347-399" in splits.notes[0]


# -- scaling is fitted on the training split only -----------------------------------------------------------


def test_series_scaling_uses_train_rows_only(tmp_path: Path, helpers) -> None:
    df = helpers.series_frame(400)
    (_, train_stop), *_ = _chronological_bounds(400, [0.7, 0.15, 0.15], 23, "")
    df["level"] = np.where(np.arange(400) < train_stop, 1.0, 50.0)  # val and test sit far above train
    path = tmp_path / "shifted.csv"
    df.to_csv(path, index=False)
    cfg = load_config(None, [f"data.source={path}", *SERIES])
    splits = prepare(cfg.data, cfg.seed)
    k = splits.prep.feature_names.index("level")
    assert splits.prep.mean[k] == pytest.approx(1.0)  # any val/test row in the fit would raise it
    assert splits.prep.std[k] == 1.0  # constant on the train rows: left unscaled
    assert splits.val is not None
    np.testing.assert_allclose(splits.val.X[:, :, k], 49.0)


def test_sequence_scaling_ignores_test_data(tmp_path: Path, helpers) -> None:
    train = helpers.write_npz(tmp_path / "train.npz", n=60, seed=1)
    test = helpers.write_npz(tmp_path / "test.npz", n=30, seed=2, shift=100.0)
    cfg = load_config(None, [f"data.source={train}", f"data.test_source={test}", "data.split.val=0"])
    splits = prepare(cfg.data, cfg.seed)
    assert splits.val is None and len(splits.train) == 60  # the whole train file is the training split

    with np.load(train) as f:
        X, lengths = f["X"], f["lengths"]
    valid = X[np.arange(X.shape[1])[None, :] < lengths[:, None]].astype(np.float64)  # [steps, C]
    np.testing.assert_allclose(splits.prep.mean, valid.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(splits.prep.std, valid.std(0), rtol=1e-6)
    assert splits.test is not None
    t = splits.test
    test_steps = t.X[np.arange(t.X.shape[1])[None, :] < t.lengths[:, None]]
    assert test_steps.mean() > 50  # the shifted test set stays far off after the train-only scaling


# -- the training toolbox from the command line ---------------------------------------------------------------


def test_seed_recipe_with_spectral_norm_and_phases_trains_records_and_predicts(tmp_path: Path, cli, helpers) -> None:
    data = helpers.write_npz(tmp_path / "train.npz", n=100, seed=1)
    run = tmp_path / "run"
    res = cli("train", "--data", data, "--out", run, *helpers.TINY, "train.recipe=seed", "train.epochs=3",
              "train.phase_preset=seed", "model.spectral_norm=true", "train.augment.time_warp.prob=0.5")
    assert res.code == 0, res.err
    cfg = load_config(run / "config.yaml")  # the resolved values, not only the recipe's name
    assert cfg.train.optim.lookahead.enabled and cfg.train.loss.name == "adaptive"
    assert cfg.train.mixup.start_epoch == 1 and cfg.train.augment.time_warp.prob == 0.5
    _, rows = read_csv_rows(run / "history.csv")
    assert [r["phase"] for r in rows] == ["1", "2", "3"]
    out = tmp_path / "pred.csv"
    assert cli("predict", run, "--data", data, "--output", out).code == 0  # spectral-normed weights reload
    _, pred = read_csv_rows(out)
    assert len(pred) == 100


def test_a_bad_toolbox_option_names_the_key(cli, helpers, tmp_path: Path) -> None:
    data = helpers.write_npz(tmp_path / "train.npz", n=40, seed=1)
    res = cli("train", "--data", data, "--out", tmp_path / "run", *helpers.TINY, "train.optim.clip_mode=gates")
    assert res.code == 2
    assert "train.optim.clip_mode" in res.err and "per_gate" in res.err
    assert not (tmp_path / "run").exists()


def test_cv_command_writes_per_fold_metrics(tmp_path: Path, cli, helpers) -> None:
    out = tmp_path / "cv"
    res = cli("cv", "--out", out, "data.builtin.n=150", "data.builtin.length=12", "cv.folds=3", *helpers.TINY)
    assert res.code == 0, res.err
    assert f"cv directory: {out}" in res.out
    folds = json.loads((out / "cv.json").read_text())["folds"]
    assert [f["fold"] for f in folds] == [1, 2, 3] and all("accuracy" in f and "f1_macro" in f for f in folds)
    res = cli("cv", "--out", out, *helpers.TINY)
    assert res.code == 2 and "already holds a cross-validation" in res.err
    res = cli("cv", "--out", tmp_path / "cv2", "cv.scheme=sliding", *helpers.TINY)
    assert res.code == 2 and "cv.scheme=sliding is for one continuous series" in res.err


def test_ensemble_of_runs_averages_their_probabilities(tmp_path: Path, cli, helpers, npz_run) -> None:
    other = tmp_path / "seed1"
    res = cli(*helpers.train_args(npz_run.data, other, "seed=1"))
    assert res.code == 0, res.err
    one, both, weighted = tmp_path / "one.csv", tmp_path / "both.csv", tmp_path / "weighted.csv"
    assert cli("predict", npz_run.dir, "--data", npz_run.data, "--output", one).code == 0
    assert cli("predict", npz_run.dir, other, "--data", npz_run.data, "--output", both).code == 0
    assert cli("predict", npz_run.dir, other, "--data", npz_run.data, "--weights", "3", "1",
               "--output", weighted).code == 0
    a = pd.read_csv(one)
    b = pd.read_csv(tmp_path / "both.csv")
    c = pd.read_csv(weighted)
    res = cli("predict", other, "--data", npz_run.data, "--output", tmp_path / "other.csv")
    o = pd.read_csv(tmp_path / "other.csv")
    cols = [k for k in a.columns if k.startswith("p_")]
    np.testing.assert_allclose(b[cols].to_numpy(), (a[cols].to_numpy() + o[cols].to_numpy()) / 2, atol=2e-6)
    np.testing.assert_allclose(c[cols].to_numpy(), 0.75 * a[cols].to_numpy() + 0.25 * o[cols].to_numpy(), atol=2e-6)
    res = cli("ensemble", npz_run.dir, other, "--data", npz_run.data, "--output", tmp_path / "ens.json")
    assert res.code == 0, res.err
    assert "ensemble of 2" in res.out and json.loads((tmp_path / "ens.json").read_text())["ensemble"]["n"] == 120
    res = cli("ensemble", npz_run.dir, other, "--data", npz_run.data, "--weights", "1")
    assert res.code == 2 and "1 weights for 2 run directories" in res.err


def test_options_and_overrides_in_any_order(tmp_path: Path, cli, helpers) -> None:
    data = helpers.write_npz(tmp_path / "d.npz", n=60)
    tiny = [o for o in helpers.TINY if not o.startswith(("model.hidden_dim", "train.epochs"))]
    # an override before an option, others after it: argparse alone refused this ("unrecognized arguments")
    res = cli("train", "--data", data, "model.hidden_dim=4", "--out", tmp_path / "run", *tiny, "train.epochs=1")
    assert res.code == 0, res.err
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert cfg.model.hidden_dim == 4 and cfg.train.epochs == 1
