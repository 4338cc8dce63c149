"""Forecast training: ``train(config)`` with ``task: forecast`` lands here (``load(run_dir)`` of such a run is
:class:`longshort.runs.ForecastRun`).

A forecast run directory::

    RUN_DIR/config.yaml           the resolved config (lookback, season and epochs as chosen)
    RUN_DIR/preprocess.json       column roles, the covariates' scaling, lookback, horizon, season
    RUN_DIR/model.safetensors     the best weights (by train.early_stopping.metric, default val_loss)
    RUN_DIR/checkpoints/          best and last, for --resume
    RUN_DIR/history.csv, tb/      per-epoch metrics, with the exposure-bias gap for the autoregressive decoder
    RUN_DIR/metrics.json          val and test: mae, rmse, mase, smape, wql, coverage, and the baselines'
    RUN_DIR/test_forecasts.csv    series, step, forecast, quantiles and actual of every test window
    RUN_DIR/plots/                learning_curve.png, forecasts.png (a fan chart of a few test series)
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from longshort.config import Config, save_config
from longshort.data.forecast_data import (
    ForecastSplits,
    SeriesSet,
    WindowSet,
    prepare_forecast,
    read_forecast_source,
    sar_levels,
    sar_oracle,
)
from longshort.evaluate.forecast_metrics import forecast_metrics
from longshort.evaluate.forecast_predict import predict_windows
from longshort.finish import after_training
from longshort.nn.forecaster import Forecaster, build_forecaster
from longshort.report.plots import learning_curve_png
from longshort.rundir import absolute_sources
from longshort.rundir import say_resumed as _say_resumed
from longshort.training.checkpoint import checkpoint_path, load_weights, save_weights
from longshort.training.forecast_task import forecast_trainer

#: the automatic budget: at least this many optimizer steps, and at most MAX_AUTO_EPOCHS epochs
AUTO_STEPS, MAX_AUTO_EPOCHS = 1500, 200


def build_model(cfg: Config, k: int, p: int, f: int) -> Forecaster:
    return build_forecaster(cfg.forecast, k, p, f)


def read_splits(cfg: Config, raw: bool = False) -> ForecastSplits | SeriesSet:
    """The data of ``cfg`` prepared (or, ``raw``, as read)."""
    data = read_forecast_source(cfg.data.source, cfg.forecast, *builtin_size(cfg), cfg.seed)
    if raw:
        return data
    test = read_forecast_source(cfg.data.test_source, cfg.forecast, *builtin_size(cfg), cfg.seed + 1) \
        if cfg.data.test_source else None
    return prepare_forecast(data, cfg.forecast, cfg.seed, test)


def builtin_size(cfg: Config) -> tuple[int, int]:
    """(series, steps) of the built-in: data.builtin.n and .length when set, else 64 x 360."""
    b = cfg.data.builtin
    return (b.n if "n" in b.model_fields_set else 64), (b.length if "length" in b.model_fields_set else 360)


def _budget(cfg: Config, windows: int) -> tuple[Config, str | None]:
    t = cfg.train
    if "epochs" in t.model_fields_set:
        return cfg, None
    per_epoch = math.ceil(min(windows, cfg.forecast.max_windows) / t.batch_size)
    epochs = max(t.epochs, min(MAX_AUTO_EPOCHS, math.ceil(AUTO_STEPS / per_epoch)))
    cfg = cfg.model_copy(update={"train": t.model_copy(update={"epochs": epochs})})
    return cfg, (f"training budget: {epochs * per_epoch} optimizer steps = {epochs} epochs of {per_epoch} batches "
                 f"(at least {AUTO_STEPS} steps, at most {MAX_AUTO_EPOCHS} epochs; train.epochs to set it)")


def train_forecast(cfg: Config, run_dir: Path, resume: bool, console: Console,
                   callbacks: Callable[[Config], list[Any]]) -> Any:
    """Train a forecaster into ``run_dir``; returns the :class:`~longshort.runs.ForecastRun`. ``callbacks``
    makes the progress, history and TensorBoard callbacks once the data is read (a bad file leaves no run
    directory behind)."""
    from longshort.runs import ForecastRun

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    splits = read_splits(cfg)
    assert isinstance(splits, ForecastSplits)
    fc = cfg.forecast
    sc = splits.scaler
    notes = list(splits.notes)
    if not fc.lookback or not fc.season:  # record what was chosen, so config.yaml reruns the same model
        cfg.forecast.lookback, cfg.forecast.season = sc.lookback, sc.season
    cfg, note = _budget(cfg, len(splits.train))
    if note:
        notes.append(note)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(absolute_sources(cfg), run_dir / "config.yaml")
    (run_dir / "preprocess.json").write_text(json.dumps(sc.to_json(), indent=1))
    model, trainer = _fit(cfg, splits, run_dir, callbacks(cfg), console, notes, resume)
    save_weights(model, run_dir / "model.safetensors", metadata={"format": "longshort.Forecaster"})
    metrics: dict[str, Any] = {}
    outputs: dict[str, tuple[np.ndarray, np.ndarray, tuple[float, ...]]] = {}
    for name, ws in (("val", splits.val), ("test", splits.test)):
        if ws is not None and len(ws):
            outputs[name] = predict_windows(model, ws, fc, trainer.device, cfg.train.eval_batch_size, cfg.seed)
            metrics[name] = window_metrics(ws, *outputs[name], sc.target_names)
            if fc.model.decoder == "autoregressive" and fc.exposure_gap:
                ev = trainer.task.evaluate(ws)
                metrics[name] |= {k: ev[k] for k in ("loss", "tf_loss", "exposure_gap") if k in ev}
    if cfg.data.source == "builtin:seasonal_ar" and splits.test is not None and not cfg.data.test_source:
        metrics["oracle"] = sar_oracle_metrics(cfg, splits.data, splits.test)
    metrics["best_epoch"] = trainer.early.best_epoch
    metrics["epochs_run"] = trainer.epoch
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    if trainer.history:
        learning_curve_png(trainer.history, plots / "learning_curve.png")
    if "test" in outputs and splits.test is not None:
        data = splits.test_data or splits.data
        write_forecasts(run_dir / "test_forecasts.csv", data, splits.test, *outputs["test"])
        fan_chart_png(data, splits.test, *outputs["test"], plots / "forecasts.png")
    after_training(cfg, run_dir, console)
    _summary(run_dir, metrics, console)
    return ForecastRun(run_dir, cfg, model, sc)


def _fit(cfg: Config, splits: ForecastSplits, run_dir: Path, callbacks: list[Any], console: Console,
         notes: list[str], resume: bool = False) -> tuple[Forecaster, Any]:
    """A fresh forecaster trained on ``splits`` (its best weights loaded) and its trainer."""
    fc, sc = cfg.forecast, splits.scaler
    model = build_model(cfg, splits.train.k, splits.train.p, splits.train.f)
    trainer = forecast_trainer(cfg.train, fc, model, splits.train, splits.val, seed=cfg.seed, run_dir=run_dir,
                               callbacks=callbacks, diagnostics=cfg.diagnostics)
    resumed = resume and trainer.restore("last")
    for n in notes:
        console.print(f"auto: {n}")
    lengths = splits.data.lengths
    console.print(f"data: {len(splits.data)} series of {lengths.min()}-{lengths.max()} steps, {splits.train.k} "
                  f"target(s), {splits.train.p} past covariate(s), {splits.train.f} known-future column(s); "
                  f"{len(splits.train):,} training windows (lookback {sc.lookback}, horizon {sc.horizon}); "
                  f"validation and test: the last {sc.horizon} steps of each series")
    console.print(f"model: {fc.model.decoder} decoder, {sum(p.numel() for p in model.parameters()):,} parameters, "
                  f"loss {fc.loss}")
    _say_resumed(console, run_dir, resume, resumed, trainer)
    trainer.fit()
    best = checkpoint_path(trainer.ckpt_dir, "best")
    if best is not None:
        load_weights(model, best / "model.safetensors")
    return model, trainer


def fold_splits(cfg: Config, data: SeriesSet, folds: int) -> list[ForecastSplits]:
    """Walk-forward backtest folds: fold ``k`` of ``K`` cuts every series ``(K - 1 - k) H`` steps before its end,
    then holds out as ever (test: the last ``H`` steps left, validation: the ``H`` before, training targets before
    those). The test blocks of the folds are consecutive and disjoint; each fold trains only on rows before its
    validation block, and its test windows read only rows before their own origin."""
    H = cfg.forecast.horizon
    return [prepare_forecast(data.cut((folds - 1 - k) * H), cfg.forecast, cfg.seed) for k in range(folds)]


def forecast_cv(cfg: Config, out: Path, console: Console) -> list[dict[str, Any]]:
    """One fresh forecaster per walk-forward fold (:func:`fold_splits`); the rows of ``longshort cv``."""
    if cfg.cv.scheme not in ("auto", "expanding"):
        from longshort.errors import ConfigError

        raise ConfigError(f"cv.scheme={cfg.cv.scheme}: task forecast backtests with an expanding window (auto or "
                          "expanding)")
    splits_all = fold_splits(cfg, read_splits(cfg, raw=True), cfg.cv.folds)  # type: ignore[arg-type]
    rows = []
    for k, splits in enumerate(splits_all):
        sc = splits.scaler
        fold_cfg = cfg.model_copy(deep=True)
        fold_cfg.forecast.lookback, fold_cfg.forecast.season = sc.lookback, sc.season
        fold_cfg, note = _budget(fold_cfg, len(splits.train))
        model, trainer = _fit(fold_cfg, splits, out / f"fold-{k + 1}", [], console,
                              [*splits.notes, *([note] if note else [])] if k == 0 else [])
        assert splits.test is not None
        point, quant, levels = predict_windows(model, splits.test, fold_cfg.forecast, trainer.device,
                                               cfg.train.eval_batch_size, cfg.seed)
        m = window_metrics(splits.test, point, quant, levels, sc.target_names)
        ends = [int(o) for o in splits.test.origin]
        rows.append({"fold": k + 1, "train": len(splits.train), "val": len(splits.val or []),
                     "test": len(splits.test), "mase": m["mase"], "smape": m["smape"], "mae": m["mae"],
                     "seasonal_naive_mase": m["baselines"]["seasonal_naive"]["mase"],
                     "best_epoch": trainer.early.best_epoch,
                     "split": f"test steps {min(ends)}..{max(ends) + splits.test.horizon - 1} of each series"})
        console.print(f"fold {k + 1}/{len(splits_all)}: mase {m['mase']:.4f}  smape {m['smape']:.2f}  "
                      f"(seasonal naive {rows[-1]['seasonal_naive_mase']:.4f}; {rows[-1]['split']})")
    return rows


def window_actuals(ws: WindowSet) -> np.ndarray:
    """The raw targets [M, H, k] of windows ``ws``."""
    rows = ws.gather(np.arange(len(ws)))
    return rows[:, ws.lookback:, : ws.k].astype(np.float64)


def window_metrics(ws: WindowSet, point: np.ndarray, quant: np.ndarray, levels: tuple[float, ...],
                   names: list[str]) -> dict[str, Any]:
    return forecast_metrics(window_actuals(ws), point, ws.mase_scale, names, levels, quant, ws.baselines)


def sar_oracle_metrics(cfg: Config, data: SeriesSet, test: WindowSet) -> dict[str, Any]:
    """The built-in's conditional mean and 80% interval on the test windows: the best any model can do there."""
    from scipy.stats import norm

    level, scale = sar_levels(*builtin_size(cfg), cfg.seed)
    means, quants = [], []
    z = norm.ppf(0.9)
    for j in range(len(test)):
        i, o = int(test.series[j]), int(test.origin[j])
        mean, sd = sar_oracle(data.target[i][:o, 0], test.horizon, float(level[i]), float(scale[i]))
        means.append(mean[:, None])
        quants.append(np.stack([mean - z * sd, mean + z * sd], -1)[:, None])
    return forecast_metrics(window_actuals(test), np.stack(means), test.mase_scale, data.target_names, (0.1, 0.9),
                            np.stack(quants))


def write_forecasts(path: Path, data: SeriesSet, ws: WindowSet, point: np.ndarray, quant: np.ndarray,
                    levels: tuple[float, ...], with_actual: bool = True) -> None:
    """One row per (series, step, target): series id, step (1..H), time when known, forecast, quantiles,
    actual."""
    actual = window_actuals(ws) if with_actual and ws.has_future else None
    names = list(data.target_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["series_id", "step", "time", "target", "forecast", *[f"q{q:g}" for q in levels],
                    *(["actual"] if actual is not None else [])])
        for j in range(len(ws)):
            i, o = int(ws.series[j]), int(ws.origin[j])
            times = data.times[i]
            for h in range(ws.horizon):
                when = ""
                if times is not None:
                    from longshort.data.forecast_data import future_rows

                    t = times[o + h] if o + h < len(times) else future_rows(times, o + h - len(times) + 1)[-1]
                    when = str(np.datetime_as_string(t, unit="s"))
                for c, name in enumerate(names):
                    w.writerow([data.ids[i], h + 1, when, name, f"{point[j, h, c]:.6g}",
                                *[f"{v:.6g}" for v in quant[j, h, c]],
                                *([f"{actual[j, h, c]:.6g}"] if actual is not None else [])])


def fan_chart_png(data: SeriesSet, ws: WindowSet, point: np.ndarray, quant: np.ndarray, levels: tuple[float, ...],
                  path: Path, n: int = 4) -> None:
    """A few test series: their last steps, the forecast, its interval and the actuals."""
    import matplotlib.pyplot as plt

    n = min(n, len(ws))
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.2 * n), squeeze=False)
    for a, j in zip(axes[:, 0], range(n), strict=True):
        i, o = int(ws.series[j]), int(ws.origin[j])
        y = data.target[i][:, 0]
        start = max(0, o - 3 * ws.horizon)
        a.plot(np.arange(start, min(len(y), o + ws.horizon)), y[start: o + ws.horizon], color="black", lw=1,
               label="actual")
        steps = np.arange(o, o + ws.horizon)
        a.plot(steps, point[j, :, 0], color="C0", label="forecast")
        if quant.shape[-1] >= 2:
            a.fill_between(steps, quant[j, :, 0, 0], quant[j, :, 0, -1], color="C0", alpha=0.25,
                           label=f"{levels[0]:g}-{levels[-1]:g}")
        a.set_title(f"{data.ids[i]}", fontsize=9)
        a.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _summary(run_dir: Path, metrics: dict[str, Any], console: Console) -> None:
    for split in ("val", "test"):
        if split not in metrics:
            continue
        m = metrics[split]
        line = f"{split}: MASE {m['mase']:.4f}  sMAPE {m['smape']:.2f}  MAE {m['mae']:.4g}  RMSE {m['rmse']:.4g}"
        if "coverage" in m:
            line += f"  80% coverage {m['coverage']:.3f}"
        if "exposure_gap" in m:
            line += f"  exposure gap {m['exposure_gap']:.4f}"
        console.print(line + f"  (n={m['n']} windows)")
        if "baselines" in m:
            console.print(f"{split} baselines (MASE): " + ", ".join(f"{k} {v['mase']:.4f}"
                                                                    for k, v in m["baselines"].items()))
    if "oracle" in metrics:
        o = metrics["oracle"]
        console.print(f"oracle (the built-in's conditional mean): test MSE {o['mse']:.4g}  MASE {o['mase']:.4f}  "
                      f"80% coverage {o['coverage']:.3f}")
    print(f"run directory: {run_dir}", file=sys.stdout, flush=True)
