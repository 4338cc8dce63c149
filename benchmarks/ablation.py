"""Ablation of the recurrent cell and stack variants on the default classifier and the built-in dataset.

Each variant trains the default SequenceClassifier (hidden 256, 4 BiLSTM blocks, 8 heads) with the
quickstart recipe for several seeds and reports test accuracy mean and spread, next to the Bayes-optimal
accuracy of the dataset. Writes ``benchmarks/results/ablation.json``.

    python benchmarks/ablation.py [--seeds 0 1 2] [--variants plain layer_norm zoneout highway] [--quick]

``--quick`` trains on 1,500 sequences for 3 epochs (a smoke run; its numbers are not the ablation).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

import longshort
from longshort.config import apply_overrides, read_yaml, validate
from longshort.data.builtin import RegimeProcess

VARIANTS: dict[str, list[str]] = {
    "plain": [],
    "layer_norm": ["model.cell.layer_norm=true"],
    "zoneout": ["model.cell.zoneout=0.1"],
    "highway": ["model.stack.skip=highway"],
    "recurrent_dropout": ["model.cell.recurrent_dropout=0.1"],
}


def run_one(variant: str, seed: int, quick: bool, out: Path) -> dict[str, float]:
    raw = read_yaml(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    overrides = [*VARIANTS[variant], f"seed={seed}", "train.progress=off", "train.tensorboard=false"]
    if quick:
        overrides += ["data.builtin.n=1500", "train.epochs=3"]
    cfg = validate(apply_overrides(raw, overrides))
    t0 = time.perf_counter()
    run = longshort.train(cfg, out=out / f"{variant}-{seed}", console=Console(file=io.StringIO()))
    m = run.metrics
    return {"seed": seed, "test_accuracy": m["test"]["accuracy"], "test_f1_macro": m["test"]["f1_macro"],
            "val_accuracy": m["val"]["accuracy"], "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["plain", "layer_norm", "zoneout", "highway"],
                    choices=list(VARIANTS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ablation.json"))
    args = ap.parse_args()

    best, se = RegimeProcess().bayes_accuracy(50)
    results: dict[str, object] = {"bayes_accuracy": best, "bayes_stderr": se, "quick": args.quick, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            runs = [run_one(variant, s, args.quick, Path(tmp)) for s in args.seeds]
            accs = [r["test_accuracy"] for r in runs]
            summary = {"runs": runs, "test_accuracy_mean": statistics.mean(accs),
                       "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                       "seconds_mean": statistics.mean(r["seconds"] for r in runs)}
            results["variants"][variant] = summary  # type: ignore[index]
            print(f"{variant:<18} test accuracy {summary['test_accuracy_mean']:.4f} ± "
                  f"{summary['test_accuracy_std']:.4f}  ({len(runs)} seeds, {summary['seconds_mean']:.0f} s/run)",
                  flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1))  # after each variant: partial runs count
    print(f"Bayes-optimal accuracy: {best:.4f} ± {se:.4f}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
