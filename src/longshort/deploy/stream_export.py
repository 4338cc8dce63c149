"""One streaming step of a causal classifier as an ONNX graph: state in, state out, for onnxruntime.

:class:`longshort.deploy.streaming.StreamingClassifier` runs a step in torch eager, where each of its few hundred
small operators costs more than its arithmetic. :class:`StepGraph` traces the same step, the classifier's own
forward with its cache (:class:`~longshort.nn.classifier.ClassifierCache`) as explicit state tensors, into one
graph, which onnxruntime runs without Python between operators and can quantize like the whole-sequence export.
Only the convolutions are swapped, for the matrix product over their taps (:func:`~longshort.deploy.exportable.
export_copy`); one step of the LSTM traces as it is, whatever its cell options (layer norm, zoneout's
evaluation blend, skips through time, the self-attention cell with its memory), and so do every
``model.stack.skip`` and spectral norm (baked into plain weights).

``StepGraph.forward(x, position, slots, *state) -> (proba, logits, aux, position', slots', *state')``, every
stream taking one real step (:class:`longshort.deploy.runtime.OnnxStreamer` handles idle streams and chunks):

- ``x`` [B, C] one scaled step per stream; ``position`` [B] int64 its index; ``slots`` [B, S] bool which
  attention cache slots hold a step of this stream (false after a reset of that stream);
- then, in :func:`~longshort.nn.classifier.cache_tensors` order: per convolution its last
  ``dilation * (kernel - 1)`` inputs [B, pad, H]; per LSTM block ``h`` and ``c`` [B, H] (and, for the
  self-attention cell, ``mem`` [B, S, H], its earlier hidden states); per attention block the cached keys and
  values [B, heads, S, d]; the running sum [B, H], count [B] (float32) and maximum [B, H] of the pooled features.

:func:`export_stream` (``longshort export RUN_DIR --format stream | stream-quantized``) writes the graph, float32
or with onnxruntime's dynamic 8-bit quantization, and holds it step by step to the full eager model on every
prefix of a few sequences; :class:`longshort.deploy.runtime.OnnxStreamer` runs it with numpy and onnxruntime
only, idle streams and chunks included.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from longshort.deploy.export import (
    DEFAULT_OPSET,
    PARITY_TOL,
    ExportError,
    check_parity,
    load_run,
    ort_session,
    out_dir,
    require,
    write_manifest,
    write_sidecars,
)
from longshort.deploy.exportable import export_copy
from longshort.deploy.streaming import RunStreamer, StreamingError, check_streamable, slot_axis
from longshort.nn.classifier import SequenceClassifier, cache_from_tensors, cache_tensors

__all__ = ["StepGraph", "export_stream", "initial_state", "state_dtype", "state_spec", "stream_parity"]


def state_spec(model: SequenceClassifier) -> list[tuple[str, list[int | str]]]:
    """``(name, shape)`` of every carried state tensor after ``x``, in the graph's input order; ``"batch"`` and
    ``"slots"`` are the dynamic sizes. ``position`` and ``slots`` come first (int64 and bool), the rest is float32."""
    spec: list[tuple[str, list[int | str]]] = []
    for name, t in cache_tensors(model.initial_cache(1)).items():
        shape: list[int | str] = ["batch", *t.shape[1:]]
        axis = slot_axis(name)
        if axis is not None:
            shape[axis] = "slots"
        spec.append((name, shape))
    return spec


def state_dtype(name: str) -> str:
    """The numpy/ONNX dtype of the state tensor ``name`` (see :func:`state_spec`)."""
    return {"position": "int64", "slots": "bool"}.get(name, "float32")


def initial_state(model: SequenceClassifier, batch: int) -> dict[str, np.ndarray]:
    """The state of ``batch`` fresh streams as numpy arrays, named as in :func:`state_spec` (what
    ``OnnxStreamer`` builds from the manifest)."""
    from longshort.deploy.runtime import fresh_state

    return fresh_state([{"name": n, "shape": shape, "dtype": state_dtype(n)} for n, shape in state_spec(model)],
                       batch)


class StepGraph(nn.Module):
    """One step of every stream of a causal ``model``: its forward with the cache as flat tensors (see the module
    docstring). Built on an :func:`~longshort.deploy.exportable.export_copy` of the model in evaluation mode
    (``model`` itself is left as it is); raises :class:`StreamingError` for a model that cannot be streamed."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        check_streamable(model)
        self.model = export_copy(model, recurrence=None)
        self.like = model.initial_cache(1)  # the cache's structure (which blocks carry what)
        self.names = [n for n, _ in state_spec(model)]
        self.train(False)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        cache = cache_from_tensors(self.like, dict(zip(self.names, state, strict=True)))
        out = self.model(x[:, None], None, cache)
        assert out.cache is not None
        new = cache_tensors(out.cache)
        return (torch.softmax(out.logits, -1), out.logits, out.aux, *(new[n] for n in self.names))


OUTPUTS = ("proba", "logits", "aux")


def stream_parity(run: Any, step: Any, batch: int = 2, steps: int = 9, seed: int = 0) -> dict[str, Any]:
    """Feed ``batch`` scaled random sequences to ``step`` (``(x [B, C], state dict) -> (proba, logits, aux,
    state dict)``) one step at a time from fresh state and compare each step's outputs with the eager model on
    that prefix; the largest differences."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, len(run.prep.feature_names))).astype(np.float32)
    state = initial_state(run.model, batch)
    worst = {"proba": 0.0, "logits": 0.0, "aux": 0.0}
    model = run.model.eval()
    for t in range(steps):
        proba, logits, aux, state = step(x[:, t], state)
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:, : t + 1]))
        for name, got, want in (("proba", proba, torch.softmax(ref.logits, -1)), ("logits", logits, ref.logits),
                                ("aux", aux, ref.aux)):
            worst[name] = max(worst[name], float(np.abs(np.asarray(got) - want.numpy()).max()))
    return {"reference": "torch eager (Run.load) on every prefix", "batch": batch, "steps": steps,
            "max_abs_diff_proba": worst["proba"], "max_abs_diff_logits": worst["logits"],
            "max_abs_diff_aux": worst["aux"], "tolerance": PARITY_TOL}


def export_stream(run_dir: str | Path, out_path: str | Path | None = None, *, quantized: bool = False,
                  opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Export ``run_dir``'s causal classifier's streaming step to ``OUT/model.onnx`` (default
    ``RUN_DIR/export/stream``, or ``.../stream-quantized`` with dynamic 8-bit weights), check it step by step
    against the eager model, write ``model.json`` (the state tensors, in order, with shapes and dtypes) and
    ``preprocess.json``. Returns the manifest plus ``path`` and ``size_bytes``.

    The float32 graph must match within :data:`~longshort.deploy.export.PARITY_TOL` (else the file is deleted and
    :class:`ExportError` raised); the 8-bit one records its deviation."""
    require(["onnx", "onnxruntime"], "streaming export")
    import onnx

    run = load_run(run_dir)
    try:
        RunStreamer(run)  # the run's preprocessing can be applied one step at a time
        graph = StepGraph(run.model)
    except StreamingError as exc:
        raise ExportError(f"cannot export a streaming step of {run_dir}: {exc}") from None
    fmt = "onnx-stream-quantized" if quantized else "onnx-stream"
    d = out_dir(run_dir, out_path, "stream-quantized" if quantized else "stream")
    path = d / "model.onnx"
    spec = state_spec(run.model)
    names = [n for n, _ in spec]
    axes: dict[str, dict[int, str]] = {"x": {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}}
    for name, shape in spec:
        axes[name] = axes[f"{name}_out"] = {i: dim for i, dim in enumerate(shape) if isinstance(dim, str)}
    example = _example_state(graph, len(run.prep.feature_names))
    with tempfile.TemporaryDirectory(prefix="longshort-stream-") as tmp:
        fp32 = Path(tmp) / "step.onnx" if quantized else path
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            try:
                torch.onnx.export(graph, example, str(fp32), dynamo=False, input_names=["x", *names],
                                  output_names=[*OUTPUTS, *(f"{n}_out" for n in names)], dynamic_axes=axes,
                                  opset_version=opset)
            except Exception as exc:
                raise ExportError(f"torch.onnx.export of the streaming step (opset {opset}) failed: {exc}") from exc
        onnx.checker.check_model(str(fp32))
        if quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(path), weight_type=QuantType.QUInt8)
    session = ort_session(path)

    def step(x: np.ndarray, state: dict[str, np.ndarray]) -> tuple[Any, Any, Any, dict[str, np.ndarray]]:
        res = session.run(None, {"x": x, **state})
        return res[0], res[1], res[2], dict(zip(names, res[3:], strict=True))

    parity = stream_parity(run, step)
    if not quantized:
        check_parity(parity, path)
    manifest = write_sidecars(run, d, {
        "format": fmt, "file": path.name, "opset": opset,
        "precision": "uint8 weights, activations quantized at run time" if quantized else "float32",
        "exporter": "torch.onnx.export (TorchScript) of longshort.deploy.stream_export.StepGraph",
        "parity" if not quantized else "deviation": parity,
    })
    c, k = len(run.prep.feature_names), len(run.prep.class_names)
    manifest["inputs"] = [{"name": "x", "dtype": "float32", "shape": ["batch", c], "scaled": True},
                          *({"name": n, "dtype": state_dtype(n), "shape": shape} for n, shape in spec)]
    manifest["outputs"] = [{"name": "proba", "dtype": "float32", "shape": ["batch", k]},
                           {"name": "logits", "dtype": "float32", "shape": ["batch", k]},
                           {"name": "aux", "dtype": "float32", "shape": ["batch"], "scaled": True},
                           *({"name": f"{n}_out", "dtype": state_dtype(n), "shape": shape} for n, shape in spec)]
    manifest["state"] = [{"name": n, "dtype": state_dtype(n), "shape": shape} for n, shape in spec]
    write_manifest(d, manifest)
    return {**manifest, "path": str(path), "size_bytes": path.stat().st_size}


def _example_state(graph: StepGraph, n_features: int) -> tuple[Tensor, ...]:
    """The traced example: 3 streams 5 steps in (sizes the parity check avoids: it uses 2 streams from 0)."""
    g = torch.Generator().manual_seed(1)
    state = {k: torch.from_numpy(v) for k, v in initial_state(graph.model, 3).items()}
    with torch.no_grad():
        for _ in range(5):
            out = graph(torch.randn(3, n_features, generator=g), *(state[n] for n in graph.names))
            state = dict(zip(graph.names, out[len(OUTPUTS):], strict=True))
    return (torch.randn(3, n_features, generator=g), *(state[n] for n in graph.names))
