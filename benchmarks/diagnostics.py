"""What diagnostics cost: training-step time of the default model with ``diagnostics`` at its default sampling,
against the same trainer with diagnostics off and against a plain PyTorch loop, in the same run.

Each side trains the default classifier (hidden 256, 4 BiLSTM layers, 8 heads) from the same initial weights
on the same batches (batch 64, length 50, 9 features) for ``--steps`` steps, one epoch, timed over the whole
``fit()`` (so the epoch-end histograms and file writes count too). With the default ``gates_every=50`` a run of
100 steps takes two gate samples. Rounds alternate the sides so drift in machine load hits all alike; medians of
the per-step times give the overhead ``on / off - 1`` (goal: at most 5%) and the ratio to the plain loop.

    python benchmarks/diagnostics.py [--steps 100] [--rounds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from longshort.data.batching import TensorData
from longshort.diagnostics.monitor import DiagnosticsConfig
from longshort.nn.classifier import SequenceClassifier
from longshort.training.classify import classifier_trainer
from longshort.training.trainer import TrainConfig
from train_step import (  # this script's folder
    BATCH,
    CLASSES,
    FEATURES,
    LENGTH,
    _sync,
    make_data,
    plain_loop,
    timing_args,
)


def trainer_loop(model: torch.nn.Module, data: TensorData, probe: TensorData, device: str, steps: int,
                 diagnostics: bool) -> float:
    """Seconds per step of longshort's Trainer, diagnostics on (defaults) or off, over one whole fit()."""
    cfg = TrainConfig(epochs=1, batch_size=BATCH, device=device, progress="off", tensorboard=False,
                      precision="fp32")  # as the plain loop computes
    cfg.loss.class_weights = False
    diag = DiagnosticsConfig(enabled=diagnostics)
    with tempfile.TemporaryDirectory() as tmp:
        tr = classifier_trainer(cfg, model, data, None, num_classes=CLASSES, seed=1, run_dir=Path(tmp),
                                diagnostics=diag)
        if tr.monitor is not None:
            tr.monitor.probe = probe  # the fixed gate-sampling sequences, as a validation split would give
        tr.save = lambda tags: None  # type: ignore[method-assign]  # checkpoint writes are not what is measured
        _sync(device)
        t0 = time.perf_counter()
        tr.fit()
        _sync(device)
        seconds = time.perf_counter() - t0
        if diagnostics:
            assert (Path(tmp) / "diagnostics" / "steps.csv").is_file()
    return seconds / steps


def main() -> None:
    args = timing_args(__doc__, steps=100, rounds=3, out_name="diagnostics.json")
    device = torch.device(args.device)

    torch.manual_seed(0)
    base = SequenceClassifier(FEATURES, CLASSES)
    data, probe = make_data(args.steps), make_data(1)
    trainer_loop(copy.deepcopy(base), make_data(3), probe, args.device, 3, True)  # warm-up
    plain, off, on = [], [], []
    for r in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(base).to(device), data, device, args.steps))
        off.append(trainer_loop(copy.deepcopy(base), data, probe, args.device, args.steps, False))
        on.append(trainer_loop(copy.deepcopy(base), data, probe, args.device, args.steps, True))
        print(f"round {r + 1}: plain {plain[-1] * 1e3:.1f}  off {off[-1] * 1e3:.1f}  on {on[-1] * 1e3:.1f} ms/step")
    p, f, n = statistics.median(plain), statistics.median(off), statistics.median(on)
    d = DiagnosticsConfig()
    result = {
        "benchmark": "diagnostics",
        "model": "SequenceClassifier default (hidden 256, 4 BiLSTM layers, 8 heads)",
        "batch": BATCH, "length": LENGTH, "features": FEATURES, "steps_per_round": args.steps,
        "rounds": args.rounds, "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(),
        "diagnostics": {"gates_every": d.gates_every, "gate_sequences": d.gate_sequences, "per_module": d.per_module,
                        "histograms": d.histograms},
        "plain_ms_per_step": p * 1e3, "off_ms_per_step": f * 1e3, "on_ms_per_step": n * 1e3,
        "overhead_on_over_off": n / f - 1, "ratio_plain_over_on": p / n, "ratio_plain_over_off": p / f,
        "all_plain_ms": [x * 1e3 for x in plain], "all_off_ms": [x * 1e3 for x in off],
        "all_on_ms": [x * 1e3 for x in on],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"plain PyTorch      {p * 1e3:8.1f} ms/step")
    print(f"diagnostics off    {f * 1e3:8.1f} ms/step   plain/off {p / f:.3f}")
    print(f"diagnostics on     {n * 1e3:8.1f} ms/step   plain/on  {p / n:.3f}")
    print(f"overhead of diagnostics at the default sampling: {100 * (n / f - 1):+.2f}%  (goal: at most +5%)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
