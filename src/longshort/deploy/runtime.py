"""Run an exported classifier with numpy and onnxruntime only: no torch, pandas or pydantic at import or call.

Two classes: :class:`OnnxPredictor` for whole sequences (``--format onnx`` or ``quantized``), and
:class:`OnnxStreamer` for a causal model's streaming step (``--format stream`` or ``stream-quantized``), which
carries each stream's state between calls.

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

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from longshort.data.scaling import series_normalise  # numpy only

try:  # installed with longshort: its CLI reports these errors in one line
    from longshort.errors import LongshortError

    _BASES: tuple[type[Exception], ...] = (LongshortError, ValueError)
except ImportError:  # this file on its own
    _BASES = (ValueError,)

__all__ = ["FORMATS", "STREAM_FORMATS", "InputError", "OnnxPredictor", "OnnxStreamer", "fresh_state", "scale"]

FORMATS = ("onnx", "onnx-quantized")
STREAM_FORMATS = ("onnx-stream", "onnx-stream-quantized")


class InputError(*_BASES):  # type: ignore[misc]
    """An export directory or an input array that cannot be used (the message names the file or the array)."""


def scale(x: np.ndarray, lengths: np.ndarray, mean: list[float], std: list[float],
          per_series: bool = False) -> np.ndarray:
    """float32 ``(x - mean) / std`` at valid steps and zeros at padded steps; ``x`` unchanged (as float32) when
    ``mean`` is empty (the run had ``data.scale=none``); with ``per_series`` each sequence is first normalised
    over its own valid steps (``data.scale=series``). The same operations, in the same order and precision,
    as ``Preprocessor.transform``, so the two agree to the bit."""
    x = np.asarray(x, dtype=np.float32)
    if per_series:
        x = series_normalise(x, lengths)
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
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.dir, self.manifest, prep, self.session = _open_export(
            export_dir, FORMATS, "OnnxPredictor", "an ONNX export", threads)
        self.class_names: list[str] = list(prep["class_names"])
        self.feature_names: list[str] = list(prep["feature_names"])
        self.mean: list[float] = list(prep.get("mean") or [])
        self.std: list[float] = list(prep.get("std") or [])
        self.per_series = bool(prep.get("per_series", False))
        if prep.get("missing", "error") != "error":
            raise InputError(f"{self.dir}: the run fills missing values (data.missing={prep['missing']}), which "
                             "this runtime does not: use longshort predict, or train with data.missing=error")
        self.batch_size = batch_size
        self.path = self.dir / str(self.manifest.get("file", "model.onnx"))

    @property
    def format(self) -> str:
        return str(self.manifest["format"])

    def predict_proba(self, x: np.ndarray, lengths: np.ndarray | None = None, prepared: bool = False
                      ) -> np.ndarray:
        """Probabilities [N, K] (float32) for raw sequences ``x`` [N, T, C] (zero-padded after ``lengths``;
        all full when ``lengths`` is None). ``prepared=True``: ``x`` is already scaled (padding zero)."""
        x, lens = self._check(x, lengths)
        if not prepared:
            x = scale(x, lens, self.mean, self.std, self.per_series)
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


def fresh_state(spec: list[dict[str, Any]], batch: int) -> dict[str, np.ndarray]:
    """The carried state of ``batch`` new streams from a streaming export's ``state`` list (name, dtype, shape with
    ``"batch"`` and ``"slots"`` as the dynamic sizes): zeros, no cache slots, the running maximum at the
    float32 minimum."""
    out: dict[str, np.ndarray] = {}
    for item in spec:
        dims = [batch if d == "batch" else 0 if d == "slots" else int(d) for d in item["shape"]]
        if item["name"] == "maximum":
            out[item["name"]] = np.full(dims, np.finfo(np.float32).min, dtype=np.float32)
        else:
            out[item["name"]] = np.zeros(dims, dtype=np.dtype(item["dtype"]))
    return out


class OnnxStreamer:
    """Score ``batch_size`` growing streams one step (or chunk) at a time with a streaming export
    (``longshort export RUN_DIR --format stream``), torch-free: what :class:`longshort.deploy.streaming.RunStreamer`
    does, in onnxruntime.

    ``step(x)`` takes raw steps [B, C] or a chunk [B, n, C] with ``lengths`` [B] in 0..n (real steps per stream; 0 =
    idle) and returns each stream's class probabilities after its last real step, what the full model returns on
    that prefix. The graph advances every stream; for an idle one this class puts its state back (its new
    attention cache slot is marked empty) and repeats its last outputs (NaN before its first step).
    """

    def __init__(self, export_dir: str | Path, batch_size: int = 1, threads: int = 1) -> None:
        self.dir, self.manifest, prep, self.session = _open_export(
            export_dir, STREAM_FORMATS, "OnnxStreamer",
            "a streaming export (longshort export RUN_DIR --format stream)", threads)
        self.class_names: list[str] = list(prep["class_names"])
        self.feature_names: list[str] = list(prep["feature_names"])
        self.mean = np.float32(prep["mean"]) if prep.get("mean") else None
        self.std = np.float32(prep["std"]) if prep.get("std") else None
        self.aux_mean, self.aux_std = float(prep.get("aux_mean") or 0.0), float(prep.get("aux_std") or 1.0)
        self.spec: list[dict[str, Any]] = list(self.manifest["state"])
        self.names = [item["name"] for item in self.spec]
        self.reset(batch_size=batch_size)

    @property
    def batch_size(self) -> int:
        return int(self.state["position"].shape[0])

    def reset(self, streams: list[int] | None = None, batch_size: int | None = None) -> None:
        """Start over: every stream (optionally with a new ``batch_size``), or only the ``streams`` named."""
        if streams is None:
            b = self.batch_size if batch_size is None else batch_size
            if b < 1:
                raise InputError(f"batch_size must be >= 1, got {b}")
            self.state = fresh_state(self.spec, b)
            k = len(self.class_names)
            self._last = (np.full((b, k), np.nan, dtype=np.float32), np.full(b, np.nan, dtype=np.float32))
            return
        if batch_size is not None:
            raise InputError("pass batch_size only when resetting every stream")
        rows = np.asarray(streams, dtype=np.int64)
        fresh = fresh_state(self.spec, len(rows))
        for item in self.spec:
            name = item["name"]
            if name == "slots":
                self.state[name][rows] = False  # their cache slots are ignored from now on
            elif "slots" not in item["shape"]:
                self.state[name][rows] = fresh[name]
        self._last[0][rows] = np.nan
        self._last[1][rows] = np.nan

    def get_state(self) -> dict[str, np.ndarray]:
        """A copy of the carried state (to checkpoint a stream, or to branch it)."""
        return {k: v.copy() for k, v in self.state.items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from ``state`` (from :meth:`get_state` of a streamer over the same export); copied in."""
        if set(state) != set(self.names):
            raise InputError(f"state must have the arrays {', '.join(self.names)}, got {', '.join(sorted(state))}")
        b = int(np.asarray(state["position"]).shape[0])
        like = fresh_state(self.spec, b)
        slots = int(np.asarray(state["slots"]).shape[1])
        for item in self.spec:
            want = tuple(slots if d == "slots" else n for d, n in zip(item["shape"], like[item["name"]].shape,
                                                                         strict=True))
            got = np.asarray(state[item["name"]]).shape
            if got != want:
                raise InputError(f"state[{item['name']!r}] has shape {got}, this export needs {want}")
        self.state = {k: np.array(v, dtype=like[k].dtype) for k, v in state.items()}
        k = len(self.class_names)
        self._last = (np.full((b, k), np.nan, dtype=np.float32), np.full(b, np.nan, dtype=np.float32))

    def step(self, x: np.ndarray, lengths: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Class probabilities [B, K] of each stream's prefix after raw step(s) ``x`` [B, C] or [B, n, C]."""
        return self.step_outputs(x, lengths)[0]

    def step_outputs(self, x: np.ndarray, lengths: np.ndarray | list[int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities [B, K], aux prediction [B] in the aux target's own units)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, None]
        b = self.batch_size
        if x.ndim != 3 or x.shape[0] != b or x.shape[2] != len(self.feature_names):
            raise InputError(f"x must be [{b}, C] or [{b}, n, C] with C = {len(self.feature_names)} "
                             f"({', '.join(self.feature_names)}), got shape {x.shape}")
        n = x.shape[1]
        lens = np.full(b, n) if lengths is None else np.asarray(lengths)
        if lens.shape != (b,) or lens.dtype.kind not in "iu" or (lens < 0).any() or (lens > n).any():
            raise InputError(f"lengths must be [{b}] whole numbers in 0..{n}, got {np.asarray(lengths).tolist()}")
        if self.mean is not None and self.std is not None:
            x = ((x - self.mean) / self.std).astype(np.float32)
        for j in range(n):
            active = j < lens
            if not active.any():
                continue  # no stream takes this step: nothing changes
            res = self.session.run(None, {"x": np.ascontiguousarray(x[:, j]), **self.state})
            new = dict(zip(self.names, res[3:], strict=True))
            if not active.all():
                idle = ~active
                for item in self.spec:
                    name = item["name"]
                    if name == "slots":
                        new[name][idle, -1] = False
                    elif "slots" not in item["shape"]:
                        new[name][idle] = self.state[name][idle]
            self.state = new
            self._last[0][active] = res[0][active]
            self._last[1][active] = res[2][active] * self.aux_std + self.aux_mean
        return self._last[0].copy(), self._last[1].copy()

    def predict(self, x: np.ndarray, lengths: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Predicted class names [B] of each stream's prefix after ``x``."""
        return np.asarray(self.class_names)[self.step(x, lengths).argmax(1)]


def _open_export(export_dir: str | Path, formats: tuple[str, ...], who: str, what: str, threads: int
                 ) -> tuple[Path, dict[str, Any], dict[str, Any], Any]:
    """``(directory, model.json, preprocess.json, onnxruntime session)`` of an export directory (or its
    ``model.onnx``) whose format is one of ``formats``; ``threads`` is the intra-op thread count."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError(f"{who} needs onnxruntime: pip install onnxruntime (or 'longshort[deploy]')") from exc
    d = Path(export_dir)
    if d.suffix == ".onnx":
        d = d.parent
    manifest = _read_json(d / "model.json")
    fmt = manifest.get("format")
    if fmt not in formats:
        raise InputError(f"{d / 'model.json'}: format {fmt!r} is not {what} ({', '.join(formats)})")
    prep = _read_json(d / "preprocess.json")
    if threads < 0:
        raise InputError(f"threads must be >= 0, got {threads}")
    model = d / str(manifest.get("file", "model.onnx"))
    if not model.is_file():
        raise InputError(f"{model} is missing (named by {d / 'model.json'})")
    blob = model.read_bytes()
    _check_hash(d, manifest, model.name, blob)
    _check_hash(d, manifest, "preprocess.json", (d / "preprocess.json").read_bytes())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes (Fail, InvalidGraph, ...) on a damaged file
        raise InputError(f"{model}: onnxruntime cannot load it ({str(exc).strip().splitlines()[0]})") from None
    return d, manifest, prep, session


def _check_hash(d: Path, manifest: dict[str, Any], name: str, blob: bytes) -> None:
    """``blob`` against the sha256 the export recorded for ``name`` (exports before checksums carry none)."""
    want = manifest.get("files", {}).get(name) if isinstance(manifest.get("files"), dict) else None
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise InputError(f"{d / name} does not match the sha256 in {d / 'model.json'}: the file changed or is "
                         "damaged since the export; export the run again")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path} is missing: not an export directory (longshort export RUN_DIR writes one)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object")
    return data
