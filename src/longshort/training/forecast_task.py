"""The forecasting task of the one :class:`~longshort.training.trainer.Trainer`: a lookback window -> the next
``H`` steps.

Per epoch: the training windows (every origin of every series' training part, or a seeded draw of
``forecast.max_windows`` of them) in a (seed, epoch) order; with ``forecast.horizon_curriculum`` the trained
horizon grows from 1 to ``H``. Per batch: the windows' rows, each scaled by its own lookback's mean and std
(:func:`~longshort.data.forecast_data.window_scale`) -> the forecaster, teacher-forced with the scheduled-sampling
probability of ``forecast.sampling`` (autoregressive decoder) -> ``forecast.loss`` in scaled units. Validation:
the loss of the free-running forecast (what predict does), the teacher-forced loss and their difference, the
exposure-bias gap (autoregressive decoder); MAE, RMSE and MASE of the point forecast in the series' own units.

Every random draw (which windows, scheduled sampling) comes from a generator seeded by (seed, purpose, epoch,
batch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from longshort.data.forecast_data import WindowSet
from longshort.diagnostics.monitor import DiagnosticsConfig
from longshort.evaluate.forecast_metrics import point_metrics
from longshort.evaluate.forecast_predict import ForecastBatch, make_batch
from longshort.nn.forecaster import Forecaster
from longshort.training import curriculum as cur
from longshort.training.callbacks import Callback
from longshort.training.config import ForecastSection
from longshort.training.trainer import TrainConfig, Trainer

_PURPOSE = {"windows": 13, "sampling": 14}


class ForecastTask:
    """Forecasting (see the module's docstring)."""

    default_metric = "val_loss"
    progress_metric = "train_mae"
    sums = ("loss", "ae", "n", "sampling")  # (loss * n, scaled absolute error * n, windows, sampling prob * n)

    def __init__(self, cfg: TrainConfig, fc: ForecastSection, train: WindowSet, val: WindowSet | None) -> None:
        self.cfg, self.fc, self.train_data, self.val_data = cfg, fc, train, val
        self.tr: Trainer

    def bind(self, trainer: Trainer) -> None:
        self.tr = trainer

    @property
    def model(self) -> Forecaster:
        return self.tr.model  # type: ignore[return-value]

    @property
    def autoregressive(self) -> bool:
        return self.fc.model.decoder == "autoregressive"

    # -- what an epoch looks like -------------------------------------------------------------------------

    def plan(self, epoch: int) -> cur.EpochPlan:
        n = len(self.train_data)
        order = torch.randperm(n, generator=self.tr.generator(_PURPOSE["windows"], epoch))
        return cur.EpochPlan(order[: self.fc.max_windows], None)

    def epoch_size(self, epoch: int) -> int:
        return min(len(self.train_data), self.fc.max_windows)

    def begin_epoch(self, epoch: int) -> None:
        pass

    def steps_trained(self, epoch: int) -> int:
        """The horizon trained in ``epoch``: ``H``, or its curriculum's 1 .. H (linear over the first share)."""
        share, horizon = self.fc.horizon_curriculum, self.fc.horizon
        if share <= 0:
            return horizon
        ramp = max(1.0, share * self.cfg.epochs)
        return max(1, min(horizon, math.ceil(horizon * (epoch + 1) / ramp)))

    # -- one step -------------------------------------------------------------------------------------

    def take(self, idx: Tensor, plan: cur.EpochPlan) -> ForecastBatch:
        return make_batch(self.train_data, idx.numpy(), self.tr.device)

    def micro_batches(self, batch: ForecastBatch, k: int) -> list[tuple[Any, float]]:
        if k == 1:
            return [(batch, 1.0)]
        parts = torch.tensor_split(torch.arange(len(batch), device=batch.past.device), k)
        return [(batch.rows(p), len(p) / len(batch)) for p in parts]

    def loss(self, batch: ForecastBatch, part: int) -> tuple[Tensor, dict[str, Tensor | float]]:
        tr = self.tr
        assert batch.y is not None
        steps = self.steps_trained(tr.epoch)
        prob = 1.0 - self.fc.sampling.teacher_forcing(tr.step, tr.epoch) if self.autoregressive else 0.0
        gen = tr.generator(_PURPOSE["sampling"], tr.epoch, tr.batch, part) if prob > 0 else None
        with tr.autocast():
            z = tr.model(batch.past, batch.known, batch.y, prob, gen, steps)
        y = batch.y[:, :steps]
        loss = self.model.outputs.loss_value(z, y)
        ae = (self.model.outputs.point(z.detach()) - y).abs().mean()
        n = len(batch)
        return loss, {"loss": loss.detach().double() * n, "ae": ae.double() * n, "n": n, "sampling": prob * n}

    def summary(self, sums: dict[str, float], fresh: dict[str, float], elapsed: float) -> dict[str, float]:
        n = max(sums["n"], 1)
        row = {"train_loss": sums["loss"] / n, "train_mae": sums["ae"] / n}  # the trainer adds samples_per_s
        if self.autoregressive:
            row["sampling_prob"] = sums["sampling"] / n
            if self.fc.horizon_curriculum > 0:
                row["horizon_trained"] = float(self.steps_trained(self.tr.epoch))
        return row

    # -- evaluation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def outputs(self, data: WindowSet, sampling_prob: float = 1.0) -> tuple[Tensor, list[ForecastBatch]]:
        """The model's raw outputs [M, H, size] on ``data`` in eval mode: free running (``sampling_prob = 1``,
        what predict does) or teacher-forced (0)."""
        model = self.model
        was = model.training
        model.eval()
        zs, batches = [], []
        try:
            for idx in np.array_split(np.arange(len(data)), max(1, -(-len(data) // self.cfg.eval_batch_size))):
                if not len(idx):
                    continue
                b = make_batch(data, idx, self.tr.device)
                y = b.y if sampling_prob < 1 else None
                with self.tr.autocast():
                    zs.append(model(b.past, b.known, y, sampling_prob).float().cpu())
                batches.append(b)
        finally:
            model.train(was)
        return (torch.cat(zs) if zs else torch.zeros(0, data.horizon, model.outputs.size)), batches

    def evaluate(self, data: WindowSet) -> dict[str, float]:
        if not len(data):
            return {"loss": 0.0}
        out = self.model.outputs
        z, batches = self.outputs(data, 1.0)
        y = torch.cat([b.y for b in batches if b.y is not None]).cpu()
        m: dict[str, float] = {"loss": float(out.loss_value(z, y))}
        if self.autoregressive and self.fc.exposure_gap:
            tf, _ = self.outputs(data, 0.0)
            m["tf_loss"] = float(out.loss_value(tf, y))
            m["exposure_gap"] = m["loss"] - m["tf_loss"]
        loc = np.concatenate([b.loc for b in batches])[:, None]
        scale = np.concatenate([b.scale for b in batches])[:, None]
        pred = out.point(z).numpy() * scale + loc
        truth = y.numpy() * scale + loc
        pm = point_metrics(truth, pred, data.mase_scale)
        return m | {"mae": pm["mae"], "rmse": pm["rmse"], "mase": pm["mase"]}

    def validate(self) -> dict[str, float]:
        assert self.val_data is not None
        return {f"val_{k}": v for k, v in self.evaluate(self.val_data).items()}

    def gate_probe(self, n: int) -> Any:
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        batch = make_batch(data, np.arange(min(n, len(data))), self.tr.device)
        return lambda: self.model.encode(batch.past)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def forecast_trainer(cfg: TrainConfig, fc: ForecastSection, model: Forecaster, train: WindowSet,
                     val: WindowSet | None, *, seed: int, run_dir: Path, callbacks: list[Callback] | None = None,
                     diagnostics: DiagnosticsConfig | None = None) -> Trainer:
    """The one trainer with the forecasting task on ``train`` (and ``val``)."""
    return Trainer(cfg, model, ForecastTask(cfg, fc, train, val), seed=seed, run_dir=run_dir, callbacks=callbacks,
                   diagnostics=diagnostics)
