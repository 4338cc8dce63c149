"""Task regress on the built-in ``signal`` set: each loss's test RMSE against the noise floor, in one run.

``signal`` (``longshort.data.builtin.signal``) has a target ``y = f(x) + eps`` with ``f`` known and ``eps`` of
std 0.5, so the best any model can do is ``f(x)`` itself. For every loss of ``regress.loss`` this trains the
defaults (``longshort train --task regress regress.loss=LOSS``, nothing else; the report off) and scores the test
split beside two references computed on the very same test sequences:

- **oracle**: ``f(x)``, the true conditional mean: its RMSE is the noise floor as sampled on this test split;
- **mean**: the training split's mean target (what an RMSE of an untrained model is measured against).

The issue's bar: the default's test RMSE within 10% of the noise floor. Quantile and Gaussian losses add the
observed coverage of their 80% interval. JSON in ``benchmarks/results/regress.json``.

    python benchmarks/regress.py [--losses mse huber ...] [--seed 0] [--out benchmarks/results/regress.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import cpu_info
from longshort.data.builtin import SIGNAL_NOISE, signal
from longshort.run import train

LOSSES = ("mse", "mae", "huber", "quantile", "gaussian_nll")


def true_mean(x: np.ndarray) -> np.ndarray:
    """``f(x)`` of the signal set (its docstring's formula)."""
    x = x.astype(np.float64)
    return 1.5 * x[:, :, 0].mean(1) + (x[:, :, 1] * x[:, :, 2]).mean(1) + 0.5 * x[:, -1, 0]


def run_loss(loss: str, seed: int, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = train({"task": "regress", "seed": seed, "regress": {"loss": loss},
                 "train": {"progress": "off"}, "diagnostics": {"report": False}}, out=tmp / loss)
    seconds = time.perf_counter() - t0
    m = run.metrics["test"]
    pred = np.load(run.dir / "diagnostics" / "predictions_test.npz")
    raw = signal(n=run.config.data.builtin.n, length=run.config.data.builtin.length, seed=seed)
    # the test split's rows, found by their targets (distinct floats; the saved ones went through scaling and back)
    gap = np.abs(pred["y"][:, :1] - raw.y[None, :, 0])
    rows = gap.argmin(1)
    assert gap.min(1).max() < 1e-4, "a test target matches no generated sequence"
    truth = raw.y[rows, 0].astype(np.float64)
    oracle = float(np.sqrt(np.mean((true_mean(raw.X[rows]) - truth) ** 2)))
    train_mean = run.prep.target_mean[0]
    out = {"rmse": m["rmse"], "mae": m["mae"], "r2": m["r2"], "n": m["n"], "seconds": round(seconds, 1),
           "oracle_rmse": oracle, "mean_rmse": float(np.sqrt(np.mean((truth - train_mean) ** 2))),
           "rmse_over_floor": m["rmse"] / SIGNAL_NOISE, "rmse_over_oracle": m["rmse"] / oracle,
           "epochs": run.config.train.epochs, "batch_size": run.config.train.batch_size,
           "hidden_dim": run.config.model.hidden_dim}
    for key in ("coverage", "coverage_nominal", "pinball"):
        if key in m:
            out[key] = m[key]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", choices=LOSSES, default=list(LOSSES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "regress.json")
    args = p.parse_args()
    doc: dict[str, Any] = {"cpu": cpu_info(), "seed": args.seed, "noise_floor": SIGNAL_NOISE, "losses": {}}
    if args.out.exists():  # keep the other losses' rows of an earlier run on this CPU
        old = json.loads(args.out.read_text())
        if old.get("cpu") == doc["cpu"] and old.get("seed") == args.seed:
            doc["losses"] = old.get("losses", {})
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.losses:
            r = run_loss(loss, args.seed, Path(tmp))
            doc["losses"][loss] = r
            cov = f"  coverage {r['coverage']:.3f}" if "coverage" in r else ""
            print(f"{loss:<13} rmse {r['rmse']:.4f} (oracle {r['oracle_rmse']:.4f}, x{r['rmse_over_oracle']:.3f}; "
                  f"floor {SIGNAL_NOISE}, x{r['rmse_over_floor']:.3f}; mean {r['mean_rmse']:.4f}){cov}  "
                  f"{r['seconds']:.0f} s", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
