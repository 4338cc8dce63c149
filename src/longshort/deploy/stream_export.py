"""One streaming step of a causal classifier as an ONNX graph: state in, state out, for onnxruntime.

:class:`longshort.deploy.streaming.StreamingClassifier` runs a step in torch eager, where each of its few hundred
small operators costs more than its arithmetic (a step took about as long as a whole 8-bit sequence in
onnxruntime). :class:`StepGraph` is the same step written as one traceable function of explicit state tensors,
so the TorchScript exporter records it as one graph, which onnxruntime runs without Python between operators
and can quantize like the whole-sequence export.

``StepGraph.forward(x, position, slots, *state) -> (proba, logits, position', slots', *state')``, every stream
taking one real step (the eager streamer handles idle streams and chunks):

- ``x`` [B, C] one scaled step per stream; ``position`` [B] int64 its index; ``slots`` [B, S] bool which
  attention cache slots hold a step of this stream (false after a reset of that stream);
- then, in :func:`state_spec` order: per convolution its last ``dilation * (kernel - 1)`` inputs [B, pad, H];
  per LSTM block ``h`` and ``c`` [B, H]; per attention block the cached keys and values [B, heads, S, d]; the
  running sum [B, H], count [B] (float32) and maximum [B, H] of the pooled features.

The arithmetic is the model's own, on a copy of its parameters (the step is checked against every prefix of the full
model at export): input projection plus the position code; each causal convolution as one product over its
kernel taps; the LSTM cell equations; attention of the new step over its cache; pooling and the heads.

:func:`export_stream` (``longshort export RUN_DIR --format stream | stream-quantized``) writes the graph, float32
or with onnxruntime's dynamic 8-bit quantization, and holds it step by step to the full eager model on every
prefix of a few sequences; :class:`longshort.deploy.runtime.OnnxStreamer` runs it with numpy and onnxruntime
only, idle streams and chunks included.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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
from longshort.deploy.exportable import check_exportable, conv_taps_output, frozen_copy, position_codes
from longshort.deploy.streaming import RunStreamer, StreamingError, check_streamable, lstm_cell
from longshort.nn.classifier import BiLSTMBlock, SequenceClassifier

__all__ = ["StepGraph", "export_stream", "initial_state", "state_dtype", "state_spec", "stream_parity"]


def state_spec(model: SequenceClassifier) -> list[tuple[str, list[int | str]]]:
    """``(name, shape)`` of every carried state tensor after ``x``, in the graph's input order; ``"batch"`` and
    ``"slots"`` are the dynamic sizes. ``position`` and ``slots`` come first (int64 and bool), the rest is float32."""
    h = model.cfg.hidden_dim
    spec: list[tuple[str, list[int | str]]] = [("position", ["batch"]), ("slots", ["batch", "slots"])]
    spec += [(f"conv{i}", ["batch", c.left_pad, h]) for i, c in enumerate(model.convs)]
    for i, block in enumerate(model.lstms):
        width = block.lstm.hidden_size
        spec += [(f"h{i}", ["batch", width]), (f"c{i}", ["batch", width])]
    for k, block in model.attns.items():
        cache: list[int | str] = ["batch", block.attn.num_heads, "slots", h // block.attn.num_heads]
        spec += [(f"keys{k}", cache), (f"values{k}", cache)]
    spec += [("total", ["batch", h]), ("count", ["batch"]), ("maximum", ["batch", h])]
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
    """One step of every stream of a causal ``model`` as pure tensor operations (see the module docstring).
    Built on a copy of the model in evaluation mode (``model`` itself is left as it is); raises
    :class:`ExportError` or :class:`StreamingError` for a model that cannot be streamed or exported."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        check_streamable(model)
        check_exportable(model)
        for block in model.lstms:
            lstm = block.lstm
            if lstm.num_layers != 1 or lstm.bidirectional:
                raise StreamingError("the streaming step graph needs one-layer forward LSTM blocks")
        self.model = frozen_copy(model)  # spectral norm baked into plain weights, as for --format onnx
        self.names = [n for n, _ in state_spec(model)]
        self.train(False)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        s = dict(zip(self.names, state, strict=True))
        hidden = m.cfg.hidden_dim
        out: dict[str, Tensor] = {}
        z = m.input_proj(x) + position_codes(s["position"], hidden, x)
        for i, block in enumerate(m.convs):
            full = torch.cat([s[f"conv{i}"], z[:, None]], 1)  # [B, pad + 1, H]: the left context, then this step
            out[f"conv{i}"] = full[:, 1:]
            z = conv_taps_output(block, z, full[:, :: block.conv.dilation[0]].flatten(1))  # taps oldest first
        out["slots"] = torch.cat([s["slots"], torch.ones_like(s["position"], dtype=torch.bool)[:, None]], 1)
        outputs = [z]
        dense = m.cfg.stack.skip == "dense"
        for i, block in enumerate(m.lstms):
            assert isinstance(block, BiLSTMBlock)
            inp = torch.cat(outputs, -1) if dense else z
            h, c = lstm_cell(block.lstm, inp, s[f"h{i}"], s[f"c{i}"])
            out[f"h{i}"], out[f"c{i}"] = h, c
            z = block.join(inp, h)
            if str(i) in m.attns:
                z = self._attend(str(i), z, s, out)
            outputs.append(z)
        out["total"] = s["total"] + z
        out["count"] = s["count"] + 1
        out["maximum"] = torch.maximum(s["maximum"], z)
        out["position"] = s["position"] + 1
        pooled = torch.cat([out["total"] / out["count"][:, None], out["maximum"]], -1)
        logits = m.head(pooled)
        return (torch.softmax(logits, -1), logits, m.aux_head(pooled)[:, 0], *(out[n] for n in self.names))

    def _attend(self, key: str, z: Tensor, s: dict[str, Tensor], out: dict[str, Tensor]) -> Tensor:
        block = self.model.attns[key]
        mha = block.attn
        heads = mha.num_heads
        d = mha.embed_dim // heads
        q, k, v = F.linear(z, mha.in_proj_weight, mha.in_proj_bias).unflatten(-1, (3, heads, d)).unbind(1)
        keys = torch.cat([s[f"keys{key}"], k[:, :, None]], 2)  # [B, heads, S + 1, d]
        values = torch.cat([s[f"values{key}"], v[:, :, None]], 2)
        out[f"keys{key}"], out[f"values{key}"] = keys, values
        scores = (keys @ q[..., None])[..., 0] * (1.0 / math.sqrt(d))  # [B, heads, S + 1]
        scores = scores.masked_fill(~out["slots"][:, None], float("-inf"))
        y = (torch.softmax(scores, -1)[:, :, None] @ values)[:, :, 0].flatten(1)  # [B, H]
        return block.norm(z + mha.out_proj(y))


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
