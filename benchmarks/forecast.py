"""Task forecast on the built-in ``seasonal_ar`` set: speed against plain PyTorch, the two decoders' accuracy
against the oracle, and scheduled sampling's effect on the exposure-bias gap, in one run.

``builtin:seasonal_ar`` (``longshort.data.forecast_data.seasonal_ar``) is a seasonal AR process per series whose
conditional mean and quantiles given the history are computable, so the best any model can do on its test windows
is known (``metrics.json``'s ``oracle`` entry). Three parts, each skippable:

- **speed**: training windows/s of longshort's real training step (``forecast_trainer``: per-window scaling from the
  lookback, the ``Forecaster`` with its defaults, Gaussian NLL, clipping, AdamW, OneCycle) against what a user would
  write by hand: an ``nn.LSTM`` encoder of the same width and depth, then the same decoder (an MLP for ``direct``;
  an ``nn.LSTM`` decoder teacher-forced step by step for ``autoregressive``), the same loss, optimizer and batches
  (pre-built tensors, so longshort's side also pays for building its batches). Rounds alternate the two sides so
  drift in machine load hits both; medians are reported. The issue's bar: ratio >= 0.95.
- **accuracy**: ``longshort train --task forecast forecast.model.decoder=D seed=S`` with nothing else (report off),
  for ``D`` in direct and autoregressive and 3 seeds (each seed draws its own series and initialisation): test
  MSE against the oracle conditional mean's on the same windows, MASE against the oracle's (the MSE in raw units
  is dominated by the few series of the largest scale; MASE weighs every series alike), the 80% interval's
  coverage, MASE beside seasonal naive's. The bar: MSE within 10% of the oracle's, coverage 75-85%,
  MASE below seasonal naive's.
- **gap**: the autoregressive decoder at the same budget (the defaults' epochs), teacher forcing only
  (``forecast.sampling.schedule=none``, the default) against scheduled sampling
  (``linear_with_floor``: eps falls from 1 by 1e-3 per step to 0.5), 3 seeds: the test exposure-bias gap
  (free-running minus teacher-forced NLL) and the free-running test MSE.

JSON in ``benchmarks/results/forecast.json``.

    python benchmarks/forecast.py [--parts speed accuracy gap] [--seeds 0 1 2] [--steps 120] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import cpu_info
from longshort.config import validate
from longshort.evaluate.forecast_predict import ForecastBatch, make_batch
from longshort.forecast_run import read_splits
from longshort.nn.forecaster import build_forecaster
from longshort.nn.regression import VAR_FLOOR
from longshort.run import train
from longshort.training.forecast_task import forecast_trainer

DECODERS = ("direct", "autoregressive")
SCHEDULED = {"schedule": "linear_with_floor", "start": 1.0, "slope": 1e-3, "floor": 0.5}


class PlainForecaster(nn.Module):
    """The hand-written reference: ``nn.LSTM`` encoder, then an MLP (direct) or a teacher-forced ``nn.LSTM``
    decoder started from the encoder's states (autoregressive); a mean and a softplus variance per step, plus a
    linear map of the lookback added to the mean (the same size as longshort's default, which has that skip)."""

    def __init__(self, inputs: int, known: int, horizon: int, decoder: str, lookback: int, hidden: int = 64,
                 layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.decoder_kind, self.horizon = decoder, horizon
        self.skip = nn.Linear(lookback, horizon)
        self.encoder = nn.LSTM(inputs, hidden, layers, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        if decoder == "direct":
            self.head = nn.Sequential(nn.Linear(hidden + horizon * known, 2 * hidden), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(2 * hidden, horizon * 2))
        else:
            self.decoder = nn.LSTM(1 + known, hidden, layers, batch_first=True, dropout=dropout)
            self.out = nn.Linear(hidden, 2)

    def forward(self, past: Tensor, known: Tensor, y: Tensor) -> Tensor:
        _, (h, c) = self.encoder(past)
        if self.decoder_kind == "direct":
            z = self.head(self.drop(torch.cat([h[-1], known.flatten(1)], -1))).view(len(past), self.horizon, 2)
        else:
            prev, state, zs = past[:, -1, :1], (h, c), []
            for t in range(self.horizon):  # teacher forcing: the truth of step t - 1 enters step t
                out, state = self.decoder(torch.cat([prev, known[:, t]], -1).unsqueeze(1), state)
                zs.append(self.out(self.drop(out[:, 0])))
                prev = y[:, t]
            z = torch.stack(zs, 1)
        return torch.stack([z[..., 0] + self.skip(past[:, :, 0]), z[..., 1]], -1)


def gaussian_nll(z: Tensor, y: Tensor) -> Tensor:
    var = F.softplus(z[..., 1]) + VAR_FLOOR
    return F.gaussian_nll_loss(z[..., 0], y[..., 0], var, full=True)


def plain_train(model: PlainForecaster, bs: list[ForecastBatch]) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=len(bs))
    model.train()
    t0 = time.perf_counter()
    for b in bs:
        assert b.y is not None
        opt.zero_grad(set_to_none=True)
        loss = gaussian_nll(model(b.past, b.known, b.y), b.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss.item()
    return time.perf_counter() - t0


def ours_train(cfg: Any, splits: Any, idx: list[np.ndarray], tmp: Path) -> float:
    torch.manual_seed(0)
    model = build_forecaster(cfg.forecast, splits.train.k, splits.train.p, splits.train.f, splits.train.lookback)
    tr = forecast_trainer(cfg.train, cfg.forecast, model, splits.train, None, seed=0, run_dir=tmp)
    tr.model.train()
    t0 = time.perf_counter()
    for i, rows in enumerate(idx):
        tr.batch = i
        b = make_batch(splits.train, rows, tr.device)  # what the task's take() does
        tr.train_step(b)["batch_loss"].item()
    return time.perf_counter() - t0


def speed(steps: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for decoder in DECODERS:
        cfg = validate({"task": "forecast", "forecast": {"model": {"decoder": decoder}},
                        "train": {"epochs": 1, "progress": "off", "tensorboard": False, "optim": {"grad_clip": 1.0}},
                        "diagnostics": {"report": False}})
        splits = read_splits(cfg)
        bsz = cfg.train.batch_size
        order = np.random.default_rng(1).permutation(len(splits.train))
        idx = [order[i * bsz:(i + 1) * bsz] for i in range(steps)]
        pre = [make_batch(splits.train, rows, torch.device("cpu")) for rows in idx]
        ws = splits.train
        rows: dict[str, list[float]] = {"plain": [], "longshort": []}
        with tempfile.TemporaryDirectory() as tmp:
            # one untimed warm-up of each side (allocator, thread pool), then the timed rounds
            plain_train(PlainForecaster(ws.k + ws.p + ws.f, ws.f, ws.horizon, decoder, ws.lookback), pre[:3])
            ours_train(cfg, splits, idx[:3], Path(tmp) / "warm")
            for r in range(rounds):
                torch.manual_seed(r)
                plain = PlainForecaster(ws.k + ws.p + ws.f, ws.f, ws.horizon, decoder, ws.lookback,
                                        cfg.forecast.model.hidden_dim, cfg.forecast.model.layers,
                                        cfg.forecast.model.dropout)
                rows["plain"].append(steps * bsz / plain_train(plain, pre))
                rows["longshort"].append(steps * bsz / ours_train(cfg, splits, idx, Path(tmp) / f"{decoder}{r}"))
                print(f"speed {decoder} round {r + 1}/{rounds}: plain {rows['plain'][-1]:.0f} windows/s, "
                      f"longshort {rows['longshort'][-1]:.0f} windows/s", flush=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        out[decoder] = {"windows_per_s_longshort": med["longshort"], "windows_per_s_plain_pytorch": med["plain"],
                        "ratio_longshort_over_plain": med["longshort"] / med["plain"], "batch_size": bsz,
                        "lookback": ws.lookback, "horizon": ws.horizon, "rounds_raw": rows}
    return out


def one_run(tmp: Path, name: str, seed: int, forecast: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = train({"task": "forecast", "seed": seed, "forecast": forecast, "train": {"progress": "off"},
                 "diagnostics": {"report": False}}, out=tmp / name)
    seconds = time.perf_counter() - t0
    m = json.loads((run.dir / "metrics.json").read_text())
    t, o = m["test"], m["oracle"]
    row = {"seconds": round(seconds, 1), "epochs": run.config.train.epochs, "test": t, "oracle": o,
           "mse_over_oracle": t["mse"] / o["mse"], "mase_over_oracle": t["mase"] / o["mase"]}
    return row


def accuracy(seed: int, tmp: Path) -> dict[str, Any]:
    out = {}
    for decoder in DECODERS:
        r = one_run(tmp, f"acc_{decoder}_{seed}", seed, {"model": {"decoder": decoder}})
        t = r["test"]
        sn = t.get("baselines", {}).get("seasonal_naive", {}).get("mase")
        r["bar"] = {"mse_within_10pct_of_oracle": r["mse_over_oracle"] <= 1.10,
                    "coverage_75_85": 0.75 <= t["coverage"] <= 0.85,
                    "mase_below_seasonal_naive": sn is not None and t["mase"] < sn}
        out[decoder] = r
        print(f"accuracy {decoder}: test mse {t['mse']:.3f} (oracle {r['oracle']['mse']:.3f}, "
              f"x{r['mse_over_oracle']:.3f}), coverage {t['coverage']:.3f}, mase {t['mase']:.3f} "
              f"(x{r['mase_over_oracle']:.3f} oracle's; seasonal naive {sn:.3f}), seed {seed}, {r['seconds']:.0f} s",
              flush=True)
    return out


def gap(seeds: list[int], tmp: Path) -> dict[str, Any]:
    arms = {"teacher_forcing": {"schedule": "none"}, "scheduled_sampling": SCHEDULED}
    out: dict[str, Any] = {"schedule": SCHEDULED, "seeds": seeds, "arms": {}}
    for arm, sampling in arms.items():
        per_seed = []
        for seed in seeds:
            r = one_run(tmp, f"gap_{arm}_{seed}", seed, {"model": {"decoder": "autoregressive"},
                                                          "sampling": sampling})
            t = r["test"]
            per_seed.append({"seed": seed, "exposure_gap": t["exposure_gap"], "mse": t["mse"],
                             "mse_over_oracle": r["mse_over_oracle"], "coverage": t["coverage"],
                             "seconds": r["seconds"], "epochs": r["epochs"]})
            print(f"gap {arm} seed {seed}: test exposure gap {t['exposure_gap']:.4f}, mse {t['mse']:.3f} "
                  f"(x{r['mse_over_oracle']:.3f} oracle), {r['seconds']:.0f} s", flush=True)
        out["arms"][arm] = {"runs": per_seed,
                            "mean_exposure_gap": float(np.mean([p["exposure_gap"] for p in per_seed])),
                            "mean_mse_over_oracle": float(np.mean([p["mse_over_oracle"] for p in per_seed]))}
    tf, ss = out["arms"]["teacher_forcing"]["runs"], out["arms"]["scheduled_sampling"]["runs"]
    out["lower_gap_every_seed"] = all(s["exposure_gap"] < t["exposure_gap"] for s, t in zip(ss, tf, strict=True))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=("speed", "accuracy", "gap"), default=["speed", "accuracy", "gap"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the accuracy and gap parts' seeds")
    p.add_argument("--steps", type=int, default=120, help="speed: optimizer steps per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "forecast.json")
    args = p.parse_args()
    doc: dict[str, Any] = {"cpu": cpu_info(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.out.exists():  # keep the other parts of an earlier run on this CPU
        old = json.loads(args.out.read_text())
        if old.get("cpu") == doc["cpu"]:
            doc = old | doc
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            if part == "speed":
                doc["speed"] = speed(args.steps, args.rounds)
            elif part == "accuracy":
                doc["accuracy"] = {"seeds": {str(s): accuracy(s, Path(tmp)) for s in args.seeds}}
            else:
                doc["gap"] = gap(args.seeds, Path(tmp))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1))
    for d, s in doc.get("speed", {}).items():
        print(f"speed {d}: longshort {s['windows_per_s_longshort']:.0f} windows/s, plain PyTorch "
              f"{s['windows_per_s_plain_pytorch']:.0f} (ratio {s['ratio_longshort_over_plain']:.2f})")
    if "gap" in doc:
        g = doc["gap"]["arms"]
        print(f"exposure gap: teacher forcing {g['teacher_forcing']['mean_exposure_gap']:.4f}, scheduled sampling "
              f"{g['scheduled_sampling']['mean_exposure_gap']:.4f}; lower on every seed: "
              f"{doc['gap']['lower_gap_every_seed']}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
