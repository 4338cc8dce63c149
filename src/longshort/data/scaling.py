"""Per-sequence statistics and normalisation, numpy only: the training pipeline (``data.scale=series``) and
the torch-free runtime (:mod:`longshort.deploy.runtime`) both call these, so the two agree to the bit."""

from __future__ import annotations

import numpy as np


def series_moments(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid-step mask [N, T, 1], mean [N, 1, C], std [N, 1, C]) of each sequence per feature over its valid
    steps, in float64."""
    mask = (np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None])[..., None]
    n = np.maximum(mask.sum(1, keepdims=True), 1)
    x64 = x.astype(np.float64) * mask
    mean = x64.sum(1, keepdims=True) / n
    std = np.sqrt((((x64 - mean) * mask) ** 2).sum(1, keepdims=True) / n)
    return mask, mean, std


def series_normalise(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """float32 [N, T, C]: each sequence per feature to zero mean, unit std over its valid steps (a constant
    feature to zero); padded steps stay zero."""
    mask, mean, std = series_moments(x, lengths)
    return (((x.astype(np.float64) - mean) / np.where(std > 1e-12, std, 1.0)) * mask).astype(np.float32)


def ragged_moments(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [N, C], std [N, C]) in float64 of sequences kept back to back (``values[offsets[i]:offsets[i+1]]``)."""
    lengths = np.diff(offsets)
    seq = np.repeat(np.arange(len(lengths)), lengths)
    n = np.maximum(lengths, 1)[:, None].astype(np.float64)
    x = values.astype(np.float64)
    mean = np.stack([np.bincount(seq, x[:, c], len(lengths)) for c in range(x.shape[1])], 1) / n
    dev = (x - mean[seq]) ** 2
    std = np.sqrt(np.stack([np.bincount(seq, dev[:, c], len(lengths)) for c in range(x.shape[1])], 1) / n)
    return mean, std


def ragged_normalise(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """:func:`series_normalise` of sequences kept back to back: float32 values of the same shape."""
    mean, std = ragged_moments(values, offsets)
    seq = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return ((values.astype(np.float64) - mean[seq]) / np.where(std > 1e-12, std, 1.0)[seq]).astype(np.float32)


def scale_spread(x: np.ndarray, lengths: np.ndarray, std: np.ndarray | None = None) -> float:
    """How far the sequences' scales spread: the largest, over features, 90th / 10th percentile of the
    per-sequence standard deviations (inf when a tenth of the sequences are constant). ``std`` [N, C]: those
    deviations already computed (``x`` is then not read)."""
    if len(lengths) < 2:
        return 1.0
    if std is None:
        std = series_moments(x, lengths)[2][:, 0, :]  # [N, C]
    p10, p90 = np.percentile(std, 10, axis=0), np.percentile(std, 90, axis=0)
    ratio = np.where(p10 > 1e-12, p90 / np.maximum(p10, 1e-12), np.where(p90 > 1e-12, np.inf, 1.0))
    return float(ratio.max())
