"""An export-friendly twin of :class:`~longshort.nn.classifier.SequenceClassifier`: same weights, same numbers,
no data-dependent control flow.

Why a twin and not the model itself: the eager model takes two paths that no graph exporter can capture with a
dynamic batch and sequence length. ``SequenceClassifier.forward`` skips masking when ``bool((lengths == T).all())``
(a branch on tensor values), and :class:`longshort.nn.lstm.LSTM` handles ``lengths`` by packing
(``pack_padded_sequence`` has data-dependent shapes) or by its custom recurrence (an autograd Function, partly
C++). Rather than teach ``nn/`` about exporters, this module reuses the classifier's own submodules (projection,
convolution, BiLSTM, attention and head blocks; parameters are shared, not copied) and swaps each block's LSTM for
:class:`MaskedLSTM`, which gets variable lengths right with masks and gathers only:

- forward direction: run over the whole padded tensor (a recurrence is causal, so padded steps after a
  sequence's end cannot reach its valid steps) and zero the outputs at padded steps, as ``LSTM`` does;
- reverse direction: reverse each sequence *within its own length* with one gather (``index[t, b] =
  len_b - 1 - t`` on valid steps, ``t`` on padded ones; the permutation is its own inverse), run a forward
  recurrence with the reverse weights, gather back. Each sequence's reverse pass thus starts at its own last step.

The recurrence itself comes in two forms, because the two exporters want different things:

- ``"op"``: ``torch.lstm`` (one direction, one layer); the TorchScript ONNX exporter turns it into ONNX's
  ``LSTM`` operator, which keeps the time dimension dynamic and which onnxruntime can quantize
  (``DynamicQuantizeLSTM``);
- ``"scan"``: the cell written out and looped with ``torch._higher_order_ops.scan`` (a prototype API in torch
  2.13); ``torch.export`` keeps the loop as one ``scan`` node with a symbolic trip count. ``torch.lstm`` is no
  good there: ``torch.export`` decomposes it into a Python loop and specialises the length.

:func:`check_exportable` names the options neither form can express (layer norm, zoneout, the self-attention
LSTM, skip connections inside one ``LSTM``): the ONNX LSTM operator and the plain cell have no place for them.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.errors import LongshortError
from longshort.nn.classifier import (
    AttentionBlock,
    BiLSTMBlock,
    SequenceClassifier,
    length_mask,
    masked_mean_max,
    sinusoidal_positions,
)
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

    def _layer(self, x: Tensor, k: int, rev: Tensor | None) -> Tensor:
        """Layer ``k`` over time-major ``x`` [T, B, F]: [T, B, D * H], the reverse half aligned with ``x``."""
        sfxs = ["", "_reverse"][: self.lstm.num_directions]
        inputs = [x if not sfx else _gather_time(x, rev) for sfx in sfxs]  # type: ignore[arg-type]
        if self.recurrence == "scan":
            weights = [self._weights(k, sfx) for sfx in sfxs]
            xw = torch.stack([xd @ w_ih.t() + (0 if b is None else b)
                              for xd, (w_ih, _, b) in zip(inputs, weights, strict=True)], 1)  # [T, D, B, 4H]
            outs = list(_scan_recurrence(xw, torch.stack([w[1] for w in weights])).unbind(1))
        else:
            m = self.lstm
            outs = []
            for xd, sfx in zip(inputs, sfxs, strict=True):
                w_ih, w_hh = getattr(m, f"weight_ih_l{k}{sfx}"), getattr(m, f"weight_hh_l{k}{sfx}")
                weights = [w_ih, w_hh]
                if m.bias:
                    weights += [getattr(m, f"bias_ih_l{k}{sfx}"), getattr(m, f"bias_hh_l{k}{sfx}")]
                zeros = xd.new_zeros(1, xd.shape[1], m.hidden_size)  # h0/c0 from x's shape: the batch stays dynamic
                outs.append(torch.lstm(xd, (zeros, zeros), weights, m.bias, 1, 0.0, False, False, False)[0])
        if rev is not None:
            outs[1] = _gather_time(outs[1], rev)
        return torch.cat(outs, -1)

    def forward(self, input: Tensor, hx: object = None, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        if hx is not None or lengths is None:
            raise ExportError("MaskedLSTM takes lengths and no initial state")
        m = self.lstm
        x = input.transpose(0, 1) if m.batch_first else input  # time-major [T, B, F]
        steps = x.shape[0]
        valid = (torch.arange(steps, device=x.device)[:, None] < lengths[None, :])[:, :, None].to(x.dtype)
        rev = _reverse_index(lengths, steps) if m.bidirectional else None
        for k in range(m.num_layers):
            x = self._layer(x, k, rev) * valid  # zero at padded steps, like LSTM.forward
        return (x.transpose(0, 1) if m.batch_first else x), None


class GraphAttention(nn.Module):
    """Evaluation-mode stand-in for an ``nn.MultiheadAttention`` (self-attention, sharing its parameters).

    ``nn.MultiheadAttention`` does not trace with a dynamic shape: in evaluation it takes a fused kernel
    (``_native_multi_head_attention``) that has no ONNX form, and its unfused path reshapes with Python integers,
    which the TorchScript tracer records as constants of the example's batch and length. This is the same
    arithmetic (in-projection, scaled dot product per head with padded keys at -inf, out-projection) with
    shape-free reshapes. Called like the module it replaces; returns ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn or not mha.batch_first:
            raise ExportError("cannot export attention with separate key/value sizes, bias_k or add_zero_attn")
        self.mha = mha
        self.heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = False, attn_mask: Tensor | None = None) -> tuple[Tensor, None]:
        """Boolean masks only (True = may not attend), as the classifier's attention blocks pass them:
        ``key_padding_mask`` [B, T], ``attn_mask`` [T, T] (the causal model's future steps)."""
        m = self.mha
        w, b = m.in_proj_weight, m.in_proj_bias
        e = m.embed_dim
        q, k, v = (F.linear(t, w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e]).unflatten(
            -1, (self.heads, self.head_dim)).transpose(1, 2) for i, t in enumerate((query, key, value)))  # [B, h, T, d]
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf"))
        y = (torch.softmax(scores, -1) @ v).transpose(1, 2).flatten(-2)  # [B, T, E]
        return m.out_proj(y), None


class ExportClassifier(nn.Module):
    """``forward(x [B, T, C] float32 (scaled), lengths [B] int64) -> (probabilities [B, K], logits [B, K])``.

    The arithmetic of :meth:`SequenceClassifier.forward` in evaluation mode, always along its masked path (the
    eager model's "nothing is padded" shortcut computes the same numbers; a graph cannot branch on it), with each
    BiLSTM block's LSTM replaced by :class:`MaskedLSTM`. Built on a deep copy: ``model`` itself is left as it is.
    Parity with the eager model is checked by every export (see :mod:`longshort.deploy.export`).
    """

    def __init__(self, model: SequenceClassifier, recurrence: Recurrence = "op") -> None:
        super().__init__()
        check_exportable(model)
        m = copy.deepcopy(model).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        _bake_parametrizations(m)
        for block in m.lstms:
            assert isinstance(block, BiLSTMBlock) and isinstance(block.lstm, LSTM)
            block.lstm = MaskedLSTM(block.lstm, recurrence)  # type: ignore[assignment]
        for block in m.attns.values():
            assert isinstance(block, AttentionBlock)
            block.attn = GraphAttention(block.attn)  # type: ignore[assignment]
        self.model = m

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        # SequenceClassifier._encode along its masked path, then the classification head
        m = self.model
        steps = x.shape[1]
        mask = length_mask(lengths, steps)
        z = m.input_proj(x) + sinusoidal_positions(steps, m.cfg.hidden_dim, x.device, x.dtype)
        for conv in m.convs:
            z = conv(z, mask)
        outputs = [z]
        dense = m.cfg.stack.skip == "dense"
        for i, block in enumerate(m.lstms):
            z = block(torch.cat(outputs, -1) if dense else z, lengths)
            if str(i) in m.attns:
                z = m.attns[str(i)](z, mask)
            outputs.append(z)
        logits = m.head(masked_mean_max(z, mask))
        return torch.softmax(logits, -1), logits


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
