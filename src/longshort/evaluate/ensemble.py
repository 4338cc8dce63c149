"""Ensembles of trained classifier runs: the (optionally weighted) average of their softmax outputs.

``p(x) = sum_m w_m p_m(x) / sum_m w_m`` over member runs ``m`` (fold models of ``longshort cv``, or runs trained with
different seeds). Each member reads the file with its own preprocessing (its scaling was fitted on its own
training split), so members trained on different folds combine correctly; they must share the class names, and
the file must give every member the same sequences (same windowing for a series), which is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longshort.data.types import SequenceData
from longshort.errors import LongshortError


@dataclass
class EnsembleOutput:
    proba: np.ndarray  # [N, K] the weighted average
    members: list[np.ndarray]  # each member's [N, K]
    data: SequenceData  # the first member's prepared data (labels, ids, order)
    class_names: list[str]
    weights: list[float]


def ensemble_proba(run_dirs: Sequence[str | Path], data: str, weights: Sequence[float] | None = None,
                   labels: str = "optional") -> EnsembleOutput:
    from longshort.data.pipeline import load_for_model
    from longshort.runs import Run, load

    runs = [load(d) for d in run_dirs]
    if not runs:
        raise LongshortError("an ensemble needs at least one run directory")
    for d, r in zip(run_dirs, runs, strict=True):
        if not isinstance(r, Run):
            raise LongshortError(f"{d} is a {r.task} run: ensembles average classifier probabilities")
    w = [1.0] * len(runs) if weights is None else [float(x) for x in weights]
    if len(w) != len(runs):
        raise LongshortError(f"{len(w)} weights for {len(runs)} run directories (--weights gives one per run)")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise LongshortError(f"ensemble weights must be >= 0 with a positive sum, got {w}")
    names = runs[0].prep.class_names
    members, first = [], None
    for d, r in zip(run_dirs, runs, strict=True):
        if r.prep.class_names != names:
            raise LongshortError(f"{d} predicts classes {r.prep.class_names}, {run_dirs[0]} predicts {names}: an "
                                 "ensemble needs the same classes in the same order")
        prepared = load_for_model(data, r.config.data, r.prep, r.config.seed, labels=labels)  # type: ignore[arg-type]
        if first is None:
            first = prepared
        elif len(prepared) != len(first) or not _same_order(prepared, first):
            raise LongshortError(f"{d} reads {data} as {len(prepared)} sequences, {run_dirs[0]} as {len(first)}: "
                                 "members must window the file the same way (data.series.*)")
        members.append(r.predict_proba(prepared, prepared=True))
    assert first is not None
    total = sum(w)
    proba = sum(wi / total * p for wi, p in zip(w, members, strict=True))
    return EnsembleOutput(np.asarray(proba), members, first, list(names), w)


def _same_order(a: SequenceData, b: SequenceData) -> bool:
    for x, y in ((a.ids, b.ids), (a.order, b.order)):
        if (x is None) != (y is None) or (x is not None and y is not None and not np.array_equal(x, y)):
            return False
    return True
