"""The regression task of the one :class:`~longshort.training.trainer.Trainer`: sequences -> a number (or k) each.

It is the classification task with another head and loss: the same epoch plans (length curriculum, seed and
epoch order), the same augmentation, micro-batches and resume state (:class:`ClassifyTask`), while the loss is
``regress.loss`` on the head's outputs (:class:`~longshort.nn.regression.RegressionOutputs`) and validation
measures the loss (in the scaled target's units: the pipeline standardises the target on the training split),
RMSE and MAE (in the target's own units, averaged over the targets). Mixup and the auxiliary target are the
classifier's only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from longshort.data.batching import Batch, TensorData
from longshort.evaluate.predict import batched_head
from longshort.nn.regression import RegressionOutputs
from longshort.training import curriculum as cur
from longshort.training.classify import ClassifyTask
from longshort.training.trainer import TrainConfig, Trainer


class RegressTask(ClassifyTask):
    """Sequence regression (see the module's docstring)."""

    default_metric = "val_rmse"
    progress_metric = "train_rmse"
    sums = ("loss", "se", "ae", "n")  # (loss * n, squared error, absolute error, examples)

    def __init__(self, cfg: TrainConfig, train: TensorData, val: TensorData | None,
                 outputs: RegressionOutputs, target_std: list[float] | None = None) -> None:
        super().__init__(cfg, train, val, outputs.size)
        self.outputs = outputs
        # errors are measured in scaled units and reported in the target's own: times each target's std
        self.std = torch.tensor(target_std or [1.0] * outputs.targets, dtype=torch.float32)

    def bind(self, trainer: Trainer) -> None:
        self.tr = trainer

    def begin_epoch(self, epoch: int) -> None:  # no curriculum scores, no auxiliary task to weigh
        return None

    def plan(self, epoch: int) -> cur.EpochPlan:
        return cur.plan_epoch(self.cfg.curriculum, epoch, self.cfg.epochs, self.tr.seed, self.train_data.lengths,
                              None, 0.0)

    def loss(self, part: tuple[Batch, Any], j: int) -> tuple[Tensor, dict[str, Tensor | float]]:
        batch, _ = part  # no mixup for this task (config refuses it)
        with self.tr.autocast():
            out = self.tr.model(batch.x, batch.lengths)
        assert batch.y is not None
        loss = self.outputs.loss_value(out.logits, batch.y)
        err = (self.outputs.point(out.logits.detach()) - batch.y.float()) * self.std.to(batch.y.device)
        n = len(batch)
        k = err.shape[-1]
        return loss, {"loss": loss.detach().double() * n, "se": (err**2).sum().double() / k,
                      "ae": err.abs().sum().double() / k, "n": n}

    def summary(self, sums: dict[str, float], fresh: dict[str, float], elapsed: float) -> dict[str, float]:
        n = max(sums["n"], 1)
        return {"train_loss": sums["loss"] / n, "train_rmse": (sums["se"] / n) ** 0.5, "train_mae": sums["ae"] / n}

    def predict_head(self, data: TensorData) -> Tensor:
        return batched_head(self.tr.model, data, self.cfg.eval_batch_size, self.tr.autocast)

    def evaluate(self, data: TensorData) -> dict[str, float]:
        assert data.y is not None
        z = self.predict_head(data)
        if not len(z):
            return {"loss": 0.0, "rmse": 0.0, "mae": 0.0}
        err = (self.outputs.point(z) - data.y.float()) * self.std
        return {"loss": float(self.outputs.loss_value(z, data.y)), "rmse": float(err.pow(2).mean().sqrt()),
                "mae": float(err.abs().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

