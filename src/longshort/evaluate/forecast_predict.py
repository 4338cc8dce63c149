"""Forecasts from a trained :class:`~longshort.nn.forecaster.Forecaster`: windows -> scaled batches -> point
forecasts and quantiles in the series' own units (what training's validation, the run's test and predict share;
no trainer imported, so reading a run stays light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from longshort.data.forecast_data import WindowSet, window_scale
from longshort.nn.forecaster import Forecaster
from longshort.nn.regression import DISTRIBUTIONS


@dataclass
class ForecastBatch:
    """Windows on the device: ``past`` [B, L, k + p + f] (targets scaled), ``known`` [B, H, f], ``y`` [B, H, k]
    (scaled; None past a series' end), ``loc`` / ``scale`` [B, k] (numpy, to map outputs back)."""

    past: Tensor
    known: Tensor
    y: Tensor | None
    loc: np.ndarray
    scale: np.ndarray

    def __len__(self) -> int:
        return len(self.past)

    def rows(self, r: Tensor) -> ForecastBatch:
        i = r.cpu().numpy()
        return ForecastBatch(self.past[r], self.known[r], None if self.y is None else self.y[r], self.loc[i],
                             self.scale[i])


def make_batch(ws: WindowSet, idx: np.ndarray, device: torch.device) -> ForecastBatch:
    rows = ws.gather(idx).astype(np.float64)
    L, k, p = ws.lookback, ws.k, ws.p
    loc, scale = window_scale(rows[:, :L, :k], ws.valid[idx])
    past = rows[:, :L].copy()
    past[..., :k] = (past[..., :k] - loc[:, None]) / scale[:, None]
    known = rows[:, L:, k + p:]
    y = (rows[:, L:, :k] - loc[:, None]) / scale[:, None] if ws.has_future else None
    t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return ForecastBatch(t(past), t(known), None if y is None else t(y), loc, scale)


def predict_windows(model: Forecaster, data: WindowSet, fc: Any, device: torch.device,
                    batch_size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(point [M, H, k], quantiles [M, H, k, Q], levels) in the series' own units. The autoregressive decoder
    under a distribution loss forecasts by ``forecast.samples`` sample paths (point: their mean; quantiles: their
    per-step 10% and 90%); otherwise the head's own point and quantiles."""
    out = model.outputs
    was = model.training
    model.eval()
    paths = fc.model.decoder == "autoregressive" and fc.loss in DISTRIBUTIONS
    levels = (0.1, 0.9) if paths else out.levels
    points, quants = [], []
    try:
        with torch.no_grad():
            for j, idx in enumerate(np.array_split(np.arange(len(data)), max(1, -(-len(data) // batch_size)))):
                if not len(idx):
                    continue
                b = make_batch(data, idx, device)
                loc, scale = b.loc[:, None], b.scale[:, None]
                if paths:
                    s = model.sample_paths(b.past, b.known, fc.samples, seed + j).cpu().double().numpy()
                    s = s * scale[:, None] + loc[:, None]
                    points.append(s.mean(1))
                    quants.append(np.stack([np.quantile(s, q, axis=1) for q in levels], -1))
                else:
                    z = model(b.past, b.known).float().cpu()
                    points.append(out.point(z).double().numpy() * scale + loc)
                    quants.append(out.quantile_values(z).double().numpy() * scale[..., None] + loc[..., None])
    finally:
        model.train(was)
    k, h = data.k, data.horizon
    empty = np.zeros((0, h, k))
    return (np.concatenate(points) if points else empty,
            np.concatenate(quants) if quants else np.zeros((0, h, k, len(levels))), levels)
