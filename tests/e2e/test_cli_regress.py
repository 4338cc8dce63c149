"""``longshort train --task regress`` through the CLI: .npz and .ts targets, metrics.json, predict (values and
quantiles in the target's own units), evaluate, the Python API, and bad input as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from longshort.config import load_config
from longshort.errors import LongshortError

OFFSET, SCALE = 100.0, 10.0  # targets far from standard units: the run must scale them and map them back


def sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variable-length sequences whose level (visible at every step of channel 0) sets the target."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 20, n)
    level = rng.normal(size=n)
    x = np.zeros((n, 20, 2), np.float32)
    for i in range(n):
        x[i, : lengths[i]] = rng.normal(size=(lengths[i], 2)) * 0.3
        x[i, : lengths[i], 0] += level[i]
    y = OFFSET + SCALE * level + rng.normal(size=n) * 0.5
    return x, lengths.astype(np.int64), y


def write_npz(path: Path, n: int, seed: int, labelled: bool = True) -> Path:
    x, lengths, y = sequences(n, seed)
    np.savez(path, X=x, lengths=lengths, **({"y": y} if labelled else {}))
    return path


def write_ts(path: Path, n: int, seed: int) -> Path:
    x, lengths, y = sequences(n, seed)
    lines = ["@problemName level", "@timeStamps false", "@univariate false", "@dimensions 2",
             "@equalLength false", "@targetLabel true", "@data"]
    for i in range(n):
        dims = [",".join(f"{v:.5f}" for v in x[i, : lengths[i], c]) for c in range(2)]
        lines.append(":".join(dims) + f":{y[i]:.5f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def regress_args(tiny: list[str]) -> list[str]:
    """The tiny model for task regress: without the classifier-only key (diagnostics.analysis), more epochs."""
    return ["--task", "regress", *[o for o in tiny if not o.startswith("diagnostics.analysis")], "train.epochs=8",
            "train.selection=val"]


def rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def regress_run(tmp_path_factory: pytest.TempPathFactory, helpers) -> Path:
    d = tmp_path_factory.mktemp("regress")
    res = helpers.invoke("train", "--data", write_npz(d / "train.npz", 160, 0), "--out", d / "run",
                         *regress_args(helpers.TINY))
    assert res.code == 0, res.err
    assert f"run directory: {d / 'run'}" in res.out
    return d / "run"


def test_metrics_are_regression_metrics_in_the_targets_units(regress_run: Path) -> None:
    metrics = json.loads((regress_run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert {"rmse", "mae", "r2", "mape", "n"} <= set(m) and "accuracy" not in m
        assert m["n"] == 24  # 15% of 160 each
        # predicting the training mean would give an RMSE of about SCALE (the level's spread) and r2 near 0
        assert m["rmse"] < 0.5 * SCALE and m["r2"] > 0.6, m
    prep = json.loads((regress_run / "preprocess.json").read_text())
    assert prep["class_names"] == [] and prep["target_names"] == ["target"]
    assert abs(prep["target_mean"][0] - OFFSET) < 3 and abs(prep["target_std"][0] - SCALE) < 3
    history = (regress_run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"train_rmse", "val_rmse", "val_mae"} <= set(history)
    assert (regress_run / "plots" / "predicted_vs_true.png").is_file()
    assert not (regress_run / "plots" / "confusion_matrix.png").exists()
    assert load_config(regress_run / "config.yaml").task == "regress"


def test_predict_writes_values_and_evaluate_prints_rmse(cli, regress_run: Path, tmp_path: Path) -> None:
    data = write_npz(tmp_path / "new.npz", 40, 5)
    res = cli("predict", regress_run, "--data", data, "--output", tmp_path / "p.csv")
    assert res.code == 0, res.err
    header, body = rows(tmp_path / "p.csv")
    assert header == ["id", "predicted", "target"]
    pred = np.array([float(r["predicted"]) for r in body])
    truth = np.array([float(r["target"]) for r in body])
    assert np.corrcoef(pred, truth)[0, 1] > 0.8 and abs(pred.mean() - OFFSET) < 5  # the target's own units
    res = cli("evaluate", regress_run, "--data", data)
    assert res.code == 0, res.err
    assert res.out.splitlines()[0].startswith("rmse ")
    saved = json.loads((regress_run / "evaluate-new.json").read_text())
    assert saved["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - truth) ** 2))), rel=1e-4)
    unlabelled = write_npz(tmp_path / "unlabelled.npz", 10, 6, labelled=False)
    assert cli("predict", regress_run, "--data", unlabelled, "--output", tmp_path / "u.csv").code == 0
    assert rows(tmp_path / "u.csv")[0] == ["id", "predicted"]


def test_python_api_predicts_in_the_targets_units(regress_run: Path) -> None:
    import longshort

    run = longshort.load(regress_run)
    x, lengths, y = sequences(30, 9)
    pred = run.predict(x, lengths)
    assert run.task == "regress" and pred.shape == (30,)
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.5 * SCALE
    with pytest.raises(LongshortError, match="predicts values, not class probabilities"):
        run.predict_proba(x, lengths)


def test_ts_regression_files_and_quantile_predictions(cli, helpers, tmp_path: Path) -> None:
    """The names other tools script against: --task regress on .ts files with @targetLabel true."""
    train, test = write_ts(tmp_path / "train.ts", 160, 1), write_ts(tmp_path / "test.ts", 40, 2)
    res = cli("train", "--data", train, "--test-data", test, "--out", tmp_path / "run", *regress_args(helpers.TINY),
              "regress.loss=quantile")
    assert res.code == 0, res.err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert m["n"] == 40 and m["interval"] == [0.1, 0.9] and 0 <= m["coverage"] <= 1 and "pinball" in m
    res = cli("predict", tmp_path / "run", "--data", test, "--output", tmp_path / "q.csv")
    assert res.code == 0, res.err
    header, body = rows(tmp_path / "q.csv")
    assert header == ["id", "predicted", "q0.1", "q0.5", "q0.9", "target"]
    for r in body:  # the levels never cross, and the point prediction is the median
        assert float(r["q0.1"]) <= float(r["q0.5"]) <= float(r["q0.9"]) and r["predicted"] == r["q0.5"]


def test_bad_regression_input_is_one_line(cli_process, tmp_path: Path) -> None:
    x, lengths, _ = sequences(20, 0)
    np.savez(tmp_path / "words.npz", X=x, lengths=lengths, y=np.array(["up", "down"] * 10))
    res = cli_process("train", "--task", "regress", "--data", tmp_path / "words.npz", "--out", tmp_path / "r")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res.err
    assert "words.npz" in res.err and "non-numeric dtype" in res.err and "Traceback" not in res.err
    assert not (tmp_path / "r").exists()


def test_cv_folds_are_disjoint_and_scored_by_rmse(cli, helpers, tmp_path: Path) -> None:
    data = write_npz(tmp_path / "train.npz", 90, 3)
    res = cli("cv", "--data", data, "--out", tmp_path / "cv", "task=regress", "cv.folds=3",
              *regress_args(helpers.TINY)[2:])
    assert res.code == 0, res.err
    result = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert set(result["summary"]) == {"rmse", "mae", "r2", "mean_rmse"} and len(result["folds"]) == 3
    assert sum(f["test"] for f in result["folds"]) == 90  # every sequence is tested once
    from longshort.evaluate.config import CVConfig
    from longshort.evaluate.validation import random_folds

    folds = random_folds(90, CVConfig(folds=3), 0)
    tests = [set(f.test) for f in folds]
    assert not (tests[0] & tests[1]) and not (tests[0] & tests[2]) and not (tests[1] & tests[2])
    for f in folds:  # a fold's training and validation parts never hold its test sequences
        assert not (set(f.train) | set(f.val)) & set(f.test)


def test_ensemble_averages_the_members_predictions(cli, helpers, regress_run: Path, tmp_path: Path) -> None:
    second = tmp_path / "second"
    res = cli("train", "--data", write_npz(tmp_path / "train.npz", 160, 0), "--out", second,
              *regress_args(helpers.TINY), "seed=1")
    assert res.code == 0, res.err
    data = write_npz(tmp_path / "new.npz", 30, 5)
    assert cli("ensemble", regress_run, second, "--data", data, "--output", tmp_path / "e.json").code == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert cli("predict", regress_run, second, "--data", data, "--output", tmp_path / "e.csv").code == 0
    _, body = rows(tmp_path / "e.csv")
    import longshort

    x, lengths, y = sequences(30, 5)
    mean = (longshort.load(regress_run).predict(x, lengths) + longshort.load(second).predict(x, lengths)) / 2
    np.testing.assert_allclose([float(r["predicted"]) for r in body], mean, rtol=1e-4)
    assert report["ensemble"]["rmse"] == pytest.approx(float(np.sqrt(np.mean((mean - y) ** 2))), rel=1e-4)


def test_tune_minimises_val_rmse(cli, helpers, tmp_path: Path) -> None:
    import optuna

    data = write_npz(tmp_path / "train.npz", 120, 4)
    res = cli("tune", "--data", data, "--out", tmp_path / "study", "--n-trials", "2", "task=regress",
              *regress_args(helpers.TINY)[2:], "train.epochs=2")
    assert res.code == 0, res.err
    assert "best val_rmse" in res.out
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.best_value == min(t.value for t in study.trials if t.value is not None)


def test_regressor_exports_to_onnx_with_raw_inputs(cli, regress_run: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from longshort.runs import load

    res = cli("export", regress_run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert res.code == 0, res.err
    assert "(regress, onnx" in res.out
    manifest = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert manifest["task"] == "regress" and manifest["outputs"][0]["name"] == "prediction"
    x, lengths, _ = sequences(7, 3)
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["prediction"], {"x": x, "lengths": lengths})[0]
    want = load(regress_run).predict_values(x, lengths)[0]
    assert abs(float(want.mean()) - OFFSET) < 5 * SCALE  # in the target's units, not standard ones
    assert np.allclose(got, want, rtol=1e-4, atol=1e-3)
