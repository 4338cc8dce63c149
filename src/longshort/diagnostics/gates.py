"""Gate activation statistics of every longshort LSTM in a model, with seed 003's healthy ranges.

:func:`gate_statistics` runs one forward pass with each :class:`longshort.nn.lstm.LSTM`'s own ``gate_stats``
switch on and turns ``last_gate_stats`` into flat rows (one per layer, direction and gate, plus one memory row
per layer and direction), each gate row flagged when its mean leaves :data:`HEALTHY_RANGES`.

What the numbers are (the definitions live in ``nn/recurrence.py``; this module only reads them). For one
layer ``k`` and direction, with ``V`` the set of valid (step, sequence) pairs (``t < lengths[b]``; the reverse
direction runs from each sequence's own last valid step back to step 0) and ``H`` units:

- ``mean`` of gate ``g`` in {input, forget, output}: ``(1 / (|V| H)) * sum_{(t,b) in V} sum_j g_{t,b,j}``, the
  sigmoid activation averaged over valid steps x sequences x units;
- ``var``: the population variance over the same ``|V| H`` values, ``mean(g^2) - mean(g)^2``;
- ``utilisation`` (memory rows): ``||s|| / ||m||`` where ``m_j`` and ``s_j`` are the mean and the population
  standard deviation of unit ``j``'s cell state ``c_{t,b,j}`` over ``V``: how much the memory moves relative to
  where it sits. Large when the cells carry varying content, small when they sit at a constant offset; it is
  unbounded above as every ``m_j`` approaches 0, so compare it across epochs of one model rather than against a
  fixed threshold.

Rows (what ``gates_final.json`` holds under ``"rows"``): ``layer`` (module path of the LSTM, e.g. ``lstms.0.lstm``
in a :class:`~longshort.nn.classifier.SequenceClassifier`), ``sublayer`` (``k`` inside that LSTM), ``direction``
(``forward``/``backward``), ``gate`` (``input``/``forget``/``output``/``memory``), ``mean``, ``var``,
``utilisation``, ``healthy_low``, ``healthy_high``, ``flagged``. Gate rows have ``utilisation`` None; memory rows
have ``mean``/``var``/``healthy_*`` None and ``flagged`` False (seed 003 gives no healthy range for it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from longshort.diagnostics._util import model_mode, rng_untouched
from longshort.nn.lstm import LSTM

__all__ = ["GATES", "HEALTHY_RANGES", "gate_statistics"]

HEALTHY_RANGES: dict[str, tuple[float, float]] = {
    "forget": (0.3, 0.7),
    "input": (0.2, 0.6),
    "output": (0.2, 0.8),
}
"""Seed 003's healthy ranges of each gate's mean activation. A forget gate averaging above 0.7 keeps nearly all
of its memory (the gradient path is long but the cell barely updates); below 0.3 it forgets almost every step
(the LSTM degenerates to a short-memory net). An input gate near 0 writes nothing; near 1 it overwrites the cell
every step. An output gate near 0 hides the memory from the rest of the network. The bounds are heuristics of
seed 003, not theory: a flag is a prompt to look, not an error."""

GATES = {"i": "input", "f": "forget", "o": "output"}  # LSTM.last_gate_stats prefix -> row name


def _lstms(model: nn.Module) -> list[tuple[str, LSTM]]:
    """Every longshort LSTM with its module path ("" for ``model`` itself), in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LSTM)]


def gate_statistics(
    model: nn.Module, x: Tensor | None = None, lengths: Tensor | None = None, *,
    call: Callable[[], object] | None = None, train: bool = False, seed: int | None = 0
) -> list[dict[str, Any]]:
    """Gate and memory statistics of every longshort ``LSTM`` in ``model`` on one batch (rows: module docstring).

    ``model(x, lengths=lengths)`` (a :class:`SequenceClassifier` or an ``LSTM`` itself with ``batch_first``), or
    ``call()`` when given (any forward that reaches the LSTMs, e.g. a seq2seq model's ``encode``), is run once
    under ``no_grad``, in eval mode, or in train mode with ``train=True`` (dropout, zoneout and
    recurrent-dropout masks then act, drawn from a forked RNG seeded with ``seed`` so training's own random
    stream is untouched). Afterwards every module's mode, each LSTM's ``gate_stats`` flag and its
    ``last_gate_stats`` are what they were. Turning ``gate_stats`` on sends the LSTMs through the reference
    recurrence (the fused kernel cannot report its gates), so this pass is slower than an ordinary forward.

    Raises ``ValueError`` when the model holds no longshort LSTM (a plain ``nn.LSTM`` cannot report gates).
    """
    lstms = _lstms(model)
    if not lstms:
        raise ValueError("gate_statistics: the model holds no longshort.nn.LSTM")
    saved = [(m, m.gate_stats, m.last_gate_stats) for _, m in lstms]
    try:
        for _, m in lstms:
            m.gate_stats = True
            m.last_gate_stats = {}
        with torch.no_grad(), model_mode(model, train), rng_untouched(seed):
            if call is not None:
                call()
            else:
                model(x, lengths=lengths)
        collected = [(name, dict(m.last_gate_stats), m) for name, m in lstms]
    finally:
        for m, flag, last in saved:
            m.gate_stats, m.last_gate_stats = flag, last
    rows: list[dict[str, Any]] = []
    for name, stats, m in collected:
        for k in range(m.num_layers):
            for sfx, direction in zip(m._suffixes, ("forward", "backward"), strict=False):
                s = stats.get(f"l{k}{sfx}")
                if s is None:  # an LSTM the forward did not reach (an unused branch)
                    continue
                base = {"layer": name, "sublayer": k, "direction": direction}
                for short, gate in GATES.items():
                    low, high = HEALTHY_RANGES[gate]
                    mean = float(s[f"{short}_mean"])
                    rows.append({**base, "gate": gate, "mean": mean, "var": float(s[f"{short}_var"]),
                                 "utilisation": None, "healthy_low": low, "healthy_high": high,
                                 "flagged": not low <= mean <= high})
                rows.append({**base, "gate": "memory", "mean": None, "var": None,
                             "utilisation": float(s["cell_utilisation"]), "healthy_low": None,
                             "healthy_high": None, "flagged": False})
    return rows
