"""The seed's sequence classifier: convolutions, a BiLSTM stack with attention, masked pooling, two heads.

A plain ``nn.Module``: it knows nothing of training, distribution or files. Each block keeps the same width
(``hidden_dim``) so blocks stack with residual connections and can be sharded one by one from outside.

Data flow for ``x`` [B, T, C] with ``lengths`` [B]::

    input projection -> [strided stem: T -> T / stem_stride] -> [+ sinusoidal positions] -> dilated conv blocks
    -> BiLSTM blocks
    (self-attention after every ``attention_every``-th) -> masked mean+max pooling -> class logits, aux value

Padded steps (``t >= lengths[b]``) never influence the valid ones: they are zeroed before every
convolution, packed away from the LSTM (which itself skips packing when nothing is padded), and masked out of
attention and pooling. The forward has no branch on tensor values, so graph exporters trace it as it is.

``bidirectional=False`` makes every per-step feature causal (step t sees only steps <= t): the convolutions pad
on the left only, each LSTM block runs one forward direction of width ``hidden_dim``, and attention gets a causal
mask. The pooled prefix is then all a stream needs.

One forward, whole sequences and streams alike: every block is ``forward(x, mask, cache=None) -> (y, cache)``
(the LSTM block takes ``lengths``, what packing needs). Given a :class:`ClassifierCache` (from
:meth:`SequenceClassifier.initial_cache`), ``forward(x, lengths, cache)`` treats ``x`` as the next chunk of each
stream (``lengths`` [B] in 0..n: real steps per stream, 0 = idle) and returns the outputs of each stream's whole
prefix with the updated cache: the convolutions keep their left context, the LSTM its ``(h, c)`` (and the
self-attention cell its earlier hidden states), attention a key/value cache, pooling its running sums. Streaming
(:mod:`longshort.deploy.streaming`) and the exported ONNX step graph (:mod:`longshort.deploy.stream_export`) are
this forward called a step or a chunk at a time; the exports swap a few modules for traceable forms (the
convolution, the LSTM) and call the same forward (:mod:`longshort.deploy.exportable`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.nn.config import ClassifierConfig as ClassifierConfig
from longshort.nn.lstm import LSTM, CellConfig


class KVCache(NamedTuple):
    """An attention block's keys and values of a stream's earlier steps, and which of those slots are real."""

    keys: Tensor  # [B, heads, S, head_dim]
    values: Tensor  # [B, heads, S, head_dim]
    valid: Tensor  # [B, S] bool


class RecurrentState(NamedTuple):
    """What an LSTM block carries between chunks: ``(h, c)`` [B, H] and, for the self-attention cell, its earlier
    hidden states [B, S, H] with their validity [B, S] (the attention blocks' slots)."""

    h: Tensor
    c: Tensor
    memory: Tensor | None = None
    memory_valid: Tensor | None = None


class PoolState(NamedTuple):
    """Running sums of the masked mean+max pooling over a stream's steps so far."""

    total: Tensor  # [B, H] sum of the features of real steps
    count: Tensor  # [B] float32 real steps pooled
    maximum: Tensor  # [B, H] running maximum (the dtype's lowest value before any step)


@dataclass
class ClassifierCache:
    """Everything a batch of streams carries from one chunk to the next (see the module docstring). ``slots`` is
    shared by every attention block and by the self-attention cell's memory: one slot per chunk step fed."""

    position: Tensor  # [B] int64: steps consumed per stream (the next step's position index)
    slots: Tensor  # [B, S] bool: cache slot s holds a real step of this stream
    conv: list[Tensor]  # per conv block [B, left_pad, H]: its last real inputs
    h: list[Tensor]  # per LSTM block [B, H]
    c: list[Tensor]  # per LSTM block [B, H]
    memory: list[Tensor]  # per LSTM block with a self-attention cell [B, S, H] (empty list otherwise)
    keys: dict[str, Tensor]  # per attention block [B, heads, S, head_dim]
    values: dict[str, Tensor]
    total: Tensor  # [B, H]
    count: Tensor  # [B] float32
    maximum: Tensor  # [B, H]

    @property
    def batch_size(self) -> int:
        return int(self.position.shape[0])

    def clone(self) -> ClassifierCache:
        """A deep copy, so a saved state is not changed by later steps."""
        return cache_from_tensors(self, {k: v.clone() for k, v in cache_tensors(self).items()})


def cache_tensors(cache: ClassifierCache) -> dict[str, Tensor]:
    """The cache as named tensors, in the order of the streaming step graph's state inputs: ``position``,
    ``slots``, ``conv{i}``, ``h{i}``, ``c{i}`` (and ``mem{i}``), ``keys{k}``, ``values{k}``, ``total``, ``count``,
    ``maximum``. Every tensor has the batch first."""
    out = {"position": cache.position, "slots": cache.slots}
    out.update({f"conv{i}": t for i, t in enumerate(cache.conv)})
    for i, (h, c) in enumerate(zip(cache.h, cache.c, strict=True)):
        out[f"h{i}"], out[f"c{i}"] = h, c
        if cache.memory:
            out[f"mem{i}"] = cache.memory[i]
    for k in cache.keys:
        out[f"keys{k}"], out[f"values{k}"] = cache.keys[k], cache.values[k]
    out.update(total=cache.total, count=cache.count, maximum=cache.maximum)
    return out


def cache_from_tensors(like: ClassifierCache, tensors: dict[str, Tensor]) -> ClassifierCache:
    """A :class:`ClassifierCache` with ``like``'s blocks from :func:`cache_tensors`-named ``tensors``."""
    n = len(like.h)
    return ClassifierCache(
        position=tensors["position"], slots=tensors["slots"],
        conv=[tensors[f"conv{i}"] for i in range(len(like.conv))],
        h=[tensors[f"h{i}"] for i in range(n)], c=[tensors[f"c{i}"] for i in range(n)],
        memory=[tensors[f"mem{i}"] for i in range(n)] if like.memory else [],
        keys={k: tensors[f"keys{k}"] for k in like.keys}, values={k: tensors[f"values{k}"] for k in like.keys},
        total=tensors["total"], count=tensors["count"], maximum=tensors["maximum"])


class ClassifierOutput(NamedTuple):
    logits: Tensor  # [B, num_classes]
    aux: Tensor  # [B] auxiliary regression output
    cache: ClassifierCache | None = None  # the updated cache when the forward was given one


def length_mask(lengths: Tensor, t: int) -> Tensor:
    """Boolean [B, T], True at valid steps."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


def sinusoidal_positions(t: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[T, dim] fixed sine/cosine position codes, computed for any length (no maximum)."""
    return sinusoidal_at(torch.arange(t, device=device), dim, dtype)


def sinusoidal_at(positions: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """[..., dim] the position codes of arbitrary step indices ``positions`` [...]: a stream at step 10,000
    needs its own code without building the 10,000 before it. Column ``j`` is ``sin`` (even ``j``) or ``cos``
    (odd) of ``position * 10000^(-(j - j % 2) / dim)``, picked by ``where`` rather than written by strided
    assignment, which traces to ``ScatterND`` and a dozen shape nodes; the column terms depend on ``dim`` only
    and an exporter folds them into constants."""
    col = torch.arange(dim, device=positions.device)
    freq = torch.exp((col - col % 2).to(torch.float32) * (-math.log(10000.0) / dim))
    angle = positions.to(torch.float32)[..., None] * freq
    return torch.where(col % 2 == 0, torch.sin(angle), torch.cos(angle)).to(dtype)


class SinusoidalPositions(nn.Module):
    """Adds the position codes of each step to ``z`` [B, T, H]; a stream's chunk starts at ``offset`` [B]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, z: Tensor, offset: Tensor | None = None) -> Tensor:
        steps = torch.arange(z.shape[1], device=z.device)
        return z + sinusoidal_at(steps if offset is None else offset[:, None] + steps, self.dim, z.dtype)


def graph_reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x`` reshaped to ``shape``, where 0 keeps ``x``'s size at that place (ONNX ``Reshape`` semantics). Under
    the ONNX exporter one ``Reshape`` with a constant shape: a plain ``reshape`` traces to a run-time computation
    of the target shape (``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``), five nodes that cost a batch-1 call
    as much as the arithmetic. A shape with a 0 also needs a -1 (the exporter's shape inference asserts)."""
    if torch.onnx.is_in_onnx_export():
        return _Reshape.apply(x, shape)
    return x.reshape([x.shape[i] if n == 0 else n for i, n in enumerate(shape)])


class _Reshape(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        return x.reshape([x.shape[i] if n == 0 else n for i, n in enumerate(shape)])

    @staticmethod
    def symbolic(g: Any, x: Any, shape: tuple[int, ...]) -> Any:
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64)))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a faster mask on the CPU: ``rand_like(x) >= p`` is some 3x quicker there than the
    ``bernoulli_`` behind ``F.dropout``, which took a fifth of a small model's training step. Other devices use
    the native fused kernel. Same expectation and same scaling ``1 / (1 - p)``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


class TimeConv(nn.Conv1d):
    """``nn.Conv1d`` over time in the model's [B, T, C] layout, then GELU: ``[B, T_in, C] -> [B, T_out, C]``
    with ``T_out = T_in + 2 * padding - dilation * (kernel - 1)``. GELU runs on the convolution's own contiguous
    [B, C, T] output, some 5x faster on a CPU than on the transposed view. The swappable part of
    :class:`TemporalConvBlock` (the exports put a matrix product over the kernel taps in its place)."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        d, k = self.dilation[0], self.kernel_size[0]
        if d > 1 and not self.padding[0] and x.shape[1] == d * (k - 1) + 1:
            # one output (a stream's step): read its taps only; torch's dilated convolution is slow at this size
            y = F.conv1d(x[:, ::d].transpose(1, 2), self.weight, self.bias)
        else:
            y = super().forward(x.transpose(1, 2))
        return F.gelu(y).transpose(1, 2)


class TemporalConvBlock(nn.Module):
    """Dilated 1-D convolution over time, GELU, dropout, residual and LayerNorm.

    ``causal``: all ``dilation * (kernel - 1)`` padding goes on the left, so output t reads inputs t - pad .. t;
    a stream's cache is exactly those ``pad`` last real inputs (the full model's left padding is the fresh
    cache's zeros). Otherwise the padding is split evenly ('same' padding)."""

    def __init__(self, dim: int, kernel: int, dilation: int, dropout: float, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        span = dilation * (kernel - 1)
        self.left_pad = span if causal else 0
        self.conv: nn.Module = TimeConv(dim, dim, kernel, dilation=dilation, padding=0 if causal else span // 2)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None, cache: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``mask`` [B, T] (None: every step valid); ``cache`` [B, left_pad, H] (causal blocks only)."""
        if mask is not None:
            x = x * mask[..., None]  # padded steps contribute zeros, as if the sequence ended there
        if cache is not None:
            xp = torch.cat([cache, x], 1)  # the left context, then the chunk
        elif self.left_pad:
            xp = F.pad(x, (0, 0, self.left_pad, 0))
        else:
            xp = x
        y = self.conv(xp)
        new = None if cache is None else newest_real(xp, mask, self.left_pad)
        return self.norm(x + self.drop(y)), new


def newest_real(xp: Tensor, mask: Tensor | None, pad: int) -> Tensor:
    """The last ``pad`` real steps of each row of ``xp`` [B, pad + n, H] (its first ``pad`` steps are a cache, then
    a chunk whose real steps per row ``mask`` [B, n] says; None: all real)."""
    if pad == 0:
        return xp[:, :0]
    if mask is None:
        return xp[:, -pad:]
    idx = mask.sum(1)[:, None] + torch.arange(pad, device=xp.device)
    return xp.gather(1, idx[..., None].expand(-1, -1, xp.shape[-1]))


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

    def forward(self, x: Tensor, lengths: Tensor | None, cache: RecurrentState | None = None
                ) -> tuple[Tensor, RecurrentState | None]:
        """The block's output for ``x`` [B, T, in_dim] and, given the ``cache`` of a unidirectional block, its state
        after the chunk. ``lengths`` [B]: valid steps (with a cache: real steps of the chunk, 0 = an idle stream,
        which keeps its state). Without a cache the LSTM's final state is not asked for (it may skip it)."""
        lstm_kw: dict[str, Any] = {"lengths": lengths}
        if cache is None:
            if isinstance(self.lstm, LSTM):
                lstm_kw["need_state"] = False
        else:
            lstm_kw["hx"] = (cache.h[None], cache.c[None])
            if lengths is not None:  # an idle stream steps over padding; its state is put back below
                lstm_kw["lengths"] = lengths.clamp_min(1)
            if cache.memory is not None:
                lstm_kw["memory"] = (cache.memory, cache.memory_valid)
        if self.fp32 and torch.is_autocast_enabled(x.device.type):
            # cuDNN's reduced-precision LSTM drifts over long sequences; keep the recurrence in fp32.
            with torch.autocast(x.device.type, enabled=False):
                y, hc = self.lstm(x.float(), **lstm_kw)
        else:
            y, hc = self.lstm(x, **lstm_kw)
        state = None
        if cache is not None:
            h, c = hc[0][0], hc[1][0]
            if lengths is not None:
                moved = (lengths > 0)[:, None]
                h, c = torch.where(moved, h, cache.h), torch.where(moved, c, cache.c)
            memory = None if cache.memory is None else torch.cat([cache.memory, y], 1)
            state = RecurrentState(h, c, memory)
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


class SelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same parameters, same call) whose self-attention without weights is written
    out: in-projection, ``F.scaled_dot_product_attention`` per head, out-projection, with a key/value ``cache``
    of earlier steps in front of the new ones. Returns ``(output, (keys, values))`` then, keys and values
    [B, heads, S, head_dim] including the new steps.

    Why not the parent's forward: in evaluation it takes a fused kernel (``_native_multi_head_attention``) that
    has no ONNX form and no cache, and its unfused path traces its reshapes to constants of the example's batch
    and length. The same arithmetic here traces as it is and serves training, whole sequences, streams and the
    exported graphs alike. Calls that want the weights (``need_weights=True``, as
    :func:`longshort.diagnostics.attention.capture_attention` makes) go to the parent, unchanged.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,  # type: ignore[override]
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False, cache: KVCache | None = None) -> tuple[Tensor, Any]:
        """Boolean masks (True = may not attend): ``key_padding_mask`` [B, S], ``attn_mask`` [T, S] or
        [B, 1, T, S]; S counts the cached steps first."""
        if need_weights or not (query is key and key is value) or self.bias_k is not None or self.add_zero_attn:
            if cache is not None:
                raise ValueError("a key/value cache needs self-attention without weights")
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        heads = self.num_heads
        d = self.embed_dim // heads
        qkv = graph_reshape(F.linear(query, self.in_proj_weight, self.in_proj_bias), (0, 0, 3, -1, d))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, d]
        if cache is not None:
            k, v = torch.cat([cache.keys, k], 2), torch.cat([cache.values, v], 2)
        blocked = attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            blocked = pad if blocked is None else blocked | pad
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if blocked is None else ~blocked,
                                           dropout_p=self.dropout if self.training else 0.0, scale=1.0 / math.sqrt(d))
        return self.out_proj(graph_reshape(y.transpose(1, 2), (0, 0, -1))), (k, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over valid steps, dropout, residual and LayerNorm.

    ``causal``: step t attends to steps <= t only (the attention mask), on top of the key padding mask; with a
    cache, each step of a chunk attends to its stream's real cached steps and its own chunk up to itself."""

    def __init__(self, dim: int, heads: int, dropout: float, causal: bool = False,
                 attention_dropout: float | None = None) -> None:
        super().__init__()
        self.causal = causal
        weights_dropout = dropout if attention_dropout is None else attention_dropout
        self.attn = SelfAttention(dim, heads, dropout=weights_dropout, batch_first=True)
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None) -> tuple[Tensor, KVCache | None]:
        if cache is None:
            pad = None if mask is None else ~mask
            future = None
            if self.causal:
                t = x.shape[1]
                future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
            y, _ = self.attn(x, x, x, key_padding_mask=pad, attn_mask=future, need_weights=False)
            return self.norm(x + self.drop(y)), None
        now = torch.ones_like(x[..., 0], dtype=torch.bool) if mask is None else mask
        valid = torch.cat([cache.valid, now], 1)  # [B, S]: the cached slots, then this chunk's
        slot = torch.arange(valid.shape[1], device=x.device)
        query = slot[-x.shape[1]:, None]  # [n, 1]: each chunk step's own slot
        # a chunk step sees real slots up to its own, and always itself (an idle step's row is never empty)
        blocked = ((~valid[:, None, :] & (slot != query)) | (slot > query))[:, None]  # [B, 1, n, S]
        y, (k, v) = self.attn(x, x, x, attn_mask=blocked, need_weights=False, cache=cache)
        return self.norm(x + self.drop(y)), KVCache(k, v, valid)


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
        self.positions = SinusoidalPositions(h) if cfg.positions else None
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

    def forward(self, x: Tensor, lengths: Tensor | None = None, cache: ClassifierCache | None = None
                ) -> ClassifierOutput:
        """Logits and aux output of each sequence ``x`` [B, T, C] (``lengths`` [B]: valid steps, None = all).

        With a ``cache`` (a causal model without a stem): ``x`` is the next chunk of each stream, ``lengths`` its
        real steps per stream in 0..T, and the outputs are those of each stream's whole prefix; the output's
        ``cache`` continues it (the given one is not changed)."""
        z, mask, new = self._encode(x, lengths, cache)
        pooled, pool = masked_pool(z, mask, None if cache is None else PoolState(cache.total, cache.count,
                                                                                 cache.maximum))
        if new is not None:
            new = replace(new, total=pool.total, count=pool.count, maximum=pool.maximum)
        return ClassifierOutput(self.head(pooled), self.aux_head(pooled).squeeze(-1), new)

    def encode(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The per-step features [B, T, hidden_dim] that pooling reduces (zero meaning at padded steps):
        what a causality check or a streaming comparison looks at."""
        return self._encode(x, lengths, None)[0]

    def check_cache(self) -> None:
        """Raise ``ValueError`` unless this model can run a chunk at a time from a cache."""
        if not self.causal:
            raise ValueError("a cache needs a causal model (model.bidirectional=false): a bidirectional block's "
                             "feature at step t reads steps after t")
        if self.stem is not None:
            raise ValueError(f"a cache needs model.stem_stride=1: the strided stem emits one step per "
                             f"{self.cfg.stem_stride} input steps")

    def initial_cache(self, batch: int) -> ClassifierCache:
        """The cache of ``batch`` fresh streams: zeros (the full model's left padding and initial states), no
        cache slots, the running maximum at the dtype's lowest value; on the model's device and in its dtype."""
        self.check_cache()
        p = next(self.parameters())
        dev, dt, h = p.device, p.dtype, self.cfg.hidden_dim

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=dev, dtype=dt)

        widths = [block.lstm.hidden_size for block in self.lstms]
        return ClassifierCache(
            position=torch.zeros(batch, dtype=torch.int64, device=dev),
            slots=torch.zeros(batch, 0, dtype=torch.bool, device=dev),
            conv=[zeros(batch, c.left_pad, h) for c in self.convs],
            h=[zeros(batch, w) for w in widths], c=[zeros(batch, w) for w in widths],
            memory=[zeros(batch, 0, w) for w in widths] if self.cfg.cell.self_attention else [],
            keys={k: zeros(batch, b.attn.num_heads, 0, h // b.attn.num_heads) for k, b in self.attns.items()},
            values={k: zeros(batch, b.attn.num_heads, 0, h // b.attn.num_heads) for k, b in self.attns.items()},
            total=zeros(batch, h), count=torch.zeros(batch, dtype=torch.float32, device=dev),
            maximum=torch.full((batch, h), torch.finfo(dt).min, device=dev, dtype=dt))

    def _encode(self, x: Tensor, lengths: Tensor | None, cache: ClassifierCache | None
                ) -> tuple[Tensor, Tensor | None, ClassifierCache | None]:
        """Per-step features, the valid-step mask (None: every step valid) and the updated cache (given one)."""
        if cache is not None:
            self.check_cache()
        z = self.input_proj(x)
        if self.stem is not None:
            z, lengths = self.stem(z, lengths)
        t = z.shape[1]
        mask = None if lengths is None else length_mask(lengths, t)
        if self.positions is not None:
            z = self.positions(z, None if cache is None else cache.position)
        convs = []
        for i, conv in enumerate(self.convs):
            z, buf = conv(z, mask, None if cache is None else cache.conv[i])
            convs.append(buf)
        dense = self.cfg.stack.skip == "dense"
        outputs = [z]  # for the dense stack: every block sees all earlier outputs
        hs, cs, memory, keys, values = [], [], [], {}, {}
        for i, lstm in enumerate(self.lstms):
            state = None
            if cache is not None:
                state = RecurrentState(cache.h[i], cache.c[i], cache.memory[i] if cache.memory else None,
                                       cache.slots)
            z, state = lstm(torch.cat(outputs, -1) if dense else z, lengths, state)
            if state is not None:
                hs.append(state.h)
                cs.append(state.c)
                if state.memory is not None:
                    memory.append(state.memory)
            key = str(i)
            if key in self.attns:
                kv = None if cache is None else KVCache(cache.keys[key], cache.values[key], cache.slots)
                z, kv = self.attns[key](z, mask, kv)
                if kv is not None:
                    keys[key], values[key] = kv.keys, kv.values
            outputs.append(z)
        if cache is None:
            return z, mask, None
        real = torch.ones_like(z[..., 0], dtype=torch.bool) if mask is None else mask
        slots = torch.cat([cache.slots, real], 1) if keys or memory else cache.slots
        steps = t if lengths is None else lengths
        new = ClassifierCache(cache.position + steps, slots, convs, hs, cs, memory, keys, values,  # type: ignore[arg-type]
                              cache.total, cache.count, cache.maximum)
        return z, mask, new

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


def masked_mean_max(z: Tensor, mask: Tensor | None) -> Tensor:
    """Concatenate the mean and the max over valid steps: [B, T, H] -> [B, 2H] (``mask`` None: all valid)."""
    return masked_pool(z, mask)[0]


def masked_pool(z: Tensor, mask: Tensor | None, cache: PoolState | None = None) -> tuple[Tensor, PoolState]:
    """:func:`masked_mean_max` of ``z`` [B, T, H] continued from the running sums ``cache`` of earlier steps (a
    stream's), with the updated sums: the pooled prefix is all a causal stream needs."""
    if mask is None:
        total, mx = z.sum(1), z.amax(1)
        count = torch.full_like(total[:, 0], z.shape[1])
    else:
        m = mask[..., None].to(z.dtype)
        total, count = (z * m).sum(1), m.sum(1)[:, 0]
        mx = z.masked_fill(~mask[..., None], torch.finfo(z.dtype).min).amax(1)
    if cache is not None:
        total, count, mx = cache.total + total, cache.count + count, torch.maximum(cache.maximum, mx)
    mean = (total / count.clamp_min(1)[:, None]).to(z.dtype)
    return torch.cat([mean, mx], dim=-1), PoolState(total, count, mx)


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
