"""Batched inference shared by validation, evaluation and prediction."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from longshort.data.batching import TensorData, sequential_batches


@torch.no_grad()
def batched_outputs(model: nn.Module, data: TensorData, batch_size: int,
                    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
                    ) -> tuple[Tensor, Tensor]:
    """(class probabilities [N, K], auxiliary predictions [N]), float32 on the CPU, in data order, with the
    model in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    proba, aux = [], []
    for batch in sequential_batches(data, batch_size, device):
        with autocast():
            out = model(batch.x, batch.lengths)
        proba.append(torch.softmax(out.logits.float(), -1).cpu())
        aux.append(out.aux.float().cpu())
    model.train(was_training)
    if not proba:
        return torch.zeros(0, getattr(model, "num_classes", 0)), torch.zeros(0)
    return torch.cat(proba), torch.cat(aux)


def batched_proba(model: nn.Module, data: TensorData, batch_size: int,
                  autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
                  ) -> Tensor:
    """Class probabilities [N, K] (float32, CPU) in data order, with the model in eval mode."""
    return batched_outputs(model, data, batch_size, autocast)[0]


@torch.no_grad()
def batched_head(model: nn.Module, data: TensorData, batch_size: int,
                 autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> Tensor:
    """The head's raw outputs [N, K] (float32, CPU) in data order, eval mode: what task regress reads
    (:class:`longshort.nn.regression.RegressionOutputs`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for batch in sequential_batches(data, batch_size, device):
        with autocast():
            out.append(model(batch.x, batch.lengths).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "num_classes", 0))
