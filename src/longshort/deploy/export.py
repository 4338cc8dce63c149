"""Export a run's classifier to ONNX or to a ``torch.export`` program, each checked against the eager model.

Every export goes into a directory of its own that holds everything needed to use it::

    OUT/model.onnx | model.pt2   the graph: inputs x [B, T, C] float32 and lengths [B] int64, outputs
                                 proba [B, K] and logits [B, K]; B and T are dynamic
    OUT/preprocess.json          the run's scaling, feature and class names (a copy)
    OUT/model.json               manifest: format, file, inputs/outputs with dtypes, opset, parity figures,
                                 the source run and the sha256 of its weights (so a stale export is detected)

The graph takes *scaled* inputs, as the model does: ``(x - mean) / std`` at valid steps and zeros at padded steps,
with ``mean``/``std`` from ``preprocess.json`` (:class:`longshort.deploy.runtime.OnnxPredictor` does this for raw
inputs). Padded steps (``t >= lengths[b]``) never change a sequence's output.

Exporter choice: ONNX goes through the TorchScript exporter (``torch.onnx.export(dynamo=False)``), although
torch 2.13 defaults to the dynamo one. With the dynamo exporter the LSTM's time dimension is specialised to the
example's length (reshapes inside the decomposed LSTM keep it: onnxruntime fails on any other length), and it
takes ~20 s against ~2 s here. The TorchScript exporter maps ``torch.lstm`` to ONNX's ``LSTM`` operator with a
dynamic length, which onnxruntime runs as one fused kernel and can quantize. Whatever the exporter, an export is
only kept after onnxruntime (or the exported program) reproduces the eager model within :data:`PARITY_TOL` on
batches of other sizes and lengths than the traced example, some padded, some not; otherwise it is deleted and
:class:`ExportError` says by how much it missed.

``longshort export RUN_DIR --format onnx|torch-export|quantized [--out DIR]`` is
:func:`longshort.deploy.command.export_command`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import shutil
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from longshort.deploy.exportable import ExportError

if TYPE_CHECKING:
    import torch

    from longshort.runs import Run

__all__ = [
    "DEFAULT_OPSET",
    "PARITY_TOL",
    "ExportError",
    "export_onnx",
    "export_torch",
    "parity_batches",
]

PARITY_TOL = 1e-4
DEFAULT_OPSET = 17
INPUT_SCALING = (
    "x is scaled as preprocess.json says: (x - mean) / std per feature at valid steps (t < lengths[b]), zeros at "
    "padded steps; no scaling when mean is empty. lengths are in [1, T]."
)
FORMATS = ("onnx", "torch-export", "quantized", "stream", "stream-quantized")


# -- helpers shared by the exports ------------------------------------------------------------------------------


def require(modules: list[str], what: str) -> None:
    """Raise :class:`ExportError` naming the missing ones of ``modules`` and the extra that installs them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
                          "installed: pip install 'longshort[deploy]'")


def load_run(run_dir: str | Path) -> Run:
    """The classifier run in ``run_dir`` (``RunDirError`` if incomplete, ``ExportError`` for a seq2seq run)."""
    from longshort.config import load_config
    from longshort.errors import RunDirError
    from longshort.runs import Run

    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise RunDirError(f"{d} is not a finished run directory: config.yaml is missing")
    task = load_config(d / "config.yaml").task
    if task != "classify":
        more = (" (regress and direct-decoder forecast runs: --format onnx, "
                "longshort.deploy.value_export.export_values_onnx)" if task in ("regress", "forecast") else "")
        raise ExportError(f"{d} is a {task} run: this export covers classifier runs (task classify){more}")
    return Run.load(d)


def weights_sha256(run_dir: str | Path) -> str:
    """sha256 of ``RUN_DIR/model.safetensors``: an export records it, a predictor compares it."""
    h = hashlib.sha256()
    with open(Path(run_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def out_dir(run_dir: str | Path, out_path: str | Path | None, default: str) -> Path:
    """``out_path`` (a directory) or ``RUN_DIR/export/<default>``, created."""
    d = Path(run_dir) / "export" / default if out_path is None else Path(out_path)
    if d.suffix in (".onnx", ".pt2", ".json"):
        raise ExportError(f"--out names a directory (it will hold model{d.suffix}, model.json and "
                          f"preprocess.json), not a file: got {d}")
    if d.exists() and not d.is_dir():
        raise ExportError(f"--out {d} exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    return d


def parity_batches(n_features: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Scaled-looking inputs (standard normal, zero padding) for parity checks, none of the traced shape:
    5 x 23 with mixed lengths (one of length 1, two full) and 2 x 31 all full (the eager model's unpadded path)."""
    rng = np.random.default_rng(seed)
    out = []
    for batch, steps, lengths in ((5, 23, [23, 1, 7, 16, 23]), (2, 31, [31, 31])):
        lens = np.asarray(lengths, dtype=np.int64)
        x = rng.standard_normal((batch, steps, n_features)).astype(np.float32)
        x *= (np.arange(steps)[None, :] < lens[:, None])[..., None]
        out.append((x, lens))
    return out


def _example(n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced example: 3 x 12, lengths 12, 4, 9 (shapes the parity batches avoid)."""
    import torch

    x = torch.randn(3, 12, n_features, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([12, 4, 9], dtype=torch.int64)
    return x * (torch.arange(12)[None, :, None] < lengths[:, None, None]), lengths


def eager_outputs(run: Run, x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) of the run's eager model on scaled ``x``: the reference of every parity check."""
    import torch

    with torch.no_grad():
        logits = run.model.eval()(torch.from_numpy(x), torch.from_numpy(lengths)).logits
    return torch.softmax(logits, -1).numpy(), logits.numpy()


def measure_parity(run: Run, candidate: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, Any]:
    """Max |difference| of probabilities and logits between ``candidate`` and the eager model on
    :func:`parity_batches`."""
    dp = dl = 0.0
    shapes = []
    for x, lengths in parity_batches(len(run.prep.feature_names)):
        ref_p, ref_l = eager_outputs(run, x, lengths)
        p, lo = candidate(x, lengths)
        dp = max(dp, float(np.abs(np.asarray(p) - ref_p).max()))
        dl = max(dl, float(np.abs(np.asarray(lo) - ref_l).max()))
        shapes.append({"batch": int(x.shape[0]), "time": int(x.shape[1]), "lengths": lengths.tolist()})
    return {"reference": "torch eager (Run.load)", "max_abs_diff_proba": dp, "max_abs_diff_logits": dl,
            "tolerance": PARITY_TOL, "batches": shapes}


def check_parity(parity: dict[str, Any], model_file: Path) -> None:
    """Delete ``model_file`` and raise :class:`ExportError` when the parity figures exceed :data:`PARITY_TOL`."""
    worst = max(parity["max_abs_diff_proba"], parity["max_abs_diff_logits"])
    if not worst <= PARITY_TOL:  # NaN fails too
        model_file.unlink(missing_ok=True)
        raise ExportError(
            f"the export {model_file} does not reproduce the eager model: max |difference| "
            f"{parity['max_abs_diff_proba']:.3g} in probabilities, {parity['max_abs_diff_logits']:.3g} in logits "
            f"(tolerance {PARITY_TOL:g}); the file was deleted"
        )


def io_spec(run: Run) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    c, k = len(run.prep.feature_names), len(run.prep.class_names)
    inputs = [{"name": "x", "dtype": "float32", "shape": ["batch", "time", c], "scaled": True},
              {"name": "lengths", "dtype": "int64", "shape": ["batch"]}]
    outputs = [{"name": "proba", "dtype": "float32", "shape": ["batch", k]},
               {"name": "logits", "dtype": "float32", "shape": ["batch", k]}]
    return inputs, outputs


def write_sidecars(run: Run, d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Copy preprocess.json, complete and write model.json; returns the manifest."""
    import torch

    from longshort._version import __version__

    shutil.copyfile(run.dir / "preprocess.json", d / "preprocess.json")
    inputs, outputs = io_spec(run)
    full = {
        **manifest,
        "inputs": inputs,
        "outputs": outputs,
        "input_scaling": INPUT_SCALING,
        "class_names": list(run.prep.class_names),
        "feature_names": list(run.prep.feature_names),
        "source": {"run_dir": str(run.dir.resolve()), "weights_sha256": weights_sha256(run.dir),
                   "model": run.config.model.model_dump(mode="json")},
        "versions": {"longshort": __version__, "torch": torch.__version__, **_ort_version()},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return write_manifest(d, full)


def write_manifest(d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``d/model.json`` with the sha256 of the files the runtime reads (the model file and
    preprocess.json) under ``files``: a changed byte in either is caught when the export is opened."""
    names = [str(manifest.get("file", "model.onnx")), "preprocess.json"]
    manifest["files"] = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in names if (d / n).is_file()}
    (d / "model.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _ort_version() -> dict[str, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return {}
    return {"onnxruntime": importlib.import_module("onnxruntime").__version__}


def ort_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: ORT warns about the traced example's shapes otherwise
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# -- ONNX -------------------------------------------------------------------------------------------------------


def export_onnx(run_dir: str | Path, out_path: str | Path | None = None, opset: int = DEFAULT_OPSET
                ) -> dict[str, Any]:
    """Export ``run_dir``'s classifier to ``OUT/model.onnx`` (``OUT`` = ``out_path``, a directory, default
    ``RUN_DIR/export/onnx``) with dynamic batch and length, check it with onnxruntime, write the sidecars.

    Returns the manifest (also written to ``OUT/model.json``) plus ``path`` and ``size_bytes``; its ``parity``
    holds the max |difference| against the eager model. Raises :class:`ExportError` if parity exceeds
    :data:`PARITY_TOL` (the file is deleted) or the deploy extra is missing.
    """
    require(["onnx", "onnxruntime"], "ONNX export")
    import onnx
    import torch

    from longshort.deploy.exportable import ExportClassifier

    if not 14 <= opset <= 20:  # the range checked against onnxruntime; the TorchScript exporter stops at 20
        raise ExportError(f"--opset must be in 14..20, got {opset}")
    run = load_run(run_dir)
    d = out_dir(run_dir, out_path, "onnx")
    path = d / "model.onnx"
    graph = ExportClassifier(run.model, recurrence="op").eval()
    axes = {"x": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "proba": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in torch 2.13 (see the module docstring for why it is used) and
        # its tracer warns about every Python int it records; the parity check below is what counts.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, _example(len(run.prep.feature_names)), str(path), dynamo=False,
                              input_names=["x", "lengths"], output_names=["proba", "logits"],
                              dynamic_axes=axes, opset_version=opset)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export (TorchScript exporter, opset {opset}) failed: {exc}") from exc
    onnx.checker.check_model(str(path))
    session = ort_session(path)

    def run_onnx(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, lo = session.run(["proba", "logits"], {"x": x, "lengths": lengths})
        return p, lo

    parity = measure_parity(run, run_onnx)
    check_parity(parity, path)
    manifest = write_sidecars(run, d, {
        "format": "onnx", "file": path.name, "opset": opset, "precision": "float32",
        "exporter": "torch.onnx.export (TorchScript)", "parity": parity,
    })
    return {**manifest, "path": str(path), "size_bytes": path.stat().st_size}


# -- torch.export -----------------------------------------------------------------------------------------------


def export_torch(run_dir: str | Path, out_path: str | Path | None = None) -> dict[str, Any]:
    """Export ``run_dir``'s classifier as a ``torch.export`` ExportedProgram to ``OUT/model.pt2`` (default
    ``RUN_DIR/export/torch-export``) with dynamic batch and length (the LSTM recurrence is a ``scan``), check the
    reloaded program against the eager model and write the sidecars. Load it with
    ``torch.export.load(path).module()(x, lengths) -> (proba, logits)``.

    Returns the manifest plus ``path`` and ``size_bytes``; raises :class:`ExportError` if parity exceeds
    :data:`PARITY_TOL` (the file is deleted).
    """
    import torch

    from longshort.deploy.exportable import ExportClassifier

    run = load_run(run_dir)
    d = out_dir(run_dir, out_path, "torch-export")
    path = d / "model.pt2"
    graph = ExportClassifier(run.model, recurrence="scan").eval()
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scan is a prototype and says so on every call
        try:
            program = torch.export.export(graph, _example(len(run.prep.feature_names)),
                                          dynamic_shapes={"x": {0: batch, 1: time}, "lengths": {0: batch}})
        except Exception as exc:
            raise ExportError(f"torch.export.export failed: {exc}") from exc
        torch.export.save(program, str(path))
        module = torch.export.load(str(path)).module()

        def run_program(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                p, lo = module(torch.from_numpy(x), torch.from_numpy(lengths))
            return p.numpy(), lo.numpy()

        parity = measure_parity(run, run_program)
    check_parity(parity, path)
    manifest = write_sidecars(run, d, {
        "format": "torch-export", "file": path.name, "precision": "float32",
        "exporter": "torch.export.export (LSTM recurrence as torch._higher_order_ops.scan)",
        "load": "torch.export.load(path).module()(x, lengths) -> (proba, logits)", "parity": parity,
    })
    return {**manifest, "path": str(path), "size_bytes": path.stat().st_size}
