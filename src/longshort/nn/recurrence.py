"""One direction of one LSTM layer over a whole sequence: the custom (non-cuDNN) path.

The input projection ``x_t W_ih^T + b`` of every step is computed before the loop in one matmul (the
caller passes it as ``xw``); the loop only does the recurrent matmul and the elementwise cell. Gate order is
``nn.LSTM``'s: input, forget, cell candidate, output.

Options (all off gives exactly ``nn.LSTM``'s arithmetic):
- layer norm (seed 003): each gate's recurrent term ``W_* h_{t-1}`` is normalised on its own (four
  LayerNorms of size H, learned gain and bias), and ``h_t = o_t * tanh(LN(c_t))``; ``c_t`` itself is carried
  un-normalised.
- zoneout: ``c_t = z_c * c_{t-1} + (1 - z_c) * c~_t`` and likewise for ``h``. In training ``z`` is a 0/1
  Bernoulli(p) mask per step and unit; at evaluation it is the rate ``p`` itself (the expectation).
- recurrent dropout: ``h_{t-1}`` enters the recurrent matmul multiplied by a mask fixed for the whole
  sequence (one per sequence and unit, already scaled by 1/(1-p)).
- lengths: rows whose sequence has ended keep their state and output zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Keep = Tensor | float | None  # a zoneout "keep previous" mask [T, B, H], a rate (evaluation) or nothing


@dataclass
class LayerNormParams:
    gates_weight: Tensor  # [4, H]
    gates_bias: Tensor  # [4, H]
    cell_weight: Tensor  # [H]
    cell_bias: Tensor  # [H]
    eps: float = 1e-5


@dataclass
class GateStats:
    """Sums over valid (step, row) pairs of each gate's mean over units and of its square, per gate i, f, o."""

    count: Tensor  # scalar
    total: Tensor  # [3] sum of mean activation over units for i, f, o
    total_sq: Tensor  # [3] sum of squared activations averaged over units (for the variance)
    cell_abs: Tensor  # [H] sum of c_t over valid steps (for memory utilisation)
    cell_sq: Tensor  # [H]


def _zone(keep: Keep, t: int, prev: Tensor, new: Tensor) -> Tensor:
    if keep is None:
        return new
    z = keep[t] if isinstance(keep, Tensor) else keep
    return new + z * (prev - new)  # z * prev + (1 - z) * new


def lstm_recurrence(
    xw: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None = None,
    ln: LayerNormParams | None = None,
    zoneout_c: Keep = None,
    zoneout_h: Keep = None,
    recurrent_mask: Tensor | None = None,
    stats: bool = False,
) -> tuple[Tensor, Tensor, Tensor, GateStats | None]:
    """Run the recurrence. ``xw`` [T, B, 4H] (time-major), ``w_hh`` [4H, H], ``h0``/``c0`` [B, H].

    Returns ``(out [T, B, H], h_T, c_T, gate stats or None)``; ``h_T``/``c_T`` are each row's state at its own
    last valid step.
    """
    steps, batch, four_h = xw.shape
    hidden = four_h // 4
    h, c = h0, c0
    outs = []
    valid = None if lengths is None else torch.arange(steps, device=xw.device)[:, None] < lengths.to(xw.device)
    gstats = None
    if stats:
        z = xw.new_zeros
        gstats = GateStats(z(()), z(3), z(3), z(hidden), z(hidden))
    for t in range(steps):
        h_in = h if recurrent_mask is None else h * recurrent_mask
        rec = h_in @ w_hh.t()
        if ln is not None:
            r = F.layer_norm(rec.view(batch, 4, hidden), (hidden,), eps=ln.eps)
            rec = (r * ln.gates_weight + ln.gates_bias).view(batch, four_h)
        gates = xw[t] + rec
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        c_out = c_new if ln is None else F.layer_norm(c_new, (hidden,), ln.cell_weight, ln.cell_bias, ln.eps)
        h_new = o * torch.tanh(c_out)
        c_new = _zone(zoneout_c, t, c, c_new)
        h_new = _zone(zoneout_h, t, h, h_new)
        if valid is not None:
            m = valid[t][:, None]
            c_new = torch.where(m, c_new, c)
            h_new = torch.where(m, h_new, h)
            outs.append(h_new * m)
        else:
            outs.append(h_new)
        if gstats is not None:
            with torch.no_grad():
                w = torch.ones(batch, 1, device=xw.device) if valid is None else valid[t][:, None].to(xw.dtype)
                acts = torch.stack([i, f, o])  # [3, B, H]
                gstats.count += w.sum()
                gstats.total += (acts.mean(-1) * w.T).sum(-1)
                gstats.total_sq += ((acts**2).mean(-1) * w.T).sum(-1)
                gstats.cell_abs += (c_new * w).sum(0)
                gstats.cell_sq += (c_new**2 * w).sum(0)
        h, c = h_new, c_new
    return torch.stack(outs), h, c, gstats
