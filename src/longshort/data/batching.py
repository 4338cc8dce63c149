"""Model-ready tensors and deterministic, resumable batch order.

A data set lives in memory as one padded tensor, or, for windows of one series, as a strided view of the
series' rows (:func:`window_tensor`, memory linear in rows), so a batch is an index into it: no worker
processes, and the order of an epoch is a pure function of (seed, epoch), which is what makes
resuming mid-epoch exact. Each batch is trimmed to its longest sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from longshort.data.types import SequenceData


@dataclass
class TensorData:
    X: Tensor  # float32 [N, T, C]
    lengths: Tensor  # int64 [N]
    y: Tensor | None  # int64 [N] class indices, or float32 [N, k] scaled regression targets
    aux: Tensor | None  # float32 [N]

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass
class Batch:
    x: Tensor
    lengths: Tensor
    y: Tensor | None
    aux: Tensor | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def window_tensor(values: Tensor, start: int, stride: int, length: int, count: int) -> Tensor:
    """[count, length, C] strided view of a series ``values`` [rows, C]: window ``i`` starts at row
    ``start + i * stride`` (no copy; indexing it gathers only the rows of the windows asked for)."""
    if count == 0:
        return values.new_zeros(0, length, values.shape[1])
    every = values.unfold(0, length, 1)  # [rows - length + 1, C, length]
    return every[start : start + (count - 1) * stride + 1 : stride].transpose(1, 2)


def to_tensors(data: SequenceData) -> TensorData:
    """``data.y`` must already hold class indices or scaled float targets (see
    :class:`longshort.data.pipeline.Preprocessor`). Windows of one series stay a view of its rows."""
    w = data.windows
    if w is not None:
        values = torch.from_numpy(np.require(w.values, np.float32, ["C", "W"]))
        x = window_tensor(values, w.start, w.stride, w.length, w.count)
    else:
        x = torch.from_numpy(np.ascontiguousarray(data.X, dtype=np.float32))
    return TensorData(
        X=x,
        lengths=torch.from_numpy(np.asarray(data.lengths, dtype=np.int64)),
        y=None if data.y is None else torch.from_numpy(
            np.asarray(data.y, dtype=np.float32 if np.asarray(data.y).dtype.kind == "f" else np.int64)),
        aux=None if data.aux is None else torch.from_numpy(np.asarray(data.aux, dtype=np.float32)),
    )


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of epoch ``epoch``: depends on nothing but (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(order: Tensor, batch_size: int) -> list[Tensor]:
    return list(torch.split(order, batch_size))


def take(data: TensorData, idx: Tensor, device: torch.device) -> Batch:
    lengths = data.lengths[idx]
    t = int(lengths.max())
    nb = device.type != "cpu"
    return Batch(
        x=data.X[idx, :t].to(device, non_blocking=nb),
        lengths=lengths.to(device, non_blocking=nb),
        y=None if data.y is None else data.y[idx].to(device, non_blocking=nb),
        aux=None if data.aux is None else data.aux[idx].to(device, non_blocking=nb),
    )


def sequential_batches(data: TensorData, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Batches in data order (evaluation and prediction)."""
    for idx in batch_indices(torch.arange(len(data)), batch_size):
        yield take(data, idx, device)
