"""PNG figures written into the run directory (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def confusion_matrix_png(cm: list[list[int]], class_names: list[str], path: Path, title: str = "") -> None:
    m = np.asarray(cm)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * k, 1.0 + 0.8 * k))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learning_curve_png(history: list[dict[str, float]], path: Path) -> None:
    epochs = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    second = "accuracy" if any("train_accuracy" in r for r in history) else "rmse"  # task regress: rmse
    for key, ax in (("loss", a1), (second, a2)):
        for split in ("train", "val"):
            pts = [(e, r[f"{split}_{key}"]) for e, r in zip(epochs, history, strict=True) if f"{split}_{key}" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_vs_true_png(y: np.ndarray, pred: np.ndarray, path: Path, title: str = "") -> None:
    """Task regress: each sequence's prediction against its target (the first target), with the diagonal."""
    y, pred = np.asarray(y).reshape(len(y), -1)[:, 0], np.asarray(pred).reshape(len(pred), -1)[:, 0]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(y, pred, s=6, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.grid(alpha=0.3)
    ax.set_title(title or "predicted vs true")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention_png(weights: np.ndarray, src_tokens: list[str], tgt_tokens: list[str], path: Path,
                  title: str = "attention") -> None:
    """Heatmap of attention weights [target steps, source positions]."""
    t, s = weights.shape
    fig, ax = plt.subplots(figsize=(1.5 + 0.3 * s, 1.2 + 0.3 * t))
    ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
    ax.set_xticks(range(s), src_tokens, rotation=90)
    ax.set_yticks(range(t), tgt_tokens)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
