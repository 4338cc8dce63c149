"""Parameter-space exploration (seed 003's loss-landscape item): how far, and how widely, training moves the
weights, recorded each epoch into ``RUN_DIR/diagnostics/trajectory.json``.

Per epoch ``e`` (the flattened weights ``theta_e``, ``theta_0`` at the start of training):

- ``distance_from_init`` ``||theta_e - theta_0||`` and, relative, that over ``||theta_0||``;
- ``step_length`` ``||theta_e - theta_(e-1)||`` and ``path_length``, their running sum (the path travelled:
  its ratio to the distance says how straight the trajectory was, 1 = a straight line);
- ``spread`` the trajectory's radius of gyration ``sqrt(mean_e ||theta_e - mean theta||^2)``, kept from running
  sums (one weights-sized vector), so no epoch's weights are stored.

``theta_0`` is saved beside it (``diagnostics/trajectory_init.safetensors``), so a resumed run measures from
the same start. Hand-written: no library records a weight trajectory this way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from longshort.training.callbacks import Callback

FILE, INIT = "trajectory.json", "trajectory_init.safetensors"


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    """All trainable parameters as one float64 CPU vector."""
    parts = [p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters() if p.requires_grad]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


class ParamTrajectory(Callback):
    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "diagnostics"
        self.init: torch.Tensor | None = None
        self.prev: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.sum_sq = 0.0
        self.rows: list[dict[str, float]] = []
        self._init_norm: float | None = None

    def on_fit_start(self, trainer: Any) -> None:
        if any(hasattr(p, "full_tensor") for p in trainer.model.parameters()):
            return  # FSDP shards: gathering them is a collective the other ranks would not join (left off)
        theta = flat_weights(trainer.model)
        saved = self.dir / FILE
        if (self.dir / INIT).is_file() and saved.is_file():  # resumed: continue the same trajectory
            tensors = load_file(str(self.dir / INIT))
            state = json.loads(saved.read_text())
            self.init, self.sum, self.prev = tensors["theta0"], tensors.get("sum"), theta
            self.rows, self.sum_sq = state["epochs"], float(state.get("sum_sq", 0.0))
            if any(r["epoch"] > trainer.epoch for r in self.rows) or self.sum is None:
                # epochs recorded past the checkpoint: their sums cannot be taken out, so the record restarts
                # from here (the start, theta_0, stays)
                self.rows, self.sum, self.sum_sq = [], None, 0.0
            return
        self.init, self.prev = theta, theta
        self.dir.mkdir(parents=True, exist_ok=True)
        save_file({"theta0": theta}, str(self.dir / INIT))

    @property
    def init_norm(self) -> float:
        """``||theta_0||`` (1 for all-zero weights), computed once."""
        if self._init_norm is None:
            assert self.init is not None
            self._init_norm = float(self.init.norm()) or 1.0
        return self._init_norm

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        if self.init is None or self.prev is None:
            return
        theta = flat_weights(trainer.model)
        self.sum = theta.clone() if self.sum is None else self.sum + theta
        self.sum_sq += float(theta.pow(2).sum())
        n = len(self.rows) + 1
        mean = self.sum / n
        spread = math.sqrt(max(0.0, self.sum_sq / n - float(mean.pow(2).sum())))
        dist = float((theta - self.init).norm())
        step = float((theta - self.prev).norm())
        path = step + (self.rows[-1]["path_length"] if self.rows else 0.0)
        init_norm = self.init_norm
        self.rows.append({"epoch": int(row.get("epoch", n)), "distance_from_init": dist,
                          "relative_distance": dist / init_norm, "step_length": step, "path_length": path,
                          "straightness": dist / path if path > 0 else 1.0, "spread": spread})
        self.prev = theta
        self.dir.mkdir(parents=True, exist_ok=True)
        save_file({"theta0": self.init, "sum": self.sum}, str(self.dir / INIT))
        (self.dir / FILE).write_text(json.dumps({"parameters": int(theta.numel()), "init_norm": init_norm,
                                                 "sum_sq": self.sum_sq, "epochs": self.rows}, indent=1))
