"""Run an exported classifier with numpy and onnxruntime only: no torch, pandas or pydantic at import or call.

A serving box then needs a ~20 MB wheel (onnxruntime) instead of torch, and starts in a fraction of a second.
:class:`OnnxPredictor` reads an export directory (see :mod:`longshort.deploy.export`)::

    model.json        which file, inputs and outputs (written by the export)
    model.onnx        float32 or quantized graph (x [B, T, C] scaled, lengths [B]) -> proba, logits
    preprocess.json   the run's scaling and its feature and class names

and applies the run's scaling itself, with the arithmetic of :meth:`longshort.data.pipeline.Preprocessor.transform`
(float32 ``(x - mean) / std`` times the valid-step mask), so raw sequences give what ``Run.predict_proba`` gives.
Like ``Run.predict_proba`` it feeds batches trimmed to their longest sequence.

This file imports nothing from longshort but its error base class, when longshort is there: it can be copied next
to a model and used on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

try:  # installed with longshort: its CLI reports these errors in one line
    from longshort.errors import LongshortError

    _BASES: tuple[type[Exception], ...] = (LongshortError, ValueError)
except ImportError:  # this file on its own
    _BASES = (ValueError,)

__all__ = ["FORMATS", "InputError", "OnnxPredictor", "scale"]

FORMATS = ("onnx", "onnx-quantized")


class InputError(*_BASES):  # type: ignore[misc]
    """An export directory or an input array that cannot be used (the message names the file or the array)."""


def scale(x: np.ndarray, lengths: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """float32 ``(x - mean) / std`` at valid steps and zeros at padded steps; ``x`` unchanged (as float32) when
    ``mean`` is empty (the run had ``data.scale=none``). The same operations, in the same order and precision,
    as ``Preprocessor.transform``, so the two agree to the bit."""
    x = np.asarray(x, dtype=np.float32)
    if mean:
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        x = ((x - np.float32(mean)) / np.float32(std)) * mask[..., None]
    return x.astype(np.float32)


class OnnxPredictor:
    """Class probabilities from an ONNX export directory (or its ``model.onnx``), torch-free.

    ``threads`` is onnxruntime's intra-op thread count (1 by default: predictable latency, no contention with
    other processes; 0 lets onnxruntime choose). ``batch_size`` bounds the sequences per ``session.run``.
    """

    def __init__(self, export_dir: str | Path, threads: int = 1, batch_size: int = 256) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise InputError("OnnxPredictor needs onnxruntime: pip install onnxruntime "
                             "(or 'longshort[deploy]')") from exc
        d = Path(export_dir)
        if d.suffix == ".onnx":
            d = d.parent
        self.dir = d
        self.manifest = _read_json(d / "model.json")
        fmt = self.manifest.get("format")
        if fmt not in FORMATS:
            raise InputError(f"{d / 'model.json'}: format {fmt!r} is not an ONNX export ({', '.join(FORMATS)})")
        prep = _read_json(d / "preprocess.json")
        self.class_names: list[str] = list(prep["class_names"])
        self.feature_names: list[str] = list(prep["feature_names"])
        self.mean: list[float] = list(prep.get("mean") or [])
        self.std: list[float] = list(prep.get("std") or [])
        if threads < 0 or batch_size < 1:
            raise InputError(f"threads must be >= 0 and batch_size >= 1, got {threads} and {batch_size}")
        self.batch_size = batch_size
        model = d / str(self.manifest.get("file", "model.onnx"))
        if not model.is_file():
            raise InputError(f"{model} is missing (named by {d / 'model.json'})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.path = model

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    def predict_proba(self, x: np.ndarray, lengths: np.ndarray | None = None, prepared: bool = False
                      ) -> np.ndarray:
        """Probabilities [N, K] (float32) for raw sequences ``x`` [N, T, C] (zero-padded after ``lengths``;
        all full when ``lengths`` is None). ``prepared=True``: ``x`` is already scaled (padding zero)."""
        x, lens = self._check(x, lengths)
        if not prepared:
            x = scale(x, lens, self.mean, self.std)
        out = np.zeros((x.shape[0], len(self.class_names)), dtype=np.float32)
        for start in range(0, x.shape[0], self.batch_size):
            stop = start + self.batch_size
            lb = lens[start:stop]
            xb = np.ascontiguousarray(x[start:stop, : int(lb.max())])
            out[start:stop] = self.session.run(["proba"], {"x": xb, "lengths": lb})[0]
        return out

    def predict(self, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Predicted class names [N]."""
        return np.asarray(self.class_names)[self.predict_proba(x, lengths).argmax(1)]

    def _check(self, x: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x)
        if x.ndim != 3:
            raise InputError(f"x must be [N, T, C], got shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise InputError(f"x must hold numbers, got dtype {x.dtype}")
        n, t, c = x.shape
        if c != len(self.feature_names):
            raise InputError(f"x has {c} features but the model was trained on {len(self.feature_names)} "
                             f"({', '.join(self.feature_names)})")
        if t < 1 and n:
            raise InputError(f"x has no time steps (shape {x.shape})")
        x = x.astype(np.float32, copy=False)  # first, as Run.predict_proba does, so scaling runs in float32
        if lengths is None:
            return x, np.full(n, t, dtype=np.int64)
        raw = np.asarray(lengths)
        if raw.shape != (n,):
            raise InputError(f"lengths must have shape ({n},), got {raw.shape}")
        if n and (raw.dtype.kind not in "iuf" or not np.array_equal(raw, np.round(raw))):
            raise InputError(f"lengths must be whole numbers, got {raw[:5].tolist()}")
        lens = raw.astype(np.int64)
        if n and (lens.min() < 1 or lens.max() > t):
            raise InputError(f"lengths must be in [1, {t}] (the time steps of x), got min {lens.min()}, "
                             f"max {lens.max()}")
        return x, lens


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path} is missing: not an export directory (longshort export RUN_DIR writes one)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data
