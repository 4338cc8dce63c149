"""Run directories for the report tests, written by hand in the formats training and the diagnostics write
(docs/diagnostics.md: diagnostics/monitor.py writes steps.csv and gates.csv, diagnostics/analyse.py the rest).

A fake run takes milliseconds (no training), so every section, present or absent, can be checked in
isolation; one slow test in test_html.py reports on a real trained run as well.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

CLASSES = ["bear", "range", "bull"]
STEPS = 60
WARMUP = 5
ANOMALY_STEPS = {17: "skip", 41: "rollback", 50: "nonfinite"}
MODULES = ["input_proj", "lstms.0", "lstms.1", "head"]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _diag(d: Path) -> Path:
    (d / "diagnostics").mkdir(parents=True, exist_ok=True)
    return d / "diagnostics"


def write_basic_run(d: Path, *, source: str = "builtin:regimes", epochs: int = 4, seed: int = 0,
                    classes: list[str] | None = None) -> Path:
    """config.yaml, metrics.json, history.csv and preprocess.json of a classifier run, as training writes them."""
    classes = classes or CLASSES
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(
        f"task: classify\nseed: {seed}\ndata:\n  source: '{source}'\n  test_source: null\n"
        f"model:\n  hidden_dim: 16\n  num_lstm_layers: 2\n  num_heads: 2\n  dropout: 0.3\n"
        f"train:\n  epochs: {epochs}\n  optim:\n    lr: {0.001 * (seed + 1)}\n")
    rows = []
    for e in range(1, epochs + 1):
        rows.append([e, 15 * e, 1.2 - 0.1 * e + 0.01 * seed, 0.4 + 0.08 * e, 500.0, 1e-3 / e,
                     1.1 - 0.08 * e, 0.38 + 0.07 * e + 0.01 * seed, 0.3 + 0.06 * e])
    _write_csv(d / "history.csv", ["epoch", "step", "train_loss", "train_accuracy", "samples_per_s", "lr",
                                   "val_loss", "val_accuracy", "val_f1_macro"], rows)
    k = len(classes)

    def split(n: int) -> dict[str, object]:
        cm = rng.integers(0, 6, size=(k, k)) + np.eye(k, dtype=int) * 10
        per = {c: {"precision": 0.7, "recall": 0.6, "f1-score": 0.65, "support": float(cm[i].sum())}
               for i, c in enumerate(classes)}
        return {"n": n, "accuracy": 0.6 + 0.05 * seed, "f1_macro": 0.55, "f1_weighted": 0.57, "precision_macro": 0.6,
                "recall_macro": 0.58, "log_loss": 0.9 - 0.1 * seed, "confusion_matrix": cm.tolist(),
                "per_class": per, "class_names": classes}

    metrics = {"val": split(60), "test": split(61), "best_epoch": epochs - 1, "epochs_run": epochs,
               "best_possible": {"accuracy": 0.9212, "stderr": 0.0019, "how": "Bayes-optimal classifier"}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "preprocess.json").write_text(json.dumps({"class_names": classes, "feature_names": [f"f{i}" for i in
                                                                                               range(9)]}))
    return d


def write_steps(d: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    ema = 1.0
    for s in range(1, STEPS + 1):
        g = float(np.exp(rng.normal(0, 0.2))) * (1 + 0.3 * seed)
        action = ANOMALY_STEPS.get(s, "none")
        if action in ("skip", "rollback"):
            g *= 8
        if action == "nonfinite":
            g = float("inf")
        ema = 0.9 * ema + 0.1 * (g if np.isfinite(g) else ema)
        threshold = float("inf") if s <= WARMUP else ema * 2.5  # nothing can be flagged during the warm-up
        rows.append([s, 1 + (s - 1) // 15, 1.2 - 0.005 * s, 1e-3 * (1 - s / (STEPS + 1)), g, ema, threshold,
                     int(action != "none"), action, *[g * (0.2 + 0.2 * i) for i in range(len(MODULES))]])
    _write_csv(d / "diagnostics" / "steps.csv",
               ["step", "epoch", "loss", "lr", "grad_norm", "grad_norm_ema", "threshold", "anomaly", "action",
                *[f"grad_norm/{m}" for m in MODULES]], rows)


def write_gates(d: Path) -> None:
    bands = {"input": (0.2, 0.8), "forget": (0.5, 0.95), "output": (0.2, 0.8)}
    rows: list[list[object]] = []
    for step in (10, 20, 30, 40, 50, 60):
        for layer in (0, 1):
            for direction in ("forward", "backward"):
                for gate, (lo, hi) in bands.items():
                    mean = 0.5 + 0.02 * layer + (0.46 if gate == "forget" and layer == 1 and step >= 40 else 0)
                    rows.append([step, f"lstms.{layer}", direction, gate, mean, 0.02 + 0.001 * step, lo, hi,
                                 int(not lo <= mean <= hi)])
                rows.append([step, f"lstms.{layer}", direction, "memory", 0.3 + 0.005 * step, "", "", "", 0])
    _write_csv(d / "diagnostics" / "gates.csv",
               ["step", "layer", "direction", "gate", "mean", "var", "low", "high", "flagged"], rows)


def write_gates_final(d: Path) -> None:
    rows: list[dict[str, object]] = []
    for layer in (0, 1):
        for direction in ("forward", "backward"):
            for gate, (lo, hi) in {"input": (0.2, 0.6), "forget": (0.3, 0.7), "output": (0.2, 0.8)}.items():
                mean = 0.75 if gate == "forget" and layer == 1 else 0.5
                rows.append({"layer": f"lstms.{layer}.lstm", "sublayer": 0, "direction": direction, "gate": gate,
                             "mean": mean, "var": 0.03, "utilisation": None, "healthy_low": lo, "healthy_high": hi,
                             "flagged": not lo <= mean <= hi})
            rows.append({"layer": f"lstms.{layer}.lstm", "sublayer": 0, "direction": direction, "gate": "memory",
                         "mean": None, "var": None, "utilisation": 1.4, "healthy_low": None, "healthy_high": None,
                         "flagged": False})
    (_diag(d) / "gates_final.json").write_text(json.dumps({"split": "val", "n_sequences": 60,
                                                            "healthy_ranges": {"forget": [0.3, 0.7]}, "rows": rows}))


def write_landscape(d: Path) -> None:
    a = np.linspace(-1, 1, 11)
    b = np.linspace(-1, 1, 9)  # not square: the orientation of loss[i][j] is checked
    loss2 = (a[:, None] ** 2 + 0.5 * b[None, :] ** 2 + 0.4).tolist()  # loss[i][j] at (alpha[i], beta[j])
    eta = [0.01, 0.03, 0.1, 0.3, 1.0]
    ratio = [0.9971, 0.9932, 0.9741, 0.9113, 0.6892]
    (_diag(d) / "landscape.json").write_text(json.dumps({
        "directions": "filter-normalised random", "split": "val", "n_sequences": 60,
        "loss_fn": "training loss in eval mode",
        "1d": {"alpha": a.tolist(), "loss": (a**2 + 0.4).tolist()},
        "2d": {"alpha": a.tolist(), "beta": b.tolist(), "loss": loss2},
        "hessian_top_eigenvalue": 12.5, "hessian_batches": 1,
        "gradient_predictiveness": {"step_size": eta, "loss0": 1.35, "grad_norm": 0.28,
                                    "loss": [1.35 - 0.078 * e * r for e, r in zip(eta, ratio, strict=True)],
                                    "actual_decrease": [0.078 * e * r for e, r in zip(eta, ratio, strict=True)],
                                    "predicted_decrease": [0.078 * e for e in eta], "ratio": ratio,
                                    "grad_diff_norm": [0.01, 0.02, 0.06, 0.15, 0.44],
                                    "beta": [4.08, 2.23, 2.12, 1.81, 1.56]},
    }))


def write_information(d: Path, future: bool = True) -> None:
    t = list(range(20))
    info: dict[str, object] = {"estimator": "k-NN (Ross 2014; KSG)", "bias": "lower bound; compare the baseline",
                               "split": "val", "n_sequences": 60,
                               "hidden": {"label": "output of the last BiLSTM block"},
                               "label": {"t": t, "mi": [0.05 * i for i in t], "baseline": [0.02] * len(t),
                                         "n": [60] * len(t)}}
    if future:
        info["future"] = {"k": [1, 2, 5, 10], "mi": [0.6, 0.4, 0.2, 0.05], "baseline": [0.03] * 4, "n": [500] * 4,
                          "target": "close"}
    else:
        info["future_omitted"] = "no continuous target series: independent sequences have one label each"
    (_diag(d) / "information.json").write_text(json.dumps(info))


def write_attention(d: Path) -> None:
    rng = np.random.default_rng(1)
    b, h, t = 4, 2, 12
    lengths = np.array([12, 8, 5, 10])
    arrays = {}
    for i in range(2):
        w = rng.random((b, h, t, t))
        for s, n in enumerate(lengths):
            w[s, :, :, n:] = 0.0  # the padded keys get no weight
        arrays[f"attn_{2 * i + 1}"] = (w / np.maximum(w.sum(-1, keepdims=True), 1e-9)).astype(np.float32)
    np.savez(_diag(d) / "attention.npz", lengths=lengths, index=np.arange(b), y=np.array([0, 2, 1, 0]), **arrays)


def write_predictions(d: Path, name: str = "predictions_test.npz", seed: int = 2, n: int = 200) -> None:
    """Over-confident predictions: right 70% of the time whatever the confidence (as training saves them)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.where(rng.random(n) < 0.7, proba.argmax(1), rng.integers(0, 3, n))
    np.savez(_diag(d) / name, proba=proba.astype(np.float32), y=y, class_names=np.array(CLASSES))


def write_trajectory(d: Path, epochs: int = 5) -> Path:
    """diagnostics/trajectory.json as diagnostics/trajectory.py writes it (a straight, slowing path)."""
    rows, path = [], 0.0
    for e in range(1, epochs + 1):
        step = 1.0 / e
        path += step
        rows.append({"epoch": e, "distance_from_init": path, "relative_distance": path / 10.0,
                     "step_length": step, "path_length": path, "straightness": 1.0, "spread": path / 3.0})
    (d / "diagnostics").mkdir(parents=True, exist_ok=True)
    (d / "diagnostics" / "trajectory.json").write_text(json.dumps(
        {"parameters": 1000, "init_norm": 10.0, "sum_sq": 0.0, "epochs": rows}))
    return d


def write_all_diagnostics(d: Path, seed: int = 0) -> Path:
    write_trajectory(d)
    write_steps(d, seed)
    write_gates(d)
    write_landscape(d)
    write_information(d)
    write_attention(d)
    write_predictions(d)
    write_predictions(d, "predictions_val.npz", seed=3, n=150)
    write_gates_final(d)
    return d
