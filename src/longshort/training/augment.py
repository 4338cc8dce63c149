"""Training-time data augmentation for padded sequence batches, and mixup.

:func:`augment` applies random per-sequence transforms (time warp, window slice, time shift, magnitude warp,
Gaussian noise) to the valid part of each row of a zero-padded ``[B, T, C]`` batch; :func:`mixup` blends a
batch with a permutation of itself and :func:`mixup_loss` blends the loss to match. Every random draw comes
from the ``torch.Generator`` passed in (drawn on the CPU, then moved to the batch's device), so a seed fixes
the result on any device and a resumed run replays it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from longshort.training.config import _ORDER as _ORDER
from longshort.training.config import AugmentConfig as AugmentConfig
from longshort.training.config import MagnitudeWarpConfig as MagnitudeWarpConfig
from longshort.training.config import MixupConfig as MixupConfig
from longshort.training.config import NoiseConfig as NoiseConfig
from longshort.training.config import TimeShiftConfig as TimeShiftConfig
from longshort.training.config import TimeWarpConfig as TimeWarpConfig
from longshort.training.config import WindowSliceConfig as WindowSliceConfig

# -- config -------------------------------------------------------------------------------------------------


# Floor on a time-warp segment's speed before normalisation: keeps the time map strictly increasing and stops
# one segment from being squeezed to (nearly) a point however large ``strength`` is.
_MIN_SPEED = 0.1

# ceil(ratio * length) in floating point can land just above an integer (0.7 * 10 = 7.000000000000001);
# subtracting this first gives the window length a user means.
_CEIL_EPS = 1e-9


# -- helpers ------------------------------------------------------------------------------------------------


def _valid_mask(lengths: Tensor, t: int) -> Tensor:
    """[B, T] bool: True on each row's valid steps."""
    return torch.arange(t, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _zero_padding(x: Tensor, lengths: Tensor) -> Tensor:
    return x.masked_fill(~_valid_mask(lengths, x.shape[1]).unsqueeze(-1), 0)


def _gather_steps(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, t], :]`` for integer ``idx`` [B, T]."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def _interp(x: Tensor, pos: Tensor, lengths: Tensor) -> Tensor:
    """Each row of ``x`` read at fractional time positions ``pos`` [B, T] by linear interpolation between
    neighbouring valid steps; positions are clamped to the row's valid part ``[0, length - 1]``, so padding is
    never read. Integer positions return the stored value exactly (``torch.lerp`` with weight 0 or 1)."""
    last = (lengths - 1).clamp_min(0).unsqueeze(1)  # [B, 1]
    pos = pos.clamp_min(0).minimum(last.to(pos.dtype))
    i0 = pos.floor().long().minimum(last)
    i1 = (i0 + 1).minimum(last)
    w = (pos - i0.to(pos.dtype)).unsqueeze(-1).to(x.dtype)
    return torch.lerp(_gather_steps(x, i0), _gather_steps(x, i1), w)


def _pos_dtype(device: torch.device) -> torch.dtype:
    """Time positions in float64 where the device has it (MPS does not): then a map that should be the identity
    lands on integer positions after rounding, and reads the data exactly; float32 would be off by ~1e-6 * T."""
    return torch.float32 if device.type == "mps" else torch.float64


def _unit_time(lengths: Tensor, t: int) -> Tensor:
    """[B, T]: step t of each row as a fraction t / (length - 1) in [0, 1] (0 for length 1)."""
    dt = _pos_dtype(lengths.device)
    steps = torch.arange(t, device=lengths.device, dtype=dt).unsqueeze(0)
    return (steps / (lengths - 1).clamp_min(1).unsqueeze(1).to(dt)).clamp(0, 1)


# -- transforms ---------------------------------------------------------------------------------------------
# Each takes the rows chosen for it (x [b, T, C], lengths [b]) and the random draws for those rows, already on
# x's device, and returns the transformed rows with zero padding.


def _time_warp(x: Tensor, lengths: Tensor, speeds: Tensor) -> Tensor:
    """Piecewise-linear monotone time map: the output time axis [0, 1] is cut into ``K + 1`` equal segments
    (``K`` interior knots); segment k advances through the source at speed ``speeds[:, k]``, normalised so the
    map runs from 0 to 1 (the sequence keeps its own length, its first and last values)."""
    n_seg = speeds.shape[1]
    speeds = speeds.to(_pos_dtype(x.device))
    cum = torch.cat([speeds.new_zeros(speeds.shape[0], 1), speeds.cumsum(1)], dim=1)
    cum = cum / cum[:, -1:]  # knot positions in the source, 0 ... exactly 1
    u = _unit_time(lengths, x.shape[1]) * n_seg
    seg = u.floor().long().clamp_max(n_seg - 1)
    frac = u - seg.to(u.dtype)
    src = torch.lerp(cum.gather(1, seg), cum.gather(1, seg + 1), frac)  # in [0, 1]
    pos = src * (lengths - 1).clamp_min(0).unsqueeze(1).to(src.dtype)
    return _zero_padding(_interp(x, pos, lengths), lengths)


def _window_slice(x: Tensor, lengths: Tensor, window: Tensor) -> Tensor:
    """Steps ``start ... start + width - 1`` of each row (``window`` [b, 2] = (start, width)), stretched by linear
    interpolation to the row's length."""
    dt = _pos_dtype(x.device)
    start, width = window.unbind(1)
    scale = (width - 1).to(dt) / (lengths - 1).clamp_min(1).to(dt)
    steps = torch.arange(x.shape[1], device=x.device, dtype=dt).unsqueeze(0)
    pos = start.to(dt).unsqueeze(1) + steps * scale.unsqueeze(1)
    return _zero_padding(_interp(x, pos, lengths), lengths)


def _time_shift(x: Tensor, lengths: Tensor, shift: Tensor) -> Tensor:
    """``torch.roll(x[b, :L], shift[b], 0)`` for every row at once: output step t < L reads step (t - s) mod L.
    torch.roll takes one shift for the whole tensor and would roll padding into the data, hence the gather."""
    n = lengths.clamp_min(1).unsqueeze(1)  # length 0 rows are all padding; avoid a modulo by zero
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    src = torch.remainder(steps - shift.unsqueeze(1), n)
    return _zero_padding(_gather_steps(x, src), lengths)


def _magnitude_warp(x: Tensor, lengths: Tensor, factor: Tensor) -> Tensor:
    """Each channel of each row times its own factor [b, C] (padding is zero and stays zero)."""
    return _zero_padding(x * factor.unsqueeze(1).to(x.dtype), lengths)


def _noise(x: Tensor, lengths: Tensor, noise: Tensor) -> Tensor:
    return _zero_padding(x + noise.to(x.dtype), lengths)


# -- public API ---------------------------------------------------------------------------------------------


def _check_batch(x: Tensor, lengths: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"augmentation expects x as [batch, time, channels], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"augmentation expects floating-point x, got {x.dtype}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(f"lengths must be [batch] = [{x.shape[0]}], got shape {tuple(lengths.shape)}")
    if lengths.device != x.device:
        raise ValueError(f"lengths must be on x's device ({x.device}), got {lengths.device}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > x.shape[1]):
        raise ValueError(
            f"lengths must lie in [0, {x.shape[1]}] (the batch's time steps), "
            f"got [{int(lengths.min())}, {int(lengths.max())}]"
        )


def augment(x: Tensor, lengths: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """A randomly augmented copy of the zero-padded batch ``x`` [B, T, C] (``x`` itself is not modified).

    Each transform of ``cfg`` is applied to each sequence independently with its ``prob``, in the order
    time_warp, window_slice, time_shift, magnitude_warp, noise, and touches only the sequence's valid part:
    steps at or past ``lengths[b]`` are exactly 0 in the result, and lengths do not change.

    Randomness: ``generator`` (a CPU generator) gives one seed per transform, and each transform draws its
    choice of rows and its parameters for *all* rows from its own generator. So a transform's draws do not
    depend on which other transforms are on, nor on which rows they picked; everything is drawn on the CPU and
    moved to ``x.device``, so the result is the same on any device up to floating-point rounding.
    """
    _check_batch(x, lengths)
    b, t, c = x.shape
    seeds = torch.randint(0, 2**62, (len(_ORDER),), generator=generator).tolist()
    out = x.clone()
    if b == 0 or t == 0:
        return out
    dev = x.device
    lengths_cpu = lengths.cpu()
    for name, seed in zip(_ORDER, seeds, strict=True):
        sub = getattr(cfg, name)
        if sub.prob <= 0:
            continue
        g = torch.Generator().manual_seed(seed)
        chosen = torch.rand(b, generator=g) < sub.prob
        draw_fn, apply_fn = _TRANSFORMS[name]
        # Parameters for every row (not only the chosen ones), so the draws are a function of the seed alone.
        draw = draw_fn(sub, lengths_cpu, (b, t, c), g)
        rows = chosen.nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        rows_d = rows.to(dev)
        new = apply_fn(out.index_select(0, rows_d), lengths.index_select(0, rows_d), draw[rows].to(dev))
        out = out.index_copy(0, rows_d, new)
    return out


# -- random draws per transform (on the CPU, for every row of the batch) -------------------------------------


def _draw_time_warp(sub: TimeWarpConfig, lengths: Tensor, shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
    return (1 + sub.strength * torch.randn(shape[0], sub.knots + 1, generator=g)).clamp_min(_MIN_SPEED)


def _draw_window_slice(sub: WindowSliceConfig, lengths: Tensor, shape: tuple[int, int, int],
                       g: torch.Generator) -> Tensor:
    # (start, width) per row, in float64 on the CPU: exact integer window lengths on any device.
    width = torch.ceil(sub.ratio * lengths.double() - _CEIL_EPS).long()
    width = width.clamp_min(1).minimum(lengths.clamp_min(1))
    room = (lengths - width).clamp_min(0)  # the start is uniform on [0, room]
    start = (torch.rand(shape[0], generator=g, dtype=torch.float64) * (room + 1)).floor().long().minimum(room)
    return torch.stack([start, width], dim=1)


def _draw_time_shift(sub: TimeShiftConfig, lengths: Tensor, shape: tuple[int, int, int],
                     g: torch.Generator) -> Tensor:
    return torch.randint(-sub.max_shift, sub.max_shift + 1, (shape[0],), generator=g)


def _draw_magnitude_warp(sub: MagnitudeWarpConfig, lengths: Tensor, shape: tuple[int, int, int],
                         g: torch.Generator) -> Tensor:
    return 1 + sub.std * torch.randn(shape[0], shape[2], generator=g)


def _draw_noise(sub: NoiseConfig, lengths: Tensor, shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
    return sub.std * torch.randn(*shape, generator=g)


# name -> (draw the parameters of every row, apply them to the chosen rows); applied in _ORDER.
_TRANSFORMS: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor, Tensor, Tensor], Tensor]]] = {
    "time_warp": (_draw_time_warp, _time_warp),
    "window_slice": (_draw_window_slice, _window_slice),
    "time_shift": (_draw_time_shift, _time_shift),
    "magnitude_warp": (_draw_magnitude_warp, _magnitude_warp),
    "noise": (_draw_noise, _noise),
}


class MixedBatch(NamedTuple):
    """A mixup batch: ``x = lam * x + (1 - lam) * x[perm]``; the loss is ``lam * L(y_a) + (1 - lam) * L(y_b)``."""

    x: Tensor
    lengths: Tensor
    y_a: Tensor
    y_b: Tensor
    aux: Tensor | None
    lam: float
    perm: Tensor


def mixup(
    x: Tensor, lengths: Tensor, y: Tensor, aux: Tensor | None, alpha: float, generator: torch.Generator
) -> MixedBatch:
    """Mix each example with a random partner of the same batch (Zhang et al. 2018): one ``lam ~ Beta(alpha,
    alpha)`` for the batch, ``perm = randperm(B)``. Lengths become ``max(lengths, lengths[perm])``, the union of
    both valid parts (padding is zero, so the mix past the shorter one is just the longer one scaled); ``aux``
    (when given) is mixed like ``x``. Inputs are not modified."""
    if not alpha > 0:
        raise ValueError(f"mixup alpha (train.mixup.alpha) must be > 0, got {alpha}")
    if x.dim() != 3:
        raise ValueError(f"mixup expects x as [batch, time, channels], got shape {tuple(x.shape)}")
    b = x.shape[0]
    for name, v in (("lengths", lengths), ("y", y), ("aux", aux)):
        if v is not None and v.shape != (b,):
            raise ValueError(f"mixup: {name} must be [batch] = [{b}], got shape {tuple(v.shape)}")
    # torch.distributions.Beta samples through torch's global RNG (it takes no generator), which would make lam
    # depend on hidden state; instead draw an integer seed from our generator and let numpy sample the Beta.
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(b, generator=generator).to(x.device)
    return MixedBatch(
        x=lam * x + (1 - lam) * x[perm],
        lengths=torch.maximum(lengths, lengths[perm]),
        y_a=y,
        y_b=y[perm],
        aux=None if aux is None else lam * aux + (1 - lam) * aux[perm],
        lam=lam,
        perm=perm,
    )


def mixup_loss(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, mixed: MixedBatch) -> Tensor:
    """``lam * loss_fn(logits, y_a) + (1 - lam) * loss_fn(logits, y_b)``."""
    return mixed.lam * loss_fn(logits, mixed.y_a) + (1 - mixed.lam) * loss_fn(logits, mixed.y_b)
