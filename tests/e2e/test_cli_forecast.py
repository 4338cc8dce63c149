"""``longshort train --task forecast`` through the CLI: a .tsf file and a long CSV with known-future columns,
metrics.json's test section, predict (the next H steps per series), evaluate, cv (walk-forward), and bad input
as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TINY = ["forecast.model.hidden_dim=8", "forecast.model.layers=1", "train.epochs=2", "train.batch_size=32",
        "train.progress=off", "train.tensorboard=false", "train.threads=1", "diagnostics.report=false"]


def write_tsf(path: Path, n: int = 6, length: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["@relation demo", "@attribute series_name string", "@attribute start_timestamp date",
             "@frequency monthly", "@horizon 6", "@missing false", "@equallength false", "@data"]
    for i in range(n):
        t = np.arange(length)
        v = 50 + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(size=length) + i
        lines.append(f"T{i + 1}:2000-01-01 00-00-00:" + ",".join(f"{x:.3f}" for x in v))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_long(path: Path, n: int = 4, length: int = 50) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for s in range(n):
        for t, day in enumerate(pd.date_range("2021-01-01", periods=length, freq="D")):
            promo = float(rng.random() < 0.3)
            rows.append({"series_id": f"shop{s}", "time": day.strftime("%Y-%m-%d"),
                         "sales": 20 + 5 * promo + 3 * np.sin(2 * np.pi * t / 7) + rng.normal(), "promo": promo})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tsf_run(tmp_path_factory: pytest.TempPathFactory, helpers) -> Path:
    d = tmp_path_factory.mktemp("forecast")
    res = helpers.invoke("train", "--out", d / "run", "--task", "forecast", "--data", write_tsf(d / "series.tsf"),
                         "forecast.horizon=6", *TINY)  # the contract's command line, with a tiny model
    assert res.code == 0, res.err
    return d / "run"


def test_tsf_training_writes_forecast_metrics(tsf_run: Path) -> None:
    m = json.loads((tsf_run / "metrics.json").read_text())
    test = m["test"]
    assert {"mase", "smape", "mae", "rmse", "coverage", "wql"} <= set(test)
    assert set(test["baselines"]) == {"naive", "seasonal_naive", "drift"} and test["n"] == 6 and test["horizon"] == 6
    prep = json.loads((tsf_run / "preprocess.json").read_text())
    assert prep["season"] == 12 and prep["horizon"] == 6  # the .tsf's monthly frequency
    body = read_rows(tsf_run / "test_forecasts.csv")
    assert len(body) == 6 * 6 and {"forecast", "q0.1", "q0.9", "actual"} <= set(body[0])
    assert body[0]["time"].startswith("2004-07-01")  # step 55 of a monthly series from 2000-01
    assert (tsf_run / "plots" / "forecasts.png").is_file()


def test_predict_forecasts_the_next_horizon_and_evaluate_scores_the_last(cli, tsf_run: Path, tmp_path: Path) -> None:
    hist = write_tsf(tmp_path / "history.tsf", n=3, length=40, seed=5)
    res = cli("predict", tsf_run, "--data", hist, "--output", tmp_path / "f.csv")
    assert res.code == 0, res.err
    body = read_rows(tmp_path / "f.csv")
    assert [r["step"] for r in body[:6]] == [str(h) for h in range(1, 7)] and len(body) == 18
    assert "actual" not in body[0] and body[0]["time"].startswith("2003-05-01")  # the month after the last
    assert all(float(r["q0.1"]) <= float(r["forecast"]) <= float(r["q0.9"]) for r in body)
    res = cli("evaluate", tsf_run, "--data", hist)
    assert res.code == 0, res.err
    assert res.out.splitlines()[0].startswith("mase ")


def test_known_future_columns_are_needed_at_predict_time(cli, tmp_path: Path) -> None:
    data = write_long(tmp_path / "sales.csv")
    res = cli("train", "--task", "forecast", "--data", data, "--out", tmp_path / "run", "forecast.horizon=5",
              "forecast.known_future=[promo]", "forecast.calendar=[dayofweek]", *TINY)
    assert res.code == 0, res.err
    prep = json.loads((tmp_path / "run" / "preprocess.json").read_text())
    assert prep["known_names"] == ["promo", "dayofweek_sin", "dayofweek_cos"] and prep["target_names"] == ["sales"]
    res = cli("predict", tmp_path / "run", "--data", data, "--output", tmp_path / "f.csv")
    assert res.code == 2 and "known-future columns promo: give their next 5 rows per series with --future" in res.err
    future = pd.DataFrame([{"series_id": f"shop{s}", "time": d.strftime("%Y-%m-%d"), "promo": 1.0}
                           for s in range(4) for d in pd.date_range("2021-02-20", periods=5, freq="D")])
    future.to_csv(tmp_path / "future.csv", index=False)
    res = cli("predict", tmp_path / "run", "--data", data, "--future", tmp_path / "future.csv",
              "--output", tmp_path / "f.csv")
    assert res.code == 0, res.err
    body = read_rows(tmp_path / "f.csv")
    assert len(body) == 4 * 5 and body[0]["time"].startswith("2021-02-20")


def test_walk_forward_cv_of_a_forecaster(cli, tmp_path: Path) -> None:
    res = cli("cv", "--data", write_tsf(tmp_path / "s.tsf"), "--out", tmp_path / "cv", "task=forecast",
              "forecast.horizon=4", "cv.folds=2", *TINY)
    assert res.code == 0, res.err
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["scheme"] == "expanding" and len(cv["folds"]) == 2
    assert cv["folds"][0]["split"] == "test steps 52..55 of each series"
    assert cv["folds"][1]["split"] == "test steps 56..59 of each series"
    assert "mase" in cv["summary"] and "seasonal_naive_mase" in cv["summary"]


@pytest.mark.parametrize(("content", "args", "message"), [
    ("series_id,time,v\na,1,1\na,2,x\n", [], "column 'v' is not numeric: row 3 holds 'x' (series 'a')"),
    (None, ["forecast.horizon=40"], "has 60 steps; forecast.horizon=40 needs at least 121"),
])
def test_bad_forecast_input_is_one_line(cli, tmp_path: Path, content: str | None, args: list[str],
                                        message: str) -> None:
    if content is None:
        path = write_tsf(tmp_path / "s.tsf")
    else:
        path = tmp_path / "bad.csv"
        path.write_text(content)
    res = cli("train", "--task", "forecast", "--data", path, "--out", tmp_path / "run", *args, *TINY)
    assert res.code == 2 and message in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_report_shows_the_forecast_model_metrics_and_fan_charts(tsf_run: Path) -> None:
    from longshort.report.html import build_report

    html = build_report(tsf_run, tsf_run / "r.html").read_text()
    assert "decoder direct" in html and "horizon 6" in html and "forecast fan charts" in html
    assert "num_lstm_layers" not in html.split("Headline metrics")[0]  # not the classifier's model
    assert ">mase<" in html and ">skill_seasonal_naive<" in html


def _onnx_forecast(export: Path, run_dir: Path, history: Path, future: Path | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(the exported graph's forecasts, the run's own) of the next H steps after ``history``'s series."""
    import onnxruntime as ort

    from longshort.runs import load

    run = load(run_dir)
    _, ws, point, _, _ = run.forecast(history, future)
    rows = ws.gather(np.arange(len(ws))).astype(np.float64)
    k, p, L = ws.k, ws.p, ws.lookback
    sc = run.scaler
    rows[..., k:] = rows[..., k:] * np.asarray(sc.std) + np.asarray(sc.mean)  # the windows hold scaled covariates
    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["forecast"], {"past": rows[:, :L].astype(np.float32), "valid": ws.valid.astype(np.int64),
                                  "known": rows[:, L:, k + p:].astype(np.float32)})[0]
    return got, point


def test_direct_forecaster_exports_to_onnx_with_raw_inputs(cli, tsf_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    res = cli("export", tsf_run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert res.code == 0, res.err
    assert "(forecast, onnx" in res.out and "parity with torch eager: max relative |diff|" in res.out
    manifest = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert manifest["task"] == "forecast" and [i["name"] for i in manifest["inputs"]] == ["past", "valid", "known"]
    assert manifest["parity"]["max_rel_diff"] <= 1e-4
    got, point = _onnx_forecast(tmp_path / "onnx", tsf_run, tsf_run.parent / "series.tsf")
    assert got.shape == point.shape == (6, 6, 1)
    assert np.allclose(got, point, rtol=1e-4, atol=1e-4)  # what predict forecasts, from the file's raw rows


def test_forecast_export_with_known_future_and_what_it_refuses(cli, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    data = write_long(tmp_path / "sales.csv")
    common = ["--task", "forecast", "--data", data, "forecast.horizon=5", "forecast.known_future=[promo]", *TINY]
    assert cli("train", "--out", tmp_path / "run", *common).code == 0
    assert cli("export", tmp_path / "run", "--format", "onnx").code == 0
    future = pd.DataFrame([{"series_id": f"shop{s}", "time": d.strftime("%Y-%m-%d"), "promo": float(d.day % 2)}
                           for s in range(4) for d in pd.date_range("2021-02-20", periods=5, freq="D")])
    future.to_csv(tmp_path / "future.csv", index=False)
    got, point = _onnx_forecast(tmp_path / "run" / "export" / "onnx", tmp_path / "run", data, tmp_path / "future.csv")
    assert np.allclose(got, point, rtol=1e-4, atol=1e-4)
    assert cli("train", "--out", tmp_path / "ar", *common, "forecast.model.decoder=autoregressive").code == 0
    res = cli("export", tmp_path / "ar", "--format", "onnx")
    assert res.code != 0 and "ONNX export covers the direct decoder" in res.err and len(res.err.splitlines()) == 1
    res = cli("export", tmp_path / "run", "--format", "torch-export")
    assert res.code != 0 and "regress and direct-decoder forecast runs: --format onnx" in res.err


def test_a_run_from_before_the_linear_skip_still_loads(tsf_run: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from longshort.runs import load

    old = tmp_path / "old"
    shutil.copytree(tsf_run, old)
    weights = {k: v for k, v in load_file(old / "model.safetensors").items() if not k.startswith("skip.")}
    save_file(weights, old / "model.safetensors")
    run = load(old)
    assert run.model.skip is None and load(tsf_run).model.skip is not None
    assert run.forecast(tsf_run.parent / "series.tsf")[2].shape == (6, 6, 1)
