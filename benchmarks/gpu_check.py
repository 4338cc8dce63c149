"""One short run over everything CUDA-only, with a JSON summary: what to run when a GPU machine is available.

Checks (each ``ok`` / ``failed`` / ``skipped`` with its figures; the exit status is 1 when any failed):

- ``bf16_autocast``: 5 steps of longshort's Trainer (``train.precision=bf16``) on a small classifier: a finite,
  falling loss; the LSTM's output float32 under ``model.lstm_fp32``.
- ``lstm_paths``: ``longshort.nn.LSTM`` forward + backward on the fused path (cuDNN on a GPU) and on the custom
  recurrence (layer norm), each under bf16 autocast and in fp32: the outputs agree within bf16's rounding.
- ``fsdp_bf16``: FSDP2 on a group of one (nccl on a GPU, gloo on the CPU) with ``distributed.mixed_precision=bf16``
  and activation checkpointing: trains, the LSTM's weights float32 in the forward, attention's bf16.
- ``cell_speed``: the custom cells (layer norm, zoneout, recurrent dropout; one bidirectional layer, batch 64,
  input and hidden 256, length 50) against the fused kernel, forward + backward, median ms and the ratio.
  GPU only (``skipped`` in CPU mode: ``benchmarks/cells.py`` measures the CPU).

``--cpu`` runs the CPU-safe parts on the CPU with tiny sizes (the CI smoke test, tests/test_gpu_check.py); without
it every check needs CUDA and the script exits 2 when there is none.

    bash benchmarks/gpu_check.sh [--cpu] [--out PATH]      # default out: benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from longshort.data.batching import TensorData
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import LSTM, CellConfig
from longshort.training.classify import classifier_trainer
from longshort.training.distributed import DistributedConfig, _free_port, setup, shutdown
from longshort.training.precision import cpu_description
from longshort.training.trainer import TrainConfig


def _data(n: int, length: int, features: int = 5) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, length, features, generator=g)
    y = (x[:, :, 0].mean(1) > 0).long() + (x[:, :, 1].mean(1) > 0.2).long()
    return TensorData(X=x, lengths=torch.randint(length // 2, length + 1, (n,), generator=g), y=y, aux=None)


def _model(hidden: int) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(5, 3, ClassifierConfig(hidden_dim=hidden, num_heads=2, num_lstm_layers=2,
                                                     conv_dilations=[1], dropout=0.0))


def _watch(model: torch.nn.Module) -> dict[str, set[str]]:
    """Per LSTM / attention layer: the dtypes of its parameters and output as its forward ran."""
    seen: dict[str, set[str]] = {}
    for m in model.modules():
        if isinstance(m, (LSTM, torch.nn.MultiheadAttention)):
            key = "lstm" if isinstance(m, LSTM) else "attention"

            def hook(mod: torch.nn.Module, args: tuple, out: Any, key: str = key) -> None:
                o = out[0] if isinstance(out, tuple) else out
                seen.setdefault(key, set()).update({f"param:{p.dtype}" for p in mod.parameters()} | {f"out:{o.dtype}"})

            m.register_forward_hook(hook)
    return seen


def _train(device: str, hidden: int, steps: int, dcfg: DistributedConfig | None = None,
           ctx: Any = None) -> tuple[list[float], dict[str, list[str]]]:
    data = _data(12 * steps, 16)
    cfg = TrainConfig.model_validate({"recipe": "plain", "epochs": 1, "batch_size": 12, "progress": "off",
                                      "tensorboard": False, "device": device, "precision": "bf16",
                                      "optim": {"lr": 3e-3}, "early_stopping": {"patience": None}})
    with tempfile.TemporaryDirectory() as tmp:
        tr = classifier_trainer(cfg, _model(hidden), data, None, num_classes=3, seed=0, run_dir=Path(tmp),
                                distributed=dcfg, ctx=ctx)
        seen = _watch(tr.model)
        losses: list[float] = []
        step = tr.train_step

        def timed(batch: Any) -> Any:
            out = step(batch)
            losses.append(float(out["batch_loss"]))
            return out

        tr.train_step = timed  # type: ignore[method-assign]
        tr.fit()
    return losses, {k: sorted(v) for k, v in seen.items()}


def check_bf16_autocast(device: str, hidden: int) -> dict[str, Any]:
    losses, seen = _train(device, hidden, steps=5)
    ok = all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    ok = ok and "out:torch.float32" in seen["lstm"] and "out:torch.bfloat16" in seen["attention"]
    return {"ok": ok, "losses": losses, "dtypes": seen}


def check_lstm_paths(device: str, hidden: int) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": True}
    dev = torch.device(device)
    for path, cell in (("fused", CellConfig()), ("custom_layer_norm", CellConfig(layer_norm=True))):
        torch.manual_seed(0)
        layer = LSTM(hidden, hidden, batch_first=True, bidirectional=True, cell=cell).to(dev)
        x = torch.randn(8, 20, hidden, device=dev)
        ys = {}
        for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            layer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                y, _ = layer(x)
            y.float().square().mean().backward()
            grad_ok = all(p.grad is not None and bool(p.grad.isfinite().all()) for p in layer.parameters())
            ys[name] = (y.float().detach(), grad_ok, str(y.dtype))
        err = float((ys["bf16"][0] - ys["fp32"][0]).abs().max())
        ok = ys["fp32"][1] and ys["bf16"][1] and err < 0.05
        out[path] = {"fused_path": layer.uses_fused_path, "max_abs_diff_bf16_vs_fp32": err,
                     "bf16_output_dtype": ys["bf16"][2], "grads_finite": ys["bf16"][1], "ok": ok}
        out["ok"] = out["ok"] and ok
    return out


def check_fsdp_bf16(device: str, hidden: int) -> dict[str, Any]:
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    dcfg = DistributedConfig(strategy="fsdp", mixed_precision="bf16", activation_checkpointing=True,
                             prefetch={"forward": 1, "backward": 1})
    ctx = setup(dcfg, torch.device(device))
    try:
        losses, seen = _train(device, hidden, steps=5, dcfg=dcfg, ctx=ctx)
    finally:
        shutdown(ctx)
    ok = losses[-1] < losses[0] and seen["lstm"] == ["out:torch.float32", "param:torch.float32"]
    ok = ok and "param:torch.bfloat16" in seen["attention"]
    return {"ok": ok, "losses": losses, "dtypes": seen}


def check_cell_speed(device: str, rounds: int = 7) -> dict[str, Any]:
    dev = torch.device(device)
    x = torch.randn(64, 50, 256, device=dev, requires_grad=True)
    cells = {"fused": CellConfig(), "layer_norm": CellConfig(layer_norm=True),
             "zoneout": CellConfig(zoneout=0.1), "recurrent_dropout": CellConfig(recurrent_dropout=0.25),
             "all_three": CellConfig(layer_norm=True, zoneout=0.1, recurrent_dropout=0.25)}
    layers = {k: LSTM(256, 256, batch_first=True, bidirectional=True, cell=c).to(dev).train() for k, c in cells.items()}

    def once(layer: torch.nn.Module) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y, _ = layer(x)
        y.sum().backward()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    for layer in layers.values():
        once(layer)
    times: dict[str, list[float]] = {k: [] for k in layers}
    for _ in range(rounds):
        for k, layer in layers.items():
            times[k].append(once(layer))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"ok": True, "ms": med, "ratio_over_fused": {k: v / med["fused"] for k, v in med.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="the CPU-safe parts on the CPU, tiny sizes (CI smoke test)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not args.cpu and not cuda:
        print("gpu_check: no CUDA device here (run with --cpu for the CPU-safe parts)", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else "cuda"
    hidden = 16 if args.cpu else 128
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "bf16_autocast": lambda: check_bf16_autocast(device, hidden),
        "lstm_paths": lambda: check_lstm_paths(device, hidden),
        "fsdp_bf16": lambda: check_fsdp_bf16(device, hidden),
        "cell_speed": lambda: check_cell_speed(device),
    }
    summary: dict[str, Any] = {
        "mode": "cpu" if args.cpu else "cuda", "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_description(), "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda, "checks": {},
    }
    for name, run in checks.items():
        if args.cpu and name == "cell_speed":
            summary["checks"][name] = {"status": "skipped", "why": "GPU only (benchmarks/cells.py times the CPU)"}
            continue
        t0 = time.perf_counter()
        try:
            res = run()
            res["status"] = "ok" if res.pop("ok") else "failed"
        except Exception as exc:  # one failed check must not hide the others' figures
            res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        res["seconds"] = round(time.perf_counter() - t0, 2)
        summary["checks"][name] = res
        print(f"{name:14s} {res['status']:7s} ({res['seconds']} s)"
              + (f"  {res['error']}" if "error" in res else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"written: {args.out}")
    return 1 if any(c["status"] == "failed" for c in summary["checks"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
