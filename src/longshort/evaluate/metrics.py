"""Classification metrics (scikit-learn) from true labels and predicted probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, weighted and macro precision/recall/F1, log-loss, confusion matrix, per-class report."""
    labels = list(range(len(class_names)))
    pred = proba.argmax(1)
    out: dict[str, Any] = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, pred, labels=labels, average=avg, zero_division=0)
        out |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
    proba = np.clip(proba, 1e-12, 1.0)
    out["log_loss"] = float(log_loss(y_true, proba / proba.sum(1, keepdims=True), labels=labels))
    out["confusion_matrix"] = confusion_matrix(y_true, pred, labels=labels).tolist()
    report = classification_report(
        y_true, pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    out["per_class"] = {c: {k: float(v) for k, v in report[c].items()} for c in class_names}
    out["class_names"] = list(class_names)
    return out
