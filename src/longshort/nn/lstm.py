"""A drop-in ``torch.nn.LSTM`` with the regularisers and variants of the seeds.

:class:`LSTM` takes ``nn.LSTM``'s constructor arguments and parameter names (``weight_ih_l{k}{_reverse}`` ...),
so an ``nn.LSTM`` state dict loads into it with ``strict=False``; :meth:`LSTM.from_torch` and
:meth:`LSTM.to_torch` convert both ways. The extras live in two configs:

- :class:`CellConfig` (per cell): layer norm, zoneout, recurrent dropout (one mask per sequence and unit),
  variational input/output dropout (one mask per sequence and feature, on each layer's input and output),
  DropConnect on ``W_hh`` ("weight drop"), the initial forget-gate bias, a self-attention LSTM that attends
  over its own previous hidden states inside the recurrence, and a residual or highway skip through time
  (``time_skip``: ``h_t`` built from ``h_{t-1}`` and the LSTM's output; the highway gate's weights are
  ``weight_ti_l{k}`` [H, in], ``weight_th_l{k}`` [H, H] and ``bias_t_l{k}`` [H]).
- :class:`StackConfig` (between layers): residual, highway or dense (concatenating) skip connections.

Two execution paths, chosen per call (see :attr:`LSTM.uses_fused_path`):

- fused: ``torch._VF.lstm``, the kernel behind ``nn.LSTM`` (cuDNN on GPU). Taken when no option needs the
  inside of the recurrence: no layer norm, no zoneout, no recurrent dropout while training, no self-attention,
  no skip connections (between layers or through time) and no gate statistics. All layers run in one call
  unless variational input/output dropout or weight drop is active (training), in which case the kernel runs
  one layer at a time (the masked ``W_hh`` is passed as that call's weight).
- custom: per layer and direction, the input projection of every step in one matmul, then
  :func:`longshort.nn.recurrence.lstm_recurrence` (or this module's self-attention loop).

Variable lengths: pass ``lengths`` [B] with a padded tensor, or a ``PackedSequence``. Each sequence's ``h_n``/``c_n``
is its state at its own last step, outputs at padded steps are zero, and the reverse direction starts at each
sequence's true end.

Adaptive dropout schedule (seed 003): every rate (zoneout, recurrent, input, output and weight drop, and
``nn.LSTM``'s between-layer ``dropout``) is multiplied by :meth:`LSTM.set_dropout_scale`'s factor, 1 by default.
With ``CellConfig.dropout_decay = lam`` the trainer calls :meth:`LSTM.on_epoch` at the start of every epoch
(it calls ``on_epoch`` on every module that has one), which sets the scale to ``exp(-lam * epoch)``; the rate
is then ``adaptive_rate(p0, lam, epoch) = p0 * exp(-lam * epoch)``, a function of the epoch alone, so a
resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from longshort.nn.config import CellConfig as CellConfig
from longshort.nn.config import StackConfig as StackConfig
from longshort.nn.recurrence import GateStats, LayerNormParams, bernoulli_mask, lstm_recurrence

__all__ = ["LSTM", "CellConfig", "StackConfig", "adaptive_rate"]

Hidden = tuple[Tensor, Tensor]
Keep = Tensor | float | None  # zoneout: a 0/1 keep mask [T, B, H] (training), the rate (evaluation) or nothing


def adaptive_rate(p0: float, lam: float, t: float) -> float:
    """The adaptive dropout schedule of seed 003: ``p0 * exp(-lam * t)``."""
    return p0 * math.exp(-lam * t)


class LSTM(nn.Module):
    """``torch.nn.LSTM`` with the options of :class:`CellConfig` and :class:`StackConfig`.

    ``forward(input, hx=None, lengths=None) -> (output, (h_n, c_n))`` with ``nn.LSTM``'s shapes; ``input`` is a
    tensor (``batch_first`` honoured, optional ``lengths`` [B]) or a ``PackedSequence`` (then ``output`` is one too).

    Stacks: skips start at layer 1 (layer 0 has none), where the layer input is the previous layer's output of
    width ``num_directions * hidden_size``, so residual and highway never need a projection. Per layer the order is:
    variational input dropout, LSTM, variational output dropout, skip, then ``nn.LSTM``'s ``dropout`` on the result
    (all layers but the last). ``h_n``/``c_n`` are the LSTM states (before any skip).

    Debugging: set ``record_masks = True`` to keep every sampled mask of the next forwards in ``last_masks``
    (``zoneout_c_l{k}{sfx}``/``zoneout_h_l{k}{sfx}`` [T, B, H] keep masks, ``recurrent_l{k}{sfx}`` [B, H],
    ``input_l{k}``/``output_l{k}`` [B, F], ``weight_hh_l{k}{sfx}`` [4H, H] keep masks; dropout masks include their
    1/(1-p) scale). Set ``gate_stats = True`` to fill ``last_gate_stats`` (see :meth:`forward`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        cell: CellConfig | None = None,
        stack: StackConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if proj_size > 0:
            raise NotImplementedError("longshort.nn.LSTM does not support proj_size > 0")
        if proj_size < 0:
            raise ValueError(f"proj_size must be >= 0, got {proj_size}")
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"input_size, hidden_size and num_layers must be >= 1, got {input_size}, {hidden_size}, {num_layers}"
            )
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between layers, so with num_layers=1 it does nothing", UserWarning, stacklevel=2
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.cell = (cell or CellConfig()).model_copy()
        self.stack = (stack or StackConfig()).model_copy()
        self.gate_stats = False
        self.last_gate_stats: dict[str, dict[str, float]] = {}
        self.record_masks = False
        self.last_masks: dict[str, Tensor] = {}
        self._dropout_scale = 1.0
        self._force_custom = False  # tests and benchmarks: never take the fused path

        fk = {"device": device, "dtype": dtype}
        h, h4 = hidden_size, 4 * hidden_size
        for k in range(num_layers):
            n_in = self.layer_input_size(k)
            for sfx in self._suffixes:
                self.register_parameter(f"weight_ih_l{k}{sfx}", nn.Parameter(torch.empty(h4, n_in, **fk)))
                self.register_parameter(f"weight_hh_l{k}{sfx}", nn.Parameter(torch.empty(h4, h, **fk)))
                if bias:
                    self.register_parameter(f"bias_ih_l{k}{sfx}", nn.Parameter(torch.empty(h4, **fk)))
                    self.register_parameter(f"bias_hh_l{k}{sfx}", nn.Parameter(torch.empty(h4, **fk)))
                if self.cell.layer_norm:
                    self.register_parameter(f"ln_gates_weight_l{k}{sfx}", nn.Parameter(torch.empty(4, h, **fk)))
                    self.register_parameter(f"ln_gates_bias_l{k}{sfx}", nn.Parameter(torch.empty(4, h, **fk)))
                    self.register_parameter(f"ln_cell_weight_l{k}{sfx}", nn.Parameter(torch.empty(h, **fk)))
                    self.register_parameter(f"ln_cell_bias_l{k}{sfx}", nn.Parameter(torch.empty(h, **fk)))
                if self.cell.self_attention:
                    self.register_parameter(f"weight_ch_l{k}{sfx}", nn.Parameter(torch.empty(h4, h, **fk)))
                    self.register_parameter(f"weight_q_l{k}{sfx}", nn.Parameter(torch.empty(h, h, **fk)))
                if self.cell.time_skip == "highway":  # the gate T of the highway through time
                    self.register_parameter(f"weight_ti_l{k}{sfx}", nn.Parameter(torch.empty(h, n_in, **fk)))
                    self.register_parameter(f"weight_th_l{k}{sfx}", nn.Parameter(torch.empty(h, h, **fk)))
                    if bias:
                        self.register_parameter(f"bias_t_l{k}{sfx}", nn.Parameter(torch.empty(h, **fk)))
        if self._skip == "highway":
            width = self.num_directions * h
            self.highway = nn.ModuleDict({str(k): nn.Linear(width, width, **fk) for k in range(1, num_layers)})
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------------- structure

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _suffixes(self) -> list[str]:
        return ["", "_reverse"][: self.num_directions]

    @property
    def _skip(self) -> str:
        """The skip connection in effect: none with a single layer."""
        return self.stack.skip if self.num_layers > 1 else "none"

    def layer_input_size(self, k: int) -> int:
        """Width of layer ``k``'s input (the second dimension of ``weight_ih_l{k}``)."""
        width = self.num_directions * self.hidden_size
        if k == 0:
            return self.input_size
        return self.input_size + k * width if self._skip == "dense" else width

    def reset_parameters(self) -> None:
        """``nn.LSTM``'s uniform(-1/sqrt(H), 1/sqrt(H)) init; layer-norm gains 1 and biases 0; the forget bias;
        highway gates between layers biased towards carrying the input (``b_T = -1``); the highway gate through
        time biased towards the LSTM's own output (``b_T = 1``, T about 0.73: the layer starts close to a plain
        LSTM and learns where to carry h_{t-1})."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                if name.startswith("ln_"):
                    p.fill_(1.0 if "_weight_" in name else 0.0)
                else:
                    p.uniform_(-bound, bound)
            if self.bias:
                h = self.hidden_size
                for k in range(self.num_layers):
                    for sfx in self._suffixes:
                        getattr(self, f"bias_ih_l{k}{sfx}")[h : 2 * h] = self.cell.forget_bias
                        getattr(self, f"bias_hh_l{k}{sfx}")[h : 2 * h] = 0.0
                        if self.cell.time_skip == "highway":
                            getattr(self, f"bias_t_l{k}{sfx}").fill_(1.0)
            if self._skip == "highway":
                for lin in self.highway.values():
                    lin.reset_parameters()
                    lin.bias.fill_(-1.0)

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``nn.LSTM``."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        changed = self.cell.model_dump(exclude_defaults=True)
        if changed:
            s += f", cell={changed}"
        if self.stack.skip != "none":
            s += f", skip={self.stack.skip!r}"
        return s

    # ------------------------------------------------------------------------------------------- conversions

    @classmethod
    def from_torch(cls, lstm: nn.LSTM, cell: CellConfig | None = None, stack: StackConfig | None = None) -> LSTM:
        """An :class:`LSTM` with ``lstm``'s configuration and weights (extra parameters keep their init)."""
        if lstm.proj_size > 0:
            raise NotImplementedError("longshort.nn.LSTM does not support proj_size > 0")
        if stack is not None and stack.skip == "dense" and lstm.num_layers > 1:
            raise ValueError("skip='dense' widens weight_ih of layers >= 1, so nn.LSTM weights cannot be loaded")
        p = next(lstm.parameters())
        m = cls(
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
            lstm.bias,
            lstm.batch_first,
            lstm.dropout,
            lstm.bidirectional,
            cell=cell,
            stack=stack,
            device=p.device,
            dtype=p.dtype,
        )
        m.load_state_dict(lstm.state_dict(), strict=False)
        return m.train(lstm.training)

    def inexpressible_options(self) -> list[str]:
        """Options that change what this module computes at evaluation in a way ``nn.LSTM`` cannot express."""
        c = self.cell
        bad = []
        if c.layer_norm:
            bad.append("layer_norm")
        if c.rate_c > 0 or c.rate_h > 0:
            bad.append("zoneout")
        if c.self_attention:
            bad.append("self_attention")
        if c.time_skip != "none":
            bad.append(f"time_skip={c.time_skip!r}")
        if self._skip != "none":
            bad.append(f"skip={self._skip!r}")
        return bad

    def to_torch(self) -> nn.LSTM:
        """An ``nn.LSTM`` computing what this module computes at evaluation.

        Raises ``ValueError`` naming the options it cannot express (layer_norm, zoneout, self_attention,
        time_skip, skip).
        Training-only regularisers (recurrent, input and output dropout, weight drop) are not carried over;
        ``dropout`` (between layers) is.
        """
        bad = self.inexpressible_options()
        if bad:
            raise ValueError(f"nn.LSTM cannot express these options: {', '.join(bad)}")
        p = next(self.parameters())
        m = nn.LSTM(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.batch_first,
            self.dropout,
            self.bidirectional,
            device=p.device,
            dtype=p.dtype,
        )
        own = self.state_dict()
        m.load_state_dict({name: own[name] for name in m.state_dict()})
        return m.train(self.training)

    # ------------------------------------------------------------------------------------------ rates, paths

    @property
    def dropout_scale(self) -> float:
        return self._dropout_scale

    def on_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of each epoch: the adaptive dropout schedule."""
        if self.cell.dropout_decay:
            self.set_dropout_scale(math.exp(-self.cell.dropout_decay * epoch))

    def set_dropout_scale(self, s: float) -> None:
        """Multiply every rate (zoneout, recurrent, input, output, weight drop, between-layer dropout) by ``s``."""
        c = self.cell
        top = max(c.rate_c, c.rate_h, c.recurrent_dropout, c.input_dropout, c.output_dropout, c.weight_drop)
        if s < 0 or top * s >= 1 or self.dropout * s > 1:
            raise ValueError(f"dropout scale {s} must be >= 0 and keep every rate below 1")
        self._dropout_scale = float(s)

    def _rate(self, p: float, training_only: bool = True) -> float:
        if training_only and not self.training:
            return 0.0
        return p * self._dropout_scale

    @property
    def uses_fused_path(self) -> bool:
        """Whether a forward in the current mode runs ``nn.LSTM``'s kernel (else the custom recurrence)."""
        c = self.cell
        custom = c.layer_norm or c.self_attention or c.time_skip != "none" or self._skip != "none"
        if self._force_custom or self.gate_stats or custom:
            return False
        zoneout = self._rate(c.rate_c, False) > 0 or self._rate(c.rate_h, False) > 0
        return not zoneout and self._rate(c.recurrent_dropout) == 0

    def _layerwise(self) -> bool:
        """The fused path must run one layer at a time (per-layer masks to apply)."""
        c = self.cell
        return any(self._rate(p) > 0 for p in (c.input_dropout, c.output_dropout, c.weight_drop))

    # ------------------------------------------------------------------------------------------------ forward

    def forward(
        self, input: Tensor | PackedSequence, hx: Hidden | None = None, lengths: Tensor | None = None,
        need_state: bool = True, memory: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor | PackedSequence, Hidden]:
        """Run the stack; returns ``(output, (h_n, c_n))`` like ``nn.LSTM``.

        ``output`` is [T, B, D*H] ([B, T, D*H] with ``batch_first``), zero at padded steps, or a ``PackedSequence``
        for a packed input; ``h_n``/``c_n`` are [num_layers * D, B, H], each sequence's state at its own last step.
        With ``gate_stats`` on, ``last_gate_stats["l{k}{_reverse}"]`` gets the mean and variance over valid steps,
        sequences and units of the input, forget and output gates (``i_mean``, ``i_var``, ``f_mean`` ...) and the
        cell-state utilisation ``||std(c)|| / ||mean(c)||`` (per-unit statistics over valid steps and sequences).

        ``need_state=False`` says the caller discards ``(h_n, c_n)``: variable-length CPU batches then take
        :meth:`_forward_padded` (returning ``hx`` unchanged in their place).

        ``memory`` (the self-attention cell, one unidirectional layer): the hidden states of earlier steps
        [B, S, H] and which of them are real [B, S], which every step attends over besides this call's own. A
        stream run a chunk at a time passes its earlier chunks' outputs, so that each chunk computes what one
        call over the whole stream would.
        """
        if self.record_masks:
            self.last_masks = {}
        packed = input if isinstance(input, PackedSequence) else None
        unbatched = False
        if packed is not None:
            if lengths is not None:
                raise ValueError("pass lengths with a padded tensor, not with a PackedSequence")
            x = packed.data
            batch = int(packed.batch_sizes[0])
        else:
            x = input
            if x.dim() not in (2, 3):
                raise ValueError(f"LSTM: expected a 2-D or 3-D input, got {x.dim()}-D")
            if x.dim() == 2:
                if lengths is not None:
                    raise ValueError("lengths needs a batched (3-D) input")
                unbatched = True
                x = x.unsqueeze(0 if self.batch_first else 1)
                if hx is not None:
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            batch = x.shape[0 if self.batch_first else 1]
        if x.shape[-1] != self.input_size:
            raise ValueError(f"LSTM: expected input size {self.input_size}, got {x.shape[-1]}")
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(shape)
            hx = (zeros, zeros)
        elif tuple(hx[0].shape) != shape or tuple(hx[1].shape) != shape:
            raise ValueError(f"LSTM: expected hx of shape {shape}, got {tuple(hx[0].shape)}, {tuple(hx[1].shape)}")
        if packed is None and lengths is not None:
            lengths = self._check_lengths(lengths, batch, x.shape[1 if self.batch_first else 0])

        if memory is not None and (not self.cell.self_attention or self.num_layers != 1 or self.bidirectional
                                   or packed is not None):
            raise ValueError("memory is for a one-layer unidirectional self-attention LSTM over a padded tensor")
        fused = self.uses_fused_path
        if (fused and not need_state and packed is None and lengths is not None and x.device.type == "cpu"
                and self.num_layers == 1 and not self._layerwise()):
            out, h_n = self._forward_padded(x, lengths, hx)
        elif fused and not self._layerwise():
            out, h_n = self._forward_fused(x, packed, lengths, hx)
        else:
            if packed is not None:
                steps, lens = pad_packed_sequence(packed)
                lengths = lens if bool((lens < steps.shape[0]).any()) else None
                x = steps
            elif self.batch_first:
                x = x.transpose(0, 1)
            out, h_n = self._forward_stack(x, lengths, hx, fused, memory)
            if packed is not None:
                out = _pack_like(out, packed)
            elif self.batch_first:
                out = out.transpose(0, 1)
        if unbatched:
            assert isinstance(out, Tensor)
            out = out.squeeze(0 if self.batch_first else 1)
            h_n = (h_n[0].squeeze(1), h_n[1].squeeze(1))
        return out, h_n

    @staticmethod
    def _check_lengths(lengths: Tensor, batch: int, steps: int) -> Tensor | None:
        """CPU int64 lengths, or None when every sequence is full."""
        lengths = torch.as_tensor(lengths).to("cpu", torch.int64)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
        if bool((lengths < 1).any()) or bool((lengths > steps).any()):
            raise ValueError(f"lengths must be in [1, {steps}], got {lengths.tolist()}")
        return None if bool((lengths == steps).all()) else lengths

    def _flat_weights(self, layers: range, w_hh: dict[str, Tensor] | None = None) -> list[Tensor]:
        """``nn.LSTM``'s weight order for ``_VF.lstm``; ``w_hh`` replaces recurrent weights by name."""
        out = []
        for k in layers:
            for sfx in self._suffixes:
                names = [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
                if self.bias:
                    names += [f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"]
                out += [w_hh[n] if w_hh is not None and n in w_hh else getattr(self, n) for n in names]
        return out

    def _forward_fused(
        self, x: Tensor, packed: PackedSequence | None, lengths: Tensor | None, hx: Hidden
    ) -> tuple[Tensor | PackedSequence, Hidden]:
        """All layers in one ``_VF.lstm`` call, exactly as ``nn.LSTM.forward``."""
        weights = self._flat_weights(range(self.num_layers))
        steps = x.shape[1 if self.batch_first else 0]
        if (packed is None and lengths is None and steps == 1 and self.num_layers == 1 and not self.bidirectional
                and not torch.jit.is_tracing()):
            # one step (a stream's): the cell kernel; the sequence kernel's set-up costs more than the step itself.
            # Not when traced: the sequence kernel exports as one ONNX LSTM node, which quantizes (the cell does not)
            h, c = torch.lstm_cell(x[:, 0] if self.batch_first else x[0], (hx[0][0], hx[1][0]), *weights)
            return (h[:, None] if self.batch_first else h[None]), (h[None], c[None])
        args = (self.bias, self.num_layers, self._rate(self.dropout), self.training, self.bidirectional)
        if packed is None and lengths is None:
            out, h, c = _VF.lstm(x, hx, weights, *args, self.batch_first)
            return out, (h, c)
        pk = packed if packed is not None else pack_padded_sequence(x, lengths, self.batch_first, enforce_sorted=False)
        if pk.sorted_indices is not None:
            hx = (hx[0].index_select(1, pk.sorted_indices), hx[1].index_select(1, pk.sorted_indices))
        data, h, c = _VF.lstm(pk.data, pk.batch_sizes, hx, weights, *args)
        if pk.unsorted_indices is not None:
            h, c = h.index_select(1, pk.unsorted_indices), c.index_select(1, pk.unsorted_indices)
        out_pk = PackedSequence(data, pk.batch_sizes, pk.sorted_indices, pk.unsorted_indices)
        if packed is not None:
            return out_pk, (h, c)
        total = x.shape[1 if self.batch_first else 0]
        return pad_packed_sequence(out_pk, self.batch_first, total_length=total)[0], (h, c)

    def _forward_padded(self, x: Tensor, lengths: Tensor, hx: Hidden) -> tuple[Tensor, Hidden]:
        """One layer over a padded batch with PyTorch's oneDNN kernel, no packing: on a CPU a packed input makes
        ``_VF.lstm`` fall back to a step-by-step loop of small ops, 3x slower for one BiLSTM block. The forward
        direction runs over the padded tensor (padding comes after the valid steps, so cannot reach them); the
        reverse direction runs forward over each sequence reversed within its own length (padding again last)
        and is reversed back. Padded steps of the output are zeroed, as the packed path leaves them. The same
        outputs as :meth:`_forward_fused` to rounding; the final states are not computed (``hx`` returned)."""
        xt = x.transpose(0, 1) if self.batch_first else x  # [T, B, F]
        steps = xt.shape[0]
        lens = lengths.to(x.device)
        t = torch.arange(steps, device=x.device)[:, None]
        valid = (t < lens)[..., None].to(xt.dtype)  # [T, B, 1]
        rev = torch.where(t < lens, lens - 1 - t, t)[..., None].expand(-1, -1, xt.shape[-1])  # [T, B, F]
        outs = []
        for d, sfx in enumerate(self._suffixes):
            names = [f"weight_ih_l0{sfx}", f"weight_hh_l0{sfx}"] + (
                [f"bias_ih_l0{sfx}", f"bias_hh_l0{sfx}"] if self.bias else [])
            weights = [getattr(self, n) for n in names]
            inp = xt if d == 0 else xt.gather(0, rev)
            h0 = (hx[0][d : d + 1], hx[1][d : d + 1])
            y, _, _ = _VF.lstm(inp, h0, weights, self.bias, 1, 0.0, self.training, False, False)
            if d == 1:
                y = y.gather(0, rev[..., :1].expand(-1, -1, y.shape[-1]))
            outs.append(y)
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, -1)) * valid
        return (out.transpose(0, 1) if self.batch_first else out), hx

    def _record(self, name: str, mask: Tensor) -> None:
        if self.record_masks:
            self.last_masks[name] = mask.detach()

    def _drop_mask(self, shape: tuple[int, ...], p: float, like: Tensor, name: str) -> Tensor:
        """A 0/1 keep mask scaled by 1/(1-p)."""
        mask = bernoulli_mask(shape, 1 - p, like) / (1 - p)
        self._record(name, mask)
        return mask

    def _forward_stack(self, x: Tensor, lengths: Tensor | None, hx: Hidden, fused: bool,
                       memory: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Hidden]:
        """Layer by layer on a time-major padded ``x`` [T, B, F]; ``lengths`` on CPU or None (all full)."""
        steps, batch, _ = x.shape
        d, c = self.num_directions, self.cell
        p_in, p_out, p_wd = self._rate(c.input_dropout), self._rate(c.output_dropout), self._rate(c.weight_drop)
        p_between = self._rate(self.dropout)
        lens_dev = None if lengths is None else lengths.to(x.device)
        rev = None
        if not fused and d == 2 and lens_dev is not None:
            t = torch.arange(steps, device=x.device)[:, None]
            rev = torch.where(t < lens_dev, lens_dev - 1 - t, t)  # [T, B]: reverse each row's valid part
        stats: dict[str, dict[str, float]] | None = {} if self.gate_stats and not fused else None
        seen = [x]  # dense: the input and every layer's output
        prev = x
        hs, cs = [], []
        for k in range(self.num_layers):
            layer_in = x if k == 0 else (torch.cat(seen, -1) if self._skip == "dense" else prev)
            xin = layer_in
            if p_in > 0:
                xin = xin * self._drop_mask((batch, xin.shape[-1]), p_in, xin, f"input_l{k}")
            w_hh = {}
            if p_wd > 0:
                for sfx in self._suffixes:
                    name = f"weight_hh_l{k}{sfx}"
                    w = getattr(self, name)
                    keep = (torch.rand(w.shape, device=w.device) >= p_wd).to(w.dtype)
                    self._record(name, keep)
                    w_hh[name] = w * keep / (1 - p_wd)
            h0, c0 = hx[0][k * d : (k + 1) * d], hx[1][k * d : (k + 1) * d]
            if fused:
                out, h_k, c_k = self._fused_layer(k, xin, lengths, h0, c0, w_hh)
            else:
                out, h_k, c_k = self._custom_layer(k, xin, lens_dev, rev, h0, c0, w_hh, stats, memory)
            if p_out > 0:
                out = out * self._drop_mask((batch, out.shape[-1]), p_out, out, f"output_l{k}")
            if k > 0 and self._skip == "residual":
                out = out + layer_in
            elif k > 0 and self._skip == "highway":
                gate = torch.sigmoid(self.highway[str(k)](layer_in))
                out = gate * out + (1 - gate) * layer_in
            if k < self.num_layers - 1 and p_between > 0:
                out = F.dropout(out, p_between, training=True)
            seen.append(out)
            prev = out
            hs.append(h_k)
            cs.append(c_k)
        if stats is not None:
            self.last_gate_stats = stats
        return prev, (torch.cat(hs), torch.cat(cs))

    def _fused_layer(
        self, k: int, x: Tensor, lengths: Tensor | None, h0: Tensor, c0: Tensor, w_hh: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer (both directions) through ``_VF.lstm``."""
        weights = self._flat_weights(range(k, k + 1), w_hh)
        args = (self.bias, 1, 0.0, self.training, self.bidirectional)
        if lengths is None:
            out, h, c = _VF.lstm(x, (h0, c0), weights, *args, False)
            return out, h, c
        pk = pack_padded_sequence(x, lengths, enforce_sorted=False)
        assert pk.sorted_indices is not None and pk.unsorted_indices is not None
        hx = (h0.index_select(1, pk.sorted_indices), c0.index_select(1, pk.sorted_indices))
        data, h, c = _VF.lstm(pk.data, pk.batch_sizes, hx, weights, *args)
        out_pk = PackedSequence(data, pk.batch_sizes, pk.sorted_indices, pk.unsorted_indices)
        out = pad_packed_sequence(out_pk, total_length=x.shape[0])[0]
        return out, h.index_select(1, pk.unsorted_indices), c.index_select(1, pk.unsorted_indices)

    def _custom_layer(
        self,
        k: int,
        x: Tensor,
        lengths: Tensor | None,
        rev: Tensor | None,
        h0: Tensor,
        c0: Tensor,
        w_hh: dict[str, Tensor],
        stats: dict[str, dict[str, float]] | None,
        memory: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer, each direction through ``lstm_recurrence`` (or the self-attention loop)."""
        steps, batch, _ = x.shape
        hid, c = self.hidden_size, self.cell
        p_c, p_h = self._rate(c.rate_c, False), self._rate(c.rate_h, False)
        p_rec = self._rate(c.recurrent_dropout)
        outs, hs, cs = [], [], []
        for d, sfx in enumerate(self._suffixes):
            bias = None
            if self.bias:
                bias = getattr(self, f"bias_ih_l{k}{sfx}") + getattr(self, f"bias_hh_l{k}{sfx}")
            # the reverse direction reverses its input, not the 4x wider projection (a cheaper copy both ways)
            xd = _reverse(x, rev) if d == 1 else x
            w_ih = getattr(self, f"weight_ih_l{k}{sfx}")
            whh = w_hh.get(f"weight_hh_l{k}{sfx}", getattr(self, f"weight_hh_l{k}{sfx}"))
            if c.time_skip == "highway":  # the gate T rides along as a fifth block of both projections
                w_ih = torch.cat([w_ih, getattr(self, f"weight_ti_l{k}{sfx}")])
                whh = torch.cat([whh, getattr(self, f"weight_th_l{k}{sfx}")])
                if bias is not None:
                    bias = torch.cat([bias, getattr(self, f"bias_t_l{k}{sfx}")])
            xw = F.linear(xd, w_ih, bias)  # [T, B, 4H] (5H with the highway), every step at once
            zc = self._zoneout_keep(p_c, (steps, batch, hid), xw, f"zoneout_c_l{k}{sfx}")
            zh = self._zoneout_keep(p_h, (steps, batch, hid), xw, f"zoneout_h_l{k}{sfx}")
            rmask = None
            if p_rec > 0:
                rmask = self._drop_mask((batch, hid), p_rec, xw, f"recurrent_l{k}{sfx}")
            ln = None
            if c.layer_norm:
                ln = LayerNormParams(
                    getattr(self, f"ln_gates_weight_l{k}{sfx}"),
                    getattr(self, f"ln_gates_bias_l{k}{sfx}"),
                    getattr(self, f"ln_cell_weight_l{k}{sfx}"),
                    getattr(self, f"ln_cell_bias_l{k}{sfx}"),
                )
            want = stats is not None
            if c.self_attention:
                wch, wq = getattr(self, f"weight_ch_l{k}{sfx}"), getattr(self, f"weight_q_l{k}{sfx}")
                out, h, cc, gs = _attention_recurrence(xw, whh, wch, wq, h0[d], c0[d], lengths, ln, zc, zh, rmask, want,
                                                       memory)
            else:
                out, h, cc, gs = lstm_recurrence(
                    xw, whh, h0[d], c0[d], lengths, ln, zc, zh, rmask, want, time_skip=c.time_skip
                )
            if d == 1:
                out = _reverse(out, rev)
            if stats is not None and gs is not None:
                stats[f"l{k}{sfx}"] = _summarise(gs)
            outs.append(out)
            hs.append(h)
            cs.append(cc)
        return torch.cat(outs, -1), torch.stack(hs), torch.stack(cs)

    def _zoneout_keep(self, p: float, shape: tuple[int, int, int], like: Tensor, name: str) -> Keep:
        """Training: a Bernoulli(p) 0/1 mask (1 = keep the previous value); evaluation: the rate itself."""
        if p <= 0:
            return None
        if not self.training:
            return p
        mask = bernoulli_mask(shape, p, like)
        self._record(name, mask)
        return mask


def _reverse(x: Tensor, index: Tensor | None) -> Tensor:
    """Reverse time [T, B, ...]; with ``index`` [T, B] only each row's valid part (its own inverse)."""
    if index is None:
        return x.flip(0)
    return x.gather(0, index[:, :, None].expand_as(x))


def _pack_like(out: Tensor, packed: PackedSequence) -> PackedSequence:
    """Time-major padded ``out`` [T, B, F] (original batch order) packed with ``packed``'s layout."""
    sizes = packed.batch_sizes
    batch = out.shape[1]
    valid = torch.arange(batch)[None, :] < sizes[:, None]  # [T, B] positions in the sorted batch
    t_idx, pos = valid.nonzero(as_tuple=True)
    b_idx = pos.to(out.device)
    if packed.sorted_indices is not None:
        b_idx = packed.sorted_indices[b_idx]
    data = out[t_idx.to(out.device), b_idx]
    return PackedSequence(data, sizes, packed.sorted_indices, packed.unsorted_indices)


def _summarise(gs: GateStats) -> dict[str, float]:
    n = gs.count.clamp_min(1)
    mean, sq = gs.total / n, gs.total_sq / n
    var = (sq - mean**2).clamp_min(0)
    c_mean = gs.cell_abs / n
    c_std = (gs.cell_sq / n - c_mean**2).clamp_min(0).sqrt()
    util = c_std.norm() / c_mean.norm().clamp_min(1e-12)
    vals = torch.stack([mean[0], var[0], mean[1], var[1], mean[2], var[2], util]).tolist()
    keys = ["i_mean", "i_var", "f_mean", "f_var", "o_mean", "o_var", "cell_utilisation"]
    return dict(zip(keys, vals, strict=True))


def _attention_recurrence(
    xw: Tensor,
    w_hh: Tensor,
    w_ch: Tensor,
    w_q: Tensor,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    ln: LayerNormParams | None,
    zoneout_c: Keep,
    zoneout_h: Keep,
    recurrent_mask: Tensor | None,
    stats: bool,
    memory: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, GateStats | None]:
    """The self-attention LSTM of seed 003, same interface and options as ``lstm_recurrence``.

    At step t the query ``q = W_q h_{t-1}`` attends (softmax of ``q . h_s / sqrt(H)``) over the hidden states
    ``h_1 .. h_{t-1}`` already produced (none at the first step: the context is zero), and the context ``a_t``
    enters the gates as ``W_ih x_t + b + W_hh h_{t-1} + W_ch a_t``; layer norm (if on) normalises only the
    ``W_hh`` term. Padded steps come after each row's valid ones, so valid steps only ever attend to valid states.

    ``memory``: hidden states of earlier steps [B, S, H] and their validity [B, S], attended before this call's
    own (a stream's earlier chunks). Invalid slots get the lowest score and weight 0, so a row with no valid
    state yet gets a zero context, as the first step of a sequence does.
    """
    steps, batch, four_h = xw.shape
    hid = w_hh.shape[1]  # from the weight, not the input: a tracer keeps it a constant (layer norm needs one)
    scale = 1.0 / math.sqrt(hid)
    valid = None if lengths is None else torch.arange(steps, device=xw.device)[:, None] < lengths
    gs = None
    if stats:
        z = xw.new_zeros
        gs = GateStats(z(()), z(3), z(3), z(hid), z(hid))
    h, c = h0, c0
    past, past_valid = memory if memory is not None else (None, None)
    memory_list: list[Tensor] = []
    outs = []
    for t in range(steps):
        rec = (h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t()
        if ln is not None:
            r = F.layer_norm(rec.view(batch, 4, hid), (hid,), eps=ln.eps)
            rec = (r * ln.gates_weight + ln.gates_bias).reshape(batch, four_h)
        gates = xw[t] + rec
        if past is not None and past_valid is not None:
            keys = torch.cat([past, *(m[:, None] for m in memory_list)], 1)  # [B, S + t, H]
            ok = torch.cat([past_valid, past_valid.new_ones(batch, t)], 1)
            q = (h @ w_q.t()) * scale
            scores = torch.einsum("bh,bsh->bs", q, keys).masked_fill(~ok, torch.finfo(xw.dtype).min)
            att = torch.softmax(scores, dim=-1) * ok
            gates = gates + torch.einsum("bs,bsh->bh", att, keys) @ w_ch.t()
        elif memory_list:
            keys = torch.stack(memory_list, 1)  # [B, t, H]
            q = (h @ w_q.t()) * scale
            att = torch.softmax(torch.einsum("bh,bsh->bs", q, keys), dim=-1)
            gates = gates + torch.einsum("bs,bsh->bh", att, keys) @ w_ch.t()
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        c_act = c_new if ln is None else F.layer_norm(c_new, (hid,), ln.cell_weight, ln.cell_bias, ln.eps)
        h_new = o * torch.tanh(c_act)
        if zoneout_c is not None:
            zc = zoneout_c[t] if isinstance(zoneout_c, Tensor) else zoneout_c
            c_new = zc * c + (1 - zc) * c_new
        if zoneout_h is not None:
            zh = zoneout_h[t] if isinstance(zoneout_h, Tensor) else zoneout_h
            h_new = zh * h + (1 - zh) * h_new
        if valid is not None:
            m = valid[t][:, None]
            c_new, h_new = torch.where(m, c_new, c), torch.where(m, h_new, h)
            outs.append(h_new * m)
        else:
            outs.append(h_new)
        if gs is not None:
            with torch.no_grad():
                w = xw.new_ones(batch) if valid is None else valid[t].to(xw.dtype)
                acts = torch.stack([i, f, o])  # [3, B, H]
                gs.count += w.sum()
                gs.total += acts.mean(-1) @ w
                gs.total_sq += (acts**2).mean(-1) @ w
                gs.cell_abs += w @ c_new
                gs.cell_sq += w @ c_new**2
        memory_list.append(h_new)
        h, c = h_new, c_new
    return torch.stack(outs), h, c, gs
