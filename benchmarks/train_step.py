"""One training step of the default model: longshort's trainer against a plain PyTorch loop, same run.

Both sides train the same architecture from the same initial weights on the same batches (batch 64,
length 50, 9 features, 3 classes) with the same recipe (AdamW, OneCycle per batch, clipping at 1.0).
The plain loop is what a user would write by hand; longshort's side runs its real ``Trainer`` loop with
batching, the progress callback and history, timed from the epoch's first batch to its last step.
Rounds alternate between the two so drift in machine load hits both alike; the median per-step time
of each side gives the ratio ``plain / longshort`` (>= 1: longshort is no slower).

    python benchmarks/train_step.py [--steps 20] [--rounds 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longshort.data.batching import TensorData
from longshort.nn.classifier import SequenceClassifier
from longshort.training.callbacks import Callback, PlainProgress
from longshort.training.classify import classifier_trainer
from longshort.training.trainer import TrainConfig, Trainer

BATCH, LENGTH, FEATURES, CLASSES = 64, 50, 9, 3


def make_data(steps: int) -> TensorData:
    g = torch.Generator().manual_seed(0)
    n = BATCH * steps
    return TensorData(X=torch.randn(n, LENGTH, FEATURES, generator=g), lengths=torch.full((n,), LENGTH),
                      y=torch.randint(0, CLASSES, (n,), generator=g), aux=None)


def plain_loop(model: torch.nn.Module, data: TensorData, device: torch.device, steps: int) -> float:
    """Seconds per step of a hand-written loop (the reference)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1,
                                                cycle_momentum=False, div_factor=10)
    model.train()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        idx = order[i * BATCH:(i + 1) * BATCH]
        x, y = data.X[idx].to(device), data.y[idx].to(device)  # type: ignore[index]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, data.lengths[idx].to(device)).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss.item()  # a plain loop logs its loss
    _sync(device)
    return (time.perf_counter() - t0) / steps


class _Timer(Callback):
    def on_epoch_start(self, trainer: Trainer, epoch: int, n_batches: int, start_batch: int) -> None:
        _sync(trainer.device)
        self.t0 = time.perf_counter()

    def on_step(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if stats["batch"] == trainer.steps_per_epoch:
            _sync(trainer.device)
            self.seconds = time.perf_counter() - self.t0


def longshort_loop(model: torch.nn.Module, data: TensorData, device: str, steps: int) -> float:
    """Seconds per step of longshort's Trainer over one epoch of the same size."""
    timer = _Timer()
    cfg = TrainConfig(epochs=1, batch_size=BATCH, device=device, progress="plain", tensorboard=False)
    cfg.loss.class_weights = False
    with tempfile.TemporaryDirectory() as tmp:
        tr = classifier_trainer(cfg, model, data, None, num_classes=CLASSES, seed=1, run_dir=Path(tmp),
                     callbacks=[timer, PlainProgress()])
        tr.fit()
    return timer.seconds / steps


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timing_args(doc: str | None, steps: int, rounds: int, out_name: str) -> argparse.Namespace:
    """The command line of a training-step timing benchmark (this one and diagnostics.py): --steps, --rounds,
    --device (cuda when there is one) and --out (default ``results/<out_name>`` beside this script)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / out_name))
    return ap.parse_args()


def main() -> None:
    args = timing_args(__doc__, steps=20, rounds=5, out_name="train_step.json")
    device = torch.device(args.device)

    torch.manual_seed(0)
    base = SequenceClassifier(FEATURES, CLASSES)
    data = make_data(args.steps)
    # Warm-up both paths once (allocator, kernels) before timing.
    plain_loop(copy.deepcopy(base).to(device), make_data(3), device, 3)
    longshort_loop(copy.deepcopy(base), make_data(3), args.device, 3)

    plain, ours = [], []
    for r in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(base).to(device), data, device, args.steps))
        ours.append(longshort_loop(copy.deepcopy(base), data, args.device, args.steps))
        print(f"round {r + 1}: plain {plain[-1] * 1e3:.1f} ms/step, longshort {ours[-1] * 1e3:.1f} ms/step")
    p, o = statistics.median(plain), statistics.median(ours)
    result = {
        "benchmark": "train_step",
        "model": "SequenceClassifier default (hidden 256, 4 BiLSTM layers, 8 heads)",
        "parameters": sum(x.numel() for x in base.parameters()),
        "batch": BATCH, "length": LENGTH, "features": FEATURES,
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "steps_per_round": args.steps, "rounds": args.rounds,
        "plain_ms_per_step": p * 1e3, "longshort_ms_per_step": o * 1e3,
        "plain_samples_per_s": BATCH / p, "longshort_samples_per_s": BATCH / o,
        "ratio_plain_over_longshort": p / o,
        "all_plain_ms": [x * 1e3 for x in plain], "all_longshort_ms": [x * 1e3 for x in ours],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"plain      {p * 1e3:8.1f} ms/step  {BATCH / p:8.1f} samples/s")
    print(f"longshort  {o * 1e3:8.1f} ms/step  {BATCH / o:8.1f} samples/s")
    print(f"ratio (plain time / longshort time): {p / o:.3f}   (>= 0.97 required; > 1 means longshort is faster)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
