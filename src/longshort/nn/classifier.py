"""The seed's sequence classifier: convolutions, a BiLSTM stack with attention, masked pooling, two heads.

A plain ``nn.Module``: it knows nothing of training, distribution or files. Each block keeps the same width
(``hidden_dim``) so blocks stack with residual connections and can be sharded one by one from outside.

Data flow for ``x`` [B, T, C] with ``lengths`` [B]::

    input projection -> [strided stem: T -> T / stem_stride] -> [+ sinusoidal positions] -> dilated conv blocks
    -> BiLSTM blocks
    (self-attention after every ``attention_every``-th) -> masked mean+max pooling -> class logits, aux value

Padded steps (``t >= lengths[b]``) never influence the valid ones: they are zeroed before every
convolution, packed away from the LSTM, and masked out of attention and pooling.

``bidirectional=False`` makes every per-step feature causal (step t sees only steps <= t): the convolutions pad
on the left only, each LSTM block runs one forward direction of width ``hidden_dim``, and attention gets a causal
mask. The pooled prefix is then all a stream needs, which is what ``longshort.deploy.streaming`` relies on.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.nn.config import ClassifierConfig as ClassifierConfig
from longshort.nn.lstm import LSTM, CellConfig


class ClassifierOutput(NamedTuple):
    logits: Tensor  # [B, num_classes]
    aux: Tensor  # [B] auxiliary regression output


def length_mask(lengths: Tensor, t: int) -> Tensor:
    """Boolean [B, T], True at valid steps."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def sinusoidal_positions(t: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[T, dim] fixed sine/cosine position codes, computed for any length (no maximum)."""
    return sinusoidal_at(torch.arange(t, device=device), dim, dtype)


def sinusoidal_at(positions: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """[..., dim] the position codes of arbitrary step indices ``positions`` [...]: a stream at step 10,000
    needs its own code without building the 10,000 before it, and with the very arithmetic of the full model."""
    pos = positions.to(torch.float32)[..., None]
    device = positions.device
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(*positions.shape, dim, device=device)
    pe[..., 0::2] = torch.sin(pos * freq)
    pe[..., 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe.to(dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a faster mask on the CPU: ``rand_like(x) >= p`` is some 3x quicker there than the
    ``bernoulli_`` behind ``F.dropout``, which took a fifth of a small model's training step. Other devices use
    the native fused kernel. Same expectation and same scaling ``1 / (1 - p)``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


class TemporalConvBlock(nn.Module):
    """Dilated 1-D convolution over time, GELU, dropout, residual and LayerNorm.

    ``causal``: all ``dilation * (kernel - 1)`` padding goes on the left, so output t reads inputs t - pad .. t
    (a stream keeps exactly those ``pad`` last inputs); otherwise it is split evenly ('same' padding)."""

    def __init__(self, dim: int, kernel: int, dilation: int, dropout: float, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.left_pad = dilation * (kernel - 1) if causal else 0
        same = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(dim, dim, kernel, dilation=dilation, padding=0 if causal else same)
        self.act = nn.GELU()
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x * mask[..., None]  # padded steps contribute zeros, as if the sequence ended there
        xt = x.transpose(1, 2)
        if self.left_pad:
            xt = F.pad(xt, (self.left_pad, 0))
        y = self.act(self.conv(xt)).transpose(1, 2)  # GELU on the conv's contiguous [B, C, T]: 5x faster on CPU
        return self.norm(x + self.drop(y))


class DownsampleStem(nn.Module):
    """Halve the sequence ``stages`` times with learned filters: each stage is a kernel-5, stride-2 convolution,
    GELU and LayerNorm, so output step j summarises input steps 2j-2 .. 2j+2 (causal: 2j-4 .. 2j).

    A long series (hundreds to thousands of raw steps) then reaches the LSTM as T / 2^stages steps: the
    recurrence is the slow, sequential part of the model, and its gradient has that many fewer steps to cross.
    Padded steps are zeroed before every stage and a sequence of length L keeps ceil(L / 2) steps per stage.
    """

    def __init__(self, dim: int, stages: int, causal: bool = False) -> None:
        super().__init__()
        self.left_pad = 4 if causal else 2
        self.right_pad = 0 if causal else 2
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 5, stride=2) for _ in range(stages))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(stages))
        self.act = nn.GELU()

    @staticmethod
    def _halve(lengths: Tensor) -> Tensor:
        return torch.div(lengths + 1, 2, rounding_mode="floor")  # ceil(L / 2): what one stage keeps

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for _ in self.convs:
            lengths = self._halve(lengths)
        return lengths

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            if lengths is not None:
                x = x * length_mask(lengths, x.shape[1])[..., None].to(x.dtype)
            xt = F.pad(x.transpose(1, 2), (self.left_pad, self.right_pad))
            x = norm(self.act(conv(xt)).transpose(1, 2))
            if lengths is not None:
                lengths = self._halve(lengths)
        return x, lengths


class BiLSTMBlock(nn.Module):
    """One bidirectional LSTM layer over the valid steps, dropout, a skip connection and LayerNorm.

    With ``bidirectional=False`` the layer is one forward direction of the full width ``dim`` (the causal model).

    ``skip`` (``model.stack.skip``) joins the block's input ``x`` and the LSTM's output ``y``:
    residual ``LN(x + y)`` (seed 000), highway ``LN(T*y + (1-T)*x)`` with ``T = sigmoid(W_T x + b_T)``,
    none ``LN(y)``, dense ``LN(y)`` where ``x`` is the concatenation of all earlier blocks' outputs.
    """

    def __init__(self, in_dim: int, dim: int, dropout: float, cell: CellConfig, skip: str, fp32: bool = True,
                 bidirectional: bool = True) -> None:
        super().__init__()
        width = dim // 2 if bidirectional else dim
        self.lstm = LSTM(in_dim, width, batch_first=True, bidirectional=bidirectional, cell=cell)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.skip = skip
        if skip == "highway":
            self.gate = nn.Linear(in_dim, dim)
            nn.init.constant_(self.gate.bias, -1.0)  # start by mostly carrying the input through
        self.fp32 = fp32

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        return self.forward_with_state(x, lengths, need_state=False)[0]

    def forward_with_state(self, x: Tensor, lengths: Tensor | None, hx: tuple[Tensor, Tensor] | None = None,
                           need_state: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The block's output and the LSTM's final ``(h, c)``, starting from ``hx``: a stream carries the state
        from one chunk to the next (only meaningful for a unidirectional block). ``need_state=False``: the
        state is not wanted (the LSTM may skip computing it)."""
        lstm_kw: dict[str, Any] = {"hx": hx, "lengths": lengths}
        if not need_state and isinstance(self.lstm, LSTM):
            lstm_kw["need_state"] = False
        if self.fp32 and torch.is_autocast_enabled(x.device.type):
            # cuDNN's reduced-precision LSTM drifts over long sequences; keep the recurrence in fp32.
            with torch.autocast(x.device.type, enabled=False):
                y, state = self.lstm(x.float(), **lstm_kw)
        else:
            y, state = self.lstm(x, **lstm_kw)
        return self.join(x, y.to(x.dtype)), state

    def join(self, x: Tensor, y: Tensor) -> Tensor:
        """The block's output from its input ``x`` and the LSTM's output ``y``: dropout, skip, LayerNorm."""
        y = self.drop(y)
        if self.skip == "residual":
            return self.norm(x + y)
        if self.skip == "highway":
            t = torch.sigmoid(self.gate(x))
            return self.norm(t * y + (1 - t) * x)
        return self.norm(y)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over valid steps, dropout, residual and LayerNorm.

    ``causal``: step t attends to steps <= t only (the attention mask), on top of the key padding mask."""

    def __init__(self, dim: int, heads: int, dropout: float, causal: bool = False,
                 attention_dropout: float | None = None) -> None:
        super().__init__()
        self.causal = causal
        weights_dropout = dropout if attention_dropout is None else attention_dropout
        self.attn = nn.MultiheadAttention(dim, heads, dropout=weights_dropout, batch_first=True)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        pad = None if mask is None else ~mask
        future = None
        if self.causal:
            t = x.shape[1]
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        y, _ = self.attn(x, x, x, key_padding_mask=pad, attn_mask=future, need_weights=False)
        return self.norm(x + self.drop(y))


class SequenceClassifier(nn.Module):
    """Seed 000's ``ComplexLSTMModel``: classify a multivariate sequence, with an auxiliary regression head."""

    def __init__(self, input_dim: int, num_classes: int, cfg: ClassifierConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ClassifierConfig()
        h = cfg.hidden_dim
        self.cfg = cfg
        self.input_dim, self.num_classes = input_dim, num_classes
        self.input_proj = nn.Linear(input_dim, h)
        causal = not cfg.bidirectional
        stages = cfg.stem_stride.bit_length() - 1
        self.stem = DownsampleStem(h, stages, causal) if stages else None
        self.convs = nn.ModuleList(
            TemporalConvBlock(h, cfg.conv_kernel, d, cfg.dropout, causal) for d in cfg.conv_dilations
        )
        dense = cfg.stack.skip == "dense"
        self.lstms = nn.ModuleList(
            BiLSTMBlock(h * (i + 1) if dense else h, h, cfg.dropout, cfg.cell, cfg.stack.skip, cfg.lstm_fp32,
                        cfg.bidirectional)
            for i in range(cfg.num_lstm_layers)
        )
        k = cfg.attention_every
        self.attention_after = [i for i in range(cfg.num_lstm_layers) if k and (i + 1) % k == 0]
        self.attns = nn.ModuleDict(
            {str(i): AttentionBlock(h, cfg.num_heads, cfg.dropout, causal, cfg.attention_dropout)
             for i in self.attention_after}
        )
        self.head = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), Dropout(cfg.dropout), nn.Linear(h, num_classes))
        self.aux_head = nn.Sequential(nn.Linear(2 * h, h // 2), nn.GELU(), nn.Linear(h // 2, 1))
        if cfg.spectral_norm:
            apply_spectral_norm(self)

    @property
    def causal(self) -> bool:
        """Whether per-step features depend only on the past (``bidirectional=False``)."""
        return not self.cfg.bidirectional

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Steps of :meth:`encode`'s output for input ``lengths``: the same, or fewer after a strided stem."""
        return lengths if self.stem is None else self.stem.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> ClassifierOutput:
        z, ones = self._encode(x, lengths)
        pooled = masked_mean_max(z, ones)
        return ClassifierOutput(self.head(pooled), self.aux_head(pooled).squeeze(-1))

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The per-step features [B, T, hidden_dim] that pooling reduces (zero meaning at padded steps):
        what a causality check or a streaming comparison looks at."""
        return self._encode(x, lengths)[0]

    def _encode(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        z = self.input_proj(x)
        if self.stem is not None:
            z, lengths = self.stem(z, lengths)
        b, t, _ = z.shape
        if lengths is not None and bool((lengths == t).all()):
            lengths = None  # nothing is padded: skip packing and masking work
        mask = None if lengths is None else length_mask(lengths, t)
        ones = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask
        if self.cfg.positions:
            z = z + sinusoidal_positions(t, self.cfg.hidden_dim, x.device, z.dtype)
        for conv in self.convs:
            z = conv(z, ones)
        outputs = [z]  # for the dense stack: every block sees all earlier outputs
        for i, lstm in enumerate(self.lstms):
            z = lstm(torch.cat(outputs, -1) if self.cfg.stack.skip == "dense" else z, lengths)
            if str(i) in self.attns:
                z = self.attns[str(i)](z, mask)
            outputs.append(z)
        return z, ones

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per component, in forward order."""
        groups = {
            "input projection": [self.input_proj],
            "downsampling stem": [] if self.stem is None else [self.stem],
            "temporal convolutions": [self.convs],
            "BiLSTM blocks": [self.lstms],
            "attention blocks": [self.attns],
            "classification head": [self.head],
            "auxiliary head": [self.aux_head],
        }
        return {
            name: sum(p.numel() for m in mods for p in m.parameters() if p.requires_grad)
            for name, mods in groups.items()
        }


def apply_spectral_norm(model: nn.Module) -> int:
    """Spectral normalisation (torch's parametrization, one power iteration per training forward) on every
    ``nn.Linear`` of ``model`` (heads, attention output projections; not attention's q/k/v in-projection, which
    ``nn.MultiheadAttention`` keeps as a bare parameter); returns how many layers it wrapped."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for m in linears:
        nn.utils.parametrizations.spectral_norm(m)
    return len(linears)


def masked_mean_max(z: Tensor, mask: Tensor) -> Tensor:
    """Concatenate the mean and the max over valid steps: [B, T, H] -> [B, 2H]."""
    m = mask[..., None].to(z.dtype)
    mean = (z * m).sum(1) / m.sum(1).clamp_min(1)
    mx = z.masked_fill(~mask[..., None], torch.finfo(z.dtype).min).amax(1)
    return torch.cat([mean, mx], dim=-1)


def training_memory(cfg: ClassifierConfig, input_dim: int, num_classes: int, batch: int, length: int,
                    eval_batch: int) -> tuple[int, str]:
    """A lower estimate of the bytes one training step (or one evaluation batch) of this model needs, and the
    largest part in words: weights with their gradients and AdamW moments, the activations kept for backward
    (LSTM gates, convolutions, the stem at full length) and the attention scores, ``batch x heads x T'^2``
    with ``T'`` the steps after the stem. What :func:`longshort.run.setup` checks against free memory before
    it allocates anything, so a size no machine holds is one line instead of a failed allocation."""
    try:
        with torch.device("meta"):  # shapes only: no memory, and the model's own layout (blocks, attention)
            model = SequenceClassifier(input_dim, num_classes, cfg)
    except (RuntimeError, ValueError):  # a shape the model refuses: its own error comes when it is built
        return 0, "nothing (the model cannot be built)"
    params = sum(p.numel() for p in model.parameters())
    h, f = cfg.hidden_dim, 4  # fp32 bytes
    t = -(-length // cfg.stem_stride)
    stages = cfg.stem_stride.bit_length() - 1
    n_attn = len(model.attns)
    parts = {
        "weights, gradients and optimizer state": 4 * params * f,
        "activations kept for backward": f * h * (
            batch * t * (24 * cfg.num_lstm_layers + 6 * len(cfg.conv_dilations) + 4) + batch * length * 4 * stages),
        f"attention scores ({max(batch, eval_batch):,} x {cfg.num_heads} heads x {t:,}^2 steps)":
            n_attn * cfg.num_heads * t * t * f * max(3 * batch, eval_batch),
    }
    name = max(parts, key=lambda p: parts[p])
    return sum(parts.values()), name
