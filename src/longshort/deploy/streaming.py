"""Streaming inference: score a causal classifier's growing prefix one step (or one chunk) at a time.

A model trained with ``model.bidirectional=false`` computes every per-step feature from steps ``<= t`` only,
and pools them with a masked mean and max, so its prediction for the prefix ``x[:t+1]`` can be carried forward
in O(1) work per step (attention: O(prefix) per step) instead of re-running the whole prefix. What is carried is
the model's own :class:`~longshort.nn.classifier.ClassifierCache` (here :data:`StreamState`):

- sinusoidal positions: the step index of each stream;
- each causal convolution: its last ``dilation * (kernel - 1)`` real inputs (the full model's left padding is
  the fresh cache's zeros);
- each LSTM block: its ``(h, c)`` and, for the self-attention cell, its earlier hidden states;
- each attention block: the projected keys and values of every step so far, and which cache slots hold a real
  step of which stream;
- pooling: the running sum, count and maximum of the last block's features.

:class:`StreamingClassifier` is :meth:`SequenceClassifier.forward` with that cache, called on each new step or
chunk: there is no second copy of the model's arithmetic, so what it returns after step t is the full model's
output on the prefix, to float rounding (the tests hold it to 1e-5 against every prefix). :class:`RunStreamer`
adds a run directory's scaling, so raw values go in and class probabilities come out.

Cell options: the training-only regularisers (dropout of every kind, weight drop) are off at inference; zoneout
at inference is its expectation, a fixed blend; layer norm, skips through time and the self-attention cell (its
memory of past hidden states is part of the cache) run as in the full model. Every ``model.stack.skip`` streams.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from longshort.errors import LongshortError
from longshort.nn.classifier import ClassifierCache, SequenceClassifier, cache_from_tensors, cache_tensors

__all__ = ["RunStreamer", "StepOutput", "StreamState", "StreamingClassifier", "StreamingError"]

StreamState = ClassifierCache  # everything a batch of streams carries from one step to the next


class StreamingError(LongshortError):
    """The model or run cannot be run step by step (and the message says why and what to do)."""


class StepOutput(NamedTuple):
    logits: Tensor  # [B, K] of each stream's prefix so far
    proba: Tensor  # [B, K] softmax of logits
    aux: Tensor  # [B] auxiliary head


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


def slot_axis(name: str) -> int | None:
    """The axis of the cache tensor ``name`` (:func:`~longshort.nn.classifier.cache_tensors`) that grows by one
    slot per chunk step, or None for a tensor of fixed shape."""
    if name.startswith(("keys", "values")):
        return 2
    return 1 if name == "slots" or name.startswith("mem") else None


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
        self.state = model.initial_cache(batch_size)

    # -- state -------------------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def reset(self, streams: Tensor | list[int] | None = None, batch_size: int | None = None) -> None:
        """Start over: every stream (optionally with a new ``batch_size``), or only the ``streams`` named
        (indices), whose cache slots are then ignored by them; the other streams carry on untouched."""
        if streams is None:
            self.state = self.model.initial_cache(batch_size or self.batch_size)
            return
        if batch_size is not None:
            raise ValueError("pass batch_size only when resetting every stream")
        rows = torch.as_tensor(streams, dtype=torch.int64, device=self.device)
        fresh = cache_tensors(self.model.initial_cache(len(rows)))
        for name, t in cache_tensors(self.state).items():
            if name == "slots":
                t[rows] = False  # their cache slots are ignored from now on
            elif slot_axis(name) is None:
                t[rows] = fresh[name]

    def get_state(self) -> StreamState:
        """A copy of the carried state (to checkpoint a stream, or to branch it)."""
        return self.state.clone()

    def set_state(self, state: StreamState) -> None:
        """Continue from ``state`` (from :meth:`get_state` of a streamer over the same model); copied in."""
        like = cache_tensors(self.model.initial_cache(state.batch_size))
        got = cache_tensors(state)
        if set(got) != set(like):
            raise ValueError("state was made for a model with other blocks")
        slots = got["slots"].shape[1] if got["slots"].dim() == 2 else -1
        for name, t in got.items():
            want = list(like[name].shape)
            axis = slot_axis(name)
            if axis is not None:  # the slot dimension grows with the steps fed
                want[axis] = slots
            if tuple(t.shape) != tuple(want):
                raise ValueError(f"state.{name} has shape {tuple(t.shape)}, this model needs {tuple(want)}")
        self.state = cache_from_tensors(state, {k: v.clone() for k, v in got.items()})

    # -- stepping ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, x: Tensor | np.ndarray, lengths: Tensor | np.ndarray | list[int] | None = None) -> StepOutput:
        """Consume one step [B, C] or a chunk [B, n, C] (``lengths``: real steps per stream); outputs of each
        stream's prefix after its last real step."""
        m = self.model
        x = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        if x.dim() == 2:
            x = x[:, None]
        if x.dim() != 3 or x.shape[0] != self.batch_size or x.shape[2] != m.input_dim:
            raise ValueError(f"x must be [{self.batch_size}, C] or [{self.batch_size}, n, C] with C = "
                             f"{m.input_dim}, got {tuple(x.shape)}")
        b, n, _ = x.shape
        lens = None
        if lengths is not None:
            lens = torch.as_tensor(lengths, dtype=torch.int64, device=self.device)
            if lens.shape != (b,) or bool((lens < 0).any()) or bool((lens > n).any()):
                raise ValueError(f"lengths must be [{b}] with values in 0..{n}, got {lens.tolist()}")
        out = m(x, lens, self.state)
        assert out.cache is not None
        self.state = out.cache
        return StepOutput(out.logits, torch.softmax(out.logits.float(), -1), out.aux)


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
