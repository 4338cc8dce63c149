"""Training losses, chosen by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["cross_entropy"] = "cross_entropy"
    class_weights: bool = Field(True, description="weight classes by inverse frequency in the training split")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    aux_weight: float = Field(
        0.3, ge=0, description="weight of the auxiliary regression loss (when the data has an aux target)"
    )


ClassLoss = Callable[[Tensor, Tensor], Tensor]


def _cross_entropy(cfg: LossConfig, weight: Tensor | None) -> ClassLoss:
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=cfg.label_smoothing)

    return loss


LOSSES: dict[str, Callable[[LossConfig, Tensor | None], ClassLoss]] = {"cross_entropy": _cross_entropy}


def balanced_class_weights(y: Tensor, num_classes: int) -> Tensor:
    """``n / (k * count_c)`` per class (scikit-learn's 'balanced'); a class absent from training gets 0."""
    counts = torch.bincount(y, minlength=num_classes).float()
    w = len(y) / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, w, torch.zeros_like(w))


def build_loss(cfg: LossConfig, train_y: Tensor, num_classes: int) -> ClassLoss:
    weight = balanced_class_weights(train_y, num_classes) if cfg.class_weights else None
    return LOSSES[cfg.name](cfg, weight)
