"""``longshort export``: the command's glue over the toolkit in :mod:`longshort.deploy.export`,
:mod:`longshort.deploy.quantize` and :mod:`longshort.deploy.stream_export` (which import the toolkit; the
toolkit imports none of them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from longshort.deploy.export import FORMATS, ExportError, export_onnx, export_torch
from longshort.deploy.quantize import quantize, summary_lines
from longshort.deploy.stream_export import export_stream
from longshort.deploy.value_export import VALUE_TASKS, export_values_onnx


def _parity_line(parity: dict[str, Any]) -> str:
    shapes = ", ".join(f"{b['batch']}x{b['time']}" for b in parity["batches"])
    return (f"parity with torch eager: max |diff| {parity['max_abs_diff_proba']:.2g} in probabilities, "
            f"{parity['max_abs_diff_logits']:.2g} in logits (tolerance {parity['tolerance']:g}; batches {shapes})")


def export_command(args: argparse.Namespace) -> None:
    """``longshort export RUN_DIR --format onnx|torch-export|quantized|stream|stream-quantized [--out DIR]
    [--opset N]``."""
    fmt = args.format
    task = _task(args.run_dir)
    if task in VALUE_TASKS and fmt == "onnx":
        res = export_values_onnx(args.run_dir, args.out, opset=args.opset)
        par = res["parity"]
        print(f"exported {res['path']} ({task}, onnx, opset {res['opset']}, {res['size_bytes']:,} bytes; raw inputs, "
              "outputs in the target's units)")
        print(f"parity with torch eager: max relative |diff| {par['max_rel_diff']:.2g} (tolerance "
              f"{par['tolerance']:g}; {len(par['batches'])} batches)")
    elif fmt == "onnx":
        res = export_onnx(args.run_dir, args.out, opset=args.opset)
        print(f"exported {res['path']} (onnx, opset {res['opset']}, {res['size_bytes']:,} bytes)")
        print(_parity_line(res["parity"]))
    elif fmt == "torch-export":
        res = export_torch(args.run_dir, args.out)
        print(f"exported {res['path']} (torch.export program, {res['size_bytes']:,} bytes)")
        print(_parity_line(res["parity"]))
    elif fmt == "quantized":
        res = quantize(args.run_dir, args.out, opset=args.opset)
        for line in summary_lines(res):
            print(line)
    elif fmt in ("stream", "stream-quantized"):
        res = export_stream(args.run_dir, args.out, quantized=fmt == "stream-quantized", opset=args.opset)
        print(f"exported {res['path']} (streaming step, {res['precision']}, {res['size_bytes']:,} bytes, "
              f"{len(res['state'])} state tensors)")
        dev = res["parity" if fmt == "stream" else "deviation"]
        what = "parity with" if fmt == "stream" else "8-bit deviation from"
        print(f"{what} torch eager on every prefix ({dev['batch']} streams x {dev['steps']} steps): max |diff| "
              f"{dev['max_abs_diff_proba']:.2g} in probabilities, {dev['max_abs_diff_logits']:.2g} in logits"
              + (f" (tolerance {dev['tolerance']:g})" if fmt == "stream" else ""))
    else:  # argparse's choices keep this out of the CLI; the Python API can still get here
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    print(f"manifest: {Path(res['path']).parent / 'model.json'}")


def _task(run_dir: str) -> str | None:
    """The run's task from its config.yaml (None when there is none: the export's own error says so)."""
    from longshort.config import load_config

    cfg = Path(run_dir) / "config.yaml"
    return load_config(cfg).task if cfg.is_file() else None
