"""Model-ready tensors and deterministic, resumable batch order.

A data set lives in memory as one padded tensor; for windows of one series, as a strided view of the
series' rows (:func:`window_tensor`, memory linear in rows); for variable-length sequences, as their steps back
to back with offsets (memory linear in real steps), so a batch is an index into it: no worker
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
    """Model-ready tensors. ``X`` is [N, T, C] padded (or a strided view of a series' windows); with ``offsets``
    it is the variable-length sequences back to back, [total steps, C] (sequence ``i`` is
    ``X[offsets[i]:offsets[i + 1]]``), and :meth:`rows` pads a batch to its own longest sequence."""

    X: Tensor  # float32 [N, T, C], or [total steps, C] with offsets
    lengths: Tensor  # int64 [N]
    y: Tensor | None  # int64 [N] class indices, or float32 [N, k] scaled regression targets
    aux: Tensor | None  # float32 [N]
    offsets: Tensor | None = None  # int64 [N + 1] when X holds the sequences back to back

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def channels(self) -> int:
        return int(self.X.shape[-1])

    def rows(self, idx: Tensor) -> Tensor:
        """[len(idx), longest of them, C]: sequences ``idx``, zero after each one's end."""
        lengths = self.lengths[idx]
        t = int(lengths.max()) if len(idx) else 0
        if self.offsets is None:
            return self.X[idx, :t]
        # one gather of every (sequence, step) position, the padding read from step 0 and zeroed
        pos = self.offsets[idx][:, None] + torch.arange(t)[None, :]
        valid = torch.arange(t)[None, :] < lengths[:, None]
        return self.X[torch.where(valid, pos, 0)] * valid[..., None].to(self.X.dtype)

    def head(self, n: int) -> TensorData:
        """The first ``n`` sequences, padded to their longest (a plain [n, T, C] tensor)."""
        idx = torch.arange(min(n, len(self)))
        return TensorData(self.rows(idx), self.lengths[idx], None if self.y is None else self.y[idx],
                          None if self.aux is None else self.aux[idx])


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
    w, offsets = data.windows, None
    if w is not None:
        values = torch.from_numpy(np.require(w.values, np.float32, ["C", "W"]))
        x = window_tensor(values, w.start, w.stride, w.length, w.count)
    elif data.ragged is not None:  # variable-length sequences stay back to back: batches pad themselves
        x = torch.from_numpy(np.require(data.ragged.values, np.float32, ["C", "W"]))
        offsets = torch.from_numpy(np.asarray(data.ragged.offsets, dtype=np.int64))
    else:
        x = torch.from_numpy(np.ascontiguousarray(data.X, dtype=np.float32))
    return TensorData(
        X=x,
        lengths=torch.from_numpy(np.asarray(data.lengths, dtype=np.int64)),
        y=None if data.y is None else torch.from_numpy(
            np.asarray(data.y, dtype=np.float32 if np.asarray(data.y).dtype.kind == "f" else np.int64)),
        aux=None if data.aux is None else torch.from_numpy(np.asarray(data.aux, dtype=np.float32)),
        offsets=offsets,
    )


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of epoch ``epoch``: depends on nothing but (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(order: Tensor, batch_size: int) -> list[Tensor]:
    return list(torch.split(order, batch_size))


def take(data: TensorData, idx: Tensor, device: torch.device) -> Batch:
    lengths = data.lengths[idx]
    nb = device.type != "cpu"
    return Batch(
        x=data.rows(idx).to(device, non_blocking=nb),
        lengths=lengths.to(device, non_blocking=nb),
        y=None if data.y is None else data.y[idx].to(device, non_blocking=nb),
        aux=None if data.aux is None else data.aux[idx].to(device, non_blocking=nb),
    )


def sequential_batches(data: TensorData, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Batches in data order (evaluation and prediction)."""
    for idx in batch_indices(torch.arange(len(data)), batch_size):
        yield take(data, idx, device)
