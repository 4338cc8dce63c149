"""Ensembles of trained runs: the (optionally weighted) average of classifiers' softmax outputs, or of regressors'
predictions (task regress, in the target's own units).

``p(x) = sum_m w_m p_m(x) / sum_m w_m`` over member runs ``m`` (fold models of ``longshort cv``, or runs trained with
different seeds). Each member reads the file with its own preprocessing (its scaling was fitted on its own
training split), so members trained on different folds combine correctly; they must share the class names, and
the file must give every member the same sequences (same windowing for a series), which is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longshort.data.types import SequenceData
from longshort.errors import LongshortError


@dataclass
class EnsembleOutput:
    proba: np.ndarray  # [N, K] the weighted average (task regress: [N, k] predictions)
    members: list[np.ndarray]  # each member's [N, K]
    data: SequenceData  # the first member's prepared data (labels, ids, order)
    class_names: list[str]
    weights: list[float]


def ensemble_proba(run_dirs: Sequence[str | Path], data: str, weights: Sequence[float] | None = None,
                   labels: str = "optional") -> EnsembleOutput:
    """The weighted mean of classifier runs' class probabilities on the file ``data``."""
    runs, w, prepared = _members(run_dirs, data, weights, labels, "classify")
    names = runs[0].prep.class_names
    for d, r in zip(run_dirs, runs, strict=True):
        if r.prep.class_names != names:
            raise LongshortError(f"{d} predicts classes {r.prep.class_names}, {run_dirs[0]} predicts {names}: an "
                                 "ensemble needs the same classes in the same order")
    members = [r.predict_proba(x, prepared=True) for r, x in zip(runs, prepared, strict=True)]
    return EnsembleOutput(_weighted(members, w), members, prepared[0], list(names), w)


def ensemble_values(run_dirs: Sequence[str | Path], data: str, weights: Sequence[float] | None = None,
                    labels: str = "optional") -> EnsembleOutput:
    """The weighted mean of regress runs' predictions [N, k] (in the target's units) on the file ``data``;
    ``proba`` holds that mean, ``class_names`` the target names, ``data.y`` the first member's scaled target."""
    runs, w, prepared = _members(run_dirs, data, weights, labels, "regress")
    names = runs[0].prep.target_names
    for d, r in zip(run_dirs, runs, strict=True):
        if r.prep.target_names != names:
            raise LongshortError(f"{d} predicts {r.prep.target_names}, {run_dirs[0]} predicts {names}: an "
                                 "ensemble needs the same targets")
    members = [r.predict_values(x, prepared=True)[0] for r, x in zip(runs, prepared, strict=True)]
    return EnsembleOutput(_weighted(members, w), members, prepared[0], list(names), w)


def _weighted(members: list[np.ndarray], w: list[float]) -> np.ndarray:
    total = sum(w)
    return np.asarray(sum(wi / total * p for wi, p in zip(w, members, strict=True)))


def _members(run_dirs: Sequence[str | Path], data: str, weights: Sequence[float] | None, labels: str,
             task: str) -> tuple[list[Any], list[float], list[SequenceData]]:
    """The runs (all of ``task``), their weights and the file as each member's preprocessing reads it."""
    from longshort.data.pipeline import load_for_model
    from longshort.runs import load

    runs = [load(d) for d in run_dirs]
    if not runs:
        raise LongshortError("an ensemble needs at least one run directory")
    what = "classifier probabilities" if task == "classify" else "regressors' predictions"
    for d, r in zip(run_dirs, runs, strict=True):
        if r.task != task:
            raise LongshortError(f"{d} is a {r.task} run: an ensemble of {task} runs averages {what} (every member "
                                 "must be of one task)")
    w = [1.0] * len(runs) if weights is None else [float(x) for x in weights]
    if len(w) != len(runs):
        raise LongshortError(f"{len(w)} weights for {len(runs)} run directories (--weights gives one per run)")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise LongshortError(f"ensemble weights must be >= 0 with a positive sum, got {w}")
    prepared: list[SequenceData] = []
    for d, r in zip(run_dirs, runs, strict=True):
        x = load_for_model(data, r.config.data, r.prep, r.config.seed, labels=labels)  # type: ignore[arg-type]
        if prepared and (len(x) != len(prepared[0]) or not _same_order(x, prepared[0])):
            raise LongshortError(f"{d} reads {data} as {len(x)} sequences, {run_dirs[0]} as {len(prepared[0])}: "
                                 "members must window the file the same way (data.series.*)")
        prepared.append(x)
    return runs, w, prepared


def _same_order(a: SequenceData, b: SequenceData) -> bool:
    for x, y in ((a.ids, b.ids), (a.order, b.order)):
        if (x is None) != (y is None) or (x is not None and y is not None and not np.array_equal(x, y)):
            return False
    return True
