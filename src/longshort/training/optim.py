"""Optimizers and learning-rate schedules, chosen by name from small registries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.optim.lr_scheduler import LRScheduler


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-4, gt=0, description="base learning rate (OneCycle's starting point is max_lr/div)")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm; null = off")


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["onecycle", "constant"] = "onecycle"
    max_lr: float = Field(1e-3, gt=0, description="OneCycle peak learning rate")
    pct_start: float = Field(0.1, gt=0, lt=1, description="OneCycle warm-up fraction")
    anneal: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = Field(False, description="OneCycle also cycles beta1 (overrides optim.betas[0])")


def _adamw(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], OptimConfig], torch.optim.Optimizer]] = {"adamw": _adamw}


def _onecycle(opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    # One step more than the run takes: OneCycleLR's cosine would turn back up on its very last step.
    total = max(total_steps + 1, 4)
    # Warm-up as a whole number of steps, so the peak is reached exactly; at least two, since OneCycleLR
    # divides by (warm-up steps - 1) and tiny runs would otherwise raise ZeroDivisionError.
    warm = min(max(round(cfg.pct_start * total_steps), 2), total // 2)
    pct = warm / total
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.max_lr,
        total_steps=total,
        pct_start=pct,
        anneal_strategy=cfg.anneal,
        cycle_momentum=cfg.cycle_momentum,
        div_factor=cfg.max_lr / base_lr,  # start at the optimizer's lr, as the seed's recipe does
    )


def _constant(opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, ScheduleConfig, int, float], LRScheduler]] = {
    "onecycle": _onecycle,
    "constant": _constant,
}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name]([p for p in model.parameters() if p.requires_grad], cfg)


def build_schedule(opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    """A schedule stepped once per batch over ``total_steps`` batches."""
    return SCHEDULES[cfg.name](opt, cfg, total_steps, base_lr)
