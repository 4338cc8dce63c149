"""Dynamic 8-bit quantization of a run's ONNX export, with the size it saves and the accuracy it costs.

Why onnxruntime's ``quantize_dynamic`` on the exported graph, and not torch:

- ``torch.ao.quantization`` (``quantize_dynamic`` of ``nn.LSTM``/``nn.Linear``) is deprecated in torch 2.13,
  and it would not see this model's LSTM anyway: :class:`longshort.nn.lstm.LSTM` calls the fused kernel itself.
- torchao's dynamic int8 quantization swaps ``nn.Linear`` weights; the recurrence, most of this model's
  arithmetic, would stay float32, and the result still needs torch to run.
- onnxruntime quantizes the operators that matter here: ONNX ``LSTM`` becomes ``DynamicQuantizeLSTM`` (8-bit
  input and recurrent weights), the projections and the temporal convolutions (exported as matrix products)
  ``MatMulInteger``;
  weights are stored in 8 bits, activations are quantized per tensor at run time (no calibration data). The
  result runs on :class:`longshort.deploy.runtime.OnnxPredictor`, without torch.

Why unsigned 8-bit weights by default (``weight_type="uint8"``, i.e. onnxruntime's U8U8): on x86 CPUs without
VNNI (AVX2 only) the U8S8 kernel can saturate its 16-bit intermediate sums. Measured on such a CPU with the
hidden-64 run of docs/deploy.md over its 1,200 validation and test sequences, int8 weights changed the
probabilities by 0.0036 on average (99.5% same class), uint8 weights by 0.0015 (99.75%). ``weight_type="int8"``
is there for VNNI machines; ``per_channel`` quantizes each output channel of a weight on its own scale.

:func:`quantize` exports float32 ONNX (parity-checked, see :func:`longshort.deploy.export.export_onnx`) into a
temporary directory, quantizes it into ``OUT`` (default ``RUN_DIR/export/quantized``) and measures both on the
run's own test split (rebuilt from its config and seed, as ``Run.evaluate`` does).
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from longshort.deploy.export import (
    DEFAULT_OPSET,
    ExportError,
    export_onnx,
    load_run,
    measure_parity,
    out_dir,
    require,
    write_manifest,
    write_sidecars,
)

__all__ = ["quantize", "summary_lines"]

WeightType = Literal["uint8", "int8"]
QUANTIZED_OPS = ("DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")


def quantize(run_dir: str | Path, out_path: str | Path | None = None, *, opset: int = DEFAULT_OPSET,
             weight_type: WeightType = "uint8", per_channel: bool = False, evaluate: bool = True) -> dict[str, Any]:
    """Write ``OUT/model.onnx`` (8-bit dynamic quantization of the run's float32 ONNX) with ``model.json`` and
    ``preprocess.json``; returns the manifest plus ``path``.

    The manifest's ``size`` has both file sizes in bytes and their ratio; ``accuracy`` (with ``evaluate``) has the
    float32 and quantized accuracy on the run's test split (validation split if the run has none), the drop in
    percentage points, how often both predict the same class and the largest probability change; ``deviation``
    compares the quantized graph with the eager model on the export parity batches (informative: quantization
    is not held to the float32 tolerance).
    """
    require(["onnx", "onnxruntime"], "quantization")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from longshort.deploy.runtime import OnnxPredictor

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if weight_type not in types:
        raise ExportError(f"weight_type must be uint8 or int8, got {weight_type!r}")
    run = load_run(run_dir)
    d = out_dir(run_dir, out_path, "quantized")
    path = d / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="longshort-fp32-") as tmp:
        fp32 = export_onnx(run_dir, tmp, opset=opset)
        # onnxruntime's recommended pre-processing: ONNX shape inference and its basic graph optimisations (constant
        # folding; the quantized file comes out ~10% smaller). Its symbolic shape inference cannot follow the
        # dynamic-length reshapes of this graph, so it is skipped.
        pre = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(fp32["path"], str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(path), weight_type=types[weight_type], per_channel=per_channel)
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        fp32_bytes, q_bytes = int(fp32["size_bytes"]), path.stat().st_size
        manifest = write_sidecars(run, d, {
            "format": "onnx-quantized", "file": path.name, "opset": opset,
            "precision": f"{weight_type} weights, uint8 activations quantized at run time (per tensor)",
            "exporter": fp32["exporter"],
            "quantization": {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": weight_type,
                             "per_channel": per_channel,
                             "quantized_ops": {k: ops[k] for k in QUANTIZED_OPS if ops[k]}},
            "size": {"float32_bytes": fp32_bytes, "quantized_bytes": q_bytes, "ratio": q_bytes / fp32_bytes},
            "float32_parity": fp32["parity"],
        })
        quantized = OnnxPredictor(d)
        manifest["deviation"] = measure_parity(run, lambda x, lengths: _outputs(quantized, x, lengths))
        del manifest["deviation"]["tolerance"]
        if evaluate:
            manifest["accuracy"] = _accuracy(run, OnnxPredictor(tmp), quantized)
    write_manifest(d, manifest)
    return {**manifest, "path": str(path), "size_bytes": q_bytes}


def _outputs(predictor: Any, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, logits = predictor.session.run(["proba", "logits"], {"x": x, "lengths": lengths})
    return p, logits


def _accuracy(run: Any, fp32: Any, quantized: Any) -> dict[str, Any]:
    """Both graphs on the run's test split (or validation split), rebuilt from its config and seed."""
    from longshort.data.pipeline import prepare
    from longshort.errors import LongshortError

    try:
        splits = prepare(run.config.data, run.config.seed)
    except LongshortError as exc:
        return {"measured": False, "why": f"the run's data could not be read again: {exc}"}
    name, data = ("test", splits.test) if splits.test is not None and len(splits.test) else ("val", splits.val)
    if data is None or data.y is None or not len(data):
        return {"measured": False, "why": "the run has neither a test nor a validation split"}
    y = np.asarray(data.y)
    p32 = fp32.predict_proba(data.X, data.lengths, prepared=True)
    p8 = quantized.predict_proba(data.X, data.lengths, prepared=True)
    a32, a8 = float((p32.argmax(1) == y).mean()), float((p8.argmax(1) == y).mean())
    return {
        "measured": True, "split": name, "n": len(y), "float32": a32, "quantized": a8,
        "drop_points": 100 * (a32 - a8), "same_prediction": float((p32.argmax(1) == p8.argmax(1)).mean()),
        "max_abs_diff_proba": float(np.abs(p32 - p8).max()), "mean_abs_diff_proba": float(np.abs(p32 - p8).mean()),
    }


def summary_lines(res: dict[str, Any]) -> list[str]:
    """What ``longshort export --format quantized`` prints."""
    s = res["size"]
    ops = ", ".join(f"{k} {v}" for k, v in res["quantization"]["quantized_ops"].items()) or "none"
    lines = [
        f"quantized {res['path']}: {s['quantized_bytes']:,} bytes against {s['float32_bytes']:,} float32 "
        f"(ratio {s['ratio']:.2f}, {1 / s['ratio']:.1f}x smaller)",
        f"quantized operators: {ops} ({res['quantization']['weight_type']} weights)",
    ]
    acc = res.get("accuracy")
    if acc and acc["measured"]:
        lines.append(
            f"{acc['split']} accuracy ({acc['n']:,} sequences): float32 {acc['float32']:.4f}, quantized "
            f"{acc['quantized']:.4f} (drop {acc['drop_points']:.2f} points); same class for "
            f"{100 * acc['same_prediction']:.1f}%, largest probability change {acc['max_abs_diff_proba']:.3f}")
    elif acc:
        lines.append(f"accuracy not measured: {acc['why']}")
    return lines
