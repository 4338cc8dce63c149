"""Pick the fastest way available to run a run's classifier: an up-to-date ONNX export, else torch eager.

``longshort predict`` on CPU spends its time in the model, and onnxruntime runs this one faster than eager torch
(one fused LSTM kernel per direction, no Python between operators; see benchmarks/inference.py). An export is
used only when it is provably the model of the run: its ``model.json`` records the sha256 of the run's
``model.safetensors``, and an export of other weights (the run was resumed or retrained since) is skipped.
The quantized export is opt-in (``allow_quantized``): it changes probabilities slightly.

:func:`fastest_streamer` makes the same choice for streaming a causal run: an up-to-date ``--format stream``
export in onnxruntime (about 5x faster per step than torch eager, benchmarks/inference.py), else ``RunStreamer``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CANDIDATES", "STREAM_CANDIDATES", "PredictFn", "fastest_predictor", "fastest_streamer", "usable_export"]

log = logging.getLogger(__name__)

PredictFn = Callable[..., np.ndarray]  # (x [N, T, C] raw, lengths [N] | None) -> probabilities [N, K]
CANDIDATES = (("onnx-quantized", "quantized"), ("onnx", "onnx"))  # (name, directory under RUN_DIR/export)
STREAM_CANDIDATES = (("onnx-stream-quantized", "stream-quantized"), ("onnx-stream", "stream"))


def usable_export(run_dir: str | Path, export_dir: str | Path) -> tuple[bool, str]:
    """Whether ``export_dir`` holds an ONNX export of ``run_dir``'s current weights, and why not."""
    from longshort.deploy.export import weights_sha256

    d = Path(export_dir)
    manifest_path = d / "model.json"
    if not manifest_path.is_file():
        return False, f"no {manifest_path}"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False, f"{manifest_path} is not valid JSON"
    if not (d / str(manifest.get("file", "model.onnx"))).is_file():
        return False, f"{d} lacks the model file its manifest names"
    recorded = manifest.get("source", {}).get("weights_sha256")
    if recorded != weights_sha256(run_dir):
        return False, f"{d} was exported from other weights than {Path(run_dir) / 'model.safetensors'} (stale)"
    return True, "up to date"


def fastest_predictor(run_dir: str | Path, *, allow_quantized: bool = False, threads: int = 1,
                      run: Any = None) -> tuple[str, PredictFn]:
    """``(name, predict_proba)`` for ``run_dir``: ``"onnx-quantized"`` (only with ``allow_quantized``) or
    ``"onnx"`` when ``RUN_DIR/export/quantized`` or ``RUN_DIR/export/onnx`` holds an export of the run's current
    weights and onnxruntime is importable, else ``"torch"`` (``Run.predict_proba``).

    ``predict_proba(x, lengths=None)`` takes raw (unscaled) sequences [N, T, C] and returns probabilities [N, K];
    ``threads`` is onnxruntime's intra-op thread count. The reasons for skipping an export go to this module's
    logger (debug level). ``run``: this run already loaded (a :class:`~longshort.run.Run`), for the torch path.
    """
    found = _first_usable(Path(run_dir), CANDIDATES, allow_quantized)
    if found is not None:
        from longshort.deploy.runtime import OnnxPredictor

        return found[0], OnnxPredictor(found[1], threads=threads).predict_proba
    return "torch", _run(run_dir, run).predict_proba


def fastest_streamer(run_dir: str | Path, batch_size: int = 1, *, allow_quantized: bool = False, threads: int = 1,
                     run: Any = None) -> tuple[str, Any]:
    """``(name, streamer)`` for a causal run: an :class:`~longshort.deploy.runtime.OnnxStreamer` on
    ``RUN_DIR/export/stream`` (``"onnx-stream"``) or, with ``allow_quantized``, ``RUN_DIR/export/stream-quantized``
    (``"onnx-stream-quantized"``) when it holds an export of the run's current weights and onnxruntime is
    installed; else ``"torch"``, the run's :class:`~longshort.deploy.streaming.RunStreamer`. Both take raw steps
    (``step``, ``step_outputs``, ``predict``, ``reset``); their ``get_state`` values differ in type. Reasons for
    skipping an export go to this module's logger (debug level)."""
    found = _first_usable(Path(run_dir), STREAM_CANDIDATES, allow_quantized)
    if found is not None:
        from longshort.deploy.runtime import OnnxStreamer

        return found[0], OnnxStreamer(found[1], batch_size=batch_size, threads=threads)
    return "torch", _run(run_dir, run).streamer(batch_size=batch_size)


def _first_usable(d: Path, candidates: tuple[tuple[str, str], ...], allow_quantized: bool
                  ) -> tuple[str, Path] | None:
    """``(name, export directory)`` of the first of ``candidates`` that holds an up-to-date export (8-bit ones
    only with ``allow_quantized``), or None (also without onnxruntime); why each was skipped goes to the log."""
    if importlib.util.find_spec("onnxruntime") is None:
        log.debug("onnxruntime is not installed: torch eager")
        return None
    for name, sub in candidates:
        if name.endswith("quantized") and not allow_quantized:
            continue
        ok, why = usable_export(d, d / "export" / sub)
        if ok:
            return name, d / "export" / sub
        log.debug("skipping %s: %s", name, why)
    return None


def _run(run_dir: str | Path, run: Any) -> Any:
    """The caller's loaded :class:`~longshort.run.Run` when it has one (not loaded again), else the run loaded."""
    if run is not None:
        return run
    from longshort.runs import Run

    return Run.load(run_dir)
