"""Classification metrics (scikit-learn) from true labels and predicted probabilities; regression metrics from
true and predicted values."""

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


def regression_metrics(y_true: np.ndarray, pred: np.ndarray, target_names: list[str],
                       levels: tuple[float, ...] = (), quantiles: np.ndarray | None = None) -> dict[str, Any]:
    """RMSE, MAE, R², MAPE (over the targets that are not zero) for ``pred`` [N, k] against ``y_true`` [N, k],
    all in the target's own units and averaged over the k targets (each target's too when k > 1); with predicted
    ``quantiles`` [N, k, L] at ``levels``: the outermost pair's interval coverage and the mean pinball loss."""
    from sklearn.metrics import mean_absolute_error, mean_pinball_loss, mean_squared_error, r2_score

    y, p = np.asarray(y_true, np.float64).reshape(len(y_true), -1), np.asarray(pred, np.float64).reshape(len(pred), -1)

    def one(yt: np.ndarray, pt: np.ndarray) -> dict[str, float]:
        m = {"rmse": float(np.sqrt(mean_squared_error(yt, pt))), "mae": float(mean_absolute_error(yt, pt)),
             "r2": float(r2_score(yt, pt)) if len(yt) > 1 else float("nan")}
        nonzero = np.abs(yt) > 1e-12
        if nonzero.any():  # undefined at a zero target: over the others, and how many those were
            m["mape"] = float(np.mean(np.abs((pt[nonzero] - yt[nonzero]) / yt[nonzero])))
            m["mape_n"] = int(nonzero.sum())
        return m

    per = [one(y[:, j], p[:, j]) for j in range(y.shape[1])]
    out: dict[str, Any] = {"n": len(y)}
    for key in per[0]:
        if all(key in m for m in per):
            out[key] = float(np.mean([m[key] for m in per])) if key != "mape_n" else int(sum(m[key] for m in per))
    if y.shape[1] > 1:
        out["per_target"] = dict(zip(target_names, per, strict=True))
    if quantiles is not None and len(levels) >= 2:
        q = np.asarray(quantiles, np.float64).reshape(len(y), y.shape[1], len(levels))
        lo, hi = q[..., 0], q[..., -1]
        out["interval"] = [levels[0], levels[-1]]
        out["coverage"] = float(np.mean((y >= lo) & (y <= hi)))
        out["coverage_nominal"] = float(levels[-1] - levels[0])
        out["pinball"] = float(np.mean([mean_pinball_loss(y[:, j], q[:, j, i], alpha=a)
                                        for j in range(y.shape[1]) for i, a in enumerate(levels)]))
    out["target_names"] = list(target_names)
    return out
