"""The LSTM forecaster: an encoder over a lookback window, then a direct or an autoregressive decoder.

Encoder: :class:`~longshort.nn.lstm.LSTM` (unidirectional: a forecast reads the past in order; any
:class:`CellConfig` and :class:`StackConfig` option) over ``past`` [B, L, k + p + f] (scaled targets, past
covariates, known-future columns) -> outputs [B, L, D] and final states.

Decoder (``cfg.decoder``):

- ``direct``: ``[h_L; context; known_future flattened]`` -> MLP -> all ``H`` steps' outputs at once (the
  MQ-RNN / neuralforecast-LSTM shape: no error feeds back, every step is trained on the truth);
- ``autoregressive``: a ``torch.nn.LSTM`` of the encoder's width and depth, started from the encoder's final
  states, fed at step ``t`` ``[y_{t-1}; known_t (; context_{t-1}: attention's input feeding)]``; ``y_{t-1}`` is the
  truth (teacher forcing) or, with probability ``sampling_prob`` per window and step (scheduled sampling, Bengio
  et al. 2015, on real values), the model's own previous point prediction, detached. ``y_{-1}`` is the last
  observed value. Free running (``sampling_prob = 1``) is what predict does; under a distribution loss,
  :meth:`sample_paths` feeds draws instead of point predictions (DeepAR's ancestral sampling).

Attention (``cfg.attend``): :class:`~longshort.nn.attention.Attention` (any kind of the seq2seq side) of the
decoder state over the encoder outputs; the direct decoder attends once, from the final state.

Every output is per target ``RegressionOutputs.width`` numbers (point, quantiles, or a distribution's
parameters), in the window's scaled units; the run maps them back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from longshort.nn.attention import Attention
from longshort.nn.config import ForecasterConfig
from longshort.nn.lstm import LSTM
from longshort.nn.regression import RegressionOutputs


class Forecaster(nn.Module):
    def __init__(self, k: int, p: int, f: int, horizon: int, cfg: ForecasterConfig, outputs: RegressionOutputs,
                 lookback: int = 0):
        super().__init__()
        self.k, self.p, self.f, self.horizon = k, p, f, horizon
        self.cfg, self.outputs = cfg.model_copy(), outputs
        d, layers = cfg.hidden_dim, cfg.layers
        self.encoder = LSTM(k + p + f, d, layers, batch_first=True, dropout=cfg.dropout if layers > 1 else 0.0,
                            cell=cfg.cell, stack=cfg.stack)
        self.attention = Attention(d, d, cfg.attention) if cfg.attend else None
        ctx = d if cfg.attend else 0
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.decoder == "direct":
            self.head = nn.Sequential(nn.Linear(d + ctx + horizon * f, 2 * d), nn.ReLU(), nn.Dropout(cfg.dropout),
                                      nn.Linear(2 * d, horizon * outputs.size))
        else:
            self.feed = cfg.attend and cfg.attention.input_feeding  # the previous context enters each step
            self.decoder = nn.LSTM(k + f + (d if self.feed else 0), d, layers, batch_first=True,
                                   dropout=cfg.dropout if layers > 1 else 0.0)
            self.out = nn.Linear(d + ctx, outputs.size)
        if cfg.linear_skip and lookback < 1:
            raise ValueError("forecast.model.linear_skip needs the lookback (the window length) to build its layer")
        # the linear skip: each target's lookback -> its H location outputs, one map shared by the targets, added
        # to the decoder's (LSTNet's autoregressive component); starts at zero, so training starts from the LSTM
        self.skip = nn.Linear(lookback, horizon) if cfg.linear_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
        # which of a target's outputs the skip shifts: the location (first), or every quantile
        self.register_buffer("_where", torch.ones(outputs.width) if outputs.loss == "quantile"
                             else torch.eye(outputs.width)[0], persistent=False)

    def encode(self, past: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.encoder(past)
        assert isinstance(out, Tensor)
        return out, state

    def forward(self, past: Tensor, known: Tensor, y: Tensor | None = None, sampling_prob: float = 0.0,
                generator: torch.Generator | None = None, steps: int | None = None) -> Tensor:
        """Outputs [B, steps, k * width] (``steps`` defaults to the horizon) for ``past`` [B, L, k + p + f] and the
        horizon's ``known`` [B, H, f]; the autoregressive decoder is teacher-forced on ``y`` [B, H, k] (scaled)
        except where scheduled sampling (``sampling_prob``) feeds its own predictions; ``y=None`` runs free."""
        steps = steps or self.horizon
        enc, state = self.encode(past)
        shift = self._skip(past)
        if self.cfg.decoder == "direct":
            h = state[0][-1]
            parts = [h]
            if self.attention is not None:
                parts.append(self.attention(h, enc).context)
            parts.append(known.flatten(1))
            z = self.head(self.drop(torch.cat(parts, -1))).unflatten(1, (self.horizon, -1))
            return (z if shift is None else z + shift)[:, :steps]
        return self._decode(enc, state, past[:, -1, : self.k], known, y, sampling_prob, generator, steps, shift)

    def _skip(self, past: Tensor) -> Tensor | None:
        """The linear skip's [B, H, k * width] shift of the outputs (None without one)."""
        if self.skip is None:
            return None
        s = self.skip(past[:, :, : self.k].transpose(1, 2)).transpose(1, 2)  # [B, H, k]
        return (s[..., None] * self._where).flatten(2)

    def _step(self, enc: Tensor, state: tuple[Tensor, Tensor], prev: Tensor, known_t: Tensor, ctx: Tensor | None,
              prepared: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None]:
        inp = [prev, known_t] + ([ctx] if ctx is not None and self.feed else [])
        out, state = self.decoder(torch.cat(inp, -1).unsqueeze(1), state)
        h = out[:, 0]
        if self.attention is not None:
            ctx = self.attention(h, enc, prepared=prepared).context
            h = torch.cat([h, ctx], -1)
        return self.out(self.drop(h)), state, ctx

    def _decode(self, enc: Tensor, state: tuple[Tensor, Tensor], prev: Tensor, known: Tensor, y: Tensor | None,
                sampling_prob: float, generator: torch.Generator | None, steps: int,
                shift: Tensor | None = None) -> Tensor:
        prepared = self.attention.prepare(enc) if self.attention is not None else None
        if y is not None and sampling_prob <= 0.0 and not self.feed:
            return self._teacher_forced(enc, state, prev, known, y, steps, shift, prepared)
        ctx = enc.new_zeros(len(enc), enc.shape[-1]) if self.attention is not None else None
        zs = []
        for t in range(steps):
            z, state, ctx = self._step(enc, state, prev, known[:, t], ctx, prepared)
            if shift is not None:
                z = z + shift[:, t]
            zs.append(z)
            if y is not None and sampling_prob <= 0.0:  # teacher forcing with input feeding
                prev = y[:, t]
                continue
            own = self.outputs.point(z.detach()).to(prev.dtype)
            if y is None or sampling_prob >= 1.0:
                prev = own
            else:  # per window: its own prediction with probability sampling_prob (drawn on the CPU)
                u = torch.rand(len(prev), generator=generator).to(prev.device)
                prev = torch.where((u < sampling_prob)[:, None], own, y[:, t])
        return torch.stack(zs, 1)

    def _teacher_forced(self, enc: Tensor, state: tuple[Tensor, Tensor], prev: Tensor, known: Tensor, y: Tensor,
                        steps: int, shift: Tensor | None, prepared: Tensor | None) -> Tensor:
        """Teacher forcing without input feeding: every step's input is known up front ([last observed, y_0 ..
        y_{steps-2}] beside the known-future columns), so the decoder LSTM runs once over all steps (one fused
        kernel instead of ``steps`` calls); attention, which reads only each step's own state, follows."""
        inp = torch.cat([torch.cat([prev[:, None], y[:, : steps - 1].to(prev.dtype)], 1), known[:, :steps]], -1)
        out, _ = self.decoder(inp, state)
        if self.attention is not None:
            ctx = torch.stack([self.attention(out[:, t], enc, prepared=prepared).context for t in range(steps)], 1)
            out = torch.cat([out, ctx], -1)
        z = self.out(self.drop(out))
        return z if shift is None else z + shift[:, :steps]

    @torch.no_grad()
    def sample_paths(self, past: Tensor, known: Tensor, n: int, seed: int) -> Tensor:
        """[B, n, H, k] sample paths of the autoregressive decoder under a distribution loss: each step draws from
        the predicted distribution and feeds the draw to the next (seeded by ``seed``: the same paths every
        call)."""
        b = len(past)
        enc, (h, c) = self.encode(past)
        shift = self._skip(past)
        shift = shift.repeat_interleave(n, dim=0) if shift is not None else None
        rep = lambda x: x.repeat_interleave(n, dim=0)  # noqa: E731
        enc, state = rep(enc), (h.repeat_interleave(n, dim=1), c.repeat_interleave(n, dim=1))
        prev, known = rep(past[:, -1, : self.k]), rep(known)
        ctx = enc.new_zeros(len(enc), enc.shape[-1]) if self.attention is not None else None
        prepared = self.attention.prepare(enc) if self.attention is not None else None
        draws = []
        for t in range(self.horizon):
            z, state, ctx = self._step(enc, state, prev, known[:, t], ctx, prepared)
            if shift is not None:
                z = z + shift[:, t]
            prev = self.outputs.sample(z, seed * 1000 + t).to(prev.dtype)
            draws.append(prev)
        return torch.stack(draws, 1).view(b, n, self.horizon, self.k)


def build_forecaster(fc: Any, k: int, p: int, f: int, lookback: int | None = None) -> Forecaster:
    """The forecaster of section ``forecast.*`` (``fc``: loss, quantiles, horizon, lookback, model) for ``k``
    targets, ``p`` past covariates and ``f`` known-future columns; ``lookback`` overrides ``fc.lookback`` (the
    window length the data was prepared with)."""
    return Forecaster(k, p, f, fc.horizon, fc.model, RegressionOutputs(fc.loss, k, tuple(fc.quantiles)),
                      lookback or fc.lookback)
