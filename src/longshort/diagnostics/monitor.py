"""What the trainer asks at every step: may this update reach the weights? And what the run records meanwhile.

:class:`TrainingMonitor` sits between ``backward`` and ``optimizer.step`` (the only place a bad update can still be
stopped). Each step it computes the global and per-module gradient norms, keeps an exponential moving mean and
variance of the global norm, and flags a step whose norm exceeds ``mean + sigma * std`` after a warm-up. The
configured action follows: ``log`` (record and carry on), ``skip`` (no optimizer step), or ``rollback`` (reload
the last checkpoint and lower the learning rate). A non-finite loss or gradient is never applied, whatever the
action. Every ``gates_every`` steps it also runs a fixed probe batch through the model with the LSTMs' gate
statistics on (the fused fast path stays in use for every other forward pass): the first ``gate_sequences``
validation sequences of a classifier, or the source side of the first validation pairs of a seq2seq model
(its encoder LSTMs; the decoder's ``nn.LSTMCell`` steps report no gates).

Files, written by rank 0 under ``RUN_DIR/diagnostics/`` (the report reads them):

- ``steps.csv``: step, epoch, loss, lr, grad_norm, grad_norm_ema, threshold, anomaly (0/1), action
  (none | log | skip | rollback | nonfinite | overflow), then ``grad_norm/<module>`` per top-level module.
- ``gates.csv``: step, layer, direction, gate (input | forget | output | memory), mean, var, low, high, flagged.

TensorBoard gets the same scalars under ``RUN_DIR/tb/diagnostics`` and, per epoch, weight and gradient histograms.

Hand-written because no library does this for a custom loop: torch's anomaly mode finds the op that produced a
NaN (and slows every step), and Lightning/torchtitan log norms but take no action on spikes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from longshort.diagnostics.config import Action as Action
from longshort.diagnostics.config import AnomalyConfig as AnomalyConfig
from longshort.diagnostics.config import DiagnosticsConfig as DiagnosticsConfig

if TYPE_CHECKING:
    from longshort.data.types import TensorData


class Rollback(Exception):  # a control-flow signal, not an error
    """Raised out of the step loop: the trainer reloads its last checkpoint and goes on from there."""


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps: the run cannot recover by skipping."""


_WRAPPERS = ("module", "_checkpoint_wrapped_module", "_orig_mod")  # DDP, activation checkpointing, compile


def _strip(name: str) -> list[str]:
    return [p for p in name.split(".") if p not in _WRAPPERS]


def module_key(name: str, containers: frozenset[str] = frozenset()) -> str:
    """The top-level module a parameter belongs to: ``lstms.0.lstm.weight_ih_l0`` -> ``lstms.0`` when ``lstms``
    is one of the ``containers`` (a ModuleList/ModuleDict: each entry is a block of its own), ``head.0.weight``
    -> ``head`` (a Sequential is one module); wrapper prefixes (DDP, activation checkpointing) are dropped."""
    parts = _strip(name)
    if parts[0] in containers and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def containers_of(model: nn.Module) -> frozenset[str]:
    """Top-level ModuleList/ModuleDict names of ``model`` (through wrappers)."""
    return frozenset(".".join(_strip(n)) for n, m in model.named_modules()
                     if isinstance(m, nn.ModuleList | nn.ModuleDict) and len(_strip(n)) == 1)


class TrainingMonitor:
    """Gradient norms, anomaly actions and gate samples for one training run (see the module docstring)."""

    def __init__(self, cfg: DiagnosticsConfig, model: nn.Module, run_dir: Path | None, *, writes: bool = True,
                 probe: TensorData | Callable[[], object] | None = None, fsdp: bool = False,
                 tensorboard: bool = True) -> None:
        self.cfg, self.model = cfg, model
        self.tensorboard = tensorboard  # train.tensorboard: scalars and histograms under RUN_DIR/tb/diagnostics
        self.dir = None if run_dir is None else run_dir / "diagnostics"
        self.writes = writes and self.dir is not None
        self.fsdp = fsdp
        box = containers_of(model)
        groups = [module_key(n, box) for n, p in model.named_parameters() if p.requires_grad]
        self.modules = sorted(set(groups), key=groups.index)
        self._module_of = torch.tensor([self.modules.index(k) for k in groups])  # parameter -> module row
        self.probe = probe
        # EMA statistics of the global norm over accepted steps; checkpointed so a resumed run flags the same steps
        self.mean, self.var, self.count = 0.0, 0.0, 0
        self.rollbacks, self.nonfinite_run, self.lr_scale = 0, 0, 1.0
        self.anomalies = 0
        self.rows: list[dict[str, Any]] = []
        self.gate_rows: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self.writer: Any = None

    # -- the step ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def norms(self) -> tuple[float, dict[str, float]]:
        """Global and per-module gradient norms (all ranks' shards under FSDP; non-finite values kept)."""
        total, per, _ = self._norms(None)
        return total, per

    def _norms(self, loss: Tensor | None) -> tuple[float, dict[str, float], float]:
        """:meth:`norms` and the value of ``loss``, read from the device together (one host sync per step)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        sq = []
        for p in params:
            g = p.grad
            if g is None:
                sq.append(torch.zeros((), dtype=torch.float32))
                continue
            local = g.to_local() if hasattr(g, "to_local") else g  # an FSDP2 DTensor: this rank's shard
            sq.append(local.detach().float().pow(2).sum())
        if not sq:
            return 0.0, {}, math.nan if loss is None else float(loss)
        dev = next((s.device for s in sq if s.device.type != "cpu"), torch.device("cpu"))
        per_param = torch.stack([s.to(dev) for s in sq])
        if self.cfg.per_module:
            if self._module_of.device != dev:
                self._module_of = self._module_of.to(dev)
            per_mod = torch.zeros(len(self.modules), device=dev).index_add_(0, self._module_of, per_param)
        else:
            per_mod = per_param.sum()[None]
        if self.fsdp and torch.distributed.is_initialized():  # shards are disjoint: squares add up over ranks
            torch.distributed.all_reduce(per_mod)
        extra = [] if loss is None else [loss.detach().float().reshape(1).to(dev)]
        row = torch.cat([per_mod, *extra]).tolist()  # one host sync per step
        values, loss_v = (row[:-1], row[-1]) if extra else (row, math.nan)
        total = math.sqrt(sum(values)) if all(math.isfinite(v) for v in values) else math.nan
        per = {f"grad_norm/{k}": math.sqrt(v) if math.isfinite(v) else math.nan
               for k, v in zip(self.modules, values, strict=True)} if self.cfg.per_module else {}
        return total, per, loss_v

    def threshold(self) -> float:
        return self.mean + self.cfg.anomaly.sigma * math.sqrt(max(self.var, 0.0)) if self.count >= \
            self.cfg.anomaly.warmup else math.inf

    def check(self, loss: Tensor, *, step: int, epoch: int, lr: float, grad_scale: float = 1.0,
              scaler_enabled: bool = False, can_rollback: bool = True) -> str:
        """The verdict for the update in hand: ``apply``, ``skip`` (leave the weights), ``rollback``, or ``scaler``
        (a non-finite fp16 step: let the GradScaler skip it and lower its scale, as it does by design).

        Call after ``backward``, before ``unscale_``, clipping and ``optimizer.step``; ``grad_scale`` is the
        GradScaler's current scale (the gradients in hand are multiplied by it). All ranks compute the same norms
        (gradients are reduced, FSDP squares all-reduced), so they reach the same verdict. Without a checkpoint to
        go back to (``can_rollback`` false) a rollback becomes a skip."""
        a = self.cfg.anomaly
        total, per, loss_v = self._norms(loss)
        if grad_scale != 1.0:
            total, per = total / grad_scale, {k: v / grad_scale for k, v in per.items()}
        # Across ranks only the (reduced) gradient norm is the same everywhere; a rank's own NaN loss makes its
        # gradients, and so everyone's reduced ones, NaN too. In one process the loss is checked as well.
        bad_loss = not math.isfinite(loss_v) and not torch.distributed.is_initialized()
        thr = self.threshold()
        anomaly, action, verdict = False, "none", "apply"
        if not math.isfinite(total) or bad_loss:
            anomaly = True
            # fp16's GradScaler skips inf/NaN steps itself and lowers its scale: an expected overflow, no error
            action, verdict = ("overflow", "scaler") if scaler_enabled else ("nonfinite", "skip")
            self.nonfinite_run += 1
            if self.nonfinite_run >= a.max_nonfinite and not scaler_enabled:
                raise TrainingDiverged(f"{self.nonfinite_run} consecutive steps had a non-finite loss or gradient "
                                       f"(last at step {step}): lower train.optim.lr or enable clipping")
        else:
            self.nonfinite_run = 0
            if total > thr:
                anomaly, action = True, a.action
                spent = self.rollbacks >= a.max_rollbacks or not can_rollback
                if a.action == "skip" or (a.action == "rollback" and spent):
                    action, verdict = "skip", "skip"
                elif a.action == "rollback":
                    verdict = "rollback"
            else:  # statistics from accepted steps only: a spike must not raise its own threshold
                self.count += 1
                # weight max(1/n, 1 - beta): the exact running mean and variance for the first 1/(1-beta) steps
                # (no start-up bias towards the first norm), an exponential moving one after them
                w = max(1.0 / self.count, 1 - a.beta)
                delta = total - self.mean
                self.mean += w * delta
                self.var = (1 - w) * (self.var + w * delta * delta)
        self.anomalies += anomaly
        row = {"step": step, "epoch": epoch, "loss": loss_v, "lr": lr, "grad_norm": total,
               "grad_norm_ema": self.mean, "threshold": thr, "anomaly": int(anomaly), "action": action, **per}
        self.rows.append(row)
        self.last = row
        if self.writer is not None:
            self.writer.add_scalar("grad/norm", total, step)
            for k, v in per.items():
                self.writer.add_scalar(k.replace("grad_norm/", "grad/"), v, step)
            if anomaly:
                self.writer.add_scalar("grad/anomaly", total if math.isfinite(total) else -1.0, step)
        return verdict

    # -- gates ---------------------------------------------------------------------------------------------

    def maybe_sample_gates(self, step: int) -> None:
        """Every ``gates_every`` steps: gate statistics of the fixed probe batch (eval mode, no gradients)."""
        if not self.cfg.gates_every or self.probe is None or step % self.cfg.gates_every:
            return
        from longshort.diagnostics.gates import gate_statistics

        if callable(self.probe):  # a forward over the fixed probe batch that reaches the LSTMs (seq2seq: encode)
            rows = gate_statistics(self.model, call=self.probe)
        else:
            head = self.probe.head(self.cfg.gate_sequences)
            x = head.X.to(next(self.model.parameters()).device)
            rows = gate_statistics(self.model, x, head.lengths.to(x.device))
        for r in rows:
            memory = r["gate"] == "memory"
            layer = r["layer"].removesuffix(".lstm") + (f".l{r['sublayer']}" if r["sublayer"] else "")
            row = {"step": step, "layer": layer, "direction": r["direction"], "gate": r["gate"],
                   "mean": r["utilisation"] if memory else r["mean"], "var": "" if memory else r["var"],
                   "low": "" if memory else r["healthy_low"], "high": "" if memory else r["healthy_high"],
                   "flagged": int(bool(r["flagged"]))}
            self.gate_rows.append(row)
            if self.writer is not None:
                self.writer.add_scalar(f"gates/{layer}/{r['direction']}/{r['gate']}", row["mean"], step)

    # -- epochs, files, state ------------------------------------------------------------------------------

    def on_fit_start(self, step: int) -> None:
        """Open the files; after a resume, drop rows of steps the interrupted run did past its checkpoint."""
        if not self.writes:
            return
        assert self.dir is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("steps.csv", "gates.csv"):
            _truncate_after(self.dir / name, step)
        if not self.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.dir.parent / "tb" / "diagnostics"))

    def on_epoch_end(self, epoch: int, step: int) -> None:
        if self.writer is not None and self.cfg.histograms:
            for name, p in self.model.named_parameters():
                w = p.detach().to_local() if hasattr(p, "to_local") else p.detach()
                self.writer.add_histogram(f"weights/{name}", w.float().cpu(), step)
                if p.grad is not None:
                    g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                    self.writer.add_histogram(f"grads/{name}", g.detach().float().cpu(), step)
        self.flush()

    def flush(self) -> None:
        if not self.writes:
            self.rows, self.gate_rows = [], []
            return
        assert self.dir is not None
        if self.rows or self.gate_rows:
            self.dir.mkdir(parents=True, exist_ok=True)  # also when a loop runs epochs without fit()
        base = ["step", "epoch", "loss", "lr", "grad_norm", "grad_norm_ema", "threshold", "anomaly", "action"]
        per = [f"grad_norm/{k}" for k in self.modules] if self.cfg.per_module else []
        _append(self.dir / "steps.csv", base + per, self.rows)
        gate_cols = ["step", "layer", "direction", "gate", "mean", "var", "low", "high", "flagged"]
        _append(self.dir / "gates.csv", gate_cols, self.gate_rows)
        self.rows, self.gate_rows = [], []
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count, "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale, "anomalies": self.anomalies}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        """A checkpoint's statistics. (After a rollback the trainer puts the run's own ``rollbacks`` and
        ``lr_scale`` back: reloading an older checkpoint must not forget that the rollback happened.)"""
        self.mean, self.var, self.count = float(s["mean"]), float(s["var"]), int(s["count"])
        self.anomalies = int(s.get("anomalies", 0))
        self.rollbacks, self.lr_scale = int(s.get("rollbacks", 0)), float(s.get("lr_scale", 1.0))


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
    if len(keep) != len(rows):
        with path.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(keep)


def _append(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="", lineterminator="\n")
        if new:
            w.writeheader()
        w.writerows(rows)
