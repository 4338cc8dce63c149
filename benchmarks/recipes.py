"""Ablation of the training toolbox: ``recipe=plain`` vs ``recipe=seed`` vs each technique alone on plain, and
the seed recipe with its loss exactly as the seed wrote it (``seed-raw_focal``) and that with each of its parts
taken out (``seed_raw-no_*``).

Two datasets, 3 seeds each, test accuracy mean and spread:

- ``builtin``: the built-in ``regimes`` dataset (2,000 sequences of 50 steps; Bayes-optimal accuracy ~0.92);
- ``japanese_vowels``: UEA JapaneseVowels (270 train / 370 test, 12 channels, lengths 7-29, 9 classes), read
  from the ``.ts`` files the ``aeon`` package ships. Only the data files are used, so
  ``pip install --no-deps aeon`` is enough; without aeon that dataset is skipped with a note.

A smaller classifier than the default (hidden 64, 2 BiLSTM blocks, 2 conv blocks) keeps the whole ablation
within CPU reach; the seed recipe's start epochs scale with ``train.epochs`` (augmentation at 10%, mixup at
20%, gradient noise at 50%). Every run trains all epochs (no early stopping) and keeps the best epoch by
validation macro-F1, as ``longshort train`` does. Writes ``benchmarks/results/recipes.json`` after every run.

    python benchmarks/recipes.py [--datasets builtin japanese_vowels] [--variants plain seed ...]
                                 [--seeds 0 1 2] [--jobs 2] [--quick]

``--jobs N`` trains N runs at once, each on one thread (small models use cores better that way than one run
on N threads); results do not depend on it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import io
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

import longshort
from longshort.config import apply_overrides, validate

# Every technique alone, on top of recipe=plain (dotted train/model overrides).
TECHNIQUES: dict[str, list[str]] = {
    "class_weights": ["train.loss.class_weights=true"],
    "label_smoothing": ["train.loss.label_smoothing=0.1"],
    "focal": ["train.loss.name=focal"],
    "adaptive_loss": ["train.loss.name=adaptive"],
    "multitask": ["train.loss.aux_weight=0.3"],
    "task_weighting": ["train.loss.aux_weight=0.3", "train.tasks.weighting=performance"],
    "sgd": ["train.optim.name=sgd", "train.optim.lr=1e-3", "train.schedule.max_lr=0.05"],
    "lookahead": ["train.optim.lookahead.enabled=true"],
    "clip_norm": ["train.optim.grad_clip=1.0"],
    "clip_adaptive": ["train.optim.grad_clip=1.0", "train.optim.clip_mode=adaptive"],
    "clip_per_gate": ["train.optim.grad_clip=0.5", "train.optim.clip_mode=per_gate"],
    "grad_noise": ["train.optim.grad_noise.std=0.01", "train.optim.grad_noise.anneal=0.55"],
    "cosine_warmup": ["train.schedule.name=cosine", "train.optim.lr=1e-3", "train.schedule.warmup=50"],
    "augment": ["train.augment.noise.prob=0.3", "train.augment.time_shift.prob=0.2",
                "train.augment.magnitude_warp.prob=0.25"],
    "time_warp_slice": ["train.augment.time_warp.prob=0.3", "train.augment.window_slice.prob=0.3"],
    "mixup": ["train.mixup.prob=0.5"],
    "spectral_norm": ["model.spectral_norm=true"],
    "phases_seed": ["train.phase_preset=seed"],
    "curriculum_length": ["train.curriculum.kind=length", "train.curriculum.start_length=10",
                          "train.curriculum.rate=8"],
    "curriculum_difficulty": ["train.curriculum.kind=difficulty", "train.curriculum.score_after=2"],
    "curriculum_adaptive": ["train.curriculum.kind=adaptive", "train.curriculum.score_after=2"],
}
# The seed's loss exactly as the seed wrote it (the recipe normalises the focal term; see recipes.py), and that
# raw-loss recipe with one of its parts taken out (leave-one-out): the diagnosis of why it lost to plain.
RAW = ["train.recipe=seed", "train.loss.focal_normalize=false"]
SEED_RAW_WITHOUT: dict[str, list[str]] = {
    "seed_raw-no_grad_noise": ["train.optim.grad_noise.std=0"],
    "seed_raw-no_lookahead": ["train.optim.lookahead.enabled=false"],
    "seed_raw-no_mixup": ["train.mixup.prob=0"],
    "seed_raw-no_augment": ["train.augment.noise.prob=0", "train.augment.time_shift.prob=0",
                            "train.augment.magnitude_warp.prob=0"],
    "seed_raw-no_confidence_penalty": ["train.loss.confidence_penalty=0"],
    "seed_raw-no_aux": ["train.loss.aux_weight=0"],
    "seed_raw-annealed_noise": ["train.optim.grad_noise.anneal=0.55"],  # not a removal: Neelakantan's decay
}
VARIANTS: dict[str, list[str]] = {
    "plain": ["train.recipe=plain"],
    "seed": ["train.recipe=seed"],
    "seed-raw_focal": RAW,
    **{name: ["train.recipe=plain", *o] for name, o in TECHNIQUES.items()},
    **{name: [*RAW, *o] for name, o in SEED_RAW_WITHOUT.items()},
    # The recipe as shipped (normalised focal term) without the parts that cost most in the raw recipe.
    **{name.replace("seed_raw-", "seed-"): ["train.recipe=seed", *SEED_RAW_WITHOUT[name]]
       for name in ("seed_raw-no_lookahead", "seed_raw-no_mixup", "seed_raw-no_augment", "seed_raw-no_grad_noise")},
}
NEEDS_AUX = {"multitask", "task_weighting", "seed_raw-no_aux"}  # data with an aux target only (builtin's)

MODEL = ["model.hidden_dim=64", "model.num_lstm_layers=2", "model.num_heads=4", "model.conv_dilations=[1,2]"]
COMMON = ["train.progress=off", "train.tensorboard=false", "train.early_stopping.patience=null"]


def aeon_data_dir() -> Path | None:
    """The folder of UEA/UCR files inside an installed ``aeon`` (found without importing it)."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return path if path.is_dir() else None


def dataset_overrides(name: str, quick: bool) -> list[str] | None:
    if name == "builtin":
        n = 600 if quick else 2000
        return [f"data.builtin.n={n}", "train.epochs=" + ("3" if quick else "20"), "train.batch_size=64"]
    if name == "japanese_vowels":
        root = aeon_data_dir()
        if root is None:
            return None
        jv = root / "JapaneseVowels"
        return [f"data.source={jv / 'JapaneseVowels_TRAIN.ts'}", f"data.test_source={jv / 'JapaneseVowels_TEST.ts'}",
                "data.split.val=0.2", "train.epochs=" + ("3" if quick else "40"), "train.batch_size=32",
                "train.schedule.max_lr=3e-3"]
    raise ValueError(name)


def run_one(dataset: str, variant: str, seed: int, quick: bool, out: Path, threads: int) -> dict[str, float]:
    # The plain recipe first; a technique's own overrides (and the seed recipe) then go on top of it.
    ds = dataset_overrides(dataset, quick)
    assert ds is not None
    overrides = [*MODEL, *ds, *COMMON, *VARIANTS[variant], f"seed={seed}"]
    if threads:
        overrides.append(f"train.threads={threads}")
    cfg = validate(apply_overrides({}, overrides))
    t0 = time.perf_counter()
    run = longshort.train(cfg, out=out / f"{dataset}-{variant}-{seed}", console=Console(file=io.StringIO()))
    m = run.metrics
    return {"seed": seed, "test_accuracy": m["test"]["accuracy"], "test_f1_macro": m["test"]["f1_macro"],
            "val_accuracy": m["val"]["accuracy"], "best_epoch": m["best_epoch"],
            "seconds": time.perf_counter() - t0}


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    acc = [r["test_accuracy"] for r in runs]
    return {"runs": runs, "test_accuracy_mean": statistics.mean(acc),
            "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "seconds_mean": statistics.mean(r["seconds"] for r in runs)}


def report(dataset: str, variant: str, table: dict[str, Any]) -> None:
    s = table[variant]
    delta = f"{s['test_accuracy_mean'] - table['plain']['test_accuracy_mean']:+.4f} vs plain" if "plain" in table \
        else "plain not yet in"
    print(f"{dataset:16s} {variant:22s} test acc {s['test_accuracy_mean']:.4f} ± {s['test_accuracy_std']:.4f}  "
          f"({delta}, {s['seconds_mean']:.0f} s/run)", flush=True)


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a markdown table: one row per variant, test accuracy mean ± std and delta per dataset."""
    datasets = [d for d, t in results["datasets"].items() if "plain" in t]
    head = "| variant | " + " | ".join(f"{d} acc (± std) | vs plain" for d in datasets) + " |"
    rule = "|---|" + "---|---|" * len(datasets)
    rows = [head, rule]
    for variant in results["variants"]:
        cells = []
        for d in datasets:
            s = results["datasets"][d].get(variant)
            if s is None:
                cells += ["n/a", ""]
                continue
            delta = s["test_accuracy_mean"] - results["datasets"][d]["plain"]["test_accuracy_mean"]
            cells += [f"{s['test_accuracy_mean']:.4f} ± {s['test_accuracy_std']:.4f}",
                      "" if variant == "plain" else f"{delta:+.4f}"]
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["builtin", "japanese_vowels"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each when > 1")
    ap.add_argument("--quick", action="store_true", help="tiny data and 3 epochs: a smoke run, not the ablation")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/recipes.json; "
                                                "--quick prints only unless given)")
    ap.add_argument("--table", action="store_true", help="print the results JSON as a markdown table and exit")
    args = ap.parse_args()
    if args.table:
        path = Path(args.out) if args.out else Path(__file__).parent / "results" / "recipes.json"
        print(markdown_table(json.loads(path.read_text())))
        return
    out_path = Path(args.out) if args.out else (None if args.quick else
                                                Path(__file__).parent / "results" / "recipes.json")
    results: dict[str, Any] = {"benchmark": "recipes", "quick": args.quick, "seeds": args.seeds,
                               "model": MODEL, "common": COMMON, "variants": VARIANTS, "datasets": {}}
    if out_path is not None and out_path.exists():  # resume an interrupted ablation: keep finished variants
        old = json.loads(out_path.read_text())
        if old.get("quick") == args.quick and old.get("seeds") == args.seeds:
            results["datasets"] = old.get("datasets", {})
    t_all = time.perf_counter()
    todo: list[tuple[str, str]] = []
    for dataset in args.datasets:
        if dataset_overrides(dataset, args.quick) is None:
            print(f"{dataset}: skipped (pip install --no-deps aeon to get its data files)")
            results["datasets"][dataset] = {"skipped": "aeon not installed"}
            continue
        table = results["datasets"].setdefault(dataset, {})
        for variant in args.variants:
            if variant in NEEDS_AUX and dataset != "builtin":
                continue
            if variant in table and len(table[variant]["runs"]) == len(args.seeds):
                report(dataset, variant, table)
            else:
                todo.append((dataset, variant))

    def write() -> None:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=1))

    threads = 1 if args.jobs > 1 else 0  # 0: torch's default thread count
    pending: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in todo}
    with tempfile.TemporaryDirectory() as tmp, cf.ProcessPoolExecutor(
        args.jobs, mp_context=mp.get_context("spawn")
    ) as pool:
        futures = {
            pool.submit(run_one, dataset, variant, seed, args.quick, Path(tmp), threads): (dataset, variant)
            for dataset, variant in todo
            for seed in args.seeds
        }
        for fut in cf.as_completed(futures):
            key = futures[fut]
            pending[key].append(fut.result())
            if len(pending[key]) == len(args.seeds):
                dataset, variant = key
                table = results["datasets"][dataset]
                table[variant] = summarise(sorted(pending[key], key=lambda r: r["seed"]))
                report(dataset, variant, table)
                write()
    for table in results["datasets"].values():  # deltas once every plain baseline is in
        if "plain" in table:
            for s in table.values():
                s["delta_vs_plain"] = s["test_accuracy_mean"] - table["plain"]["test_accuracy_mean"]
    write()
    print(f"total {time.perf_counter() - t_all:.0f} s" + (f"; written {out_path}" if out_path else ""))


if __name__ == "__main__":
    main()
