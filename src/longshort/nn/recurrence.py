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
- a skip through time (seed 003), ``time_skip``: with ``h~_t = o_t * tanh(c_t)`` the plain LSTM's output,
  ``residual`` gives ``h_t = h_{t-1} + h~_t`` and ``highway`` gives ``h_t = T_t * h~_t + (1 - T_t) * h_{t-1}``
  with a fifth gate ``T_t = sigmoid(W_T [x_t; h_{t-1}] + b_T)``: its input term is the last H columns of ``xw``
  (then [T, B, 5H]) and its recurrent term the last H rows of ``w_hh`` (then [5H, H]). ``c_t`` is the plain
  LSTM's in both. Zoneout and the lengths mask act on the result. Highway does not combine with layer norm.
- lengths: rows whose sequence has ended keep their state and output zeros.

Implementations of the same function:

- :func:`lstm_recurrence_reference`: a plain step loop differentiated by autograd. It is the specification, the
  path for gate statistics, and what the tests hold the fast paths to.
- the fast path (what :func:`lstm_recurrence` runs otherwise): one ``torch.autograd.Function`` for the whole
  sequence, forward loop without autograd, hand-written BPTT backward, in one of two backends:

  - Python: every step's results go into preallocated ``[T, ...]`` buffers through ``out=``/in-place ops, and
    the forward loop overwrites the gates with the factors backward needs, so that a backward step is five to
    eleven small ops instead of the reference's ~40 autograd nodes;
  - C++ (float32 on CPU, compiled on first use, see :data:`CPP_MIN_WORK`): the same loops with one matmul and
    one fused, vectorised pass over the rows per step.

  Both return the stacked gate gradient as the gradient of ``xw`` and compute ``dW_hh = sum_t dgates_t^T
  h_{t-1}`` as one matmul over all steps. Lengths are folded into the zoneout "keep" weights (a finished row
  keeps its state with weight 1) and one mask multiply of the output. Large buffers are recycled between calls
  (:class:`_Pool`, :func:`set_workspace_limit`). First-order gradients only (no double backward); zoneout and
  recurrent-dropout masks are constants (no gradient flows to them, as with any dropout mask).

:func:`bernoulli_mask` samples zoneout/dropout masks about 4x faster than ``torch.rand(...) < p`` on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import platform
import sys
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

Keep = Tensor | float | None  # a zoneout "keep previous" mask [T, B, H], a rate (evaluation) or nothing
TIME_SKIPS = ("none", "residual", "highway")  # the forms of h_t; their index is the C++ loops' ``mode``
_RESIDUAL, _HIGHWAY = 1, 2


def _time_mode(time_skip: str, ln: object) -> int:
    """``time_skip``'s index in :data:`TIME_SKIPS`, refusing what the loops do not compute."""
    if time_skip not in TIME_SKIPS:
        raise ValueError(f"time_skip must be one of {', '.join(TIME_SKIPS)}, got {time_skip!r}")
    if time_skip == "highway" and ln is not None:
        raise ValueError("time_skip='highway' does not combine with layer norm (its gate would go un-normalised)")
    return TIME_SKIPS.index(time_skip)


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
    time_skip: str = "none",
) -> tuple[Tensor, Tensor, Tensor, GateStats | None]:
    """Run the recurrence. ``xw`` [T, B, 4H] (time-major), ``w_hh`` [4H, H], ``h0``/``c0`` [B, H] (5H for
    ``time_skip='highway'``: the gate ``T`` comes last).

    Returns ``(out [T, B, H], h_T, c_T, gate stats or None)``; ``h_T``/``c_T`` are each row's state at its own
    last valid step. ``zoneout_c``/``zoneout_h``: keep mask [T, B, H] (or anything broadcasting to it), a rate,
    or None; ``recurrent_mask`` [B, H]; ``lengths`` [B] (any device).

    Runs the fast path unless ``stats`` is set (gate statistics come from the reference loop) or a tracer is
    recording (the fast path's autograd Function and C++ loops have no graph form). Under autocast
    the fast path computes in the promoted dtype of ``xw`` and ``w_hh`` with autocast off (float32 when either
    is float32), and returns that dtype.
    """
    if stats or torch.jit.is_tracing():  # the tracer (an ONNX export) records the reference's plain ops
        return lstm_recurrence_reference(
            xw, w_hh, h0, c0, lengths, ln, zoneout_c, zoneout_h, recurrent_mask, stats=stats, time_skip=time_skip
        )
    mode = _time_mode(time_skip, ln)
    out, h, c = _fast_recurrence(xw, w_hh, h0, c0, lengths, ln, zoneout_c, zoneout_h, recurrent_mask, mode)
    return out, h, c, None


def bernoulli_mask(
    shape: Sequence[int], p: float, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """A 0/1 mask of ``shape`` (``like``'s dtype and device) with P(1) = ``p``: zoneout and dropout masks.

    On CPU, ``torch.rand(shape) < p`` costs one Mersenne-Twister draw per element, and for a [T, B, H] zoneout
    mask that took longer than the whole recurrence step of the layer. Here each element gets 16 bits of one
    64-bit draw (``p`` resolved to 2^-16), about 4x cheaper. Other devices use ``rand < p``.
    """
    shape = tuple(shape)
    if p <= 0 or p >= 1:
        return torch.full(shape, float(p >= 1), dtype=like.dtype, device=like.device)
    if like.device.type != "cpu":
        return (torch.rand(shape, device=like.device, generator=generator) < p).to(like.dtype)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1, generator=generator)
    bits = words.view(torch.int16)[:n]  # uniform on [-2^15, 2^15)
    return torch.lt(bits, round(p * 65536) - 32768).view(shape).to(like.dtype)


# --------------------------------------------------------------------------------------------------------------
# Reference: a plain autograd step loop


def _zone(keep: Keep, t: int, prev: Tensor, new: Tensor) -> Tensor:
    if keep is None:
        return new
    z = keep[t] if isinstance(keep, Tensor) else keep
    return new + z * (prev - new)  # z * prev + (1 - z) * new


def lstm_recurrence_reference(
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
    time_skip: str = "none",
) -> tuple[Tensor, Tensor, Tensor, GateStats | None]:
    """:func:`lstm_recurrence` as a plain step loop under autograd (the specification; slow on CPU)."""
    mode = _time_mode(time_skip, ln)
    steps, batch, _ = xw.shape
    hidden = w_hh.shape[1]
    four_h = 4 * hidden
    h, c = h0, c0
    outs = []
    valid = None if lengths is None else torch.arange(steps, device=xw.device)[:, None] < lengths.to(xw.device)
    gstats = None
    if stats:
        z = xw.new_zeros
        gstats = GateStats(z(()), z(3), z(3), z(hidden), z(hidden))
    # unbind, not xw[t]: T selects would each send a full-size [T, B, 4H] gradient back (quadratic backward)
    xws = xw.unbind(0)
    for t in range(steps):
        h_in = h if recurrent_mask is None else h * recurrent_mask
        rec = h_in @ w_hh.t()
        if ln is not None:
            r = F.layer_norm(rec.view(batch, 4, hidden), (hidden,), eps=ln.eps)
            rec = (r * ln.gates_weight + ln.gates_bias).view(batch, four_h)
        gates = xws[t] + rec
        i, f, g, o = gates[:, :four_h].chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        c_out = c_new if ln is None else F.layer_norm(c_new, (hidden,), ln.cell_weight, ln.cell_bias, ln.eps)
        h_new = o * torch.tanh(c_out)
        if mode == _RESIDUAL:
            h_new = h + h_new
        elif mode == _HIGHWAY:
            carry = torch.sigmoid(gates[:, four_h:])
            h_new = carry * h_new + (1 - carry) * h
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


# --------------------------------------------------------------------------------------------------------------
# Fast path: one autograd Function, hand-written BPTT


def _fast_recurrence(
    xw: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    ln: LayerNormParams | None,
    zoneout_c: Keep,
    zoneout_h: Keep,
    recurrent_mask: Tensor | None,
    mode: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    steps, batch, n_gates = xw.shape
    hidden = w_hh.shape[-1]
    shapes_ok = n_gates == (5 if mode == _HIGHWAY else 4) * hidden and w_hh.shape == (n_gates, hidden)
    if not shapes_ok or h0.shape != (batch, hidden) or c0.shape != (batch, hidden):
        raise ValueError(
            f"shape mismatch: xw {tuple(xw.shape)}, w_hh {tuple(w_hh.shape)}, h0 {tuple(h0.shape)}, "
            f"c0 {tuple(c0.shape)}"
        )
    dtype = torch.promote_types(xw.dtype, w_hh.dtype)
    autocast_on = torch.is_autocast_enabled(xw.device.type)
    with torch.autocast(xw.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
        xw, w_hh, h0, c0 = (x.to(dtype) for x in (xw, w_hh, h0, c0))
        xw = xw.contiguous()
        valid = None
        if lengths is not None:
            lens = lengths.to(xw.device)
            valid = torch.arange(steps, device=xw.device)[:, None] < lens  # [T, B]
            if bool(valid.all()):
                valid = None
        kc = _keep(zoneout_c, valid, dtype)
        kh = _keep(zoneout_h, valid, dtype)
        rm = None if recurrent_mask is None else recurrent_mask.to(dtype)
        if ln is None:
            ln_args: tuple[Tensor | None, ...] = (None, None, None, None)
            eps = 0.0
        else:
            ln_args = tuple(p.to(dtype) for p in (ln.gates_weight, ln.gates_bias, ln.cell_weight, ln.cell_bias))
            eps = ln.eps
        if steps == 0:
            return xw.new_zeros(0, batch, hidden), h0, c0
        args = (xw, w_hh, h0, c0, *ln_args, kc, kh, rm)
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args):
            out, h_t, c_t = _Recurrence.apply(eps, mode, *args)
        else:
            ops = _use_cpp(xw)
            if ops is not None:
                out, h_t, c_t, _ = _forward_cpp(ops, eps, mode, *args, keep_for_backward=False)
            else:
                out, h_t, c_t, _ = _forward(eps, mode, *args, keep_for_backward=False)
        if valid is not None:
            out = out * valid[..., None].to(dtype)
        return out, h_t, c_t


def _keep(z: Keep, valid: Tensor | None, dtype: torch.dtype) -> Tensor | float | None:
    """Zoneout keep weight merged with the lengths mask: a finished row keeps its state (weight 1)."""
    if isinstance(z, Tensor):
        z = z.to(dtype)
    if valid is None:
        if z is None or isinstance(z, Tensor):
            return z
        return float(z) if z else None
    v = valid[..., None].to(dtype)  # [T, B, 1]
    if z is None:
        return 1.0 - v
    return 1.0 - v * (1.0 - z)


class _Pool:
    """Recycles the fast path's big CPU buffers ([T, B, ...] workspaces) between calls.

    CPU tensors come from ``malloc``, which hands large blocks back to the kernel on free; every new block then
    page-faults on first touch, and on this path that cost more than the arithmetic (a 128 KiB step slice of a
    fresh buffer took 30 us to write against 7 us for a recycled one). CUDA's caching allocator already does this.
    Buffers that leave the function (the output, the gradient of ``xw``) are never pooled; saved buffers return
    when autograd frees the node that holds them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: dict[tuple[torch.dtype, int], list[Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, like: Tensor, *shape: int) -> Tensor:
        n = math.prod(shape)
        if like.device.type == "cpu":
            with self._lock:
                free = self._free.get((like.dtype, n))
                if free:
                    buf = free.pop()
                    self._bytes -= buf.numel() * buf.element_size()
                    return buf.view(shape)
        return like.new_empty(shape)

    def give(self, bufs: Iterable[Tensor | None]) -> None:
        """Take back buffers from :meth:`take` (contiguous, nothing else referencing them)."""
        if sys.is_finalizing():
            return
        with self._lock:
            for buf in bufs:
                if buf is None or buf.device.type != "cpu":
                    continue
                size = buf.numel() * buf.element_size()
                if self._bytes + size > self.limit:
                    continue
                self._free.setdefault((buf.dtype, buf.numel()), []).append(buf)
                self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


_POOL = _Pool(1 << 30)


def set_workspace_limit(nbytes: int) -> None:
    """Cap the memory the fast path keeps for reuse between calls (default 1 GiB; 0 turns recycling off)."""
    _POOL.clear()
    _POOL.limit = int(nbytes)


class _Saved:
    """What backward needs. Its pooled buffers go back to the pool when autograd frees the node holding it."""

    def __init__(self, pooled: list[Tensor], **items: Any) -> None:
        self.pooled = pooled
        self.__dict__.update(items)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            _POOL.give(self.pooled)


def _forward(
    eps: float,
    mode: int,
    xw: Tensor,
    w: Tensor,
    h0: Tensor,
    c0: Tensor,
    gw: Tensor | None,
    gb: Tensor | None,
    cw: Tensor | None,
    cb: Tensor | None,
    kc: Tensor | float | None,
    kh: Tensor | float | None,
    rm: Tensor | None,
    keep_for_backward: bool = True,
) -> tuple[Tensor, Tensor, Tensor, _Saved | None]:
    """The step loop without autograd. Returns ``out``, ``h_T``, ``c_T`` and what backward needs.

    Per step, the gates are computed into the first four H-blocks of a saved [B, 6H] row block and then
    overwritten, in place, with the factors backward needs, so that a backward step is a handful of products::

        block:  0       1     2         3              4          5
        gates:  i       f     g         o
        saved:  P_i     f     P_f       Q              P_g        A
        P_i = g i (1 - i)   P_f = c_{t-1} f (1 - f)   P_g = i (1 - g^2)   (d c_new -> d gate pre-activation)
        Q = tanh(c~) o (1 - o)   A = o (1 - tanh(c~)^2)                   (d h_new -> d o, d c~)

    (``c~`` is the cell after its layer norm, or ``c`` itself without one.) With layer norm, the raw recurrent
    term, the cell before zoneout and both norms' statistics are kept as well. The highway skip through time
    computes its gate ``T`` in block 4 and keeps two more blocks (6: ``T``, 7: ``D = (h~ - h_{t-1}) T (1 - T)``,
    with ``h~ = o tanh(c~)``, d h -> d T's pre-activation).
    """
    steps, batch, n_gates = xw.shape
    hidden = w.shape[1]
    four_h = 4 * hidden
    layer_norm = gw is not None
    highway = mode == _HIGHWAY
    wt = w.t()
    new = xw.new_empty
    pooled: list[Tensor] = []

    def take(*shape: int) -> Tensor:
        buf = _POOL.take(xw, *shape)
        pooled.append(buf)
        return buf

    hs_buf = new(steps + 1, batch, hidden)  # h_0 .. h_T; [1:] is the output
    hs_buf[0] = h0
    s_buf = take(steps, batch, (8 if highway else 6) * hidden)
    hs = hs_buf.unbind(0)
    s6 = s_buf.view(steps, batch, -1, hidden)
    gates = s_buf[:, :, :n_gates].unbind(0)
    sig_if, s_i, s_f, s_g, s_o, s_pg, s_a = (
        v.unbind(0) for v in (s_buf[:, :, : 2 * hidden], *s6.unbind(2)[:4], s6[:, :, 4], s6[:, :, 5])
    )
    if highway:
        s_tg, s_d = s6[:, :, 6].unbind(0), s6[:, :, 7].unbind(0)
        tt = new(batch, hidden)  # T (1 - T)
    kcs = kc.expand(steps, *kc.shape[1:]).unbind(0) if isinstance(kc, Tensor) else [kc] * steps
    khs = kh.expand(steps, *kh.shape[1:]).unbind(0) if isinstance(kh, Tensor) else [kh] * steps
    hin_buf = take(steps, batch, hidden) if rm is not None else hs_buf[:-1]  # what enters the recurrent matmul
    hins = hin_buf.unbind(0)
    ig, fc, tc = new(batch, hidden), new(batch, hidden), new(batch, hidden)
    h_new = new(batch, hidden) if kh is not None else None
    h_lstm = new(batch, hidden) if mode else None  # h~ before the skip through time
    c_state = new(batch, hidden)  # c_t (after zoneout), unless it lives in cn_buf anyway
    c_scratch = new(batch, hidden) if kc is not None and not layer_norm else None
    c = c0
    xws = xw.unbind(0)
    if layer_norm:
        assert gw is not None and gb is not None
        r_buf = take(steps, batch, four_h)  # raw recurrent term, the gate norms' input
        rs = r_buf.view(steps, batch, 4, hidden).unbind(0)
        cn_buf = take(steps, batch, hidden)  # the cell before zoneout, the cell norm's input
        cns = cn_buf.unbind(0)
        g_mean: list[Tensor] = []
        g_rstd: list[Tensor] = []
        c_mean: list[Tensor] = []
        c_rstd: list[Tensor] = []
        gates3 = s_buf[:, :, :four_h].view(steps, batch, 4, hidden).unbind(0)
        xw3 = xw.view(steps, batch, 4, hidden).unbind(0)

    for t in range(steps):
        h = hs[t]
        hin = torch.mul(h, rm, out=hins[t]) if rm is not None else h
        if layer_norm:
            r = rs[t]
            torch.mm(hin, wt, out=r.view(batch, four_h))
            r_hat, mu, rstd = torch.native_layer_norm(r, (hidden,), None, None, eps)
            torch.addcmul(gb, r_hat, gw, out=gates3[t]).add_(xw3[t])
            g_mean.append(mu)
            g_rstd.append(rstd)
        else:
            torch.addmm(xws[t], hin, wt, out=gates[t])
        if highway:
            torch.sigmoid(s_pg[t], out=s_tg[t])  # T's pre-activation sits in block 4, where P_g goes below
        i, f, g, o = s_i[t], s_f[t], s_g[t], s_o[t]
        sig_if[t].sigmoid_()
        g.tanh_()
        o.sigmoid_()
        torch.mul(i, g, out=ig)
        torch.mul(f, c, out=fc)
        if layer_norm:
            c_new = torch.add(fc, ig, out=cns[t])
            c_ln, mu, rstd = torch.native_layer_norm(c_new, (hidden,), cw, cb, eps)
            c_mean.append(mu)
            c_rstd.append(rstd)
            torch.tanh(c_ln, out=tc)
        else:
            c_new = torch.add(fc, ig, out=c_state if kc is None else c_scratch)
            torch.tanh(c_new, out=tc)
        h_out = hs[t + 1] if kh is None else h_new  # h_t before zoneout
        hn = torch.mul(o, tc, out=h_lstm if mode else h_out)
        # the factors backward needs, overwriting gates that are no longer used (see the docstring)
        torch.addcmul(o, hn, tc, value=-1, out=s_a[t])
        torch.addcmul(hn, hn, o, value=-1, out=o)
        torch.addcmul(i, ig, g, value=-1, out=s_pg[t])
        torch.addcmul(ig, ig, i, value=-1, out=i)
        torch.addcmul(fc, fc, f, value=-1, out=g)
        if mode == _RESIDUAL:
            hn = torch.add(h, hn, out=h_out)
        elif highway:
            tg, d = s_tg[t], torch.sub(hn, h, out=s_d[t])
            hn = torch.addcmul(h, tg, d, out=h_out)  # h + T (h~ - h)
            d.mul_(torch.addcmul(tg, tg, tg, value=-1, out=tt))
        if kh is not None:
            torch.lerp(hn, h, khs[t], out=hs[t + 1])
        c = c_new if kc is None else torch.lerp(c_new, c, kcs[t], out=c_state)

    c_t = c if c is c_state else c.clone()
    h_t = hs_buf[steps].clone()
    if not keep_for_backward:
        _POOL.give(pooled)
        return hs_buf[1:], h_t, c_t, None
    saved = _Saved(pooled, s=s_buf, hin=hin_buf)
    if layer_norm:
        saved.__dict__.update(r=r_buf, cn=cn_buf, g_mean=g_mean, g_rstd=g_rstd, c_mean=c_mean, c_rstd=c_rstd)
    return hs_buf[1:], h_t, c_t, saved


_ln_backward = torch.ops.aten.native_layer_norm_backward.default


def _backward(
    saved: _Saved,
    mode: int,
    w: Tensor,
    gw: Tensor | None,
    cw: Tensor | None,
    cb: Tensor | None,
    kc: Tensor | float | None,
    kh: Tensor | float | None,
    rm: Tensor | None,
    d_out: Tensor,
    d_ht: Tensor,
    d_ct: Tensor,
    needs: Sequence[bool],
) -> tuple[Tensor | None, ...]:
    """Hand-written BPTT. Returns gradients for (xw, w, h0, c0, gw, gb, cw, cb)."""
    s_buf: Tensor = saved.s
    steps, batch, _ = s_buf.shape
    n_gates, hidden = w.shape
    four_h = 4 * hidden
    layer_norm = gw is not None
    highway = mode == _HIGHWAY
    new = s_buf.new_empty
    pooled: list[Tensor] = []

    def take(*shape: int) -> Tensor:
        buf = _POOL.take(s_buf, *shape)
        pooled.append(buf)
        return buf

    s6 = s_buf[:, :, : 6 * hidden].view(steps, batch, 3, 2, hidden)
    p = s6[:, :, :, 0].unbind(0)  # P_i, P_f, P_g: [B, 3, H] each
    fs, qs, as_ = (v.unbind(0) for v in s6[:, :, :, 1].unbind(2))

    dg_buf = new(steps, batch, n_gates)  # gradient at the gate pre-activations: also d xw
    dg4 = dg_buf.view(steps, batch, -1, hidden)
    dgs, dg_ifg, dg_o = dg_buf.unbind(0), dg4[:, :, :3].unbind(0), dg4[:, :, 3].unbind(0)
    if highway:
        s8 = s_buf.view(steps, batch, 8, hidden)
        tgs, ds, dg_t = s8[:, :, 6].unbind(0), s8[:, :, 7].unbind(0), dg4[:, :, 4].unbind(0)
        d_hl_buf, carry_buf = new(batch, hidden), new(batch, hidden)
    douts = d_out.unbind(0)

    def per_step(k: Tensor | float | None) -> Sequence[Tensor | float | None]:
        return k.expand(steps, *k.shape[1:]).unbind(0) if isinstance(k, Tensor) else [k] * steps

    def one_minus(k: Tensor | float | None) -> Tensor | float | None:
        if k is None or not isinstance(k, Tensor):
            return None if k is None else 1 - k
        return torch.neg(k, out=take(*k.shape)).add_(1)

    kcs, khs = per_step(kc), per_step(kh)
    omkcs, omkhs = per_step(one_minus(kc)), per_step(one_minus(kh))
    if layer_norm:
        assert gw is not None
        rs, cns = saved.r.view(steps, batch, 4, hidden).unbind(0), saved.cn.unbind(0)
        g_means, g_rstds, c_means, c_rstds = saved.g_mean, saved.g_rstd, saved.c_mean, saved.c_rstd
        drec_buf = take(steps, batch, four_h)  # gradient at the recurrent term before its norm
        drecs = drec_buf.view(steps, batch, 4, hidden).unbind(0)
        dy = new(batch, 4, hidden)
        d_cw_parts: list[Tensor] = []
        d_cb_parts: list[Tensor] = []
        dco = new(batch, hidden)
        mask_c = [True, needs[6], needs[7]]
        mask_g = [True, False, False]

    d_h = d_ht + douts[steps - 1]
    d_h_next = new(batch, hidden)
    d_c = d_ct.clone()
    d_he_buf = new(batch, hidden)
    d_cn_buf = new(batch, hidden)
    base_buf = new(batch, hidden)
    for t in range(steps - 1, -1, -1):
        # d_h: gradient at h_t (the state after zoneout, output included); d_c: at c_t; d_he: at h before zoneout
        d_he = d_h if kh is None else torch.mul(d_h, omkhs[t], out=d_he_buf)
        carry = None  # the skip through time's share of the gradient at h_{t-1}
        if mode == _RESIDUAL:
            carry = d_he
        elif highway:
            torch.mul(d_he, ds[t], out=dg_t[t])
            d_hl = torch.mul(d_he, tgs[t], out=d_hl_buf)
            carry = torch.sub(d_he, d_hl, out=carry_buf)
            d_he = d_hl  # from here on: the gradient at h~, the LSTM's own output
        if layer_norm:
            torch.mul(d_he, as_[t], out=dco)
            d_cn, dcw, dcb = _ln_backward(dco, cns[t], (hidden,), c_means[t], c_rstds[t], cw, cb, mask_c)
            d_cw_parts.append(dcw)
            d_cb_parts.append(dcb)
            omk = omkcs[t]
            if kc is None:
                d_cn.add_(d_c)
            elif isinstance(omk, Tensor):
                d_cn.addcmul_(d_c, omk)
            else:
                d_cn.add_(d_c, alpha=omk)
        elif kc is None:
            d_cn = d_c.addcmul_(d_he, as_[t])
        else:
            d_cn = torch.mul(d_c, omkcs[t], out=d_cn_buf).addcmul_(d_he, as_[t])
        torch.mul(d_he, qs[t], out=dg_o[t])
        torch.mul(d_cn.unsqueeze(1), p[t], out=dg_ifg[t])
        # gradient at c_{t-1}
        if kc is not None:
            d_c.mul_(kcs[t]).addcmul_(d_cn, fs[t])
        elif d_cn is d_c:
            d_c.mul_(fs[t])
        else:
            torch.mul(d_cn, fs[t], out=d_c)
        # gradient at the recurrent term
        if layer_norm:
            torch.mul(dg4[t], gw, out=dy)
            drec = drecs[t].copy_(_ln_backward(dy, rs[t], (hidden,), g_means[t], g_rstds[t], None, None, mask_g)[0])
            drec = drec.view(batch, four_h)
        else:
            drec = dgs[t]
        # gradient at h_{t-1}
        base: Tensor | None = douts[t - 1] if t > 0 else None
        if kh is not None:
            k = khs[t]
            if base is None:
                base = torch.mul(d_h, k, out=base_buf)
            elif isinstance(k, Tensor):
                base = torch.addcmul(base, d_h, k, out=base_buf)
            else:
                base = torch.add(base, d_h, alpha=k, out=base_buf)
        if carry is not None:
            base = carry if base is None else torch.add(base, carry, out=base_buf)
        if rm is None:
            if base is None:
                torch.mm(drec, w, out=d_h_next)
            else:
                torch.addmm(base, drec, w, out=d_h_next)
        else:
            d_hin = torch.mm(drec, w, out=d_h_next)
            if base is None:
                d_hin.mul_(rm)
            else:
                torch.addcmul(base, d_hin, rm, out=d_h_next)
        d_h, d_h_next = d_h_next, d_h

    d_w = d_gw = d_gb = d_cw = d_cb = None
    if needs[1]:
        drec_all = drec_buf if layer_norm else dg_buf
        d_w = drec_all.view(steps * batch, n_gates).t().mm(saved.hin.reshape(steps * batch, hidden))
    if layer_norm:
        if needs[4]:  # sum over steps and rows of d gates * the normalised recurrent term
            r_hat = torch.sub(saved.r.view(steps, batch, 4, hidden), torch.stack(g_means), out=take(*dg4.shape))
            d_gw = r_hat.mul_(torch.stack(g_rstds)).mul_(dg4).sum((0, 1))
        if needs[5]:
            d_gb = dg4.sum((0, 1))
        if needs[6]:
            d_cw = torch.stack(d_cw_parts).sum(0)
        if needs[7]:
            d_cb = torch.stack(d_cb_parts).sum(0)
    _POOL.give(pooled)
    return dg_buf, d_w, d_h, d_c, d_gw, d_gb, d_cw, d_cb


# --------------------------------------------------------------------------------------------------------------
# The same forward and backward loops in C++ (float32 on CPU): each step is one matmul plus one fused pass over
# the rows, instead of 15 to 35 separate tensor ops. Compiled with torch.utils.cpp_extension on first use (about
# 25 s, then cached under ~/.cache/torch_extensions); LONGSHORT_RECURRENCE_CPP=0 turns it off, =1 uses it for
# every float32 CPU call (by default only from CPP_MIN_WORK elements of [T, B, 4H] on, so that toy sizes and
# unit tests never wait for the compiler). Where it cannot be built, the Python loops above run instead.

CPP_MIN_WORK = 1 << 17
_CPP_ENV = "LONGSHORT_RECURRENCE_CPP"
_cpp_lock = threading.Lock()
_cpp_state: dict[str, Any] = {"tried": False, "ops": None}
_log = logging.getLogger(__name__)


def _cpp_ops(build: bool = True) -> Any:
    """``torch.ops.longshort_recurrence`` once built (None where it cannot be, or with ``build=False`` before)."""
    if _cpp_state["tried"] or not build:
        return _cpp_state["ops"]
    with _cpp_lock:
        if _cpp_state["tried"]:
            return _cpp_state["ops"]
        try:
            from torch.utils.cpp_extension import load_inline

            flags = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd"]  # lets the loops vectorise
            cap = torch.backends.cpu.get_cpu_capability()
            if platform.machine() in ("x86_64", "AMD64") and cap in ("AVX2", "AVX512"):
                flags += ["-mavx2", "-mfma"]
            digest = hashlib.sha1((_CPP_SOURCE + " ".join(flags)).encode()).hexdigest()[:12]
            _log.info("building longshort's C++ LSTM recurrence (once per machine, about half a minute)")
            load_inline(
                name=f"longshort_recurrence_{digest}", cpp_sources=[_CPP_SOURCE], extra_cflags=flags,
                is_python_module=False, verbose=False,
            )
            _cpp_state["ops"] = torch.ops.longshort_recurrence
        except Exception as exc:  # no compiler, no headers, ...: the Python loops serve
            warnings.warn(f"longshort: C++ LSTM recurrence unavailable, using the Python loop ({exc})", stacklevel=3)
        _cpp_state["tried"] = True
    return _cpp_state["ops"]


def _use_cpp(xw: Tensor) -> Any:
    """The C++ ops when this call should use them, else None."""
    if xw.device.type != "cpu" or xw.dtype != torch.float32:
        return None
    mode = os.environ.get(_CPP_ENV, "auto")
    if mode == "0" or (mode != "1" and xw.numel() < CPP_MIN_WORK):
        return None
    return _cpp_ops()


def _cpp_keep(k: Tensor | float | None, steps: int, batch: int, hidden: int) -> tuple[Tensor | None, float]:
    if not isinstance(k, Tensor):
        return None, (0.0 if k is None else float(k))
    if k.dim() == 3 and k.shape[:2] == (steps, batch) and k.shape[2] in (1, hidden):
        return k.contiguous(), 0.0
    return k.expand(steps, batch, hidden).contiguous(), 0.0


def _contig(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.contiguous()


def _forward_cpp(
    ops: Any,
    eps: float,
    mode: int,
    xw: Tensor,
    w: Tensor,
    h0: Tensor,
    c0: Tensor,
    gw: Tensor | None,
    gb: Tensor | None,
    cw: Tensor | None,
    cb: Tensor | None,
    kc: Tensor | float | None,
    kh: Tensor | float | None,
    rm: Tensor | None,
    keep_for_backward: bool = True,
) -> tuple[Tensor, Tensor, Tensor, _Saved | None]:
    steps, batch, _ = xw.shape
    hidden = w.shape[1]
    four_h = 4 * hidden
    layer_norm = gw is not None
    pooled: list[Tensor] = []

    def take(*shape: int) -> Tensor:
        buf = _POOL.take(xw, *shape)
        pooled.append(buf)
        return buf

    hs_buf = xw.new_empty(steps + 1, batch, hidden)
    c_t = xw.new_empty(batch, hidden)
    s_buf = take(steps, batch, (8 if mode == _HIGHWAY else 6) * hidden)
    hin = take(steps, batch, hidden) if rm is not None else None
    rec = take(steps, batch, four_h) if layer_norm else None
    gstat = take(steps, batch, 8) if layer_norm else None
    chat = take(steps, batch, hidden) if layer_norm else None
    cstat = take(steps, batch) if layer_norm else None
    kc_t, kc_rate = _cpp_keep(kc, steps, batch, hidden)
    kh_t, kh_rate = _cpp_keep(kh, steps, batch, hidden)
    rm = None if rm is None else rm.expand(batch, hidden).contiguous()
    ops.forward(
        xw, w.contiguous(), h0.contiguous(), c0.contiguous(), *(_contig(x) for x in (gw, gb, cw, cb)),
        kc_t, kc_rate, kh_t, kh_rate, _contig(rm), eps, mode, hs_buf, s_buf, c_t, hin, rec, gstat, chat, cstat,
    )
    h_t = hs_buf[steps].clone()
    if not keep_for_backward:
        _POOL.give(pooled)
        return hs_buf[1:], h_t, c_t, None
    saved = _Saved(
        pooled, backend="cpp", s=s_buf, hin=hs_buf[:-1] if hin is None else hin, rec=rec, gstat=gstat, chat=chat,
        cstat=cstat, kc=(kc_t, kc_rate), kh=(kh_t, kh_rate), rm=rm,
    )
    return hs_buf[1:], h_t, c_t, saved


def _backward_cpp(
    ops: Any,
    saved: _Saved,
    mode: int,
    w: Tensor,
    gw: Tensor | None,
    cw: Tensor | None,
    d_out: Tensor,
    d_ht: Tensor,
    d_ct: Tensor,
    needs: Sequence[bool],
) -> tuple[Tensor | None, ...]:
    s_buf: Tensor = saved.s
    steps, batch, _ = s_buf.shape
    n_gates, hidden = w.shape
    four_h = 4 * hidden
    layer_norm = gw is not None
    drec = _POOL.take(s_buf, steps, batch, four_h) if layer_norm else None
    dg = s_buf.new_empty(steps, batch, n_gates)
    d_h0, d_c0 = s_buf.new_empty(batch, hidden), s_buf.new_empty(batch, hidden)
    threads = torch.get_num_threads()  # one row of sums per worker thread of the C++ loops
    acc_g = s_buf.new_zeros(threads, 8 * hidden) if layer_norm else None
    acc_c = s_buf.new_zeros(threads, 2 * hidden) if layer_norm else None
    ops.backward(
        s_buf, saved.hin, saved.rec, saved.gstat, saved.chat, saved.cstat, w.contiguous(), _contig(gw),
        _contig(cw), *saved.kc, *saved.kh, saved.rm, mode, d_out, d_ht.contiguous(), d_ct.contiguous(), dg, drec,
        d_h0, d_c0, acc_g, acc_c,
    )
    d_w = d_gw = d_gb = d_cw = d_cb = None
    if needs[1]:
        d_rec = drec if drec is not None else dg
        d_w = d_rec.view(steps * batch, -1).t().mm(saved.hin.reshape(steps * batch, hidden))
    if acc_g is not None and acc_c is not None:
        d_gw = acc_g[:, :four_h].sum(0).view(4, hidden)
        d_gb = acc_g[:, four_h:].sum(0).view(4, hidden)
        d_cw, d_cb = acc_c[:, :hidden].sum(0), acc_c[:, hidden:].sum(0)
    if drec is not None:
        _POOL.give([drec])
    return dg, d_w, d_h0, d_c0, d_gw, d_gb, d_cw, d_cb


_CPP_SOURCE = r"""
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace {

using at::Tensor;
using OptT = std::optional<Tensor>;

// exp for float32 written so that the loops below vectorise: Cody-Waite range reduction to
// r in [-ln2/2, ln2/2] and a degree-6 polynomial (relative error ~1e-7), 2^n through the exponent bits.
inline float fexp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float fsig(float x) { return 1.0f / (1.0f + fexp(-x)); }

// tanh: 1 - 2 / (e^{2x} + 1), and its odd Taylor series near 0 where that form cancels.
inline float ftanh(float x) {
  const float t = 1.0f - 2.0f / (fexp(2.0f * x) + 1.0f);
  const float x2 = x * x;
  const float p = x * (1.0f + x2 * (-0.333333333333f + x2 * (0.133333333333f + x2 * -0.0539682539683f)));
  return std::fabs(x) < 0.125f ? p : t;
}

// A zoneout keep weight per unit of one row: a [T, B, H] or [T, B, 1] tensor, or a rate (or none: 0).
struct Keep {
  const float* data = nullptr;
  int64_t st = 0, sb = 0, sj = 0;
  float rate = 0.0f;
  Keep(const OptT& k, double r) {
    if (k.has_value()) {
      data = k->data_ptr<float>();
      st = k->stride(0);
      sb = k->stride(1);
      sj = k->size(2) == 1 ? 0 : k->stride(2);
    } else {
      rate = r > 0 ? static_cast<float>(r) : 0.0f;
    }
  }
  void fill(float* out, int64_t t, int64_t b, int64_t H) const {
    if (data == nullptr) {
      std::fill(out, out + H, rate);
    } else if (sj == 0) {
      std::fill(out, out + H, data[t * st + b * sb]);
    } else {
      const float* p = data + t * st + b * sb;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) out[j] = p[j * sj];
    }
  }
};

inline void mean_rstd(const float* x, int64_t H, float eps, float& mu, float& rstd) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < H; ++j) s += x[j];
  mu = s / H;
  float v = 0.0f;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < H; ++j) {
    const float d = x[j] - mu;
    v += d * d;
  }
  rstd = 1.0f / std::sqrt(v / H + eps);
}

const float* ptr(const OptT& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }
float* mptr(const OptT& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

// Saved per step and row, [B, 6H]: P_i = g i (1-i), P_f = c_{t-1} f (1-f), P_g = i (1-g^2),
// Q = tanh(c~) o (1-o), A = o (1-tanh(c~)^2), F = f; with the highway skip through time (mode 2) [B, 8H], also
// T and D = (h~ - h_{t-1}) T (1-T). mode 1, residual: h_t = h_{t-1} + h~ before zoneout.
void forward(const Tensor& xw, const Tensor& w, const Tensor& h0, const Tensor& c0, const OptT& gw, const OptT& gb,
             const OptT& cw, const OptT& cb, const OptT& kc, double kc_rate, const OptT& kh, double kh_rate,
             const OptT& rm, double eps_d, int64_t mode, const Tensor& hs, const Tensor& s, const Tensor& c_t,
             const OptT& hin, const OptT& rec, const OptT& gstat, const OptT& chat, const OptT& cstat) {
  const int64_t T = xw.size(0), B = xw.size(1), G = xw.size(2), H = w.size(1), H4 = 4 * H, S = s.size(2);
  const bool ln = gw.has_value();
  const float eps = static_cast<float>(eps_d);
  const Keep kcs(kc, kc_rate), khs(kh, kh_rate);
  const float* rmp = ptr(rm);
  const float *gwp = ptr(gw), *gbp = ptr(gb), *cwp = ptr(cw), *cbp = ptr(cb);
  float *hinp = mptr(hin), *recp = mptr(rec), *gstp = mptr(gstat), *chp = mptr(chat), *cstp = mptr(cstat);
  const Tensor wt = w.t();
  Tensor gates = at::empty({B, G}, xw.options());
  Tensor cbuf = at::empty({2, B, H}, xw.options());
  const float* xwp = xw.data_ptr<float>();
  float* hsp = hs.data_ptr<float>();
  float* sp = s.data_ptr<float>();
  float* gp = gates.data_ptr<float>();
  const float* c_prev = c0.data_ptr<float>();
  std::memcpy(hsp, h0.data_ptr<float>(), sizeof(float) * B * H);
  if (rmp != nullptr) {
    for (int64_t i = 0; i < B * H; ++i) hinp[i] = hsp[i] * rmp[i];
  }
  for (int64_t t = 0; t < T; ++t) {
    const Tensor hin_t = rmp != nullptr ? hin->select(0, t) : hs.select(0, t);
    if (ln) {
      Tensor rec_t = rec->select(0, t);
      at::mm_out(rec_t, hin_t, wt);
    } else {
      at::addmm_out(gates, xw.select(0, t), hin_t, wt);
    }
    float* c_next = cbuf.data_ptr<float>() + (t & 1) * B * H;
    const float* xw_t = xwp + t * B * G;
    const float* hp_t = hsp + t * B * H;
    float* hn_t = hsp + (t + 1) * B * H;
    float* s_t = sp + t * B * S;
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<float> tmp(7 * H);
      float *pre = tmp.data(), *kcr = pre + 4 * H, *khr = kcr + H, *cn = khr + H;
      for (int64_t b = b0; b < b1; ++b) {
        const float* cp = c_prev + b * H;
        const float* hp = hp_t + b * H;
        float* sr = s_t + b * S;
        kcs.fill(kcr, t, b, H);
        khs.fill(khr, t, b, H);
        const float* g_in;
        if (ln) {
          const float* r = recp + (t * B + b) * H4;
          const float* x = xw_t + b * G;
          float* st = gstp + (t * B + b) * 8;
          for (int64_t k = 0; k < 4; ++k) {
            float mu, rstd;
            mean_rstd(r + k * H, H, eps, mu, rstd);
            st[2 * k] = mu;
            st[2 * k + 1] = rstd;
            const float* rk = r + k * H;
            const float* xk = x + k * H;
            const float* wk = gwp + k * H;
            const float* bk = gbp + k * H;
            float* pk = pre + k * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) pk[j] = xk[j] + bk[j] + wk[j] * ((rk[j] - mu) * rstd);
          }
          g_in = pre;
        } else {
          g_in = gp + b * G;
        }
        if (mode == 2) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) sr[6 * H + j] = fsig(g_in[4 * H + j]);
        }
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float i = fsig(g_in[j]), f = fsig(g_in[H + j]), g = ftanh(g_in[2 * H + j]);
          const float o = fsig(g_in[3 * H + j]);
          sr[j] = i;
          sr[2 * H + j] = g;
          sr[3 * H + j] = o;
          sr[5 * H + j] = f;
          cn[j] = f * cp[j] + i * g;
        }
        const float* cl = cn;
        float* chr = nullptr;
        float rsc = 1.0f, muc = 0.0f;
        if (ln) {
          mean_rstd(cn, H, eps, muc, rsc);
          cstp[t * B + b] = rsc;
          chr = chp + (t * B + b) * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) chr[j] = (cn[j] - muc) * rsc;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) pre[j] = chr[j] * cwp[j] + cbp[j];
          cl = pre;
        }
        float* hn = hn_t + b * H;
        float* cnx = c_next + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float i = sr[j], g = sr[2 * H + j], o = sr[3 * H + j], f = sr[5 * H + j];
          const float tc = ftanh(cl[j]);
          const float hv = o * tc;
          const float tg = mode == 2 ? sr[6 * H + j] : 1.0f;  // the skip through time: h = tg h~ + carry h_{t-1}
          const float carry = mode == 0 ? 0.0f : (mode == 1 ? 1.0f : 1.0f - tg);
          const float hw = tg * hv + carry * hp[j];
          if (mode == 2) sr[7 * H + j] = (hv - hp[j]) * tg * (1.0f - tg);
          hn[j] = hw + khr[j] * (hp[j] - hw);
          cnx[j] = cn[j] + kcr[j] * (cp[j] - cn[j]);
          sr[j] = g * i * (1.0f - i);
          sr[H + j] = cp[j] * f * (1.0f - f);
          sr[2 * H + j] = i * (1.0f - g * g);
          sr[3 * H + j] = tc * o * (1.0f - o);
          sr[4 * H + j] = o * (1.0f - tc * tc);
        }
        if (rmp != nullptr && t + 1 < T) {
          float* hi = hinp + ((t + 1) * B + b) * H;
          const float* m = rmp + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) hi[j] = hn[j] * m[j];
        }
      }
    });
    c_prev = c_next;
  }
  std::memcpy(c_t.data_ptr<float>(), c_prev, sizeof(float) * B * H);
}

void backward(const Tensor& s, const Tensor& hin_all, const OptT& rec, const OptT& gstat, const OptT& chat,
              const OptT& cstat, const Tensor& w, const OptT& gw, const OptT& cw, const OptT& kc, double kc_rate,
              const OptT& kh, double kh_rate, const OptT& rm, int64_t mode, const Tensor& dout,
              const Tensor& dh_t, const Tensor& dc_t, const Tensor& dg, const OptT& drec, const Tensor& dh0,
              const Tensor& dc0, const OptT& acc_g, const OptT& acc_c) {
  const int64_t T = s.size(0), B = s.size(1), S = s.size(2), G = w.size(0), H = w.size(1), H4 = 4 * H;
  const bool ln = gw.has_value();
  const Keep kcs(kc, kc_rate), khs(kh, kh_rate);
  const float* rmp = ptr(rm);
  const float *gwp = ptr(gw), *cwp = ptr(cw);
  const float *recp = ptr(rec), *gstp = ptr(gstat), *chp = ptr(chat), *cstp = ptr(cstat);
  float *drp = mptr(drec), *agp = mptr(acc_g), *acp = mptr(acc_c);
  const float* sp = s.data_ptr<float>();
  const float* dop = dout.data_ptr<float>();
  float* dgp = dg.data_ptr<float>();
  float* dH = dh0.data_ptr<float>();  // the gradient at h_{t+1} (output included), updated in place
  float* dC = dc0.data_ptr<float>();
  Tensor dhin = at::empty({B, H}, s.options());
  float* dhp = dhin.data_ptr<float>();
  {
    const float* a = dh_t.data_ptr<float>();
    const float* d = dop + (T - 1) * B * H;
    for (int64_t i = 0; i < B * H; ++i) dH[i] = a[i] + d[i];
    std::memcpy(dC, dc_t.data_ptr<float>(), sizeof(float) * B * H);
  }
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* s_t = sp + t * B * S;
    float* dg_t = dgp + t * B * G;
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      std::vector<float> tmp(5 * H);
      float *kcr = tmp.data(), *khr = kcr + H, *dhe = khr + H, *dcn = dhe + H, *dy = dcn + H;
      for (int64_t b = b0; b < b1; ++b) {
        const float* sr = s_t + b * S;
        float* dh = dH + b * H;
        float* dc = dC + b * H;
        float* dgr = dg_t + b * G;
        kcs.fill(kcr, t, b, H);
        khs.fill(khr, t, b, H);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          dhe[j] = dh[j] * (1.0f - khr[j]);
          dh[j] = dh[j] * khr[j];  // zoneout's direct path to h_t, completed after the matmul
        }
        if (mode == 1) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dh[j] += dhe[j];
        } else if (mode == 2) {  // dhe becomes the gradient at h~, the LSTM's own output
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            const float tg = sr[6 * H + j];
            dgr[4 * H + j] = dhe[j] * sr[7 * H + j];
            dh[j] += dhe[j] * (1.0f - tg);
            dhe[j] *= tg;
          }
        }
        if (ln) {
          const float* ch = chp + (t * B + b) * H;
          const float rsc = cstp[t * B + b];
          float* ac = acp + at::get_thread_num() * 2 * H;  // per-thread sums: no race, little traffic
          float m1 = 0.0f, m2 = 0.0f;
#pragma omp simd reduction(+ : m1, m2)
          for (int64_t j = 0; j < H; ++j) {
            const float dco = dhe[j] * sr[4 * H + j];
            ac[j] += dco * ch[j];
            ac[H + j] += dco;
            const float d = dco * cwp[j];
            dy[j] = d;
            m1 += d;
            m2 += d * ch[j];
          }
          m1 /= H;
          m2 /= H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dcn[j] = rsc * (dy[j] - m1 - ch[j] * m2);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dcn[j] = dhe[j] * sr[4 * H + j];
        }
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float d = dc[j] * (1.0f - kcr[j]) + dcn[j];
          dgr[j] = d * sr[j];
          dgr[H + j] = d * sr[H + j];
          dgr[2 * H + j] = d * sr[2 * H + j];
          dgr[3 * H + j] = dhe[j] * sr[3 * H + j];
          dc[j] = dc[j] * kcr[j] + d * sr[5 * H + j];
        }
        if (ln) {
          const float* r = recp + (t * B + b) * H4;
          const float* st = gstp + (t * B + b) * 8;
          float* dr = drp + (t * B + b) * H4;
          float* ag = agp + at::get_thread_num() * 8 * H;
          for (int64_t k = 0; k < 4; ++k) {
            const float mu = st[2 * k], rstd = st[2 * k + 1];
            const float* rk = r + k * H;
            const float* dk = dgr + k * H;
            const float* wk = gwp + k * H;
            float* agw = ag + k * H;
            float* agb = ag + 4 * H + k * H;
            float m1 = 0.0f, m2 = 0.0f;
#pragma omp simd reduction(+ : m1, m2)
            for (int64_t j = 0; j < H; ++j) {
              const float rh = (rk[j] - mu) * rstd;
              agw[j] += dk[j] * rh;
              agb[j] += dk[j];
              const float d = dk[j] * wk[j];
              dy[j] = d;
              m1 += d;
              m2 += d * rh;
            }
            m1 /= H;
            m2 /= H;
            float* drk = dr + k * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) drk[j] = rstd * (dy[j] - m1 - (rk[j] - mu) * rstd * m2);
          }
        }
      }
    });
    const Tensor g_t = ln ? drec->select(0, t) : dg.select(0, t);
    at::mm_out(dhin, g_t, w);
    const float* d_prev = t > 0 ? dop + (t - 1) * B * H : nullptr;
    for (int64_t i = 0; i < B * H; ++i) {
      const float x = rmp != nullptr ? dhp[i] * rmp[i] : dhp[i];
      dH[i] += x + (d_prev != nullptr ? d_prev[i] : 0.0f);
    }
  }
}

}  // namespace

TORCH_LIBRARY(longshort_recurrence, m) {
  m.def(
      "forward(Tensor xw, Tensor w, Tensor h0, Tensor c0, Tensor? gw, Tensor? gb, Tensor? cw, Tensor? cb, "
      "Tensor? kc, float kc_rate, Tensor? kh, float kh_rate, Tensor? rm, float eps, int mode, Tensor(a!) hs, "
      "Tensor(b!) s, Tensor(c!) c_t, Tensor(d!)? hin, Tensor(e!)? rec, Tensor(f!)? gstat, Tensor(g!)? chat, "
      "Tensor(h!)? cstat) -> ()");
  m.def(
      "backward(Tensor s, Tensor hin, Tensor? rec, Tensor? gstat, Tensor? chat, Tensor? cstat, Tensor w, "
      "Tensor? gw, Tensor? cw, Tensor? kc, float kc_rate, Tensor? kh, float kh_rate, Tensor? rm, int mode, "
      "Tensor dout, Tensor dh_t, Tensor dc_t, Tensor(a!) dg, Tensor(b!)? drec, Tensor(c!) dh0, Tensor(d!) dc0, "
      "Tensor(e!)? acc_g, Tensor(f!)? acc_c) -> ()");
}

TORCH_LIBRARY_IMPL(longshort_recurrence, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
"""


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        eps: float,
        mode: int,
        xw: Tensor,
        w: Tensor,
        h0: Tensor,
        c0: Tensor,
        gw: Tensor | None,
        gb: Tensor | None,
        cw: Tensor | None,
        cb: Tensor | None,
        kc: Tensor | float | None,
        kh: Tensor | float | None,
        rm: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ops = _use_cpp(xw)
        if ops is not None:
            out, h_t, c_t, saved = _forward_cpp(ops, eps, mode, xw, w, h0, c0, gw, gb, cw, cb, kc, kh, rm)
        else:
            out, h_t, c_t, saved = _forward(eps, mode, xw, w, h0, c0, gw, gb, cw, cb, kc, kh, rm)
        ctx.saved, ctx.mode = saved, mode
        ctx.rates = (kc if not isinstance(kc, Tensor) else None, kh if not isinstance(kh, Tensor) else None)
        tensors = [w, gw, cw, cb, kc, kh, rm, out]
        ctx.save_for_backward(*(x if isinstance(x, Tensor) else None for x in tensors))
        return out, h_t, c_t

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor | None, d_ht: Tensor | None, d_ct: Tensor | None) -> tuple[Any, ...]:
        w, gw, cw, cb, kc, kh, rm, out = ctx.saved_tensors  # `out` only to catch in-place changes to it
        kc = ctx.rates[0] if kc is None else kc
        kh = ctx.rates[1] if kh is None else kh
        zeros = out.new_zeros
        d_out = zeros(out.shape) if d_out is None else d_out.contiguous()
        d_ht = zeros(out.shape[1:]) if d_ht is None else d_ht
        d_ct = zeros(out.shape[1:]) if d_ct is None else d_ct
        needs = ctx.needs_input_grad[2:10]
        if getattr(ctx.saved, "backend", "python") == "cpp":
            grads = _backward_cpp(_cpp_ops(), ctx.saved, ctx.mode, w, gw, cw, d_out, d_ht, d_ct, needs)
        else:
            grads = _backward(ctx.saved, ctx.mode, w, gw, cw, cb, kc, kh, rm, d_out, d_ht, d_ct, needs)
        grads = tuple(gr if need else None for gr, need in zip(grads, needs, strict=True))
        return (None, None, *grads, None, None, None)
