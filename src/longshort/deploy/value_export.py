"""ONNX export of the runs that predict numbers: a regressor (task regress) and a forecaster with the direct
decoder (task forecast), each checked against the eager run before it is kept.

Unlike the classifier's graph, these take *raw* inputs and give outputs in the target's own units: the
scaling the run learned with is baked into the graph, so a user feeds the rows of their file and reads
forecasts, as ``longshort predict`` does::

    OUT/model.onnx       regress:  x [B, T, C] raw features, lengths [B] int64 -> prediction [B, k],
                                   quantiles [B, k, Q] (Q = 0 for the point losses)
                         forecast: past [B, L, k + p + f] raw (targets, past covariates, known-future columns,
                                   in preprocess.json's order; rows before a series' start repeat its first row),
                                   valid [B] int64 (real rows among the L, the last ones), known [B, H, f] raw ->
                                   forecast [B, H, k], quantiles [B, H, k, Q]
    OUT/preprocess.json  the run's (a copy): column names and the scaling baked into the graph
    OUT/model.json       manifest: task, inputs/outputs, parity figures, the source run and its weights' sha256

The forecaster's graph computes each window's scale from its own lookback as training did
(:func:`~longshort.data.forecast_data.window_scale`), in float32. The autoregressive decoder is not exported
(its forecast under a distribution loss is a Monte-Carlo sample, not a fixed graph), nor a Student-t head (its
quantiles need scipy's inverse CDF); both are refused with one line.

Parity: the onnxruntime graph against the eager run (``predict_values`` / the forecaster's window predictions)
on batches of another size than the traced one, max |difference| relative to ``max(1, |eager|)`` within
:data:`~longshort.deploy.export.PARITY_TOL`; otherwise the file is deleted and :class:`ExportError` says by how
much it missed.
"""

from __future__ import annotations

import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from longshort.deploy.export import (
    DEFAULT_OPSET,
    PARITY_TOL,
    ExportError,
    _ort_version,
    ort_session,
    out_dir,
    require,
    weights_sha256,
    write_manifest,
)

VALUE_TASKS = ("regress", "forecast")


class RegressGraph(nn.Module):
    """Raw sequences -> the regressor's prediction and quantiles in target units (the classifier's exported forward
    for the backbone, the run's feature and target scaling as constants)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        from longshort.deploy.exportable import ExportClassifier
        from longshort.nn.regression import regression_outputs

        self.net = ExportClassifier(run.model, recurrence="op").eval()
        self.outputs = regression_outputs(run.config.regress, len(run.prep.target_names))
        prep = run.prep
        c = len(prep.feature_names)
        mean = np.asarray(prep.mean, np.float32) if len(prep.mean) else np.zeros(c, np.float32)
        std = np.asarray(prep.std, np.float32) if len(prep.std) else np.ones(c, np.float32)
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.register_buffer("t_mean", torch.tensor(prep.target_mean, dtype=torch.float32))
        self.register_buffer("t_std", torch.tensor(prep.target_std, dtype=torch.float32))
        self.per_series = prep.per_series

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        valid = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None])[..., None]
        m = valid.to(x.dtype)
        if self.per_series:  # data.scale=series: data/scaling.py's series_normalise in torch
            n = m.sum(1, keepdim=True).clamp(min=1.0)
            mu = (x * m).sum(1, keepdim=True) / n
            sd = ((((x - mu) * m) ** 2).sum(1, keepdim=True) / n).sqrt()
            x = (x - mu) / torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        xs = torch.where(valid, (x - self.mean) / self.std, torch.zeros_like(x))
        _, z = self.net(xs, lengths)
        point = self.outputs.point(z) * self.t_std + self.t_mean
        q = self.outputs.quantile_values(z) * self.t_std[:, None] + self.t_mean[:, None]
        return point, q


class ForecastGraph(nn.Module):
    """Raw windows -> the direct forecaster's forecasts and quantiles in the series' units."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        import copy

        self.model = copy.deepcopy(run.model).eval()
        sc = run.scaler
        self.k, self.p = len(sc.target_names), len(sc.past_names)
        self.register_buffer("mean", torch.tensor(sc.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(sc.std, dtype=torch.float32))

    def forward(self, past: Tensor, valid: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
        k, lookback = self.k, past.shape[1]
        y = past[..., :k]
        # window_scale (data/forecast_data.py) in torch: the mean and std of the real (last ``valid``) rows
        mask = (torch.arange(lookback, device=past.device)[None] >= (lookback - valid)[:, None])[..., None]
        m = mask.to(y.dtype)
        n = valid.clamp(min=1).to(y.dtype)[:, None]
        loc = (y * m).sum(1) / n
        sd = ((((y - loc[:, None]) ** 2) * m).sum(1) / n).sqrt()
        fallback = torch.where(loc.abs() > 1e-8, loc.abs(), torch.ones_like(loc))
        scale = torch.where(sd > 1e-6 * loc.abs().clamp(min=1.0), sd, fallback)
        cov = (past[..., k:] - self.mean) / self.std
        x = torch.cat([(y - loc[:, None]) / scale[:, None], cov], -1)
        kn = (known - self.mean[self.p:]) / self.std[self.p:]
        z = self.model(x, kn)
        out = self.model.outputs
        point = out.point(z) * scale[:, None] + loc[:, None]
        q = out.quantile_values(z) * scale[:, None, :, None] + loc[:, None, :, None]
        return point, q


def _check_forecast(run: Any) -> None:
    fc = run.config.forecast
    if fc.model.decoder != "direct":
        raise ExportError(f"{run.dir}: ONNX export covers the direct decoder (forecast.model.decoder=direct); this "
                          "run's autoregressive decoder forecasts by sampling paths step by step: use predict")
    if fc.loss == "student_t":
        raise ExportError(f"{run.dir}: a Student-t head's quantiles need scipy's inverse CDF, which ONNX has not: "
                          "export a run trained with forecast.loss gaussian_nll, quantile, mse or mae")


def _forecast_batches(run: Any, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw windows for parity: the run's test windows when its data can be read (two batches of other sizes than
    the traced one, one with a short history), else random ones."""
    sc = run.scaler
    L, H, k, p, f = sc.lookback, sc.horizon, len(sc.target_names), len(sc.past_names), len(sc.known_names)
    rng = np.random.default_rng(seed)
    out = []
    for b in (5, 2):
        level = rng.normal(size=(b, 1, k)) * 10
        y = level + rng.standard_normal((b, L, k)).cumsum(1) * np.exp(rng.normal(size=(b, 1, k)))
        cov = rng.standard_normal((b, L, p + f)) * np.asarray(sc.std, np.float64) + np.asarray(sc.mean)
        past = np.concatenate([y, cov], -1).astype(np.float32)
        valid = np.full(b, L, np.int64)
        if b == 5:
            valid[1] = max(1, L // 3)  # a short history: its first rows repeat the series' first row
            past[1, : L - valid[1]] = past[1, L - valid[1]]
        known = (rng.standard_normal((b, H, f)) * np.asarray(sc.std[p:]) + np.asarray(sc.mean[p:])).astype(
            np.float32)
        out.append((past, valid, known))
    return out


def _eager_forecast(run: Any, past: np.ndarray, valid: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, ...]:
    """The run's own forecasts of raw windows, through the training code's scaling (float64) and model."""
    from longshort.data.forecast_data import window_scale

    sc = run.scaler
    k, p = len(sc.target_names), len(sc.past_names)
    mean, std = np.asarray(sc.mean), np.asarray(sc.std)
    x = past.astype(np.float64)
    loc, scale = window_scale(x[..., :k], valid)
    x[..., :k] = (x[..., :k] - loc[:, None]) / scale[:, None]
    x[..., k:] = (x[..., k:] - mean) / std
    kn = (known.astype(np.float64) - mean[p:]) / std[p:]
    out = run.model.outputs
    with torch.no_grad():
        z = run.model.eval()(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(kn, dtype=torch.float32))
    point = out.point(z).double().numpy() * scale[:, None] + loc[:, None]
    q = out.quantile_values(z).double().numpy() * scale[:, None, :, None] + loc[:, None, :, None]
    return point, q


def _regress_batches(run: Any, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from longshort.deploy.export import parity_batches

    prep = run.prep
    mean = np.asarray(prep.mean, np.float32) if len(prep.mean) else 0.0
    std = np.asarray(prep.std, np.float32) if len(prep.std) else 1.0
    out = []
    for x, lens in parity_batches(len(prep.feature_names), seed):
        valid = np.arange(x.shape[1])[None, :, None] < lens[:, None, None]
        out.append((((x * std + mean) * valid).astype(np.float32), lens))
    return out


def _diff(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.size == 0:
        return 0.0
    return float((np.abs(np.asarray(got, np.float64) - ref) / np.maximum(1.0, np.abs(ref))).max())


def export_values_onnx(run_dir: str | Path, out_path: str | Path | None = None, opset: int = DEFAULT_OPSET
                       ) -> dict[str, Any]:
    """Export a regress or direct-forecast run to ``OUT/model.onnx`` (default ``RUN_DIR/export/onnx``), check it
    with onnxruntime, write the sidecars; returns the manifest plus ``path`` and ``size_bytes``."""
    require(["onnx", "onnxruntime"], "ONNX export")
    import onnx

    from longshort.runs import load

    if not 14 <= opset <= 20:
        raise ExportError(f"--opset must be in 14..20, got {opset}")
    run = load(run_dir)
    if run.task not in VALUE_TASKS:
        raise ExportError(f"{run_dir} is a {run.task} run: this export covers task regress and forecast")
    d = out_dir(run_dir, out_path, "onnx")
    path = d / "model.onnx"
    if run.task == "forecast":
        _check_forecast(run)
        graph: nn.Module = ForecastGraph(run).eval()
        sc = run.scaler
        L, H, k, f = sc.lookback, sc.horizon, len(sc.target_names), len(sc.known_names)
        c = k + len(sc.past_names) + f
        example: tuple[Tensor, ...] = (torch.randn(3, L, c), torch.tensor([L, L, max(1, L // 2)]),
                                       torch.randn(3, H, f))
        names, outs = ["past", "valid", "known"], ["forecast", "quantiles"]
        axes = {n: {0: "batch"} for n in names + outs}
        inputs = [{"name": "past", "dtype": "float32", "shape": ["batch", L, c], "raw": True,
                   "columns": [*sc.target_names, *sc.past_names, *sc.known_names]},
                  {"name": "valid", "dtype": "int64", "shape": ["batch"]},
                  {"name": "known", "dtype": "float32", "shape": ["batch", H, f], "columns": list(sc.known_names)}]
        outputs = [{"name": "forecast", "dtype": "float32", "shape": ["batch", H, k]},
                   {"name": "quantiles", "dtype": "float32", "shape": ["batch", H, k, len(run.model.outputs.levels)],
                    "levels": list(run.model.outputs.levels)}]
    else:
        graph = RegressGraph(run).eval()
        c = len(run.prep.feature_names)
        example = (torch.randn(3, 12, c), torch.tensor([12, 4, 9]))
        names, outs = ["x", "lengths"], ["prediction", "quantiles"]
        axes = {"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "prediction": {0: "batch"},
                "quantiles": {0: "batch"}}
        levels = list(graph.outputs.levels)  # type: ignore[union-attr]
        inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", "time", c], "raw": True,
                   "columns": list(run.prep.feature_names)},
                  {"name": "lengths", "dtype": "int64", "shape": ["batch"]}]
        outputs = [{"name": "prediction", "dtype": "float32", "shape": ["batch", len(run.prep.target_names)]},
                   {"name": "quantiles", "dtype": "float32",
                    "shape": ["batch", len(run.prep.target_names), len(levels)], "levels": levels}]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(graph, example, str(path), dynamo=False, input_names=names, output_names=outs,
                              dynamic_axes=axes, opset_version=opset)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export (TorchScript exporter, opset {opset}) failed: {exc}") from exc
    onnx.checker.check_model(str(path))
    session = ort_session(path)
    worst, shapes = 0.0, []
    if run.task == "forecast":
        for past, valid, known in _forecast_batches(run, 0):
            ref = _eager_forecast(run, past, valid, known)
            got = session.run(outs, {"past": past, "valid": valid, "known": known})
            worst = max(worst, *(_diff(r, g) for r, g in zip(ref, got, strict=True)))
            shapes.append({"batch": len(past), "valid": valid.tolist()})
    else:
        for x, lens in _regress_batches(run, 0):
            point, q, _ = run.predict_values(x, lens)
            got = session.run(outs, {"x": x, "lengths": lens})
            worst = max(worst, _diff(point, got[0]), _diff(q, got[1]))
            shapes.append({"batch": int(x.shape[0]), "time": int(x.shape[1]), "lengths": lens.tolist()})
    parity = {"reference": f"torch eager ({type(run).__name__}.load)", "max_rel_diff": worst,
              "relative_to": "max(1, |eager|)", "tolerance": PARITY_TOL, "batches": shapes}
    if not worst <= PARITY_TOL:  # NaN fails too
        path.unlink(missing_ok=True)
        raise ExportError(f"the export {path} does not reproduce the eager model: max relative |difference| "
                          f"{worst:.3g} (tolerance {PARITY_TOL:g}); the file was deleted")
    from longshort._version import __version__

    shutil.copyfile(run.dir / "preprocess.json", d / "preprocess.json")
    manifest = write_manifest(d, {
        "format": "onnx", "task": run.task, "file": path.name, "opset": opset, "precision": "float32",
        "exporter": "torch.onnx.export (TorchScript)", "inputs": inputs, "outputs": outputs,
        "input_scaling": "none: the inputs are raw, the run's scaling is inside the graph", "parity": parity,
        "source": {"run_dir": str(run.dir.resolve()), "weights_sha256": weights_sha256(run.dir)},
        "versions": {"longshort": __version__, "torch": torch.__version__, **_ort_version()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return {**manifest, "path": str(path), "size_bytes": path.stat().st_size}
