"""Streaming inference: score a causal classifier's growing prefix one step (or one chunk) at a time.

A model trained with ``model.bidirectional=false`` computes every per-step feature from steps ``<= t`` only,
and pools them with a masked mean and max, so its prediction for the prefix ``x[:t+1]`` can be carried forward
in O(1) work per step (attention: O(prefix) per step) instead of re-running the whole prefix:

- sinusoidal positions: the step index of each stream;
- each causal convolution: a buffer of its last ``dilation * (kernel - 1)`` inputs (the left padding of the
  full model is the buffer's initial zeros);
- each LSTM block: its ``(h, c)``;
- each attention block: the projected keys and values of every step so far (the cache), and which cache slots
  hold a real step of which stream;
- pooling: the running sum, count and maximum of the last block's features.

:class:`StreamingClassifier` runs these with the model's own submodules and parameters (nothing is copied into
a second architecture), so what it returns after step t is the full model's output on the prefix, to float
rounding (the tests hold it to 1e-5 against every prefix). :class:`RunStreamer` adds a run directory's scaling,
so raw values go in and class probabilities come out.

Cell options: the training-only regularisers (dropout of every kind, weight drop) are off at inference;
zoneout at inference is its expectation, a fixed blend, and streams like layer norm does, through the LSTM's
``hx``. The self-attention cell keeps its memory of past hidden states inside one call, which the LSTM does not
expose between calls, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from longshort.errors import LongshortError
from longshort.nn.classifier import SequenceClassifier, sinusoidal_at

__all__ = ["RunStreamer", "StepOutput", "StreamState", "StreamingClassifier", "StreamingError"]


class StreamingError(LongshortError):
    """The model or run cannot be run step by step (and the message says why and what to do)."""


class StepOutput(NamedTuple):
    logits: Tensor  # [B, K] of each stream's prefix so far
    proba: Tensor  # [B, K] softmax of logits
    aux: Tensor  # [B] auxiliary head


@dataclass
class StreamState:
    """Everything a batch of streams carries from one step to the next (see the module docstring)."""

    position: Tensor  # [B] int64: steps consumed per stream (the next step's position index)
    conv: list[Tensor]  # per conv block [B, pad, H]: its last ``pad`` inputs
    lstm: list[tuple[Tensor, Tensor]]  # per LSTM block (h, c), each [1, B, H]
    keys: dict[str, Tensor]  # per attention block [B, heads, S, head_dim]
    values: dict[str, Tensor]  # per attention block [B, heads, S, head_dim]
    slots: Tensor  # [B, S] bool: cache slot s holds a step of this stream (shared by every attention block)
    total: Tensor  # [B, H] running sum of the last block's features
    count: Tensor  # [B] int64 steps pooled (== position)
    maximum: Tensor  # [B, H] running maximum

    def clone(self) -> StreamState:
        """A deep copy, so a saved state is not changed by later steps."""
        return StreamState(
            self.position.clone(), [b.clone() for b in self.conv], [(h.clone(), c.clone()) for h, c in self.lstm],
            {k: v.clone() for k, v in self.keys.items()}, {k: v.clone() for k, v in self.values.items()},
            self.slots.clone(), self.total.clone(), self.count.clone(), self.maximum.clone(),
        )

    @property
    def batch_size(self) -> int:
        return int(self.position.shape[0])


def check_streamable(model: SequenceClassifier) -> None:
    """Raise :class:`StreamingError` naming what stops ``model`` from running step by step."""
    if not isinstance(model, SequenceClassifier):
        raise StreamingError(f"streaming needs a longshort SequenceClassifier, got {type(model).__name__}")
    if not model.causal:
        raise StreamingError(
            "this model is bidirectional: its feature at step t reads steps after t, so a prefix cannot be "
            "scored before the sequence ends; train a causal model with model.bidirectional=false to stream")
    if model.stem is not None:
        raise StreamingError(
            f"model.stem_stride={model.cfg.stem_stride} cannot stream: the strided stem emits one step per "
            f"{model.cfg.stem_stride} input steps; train with model.stem_stride=1 to stream")
    if model.cfg.cell.self_attention:
        raise StreamingError(
            "model.cell.self_attention=true cannot stream: the self-attention cell's memory of past hidden "
            "states lives inside one LSTM call and is not carried between calls")
    for block in model.attns.values():
        mha = block.attn
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise StreamingError("streaming supports nn.MultiheadAttention with a packed q/k/v projection only")


class StreamingClassifier:
    """Run a causal :class:`SequenceClassifier` over ``batch_size`` streams, a step or a chunk at a time.

    ``step(x)`` with ``x`` [B, C] (one step) or [B, n, C] (a chunk; ``lengths`` [B] in 0..n says how many of a
    stream's chunk steps are real, 0 = that stream is idle) returns the logits, probabilities and aux output of
    each stream's prefix so far, exactly what the model returns on that prefix. A stream that has not consumed
    any step yet gets meaningless outputs.

    The model is put in eval mode (dropout off) and used as it is: later changes to its weights show in the
    next step. Attention caches grow by one slot per chunk step (for every stream, idle or not) for as long as
    a stream runs; :meth:`reset` empties them.
    """

    def __init__(self, model: SequenceClassifier, batch_size: int = 1) -> None:
        check_streamable(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.hidden = model.cfg.hidden_dim
        self.dense = model.cfg.stack.skip == "dense"
        self.state = self._fresh(batch_size)

    # -- state -------------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def _fresh(self, b: int) -> StreamState:
        h, dev, dt = self.hidden, self.device, self.dtype
        m = self.model
        heads = {k: blk.attn.num_heads for k, blk in m.attns.items()}
        empty = {k: torch.zeros(b, n, 0, h // n, device=dev, dtype=dt) for k, n in heads.items()}
        return StreamState(
            position=torch.zeros(b, dtype=torch.int64, device=dev),
            conv=[torch.zeros(b, c.left_pad, h, device=dev, dtype=dt) for c in m.convs],
            lstm=[(torch.zeros(1, b, blk.lstm.hidden_size, device=dev, dtype=dt),
                   torch.zeros(1, b, blk.lstm.hidden_size, device=dev, dtype=dt)) for blk in m.lstms],
            keys=empty, values={k: v.clone() for k, v in empty.items()},
            slots=torch.zeros(b, 0, dtype=torch.bool, device=dev),
            total=torch.zeros(b, h, device=dev, dtype=dt),
            count=torch.zeros(b, dtype=torch.int64, device=dev),
            maximum=torch.full((b, h), torch.finfo(dt).min, device=dev, dtype=dt),
        )

    def reset(self, streams: Tensor | list[int] | None = None, batch_size: int | None = None) -> None:
        """Start over: every stream (optionally with a new ``batch_size``), or only the ``streams`` named
        (indices), whose cache slots are then ignored by them; the other streams carry on untouched."""
        if streams is None:
            self.state = self._fresh(batch_size or self.batch_size)
            return
        if batch_size is not None:
            raise ValueError("pass batch_size only when resetting every stream")
        rows = torch.as_tensor(streams, dtype=torch.int64, device=self.device)
        fresh, s = self._fresh(len(rows)), self.state
        s.position[rows] = 0
        s.count[rows] = 0
        s.total[rows] = 0
        s.maximum[rows] = fresh.maximum
        s.slots[rows] = False
        for buf in s.conv:
            buf[rows] = 0
        for h, c in s.lstm:
            h[:, rows] = 0
            c[:, rows] = 0

    def get_state(self) -> StreamState:
        """A copy of the carried state (to checkpoint a stream, or to branch it)."""
        return self.state.clone()

    def set_state(self, state: StreamState) -> None:
        """Continue from ``state`` (from :meth:`get_state` of a streamer over the same model); copied in."""
        like, b = self._fresh(state.batch_size), state.batch_size
        slots = state.slots.shape[1] if state.slots.dim() == 2 else -1
        want: list[tuple[str, Tensor, tuple[int, ...]]] = [
            ("position", state.position, tuple(like.position.shape)),
            ("count", state.count, tuple(like.count.shape)),
            ("total", state.total, tuple(like.total.shape)),
            ("maximum", state.maximum, tuple(like.maximum.shape)),
            ("slots", state.slots, (b, slots)),
        ]
        if len(state.conv) != len(like.conv) or len(state.lstm) != len(like.lstm) or set(state.keys) != set(
                like.keys) or set(state.values) != set(like.keys):
            raise ValueError("state was made for a model with other blocks")
        want += [(f"conv[{i}]", t, tuple(w.shape)) for i, (t, w) in enumerate(zip(state.conv, like.conv, strict=True))]
        for i, ((h, c), (w, _)) in enumerate(zip(state.lstm, like.lstm, strict=True)):
            want += [(f"lstm[{i}].h", h, tuple(w.shape)), (f"lstm[{i}].c", c, tuple(w.shape))]
        for k, w in like.keys.items():
            cache = (*w.shape[:2], slots, w.shape[3])
            want += [(f"keys[{k}]", state.keys[k], cache), (f"values[{k}]", state.values[k], cache)]
        for name, t, shape in want:
            if tuple(t.shape) != shape:
                raise ValueError(f"state.{name} has shape {tuple(t.shape)}, this model needs {shape}")
        self.state = state.clone()

    # -- stepping ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, x: Tensor | np.ndarray, lengths: Tensor | np.ndarray | list[int] | None = None) -> StepOutput:
        """Consume one step [B, C] or a chunk [B, n, C] (``lengths``: real steps per stream); outputs of each
        stream's prefix after its last real step."""
        m, s = self.model, self.state
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        if x.dim() == 2:
            x = x[:, None]
        if x.dim() != 3 or x.shape[0] != self.batch_size or x.shape[2] != m.input_dim:
            raise ValueError(f"x must be [{self.batch_size}, C] or [{self.batch_size}, n, C] with C = "
                             f"{m.input_dim}, got {tuple(x.shape)}")
        b, n, _ = x.shape
        if lengths is None:
            lens = torch.full((b,), n, dtype=torch.int64, device=self.device)
        else:
            lens = torch.as_tensor(lengths, dtype=torch.int64, device=self.device)
            if lens.shape != (b,) or bool((lens < 0).any()) or bool((lens > n).any()):
                raise ValueError(f"lengths must be [{b}] with values in 0..{n}, got {lens.tolist()}")
        steps = torch.arange(n, device=self.device)
        real = steps[None, :] < lens[:, None]  # [B, n]
        keep = real[..., None]

        z = m.input_proj(x)
        if m.cfg.positions:
            z = z + sinusoidal_at(s.position[:, None] + steps, self.hidden, self.dtype)
        for i, block in enumerate(m.convs):
            z = z * keep  # as the full model: steps past a stream's end are zeros
            full = torch.cat([s.conv[i], z], 1)  # [B, pad + n, H]: the left context, then the chunk
            d = block.conv.dilation[0]
            if n == 1 and d > 1:  # one output: read only its kernel taps (torch's dilated conv is slow at this size)
                y = F.conv1d(full[:, ::d].transpose(1, 2), block.conv.weight, block.conv.bias).transpose(1, 2)
            else:
                y = block.conv(full.transpose(1, 2)).transpose(1, 2)
            if block.left_pad:  # the newest ``pad`` real inputs of each stream
                idx = lens[:, None] + torch.arange(block.left_pad, device=self.device)
                s.conv[i] = full.gather(1, idx[..., None].expand(-1, -1, self.hidden))
            z = block.norm(z + block.drop(block.act(y)))

        slots_before = s.slots.shape[1]
        if m.attns:
            s.slots = torch.cat([s.slots, real], 1)
        moved = (lens > 0)[None, :, None]
        outputs = [z]
        for i, block in enumerate(m.lstms):
            h0, c0 = s.lstm[i]
            inp = torch.cat(outputs, -1) if self.dense else z
            if n == 1 and _plain_cell(block):
                z, (h, c) = _lstm_step(block, inp, h0, c0)
            else:
                z, (h, c) = block.forward_with_state(inp, lens.clamp_min(1).cpu(), (h0, c0))
            s.lstm[i] = (torch.where(moved, h, h0), torch.where(moved, c, c0))  # an idle stream keeps its state
            if str(i) in m.attns:
                z = self._attend(str(i), z, slots_before)
            outputs.append(z)

        z = z.masked_fill(~keep, 0.0)
        s.total = s.total + z.sum(1)
        s.count = s.count + lens
        s.maximum = torch.maximum(s.maximum, z.masked_fill(~keep, torch.finfo(z.dtype).min).amax(1))
        s.position = s.position + lens
        pooled = torch.cat([s.total / s.count.clamp_min(1)[:, None].to(z.dtype), s.maximum], -1)
        logits = m.head(pooled)
        return StepOutput(logits, torch.softmax(logits.float(), -1), m.aux_head(pooled).squeeze(-1))

    def _attend(self, key: str, z: Tensor, slots_before: int) -> Tensor:
        """The attention block ``key`` on the chunk ``z`` [B, n, H]: append its keys and values to the cache,
        then each chunk step attends over its stream's cached steps up to itself, as the causal mask does."""
        block = self.model.attns[key]
        mha, s = block.attn, self.state
        b, n, h = z.shape
        heads = mha.num_heads
        q, k, v = F.linear(z, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)

        def split(t: Tensor) -> Tensor:
            return t.reshape(b, n, heads, h // heads).transpose(1, 2)  # [B, heads, n, head_dim]

        s.keys[key] = torch.cat([s.keys[key], split(k)], 2)
        s.values[key] = torch.cat([s.values[key], split(v)], 2)
        total = s.slots.shape[1]
        slot = torch.arange(total, device=z.device)
        query_slot = slots_before + torch.arange(n, device=z.device)
        allowed = s.slots[:, None, :] & (slot[None, None, :] <= query_slot[None, :, None])  # [B, n, S]
        allowed = allowed | (slot[None, None, :] == query_slot[None, :, None])  # never an empty row (idle steps)
        out = F.scaled_dot_product_attention(split(q), s.keys[key], s.values[key], attn_mask=allowed[:, None])
        y = mha.out_proj(out.transpose(1, 2).reshape(b, n, h))
        return block.norm(z + block.drop(y))


class RunStreamer:
    """Stream raw (unscaled) values through a run directory's causal model: the run's scaling per step, then
    :class:`StreamingClassifier`; outputs as numpy, aux in the training target's units.

    The run's scaling is per feature, fitted once on the training split (``data.scale``: standard or none), so
    each step can be scaled on its own. A preprocessing step that needed the whole sequence (a per-sequence
    normalisation) could not be applied to a prefix, and a preprocessor carrying one is refused.
    For series runs the model was trained on fixed windows of ``data.series.window`` rows; a stream is scored
    on its whole growing prefix, not on a sliding window.
    """

    _PER_FEATURE: ClassVar[frozenset[str]] = frozenset(
        {"layout", "class_names", "feature_names", "mean", "std", "aux_mean", "aux_std", "per_series",
         # task regress's target scaling: always empty in a classifier run (the only kind that streams)
         "target_names", "target_mean", "target_std",
         # integer labels' kind (names only); data.missing's fill, refused below unless it is error (no fill)
         "label_kind", "missing", "fill", "n_raw"})

    def __init__(self, run: Any, batch_size: int = 1) -> None:
        if getattr(run, "task", None) != "classify":
            raise StreamingError(f"streaming needs a classifier run, got task {getattr(run, 'task', None)!r}")
        prep = run.prep
        unknown = {f.name for f in fields(prep)} - self._PER_FEATURE
        if unknown:
            raise StreamingError(f"this run's preprocessing has {', '.join(sorted(unknown))}, which streaming "
                                 "cannot apply one step at a time")
        if getattr(prep, "missing", "error") != "error":
            raise StreamingError(f"this run fills missing values (data.missing={prep.missing}), which the streamer "
                                 "does not do step by step; train with data.missing=error to stream")
        if getattr(prep, "per_series", False):
            raise StreamingError("this run normalises each sequence over its whole length (data.scale=series), "
                                 "which a prefix cannot be; train with data.scale=standard to stream")
        self.run, self.prep = run, prep
        self.mean = np.float32(prep.mean) if prep.mean else None
        self.std = np.float32(prep.std) if prep.std else None
        self.stream = StreamingClassifier(run.model, batch_size)

    @property
    def class_names(self) -> list[str]:
        return list(self.prep.class_names)

    def scale(self, x: np.ndarray) -> np.ndarray:
        """The run's per-feature scaling of raw steps [..., C], with the arithmetic of ``Preprocessor.transform``."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != len(self.prep.feature_names):
            raise LongshortError(f"x has {x.shape[-1]} features but the model was trained on "
                                 f"{len(self.prep.feature_names)} ({', '.join(self.prep.feature_names)})")
        if self.mean is None or self.std is None:
            return x
        return ((x - self.mean) / self.std).astype(np.float32)

    def step(self, x: np.ndarray, lengths: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Class probabilities [B, K] of each stream's prefix after raw step(s) ``x`` [B, C] or [B, n, C]."""
        return self.step_outputs(x, lengths)[0]

    def step_outputs(self, x: np.ndarray, lengths: np.ndarray | list[int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities [B, K], aux prediction [B] in the aux target's own units)."""
        out = self.stream.step(self.scale(x), lengths)
        aux = out.aux.float().cpu().numpy() * self.prep.aux_std + self.prep.aux_mean
        return out.proba.cpu().numpy(), aux

    def predict(self, x: np.ndarray, lengths: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Predicted class names [B] of each stream's prefix after ``x``."""
        return np.asarray(self.prep.class_names)[self.step(x, lengths).argmax(1)]

    def reset(self, streams: list[int] | None = None, batch_size: int | None = None) -> None:
        self.stream.reset(streams, batch_size)

    def get_state(self) -> StreamState:
        return self.stream.get_state()

    def set_state(self, state: StreamState) -> None:
        self.stream.set_state(state)


def _plain_cell(block: Any) -> bool:
    """Whether the block's LSTM is a plain one-layer cell in this mode (the fused kernel's maths), so one step
    can be computed directly (the kernel's per-call set-up costs more than the step itself at batch 1)."""
    lstm = block.lstm
    return (lstm.uses_fused_path and not lstm._layerwise() and lstm.num_layers == 1 and not lstm.bidirectional
            and not torch.is_autocast_enabled(block.norm.weight.device.type))


def _lstm_step(block: Any, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One step of ``block`` for input ``x`` [B, 1, I] from state ``(h0, c0)`` [1, B, H]: the LSTM equations on
    its own weights (gates in nn.LSTM's i, f, g, o order), then the block's dropout/skip/LayerNorm."""
    h, c = lstm_cell(block.lstm, x[:, 0], h0[0], c0[0])
    return block.join(x, h[:, None].to(x.dtype)), (h[None], c[None])


def lstm_cell(lstm: Any, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step ``(h, c)`` of a one-layer plain LSTM's cell for input ``x`` [B, I] from ``h``, ``c`` [B, H], on its
    own weights (gates in nn.LSTM's i, f, g, o order). Also what the ONNX streaming step traces."""
    gates = F.linear(x, lstm.weight_ih_l0, getattr(lstm, "bias_ih_l0", None))
    gates = gates + F.linear(h, lstm.weight_hh_l0, getattr(lstm, "bias_hh_l0", None))
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
