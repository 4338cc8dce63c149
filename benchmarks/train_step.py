"""One training step of the default model: longshort's trainer against a plain PyTorch loop, same run.

Both sides train the same architecture from the same initial weights on the same batches (batch 64,
length 50, 9 features, 3 classes) with the same recipe (AdamW, OneCycle per batch, clipping at 1.0).
The plain loop is what a user would write by hand; longshort's side runs its real ``Trainer`` loop with
batching, the progress callback and history, timed from the epoch's first batch to its last step.
Rounds alternate between the two so drift in machine load hits both alike; the median per-step time
of each side gives the ratio ``plain / longshort`` (>= 1: longshort is no slower). Both sides compute in fp32.

bf16 rows (``--bf16``, on by default where bf16 is native: a CUDA GPU with bf16, a CPU with AMX-BF16 or
AVX512-BF16): in the same rounds, the plain loop under bf16 autocast with the LSTM kept in float32
(``model.lstm_fp32=true``, the default), the plain loop under bf16 autocast with the LSTM in bf16 too
(``model.lstm_fp32=false``, the same weights), and longshort's Trainer with ``train.precision=bf16``; each as
a speed-up over the plain fp32 loop. The CPU and its bf16 features are printed and recorded.

    python benchmarks/train_step.py [--steps 20] [--rounds 5] [--device cpu|cuda] [--bf16 | --no-bf16]
"""

from __future__ import annotations

import argparse
import contextlib
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
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.training.callbacks import Callback, PlainProgress
from longshort.training.classify import classifier_trainer
from longshort.training.precision import cpu_bf16_features, cpu_description
from longshort.training.trainer import TrainConfig, Trainer

BATCH, LENGTH, FEATURES, CLASSES = 64, 50, 9, 3


def make_data(steps: int) -> TensorData:
    g = torch.Generator().manual_seed(0)
    n = BATCH * steps
    return TensorData(X=torch.randn(n, LENGTH, FEATURES, generator=g), lengths=torch.full((n,), LENGTH),
                      y=torch.randint(0, CLASSES, (n,), generator=g), aux=None)


def plain_loop(model: torch.nn.Module, data: TensorData, device: torch.device, steps: int,
               amp: torch.dtype | None = None) -> float:
    """Seconds per step of a hand-written loop (the reference); ``amp``: the forward under that autocast."""
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
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
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


def longshort_loop(model: torch.nn.Module, data: TensorData, device: str, steps: int,
                   precision: str = "fp32") -> float:
    """Seconds per step of longshort's Trainer over one epoch of the same size (``train.precision``)."""
    timer = _Timer()
    cfg = TrainConfig(epochs=1, batch_size=BATCH, device=device, progress="plain", tensorboard=False,
                      precision=precision)  # type: ignore[arg-type]
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
    if out_name == "train_step.json":
        ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the bf16 rows (default: where bf16 is native)")
    return ap.parse_args()


def native_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in hardware: a CUDA GPU with bf16, or a CPU with AMX-BF16 or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bf16_features())


def main() -> None:
    args = timing_args(__doc__, steps=20, rounds=5, out_name="train_step.json")
    device = torch.device(args.device)

    bf16 = native_bf16(device) if args.bf16 is None else args.bf16
    cpu = cpu_description()
    print(f"cpu: {cpu}; {torch.get_num_threads()} threads; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    torch.manual_seed(0)
    base = SequenceClassifier(FEATURES, CLASSES)
    bf16_lstm = SequenceClassifier(FEATURES, CLASSES, ClassifierConfig(lstm_fp32=False))
    bf16_lstm.load_state_dict(base.state_dict())  # the same weights, the LSTM under autocast
    data = make_data(args.steps)
    # each side: (name, seconds per step of one round); plain fp32 is the reference
    sides = {
        "plain": lambda d, n: plain_loop(copy.deepcopy(base).to(device), d, device, n),
        "longshort": lambda d, n: longshort_loop(copy.deepcopy(base), d, args.device, n),
    }
    if bf16:
        sides |= {
            "plain_bf16_lstm_fp32": lambda d, n: plain_loop(copy.deepcopy(base).to(device), d, device, n,
                                                            torch.bfloat16),
            "plain_bf16_lstm_bf16": lambda d, n: plain_loop(copy.deepcopy(bf16_lstm).to(device), d, device, n,
                                                            torch.bfloat16),
            "longshort_bf16": lambda d, n: longshort_loop(copy.deepcopy(base), d, args.device, n, "bf16"),
        }
    for run in sides.values():  # warm-up every path once (allocator, kernels) before timing
        run(make_data(3), 3)

    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name, run in sides.items():
            times[name].append(run(data, args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f}" for k, v in times.items()) + " ms/step")
    med = {k: statistics.median(v) for k, v in times.items()}
    p, o = med["plain"], med["longshort"]
    result = {
        "benchmark": "train_step",
        "model": "SequenceClassifier default (hidden 256, 4 BiLSTM layers, 8 heads)",
        "parameters": sum(x.numel() for x in base.parameters()),
        "batch": BATCH, "length": LENGTH, "features": FEATURES,
        "device": str(device), "cpu": cpu, "cpu_native_bf16": cpu_bf16_features(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "steps_per_round": args.steps, "rounds": args.rounds,
        "plain_ms_per_step": p * 1e3, "longshort_ms_per_step": o * 1e3,
        "plain_samples_per_s": BATCH / p, "longshort_samples_per_s": BATCH / o,
        "ratio_plain_over_longshort": p / o,
        "all_plain_ms": [x * 1e3 for x in times["plain"]], "all_longshort_ms": [x * 1e3 for x in times["longshort"]],
    }
    if bf16:
        result["bf16"] = {
            k: {"ms_per_step": med[k] * 1e3, "speedup_over_plain_fp32": p / med[k],
                "all_ms": [x * 1e3 for x in times[k]]}
            for k in ("plain_bf16_lstm_fp32", "plain_bf16_lstm_bf16", "longshort_bf16")
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"plain      {p * 1e3:8.1f} ms/step  {BATCH / p:8.1f} samples/s")
    print(f"longshort  {o * 1e3:8.1f} ms/step  {BATCH / o:8.1f} samples/s")
    print(f"ratio (plain time / longshort time): {p / o:.3f}   (>= 0.97 required; > 1 means longshort is faster)")
    if bf16:
        for k, label in (("plain_bf16_lstm_fp32", "plain, bf16 autocast, LSTM float32 (model.lstm_fp32=true)"),
                         ("plain_bf16_lstm_bf16", "plain, bf16 autocast, LSTM bf16 (model.lstm_fp32=false)"),
                         ("longshort_bf16", "longshort, train.precision=bf16 (LSTM float32)")):
            print(f"{label:60s} {med[k] * 1e3:8.1f} ms/step  {p / med[k]:.2f}x plain fp32")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
