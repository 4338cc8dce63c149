"""The classifier in exportable form: the model's own forward, with two modules swapped for traceable ones.

:class:`~longshort.nn.classifier.SequenceClassifier` has no branch on tensor values and writes its attention
and position codes in traceable ops, so exporting it is "copy, swap, call its forward" (:func:`export_copy`):

- each LSTM block's :class:`longshort.nn.lstm.LSTM` becomes :class:`MaskedLSTM` (same parameters). The LSTM
  handles ``lengths`` by packing (``pack_padded_sequence`` has data-dependent shapes) or by its custom
  recurrence (an autograd Function, partly C++); :class:`MaskedLSTM` gets variable lengths right with masks
  and gathers only:

  - forward direction: run over the whole padded tensor (a recurrence is causal, so padded steps after a
    sequence's end cannot reach its valid steps) and zero the outputs at padded steps, as ``LSTM`` does;
  - reverse direction: reverse each sequence *within its own length* with one gather (``index[t, b] =
    len_b - 1 - t`` on valid steps, ``t`` on padded ones; the permutation is its own inverse), run a forward
    recurrence with the reverse weights, gather back. Each sequence's reverse pass thus starts at its own end.

- each convolution's :class:`~longshort.nn.classifier.TimeConv` becomes :class:`TapsConv`: one matrix product
  over the ``kernel`` shifted copies of its input. onnxruntime's ``ConvInteger`` runs this shape at about half
  the speed of its 8-bit ``MatMul``, and the ``Conv`` form also needs a transpose to [B, C, T] and back.

The recurrence of :class:`MaskedLSTM` comes in two forms, because the two exporters want different things:

- ``"op"`` (ONNX): :class:`_OnnxLSTM`, one ONNX ``LSTM`` node per layer with both directions and
  ``sequence_lens``, so onnxruntime itself starts each reverse pass at the sequence's own end (no gathers in the
  graph), keeps the time dimension dynamic, and can quantize the node (``DynamicQuantizeLSTM``). Eager calls and
  the tracer compute the same numbers with ``torch.lstm`` and the gathers above;
- ``"scan"`` (``torch.export``): the cell written out and looped with ``torch._higher_order_ops.scan`` (a
  prototype API in torch 2.13); ``torch.export`` keeps the loop as one ``scan`` node with a symbolic trip count.
  ``torch.lstm`` is no good there: ``torch.export`` decomposes it into a Python loop and specialises the length.

The streaming step graph (:mod:`longshort.deploy.stream_export`) swaps only the convolutions: one step of any
LSTM cell traces as it is (the LSTM's plain ops for one step, every cell option included).

:func:`check_exportable` names the options the whole-sequence forms cannot express (layer norm, zoneout, the
self-attention LSTM, skips through time or inside one ``LSTM``): the ONNX LSTM operator and the plain cell have
no place for them, and the LSTM's own loop would trace to a graph of one fixed length.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.errors import LongshortError
from longshort.nn.classifier import BiLSTMBlock, SequenceClassifier, TemporalConvBlock, TimeConv
from longshort.nn.lstm import LSTM

Recurrence = Literal["op", "scan"]


class ExportError(LongshortError):
    """A model, option or file that cannot be exported as asked (the message says which and why)."""


def check_exportable(model: SequenceClassifier) -> None:
    """Raise :class:`ExportError` naming every cell option of ``model`` that the exported graph cannot express."""
    bad: set[str] = set()
    for block in model.lstms:
        assert isinstance(block, BiLSTMBlock)
        lstm = block.lstm
        if isinstance(lstm, LSTM):
            bad.update(lstm.inexpressible_options())
    if bad:
        raise ExportError(
            "cannot export this model: its LSTM uses " + ", ".join(sorted(bad)) + " (model.cell / model.stack), "
            "which the exported graph (ONNX's LSTM operator or the plain cell) cannot express; "
            "train without these options to export"
        )


def _reverse_index(lengths: Tensor, steps: int) -> Tensor:
    """[T, B] gather index reversing each column's first ``lengths[b]`` steps and leaving the rest in place."""
    t = torch.arange(steps, device=lengths.device)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x`` [T, B, F] reordered along time by ``index`` [T, B]."""
    return x.gather(0, index[:, :, None].expand(-1, -1, x.shape[-1]))


def _scan_recurrence(xw: Tensor, w_hh: Tensor) -> Tensor:
    """Outputs [T, D, B, H] of D independent plain LSTM cells (gate order i, f, g, o), one per direction, for
    input projections ``xw`` [T, D, B, 4H] and recurrent weights ``w_hh`` [D, 4H, H]. Both directions share
    one ``scan`` (a batched matmul per step): tracing a scan is what makes ``torch.export`` slow, so one per
    layer rather than one per direction."""
    from torch._higher_order_ops.scan import scan

    h0 = xw.new_zeros(xw.shape[1], xw.shape[2], w_hh.shape[2])
    w_t = w_hh.transpose(1, 2)  # [D, H, 4H]

    def step(carry: tuple[Tensor, Tensor], xt: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        h, c = carry
        i, f, g, o = (xt + torch.bmm(h, w_t)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h, c), h.clone()  # scan's outputs may not alias its carry

    _, out = scan(step, (h0, h0.clone()), xw)
    return out


_TO_ONNX = (0, 3, 1, 2)  # ONNX's gate blocks (i, o, f, c), as indices into torch's (i, f, g, o)
_TO_TORCH = (0, 2, 3, 1)  # and back


def _regate(w: Tensor, order: tuple[int, ...]) -> Tensor:
    """``w`` [4H, ...] with its four gate blocks reordered."""
    blocks = w.chunk(4, 0)
    return torch.cat([blocks[i] for i in order], 0)


class _OnnxLSTM(torch.autograd.Function):
    """One LSTM layer, both directions, over time-major ``x`` [T, B, F] with per-sequence ``lengths``: outputs
    [T, B, D * H] (the reverse half aligned with ``x``, zeros at padded steps).

    Exported as a single ONNX ``LSTM`` node with ``sequence_lens`` (``symbolic``), which runs each sequence's
    reverse pass from its own last step and zero-fills padded outputs. The TorchScript exporter on its own writes
    one ``LSTM`` node per direction plus the reverse gathers and their index arithmetic, about 45 nodes per
    block; at batch 1 those small nodes cost as much as a block's arithmetic in onnxruntime. ``forward``
    computes the same numbers with ``torch.lstm`` (what the tracer runs, and what eager calls of MaskedLSTM get).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, lengths: Tensor, w: Tensor, r: Tensor, b: Tensor, hidden: int) -> Tensor:
        steps, dirs = x.shape[0], w.shape[0]
        rev = _reverse_index(lengths, steps)
        outs = []
        for d in range(dirs):
            weights = [_regate(w[d], _TO_TORCH), _regate(r[d], _TO_TORCH),
                       _regate(b[d, : 4 * hidden], _TO_TORCH), _regate(b[d, 4 * hidden:], _TO_TORCH)]
            xd = _gather_time(x, rev) if d else x
            zeros = x.new_zeros(1, x.shape[1], hidden)
            y = torch.lstm(xd, (zeros, zeros), weights, True, 1, 0.0, False, False, False)[0]
            outs.append(_gather_time(y, rev) if d else y)
        valid = (torch.arange(steps, device=x.device)[:, None] < lengths[None, :])[:, :, None].to(x.dtype)
        return torch.cat(outs, -1) * valid

    @staticmethod
    def symbolic(g: Any, x: Any, lengths: Any, w: Any, r: Any, b: Any, hidden: int) -> Any:
        dirs = w.type().sizes()[0]
        seq = g.op("Cast", lengths, to_i=6)  # onnx.TensorProto.INT32, what sequence_lens takes
        y = g.op("LSTM", x, w, r, b, seq, direction_s="bidirectional" if dirs == 2 else "forward",
                 hidden_size_i=hidden)  # Y [T, D, B, H]
        y = g.op("Transpose", y, perm_i=[0, 2, 1, 3])
        return g.op("Reshape", y, g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64)))


class MaskedLSTM(nn.Module):
    """Evaluation-mode stand-in for a :class:`longshort.nn.lstm.LSTM` (sharing its parameters) that handles
    ``lengths`` with masks and gathers: what ``LSTM.forward`` computes, in a form graph exporters capture.

    ``forward(input, hx=None, lengths=None) -> (output, None)``; only the output is computed (the classifier
    blocks use nothing else), and ``lengths`` is required: pass the full length for unpadded rows.
    """

    def __init__(self, lstm: LSTM, recurrence: Recurrence) -> None:
        super().__init__()
        bad = lstm.inexpressible_options()
        if bad:
            raise ExportError(f"cannot export an LSTM with {', '.join(bad)}")
        self.lstm = lstm
        self.recurrence = recurrence

    def _weights(self, k: int, sfx: str) -> tuple[Tensor, Tensor, Tensor | None]:
        """``W_ih``, ``W_hh`` and the summed bias (or None) of layer ``k``, direction ``sfx``."""
        m = self.lstm
        bias = None
        if m.bias:
            bias = getattr(m, f"bias_ih_l{k}{sfx}") + getattr(m, f"bias_hh_l{k}{sfx}")
        return getattr(m, f"weight_ih_l{k}{sfx}"), getattr(m, f"weight_hh_l{k}{sfx}"), bias

    def _onnx_weights(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Layer ``k``'s weights in the layout of ONNX's ``LSTM`` operator: ``W`` [D, 4H, F], ``R`` [D, 4H, H],
        ``B`` [D, 8H] (input then recurrent bias), gates in ONNX's order. Computed from the parameters, so the
        exporter folds them into three initializers (which onnxruntime's quantizer then turns to 8 bits)."""
        m = self.lstm
        ws, rs, bs = [], [], []
        for sfx in ["", "_reverse"][: m.num_directions]:
            w_ih, w_hh = getattr(m, f"weight_ih_l{k}{sfx}"), getattr(m, f"weight_hh_l{k}{sfx}")
            ws.append(_regate(w_ih, _TO_ONNX))
            rs.append(_regate(w_hh, _TO_ONNX))
            if m.bias:
                b_ih, b_hh = getattr(m, f"bias_ih_l{k}{sfx}"), getattr(m, f"bias_hh_l{k}{sfx}")
                bs.append(torch.cat([_regate(b_ih, _TO_ONNX), _regate(b_hh, _TO_ONNX)]))
            else:
                bs.append(w_ih.new_zeros(8 * m.hidden_size))
        return torch.stack(ws), torch.stack(rs), torch.stack(bs)

    def _layer(self, x: Tensor, k: int, lengths: Tensor, rev: Tensor | None) -> Tensor:
        """Layer ``k`` over time-major ``x`` [T, B, F]: [T, B, D * H], the reverse half aligned with ``x``
        (``rev``: the reverse index of ``lengths``, for the scan form)."""
        if self.recurrence == "op":
            return _OnnxLSTM.apply(x, lengths, *self._onnx_weights(k), self.lstm.hidden_size)
        sfxs = ["", "_reverse"][: self.lstm.num_directions]
        inputs = [x if not sfx else _gather_time(x, rev) for sfx in sfxs]  # type: ignore[arg-type]
        weights = [self._weights(k, sfx) for sfx in sfxs]
        xw = torch.stack([xd @ w_ih.t() + (0 if b is None else b)
                          for xd, (w_ih, _, b) in zip(inputs, weights, strict=True)], 1)  # [T, D, B, 4H]
        outs = list(_scan_recurrence(xw, torch.stack([w[1] for w in weights])).unbind(1))
        if rev is not None:
            outs[1] = _gather_time(outs[1], rev)
        return torch.cat(outs, -1)

    def forward(self, input: Tensor, hx: object = None, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        if hx is not None or lengths is None:
            raise ExportError("MaskedLSTM takes lengths and no initial state")
        m = self.lstm
        x = input.transpose(0, 1) if m.batch_first else input  # time-major [T, B, F]
        if self.recurrence == "op":  # zero at padded steps already (see _OnnxLSTM)
            for k in range(m.num_layers):
                x = self._layer(x, k, lengths, None)
        else:
            steps = x.shape[0]
            valid = (torch.arange(steps, device=x.device)[:, None] < lengths[None, :])[:, :, None].to(x.dtype)
            rev = _reverse_index(lengths, steps) if m.bidirectional else None
            for k in range(m.num_layers):
                x = self._layer(x, k, lengths, rev) * valid  # zero at padded steps, like LSTM.forward
        return (x.transpose(0, 1) if m.batch_first else x), None


class TapsConv(nn.Module):
    """Evaluation-mode stand-in for a :class:`~longshort.nn.classifier.TimeConv` (sharing its parameters): the
    convolution as one matrix product of the ``kernel`` shifted copies of the input (stacked along features, oldest
    tap first) with the [C_out, C_in, k] kernel as a [k * C_in, C_out] matrix, then GELU, in the [B, T, C] layout.
    The shifts are slices with constant bounds (the tracer keeps them shape-free), and the kernel folds into one
    constant."""

    def __init__(self, conv: TimeConv) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        conv = self.conv
        k, d, pad = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
        span = d * (k - 1)
        if pad:
            x = F.pad(x, (0, 0, pad, pad))
        taps = torch.cat([x[:, j * d: (j * d - span) or None] for j in range(k)], -1)  # [B, T_out, k * C]
        y = taps @ conv.weight.permute(2, 1, 0).reshape(k * conv.in_channels, conv.out_channels)
        if conv.bias is not None:
            y = y + conv.bias
        return F.gelu(y)


def export_copy(model: SequenceClassifier, recurrence: Recurrence | None) -> SequenceClassifier:
    """A :func:`frozen_copy` of ``model`` with every convolution a :class:`TapsConv` and, for a ``recurrence``,
    every LSTM a :class:`MaskedLSTM`; its own forward is then what the exporters trace."""
    m = frozen_copy(model)
    for block in m.convs:
        assert isinstance(block, TemporalConvBlock) and isinstance(block.conv, TimeConv)
        block.conv = TapsConv(block.conv)
    if recurrence is not None:
        for block in m.lstms:
            assert isinstance(block, BiLSTMBlock) and isinstance(block.lstm, LSTM)
            block.lstm = MaskedLSTM(block.lstm, recurrence)  # type: ignore[assignment]
    return m


class ExportClassifier(nn.Module):
    """``forward(x [B, T, C] float32 (scaled), lengths [B] int64) -> (probabilities [B, K], logits [B, K])``:
    :meth:`SequenceClassifier.forward` of an :func:`export_copy` of ``model`` (``model`` itself is left as it is).
    Parity with the eager model is checked by every export (see :mod:`longshort.deploy.export`)."""

    def __init__(self, model: SequenceClassifier, recurrence: Recurrence = "op") -> None:
        super().__init__()
        check_exportable(model)
        self.model = export_copy(model, recurrence)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(x, lengths).logits
        return torch.softmax(logits, -1), logits


def frozen_copy(model: SequenceClassifier) -> SequenceClassifier:
    """A deep copy of ``model`` in evaluation mode, no parameter requiring gradients, spectral norm baked into
    plain weights: what the exported graphs are traced from (``model`` itself is left as it is)."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    _bake_parametrizations(m)
    return m


def _bake_parametrizations(model: nn.Module) -> None:
    """Replace each parametrized ``nn.Linear`` (spectral norm) by a plain one holding its current weight: a plain
    tensor exports simply. Swapping modules rather than calling ``remove_parametrizations``, because a deep copy of
    a parametrized module shares its generated class with the original, and removing the parametrization from
    the copy would delete the original's ``weight`` property too."""
    from torch.nn.utils import parametrize

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not parametrize.is_parametrized(child):
                continue
            if not isinstance(child, nn.Linear):
                raise ExportError(f"cannot export a parametrized {type(child).__name__} ({name})")
            plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            with torch.no_grad():
                plain.weight.copy_(child.weight)  # the parametrization's value (evaluation mode: no power step)
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
            plain.requires_grad_(False)
            setattr(parent, name, plain)
