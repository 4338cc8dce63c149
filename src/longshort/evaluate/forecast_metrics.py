"""Forecast accuracy: MAE, RMSE, MASE, sMAPE, the weighted quantile loss and interval coverage, and the same
point metrics of the naive, seasonal-naive and drift baselines on the same windows, so the skill shows.

Conventions (those of the M4 competition and GluonTS): MASE divides each window's MAE by the in-sample MAE of
the seasonal-naive forecast on that series' history before the window (lag ``m``), then averages over windows and
targets; sMAPE is ``200 |y - p| / (|y| + |p|)`` in percent over the points where ``|y| + |p| > 0``; the weighted
quantile loss is ``2 sum pinball_q / sum |y|`` averaged over the levels (its mean over many levels approximates
the CRPS).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def point_metrics(y: np.ndarray, pred: np.ndarray, mscale: np.ndarray) -> dict[str, float]:
    """``y``, ``pred`` [M, H, k]; ``mscale`` [M, k] the in-sample seasonal-naive MAE of each window's series."""
    err = pred - y
    denom = np.abs(y) + np.abs(pred)
    ok = denom > 0
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())), "mse": float((err**2).mean()),
            "mase": float((np.abs(err).mean(1) / mscale).mean()),
            "smape": float(200 * np.mean(np.abs(err)[ok] / denom[ok])) if ok.any() else 0.0}


def forecast_metrics(y: np.ndarray, pred: np.ndarray, mscale: np.ndarray, target_names: list[str],
                     levels: tuple[float, ...] = (), quantiles: np.ndarray | None = None,
                     baselines: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every metric of the module's docstring; ``quantiles`` [M, H, k, len(levels)]; ``baselines`` name -> [M, H, k].
    ``skill_<name>`` is ``1 - MASE / MASE(name)`` (positive: better than that baseline)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    out: dict[str, Any] = {"n": int(y.shape[0]), "horizon": int(y.shape[1])} | point_metrics(y, pred, mscale)
    if y.shape[2] > 1:
        out["per_target"] = {name: point_metrics(y[..., j:j + 1], pred[..., j:j + 1], mscale[:, j:j + 1])
                             for j, name in enumerate(target_names)}
    if quantiles is not None and len(levels):
        q = np.asarray(quantiles, np.float64)
        total = np.abs(y).sum()
        losses = []
        for i, a in enumerate(levels):
            e = y - q[..., i]
            losses.append(2 * np.maximum(a * e, (a - 1) * e).sum() / total if total > 0 else 0.0)
        out["wql"] = float(np.mean(losses))
        if len(levels) >= 2:
            lo, hi = q[..., 0], q[..., -1]
            out["interval"] = [levels[0], levels[-1]]
            out["coverage"] = float(np.mean((y >= lo) & (y <= hi)))
            out["coverage_nominal"] = float(levels[-1] - levels[0])
    if baselines:
        out["baselines"] = {name: point_metrics(y, np.asarray(b, np.float64), mscale) for name, b in baselines.items()}
        for name, b in out["baselines"].items():
            out[f"skill_{name}"] = 1 - out["mase"] / b["mase"] if b["mase"] > 0 else 0.0
    out["target_names"] = list(target_names)
    return out
