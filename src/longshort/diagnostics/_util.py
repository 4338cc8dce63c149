"""Small helpers shared by the diagnostics: leave a model exactly as it was found."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Every module in ``train`` (or eval) mode for the block, then each module's own flag back.

    Per-module, not ``model.train(was)``: a caller may have frozen parts of a model in eval mode (a pretrained
    block inside a training model), and a diagnostic must not unfreeze them."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def rng_untouched(seed: int | None) -> Iterator[None]:
    """Fork torch's CPU (and CUDA) RNG for the block, seeded with ``seed`` when given.

    Diagnostics may run between training steps; training's draws are functions of (seed, epoch, batch), so a
    diagnostic that consumed the global stream would make a run with diagnostics differ from one without."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def json_safe(x: Any) -> Any:
    """``x`` with NaN/inf floats as None and numpy/torch scalars as Python numbers: strict JSON."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return json_safe(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
