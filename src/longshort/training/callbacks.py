"""Things the trainer loop calls at fixed points: progress bar, history.csv, TensorBoard, early stopping.

The loop stays readable because each concern lives here as a small object with a few hooks
(``on_fit_start``, ``on_step``, ``on_epoch_end``, ``on_fit_end``); the trainer only calls them.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from longshort.training.config import LOWER_IS_BETTER as LOWER_IS_BETTER
from longshort.training.config import EarlyStoppingConfig as EarlyStoppingConfig


class Trainer(Protocol):
    """What the callbacks read of :class:`longshort.training.trainer.Trainer` (a protocol: the trainer imports
    this module, so this module does not import it back)."""

    cfg: Any  # its TrainConfig (epochs)
    history: list[dict[str, float]]


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int, n_batches: int, start_batch: int) -> None: ...

    def on_step(self, trainer: Trainer, stats: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


class ProgressBar(Callback):
    """A rich bar per epoch with running loss, accuracy, samples/s and ETA; one summary line per epoch."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[metric]} {task.fields[acc]:.3f}  "
                       "{task.fields[sps]:.0f} samples/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.progress.start()

    def on_epoch_start(self, trainer: Trainer, epoch: int, n_batches: int, start_batch: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = f"{epoch + 1}/{trainer.cfg.epochs}"
        self.task = self.progress.add_task("", total=n_batches, completed=start_batch, epoch=label, loss=0.0, acc=0.0,
                                           sps=0.0, metric="acc")

    def on_step(self, trainer: Trainer, stats: dict[str, float]) -> None:
        metric = {"accuracy": "acc"}.get(str(stats.get("metric", "accuracy")), str(stats.get("metric")))
        self.progress.update(self.task, completed=stats["batch"], loss=stats["loss"], acc=stats["accuracy"],
                             sps=stats["samples_per_s"], metric=metric)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
        self.progress.console.print(f"epoch {int(row['epoch'])}/{trainer.cfg.epochs}  {shown}")

    def on_fit_end(self, trainer: Trainer) -> None:
        self.progress.stop()


class PlainProgress(Callback):
    """One line per epoch, for logs and pipes."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
        print(f"epoch {int(row['epoch'])}/{trainer.cfg.epochs}  {shown}", file=sys.stderr, flush=True)


class HistoryCSV(Callback):
    """``history.csv``: one row per epoch. Rewritten whole from the trainer's history, so resume stays exact."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        rows = trainer.history
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)


class TensorBoard(Callback):
    """Per-epoch scalars under ``RUN_DIR/tb`` (``tensorboard --logdir RUN_DIR/tb``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: it pulls in tensorboard

        self.writer = SummaryWriter(str(log_dir))

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float]) -> None:
        for k, v in row.items():
            if k not in ("epoch", "step"):
                self.writer.add_scalar(k.replace("_", "/", 1), v, int(row["epoch"]))
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.close()


class EarlyStopping:
    """Tracks the best value of one validation metric; its state is saved in every checkpoint."""

    def __init__(self, cfg: EarlyStoppingConfig, default_metric: str = "val_f1_macro") -> None:
        self.cfg = cfg
        self.metric = default_metric if cfg.metric == "auto" else cfg.metric
        self.sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, row: dict[str, float]) -> bool:
        """Record this epoch; True when it is the best so far."""
        if self.metric not in row:
            from longshort.errors import ConfigError

            raise ConfigError(f"train.early_stopping.metric={self.metric} is not measured by this task (it "
                              f"measures {', '.join(k for k in row if k.startswith('val_'))})")
        value = self.sign * row[self.metric]
        if value > self.best + self.cfg.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, int(row["epoch"]), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience

    @property
    def best_value(self) -> float:
        return self.sign * self.best

    def state_dict(self) -> dict[str, float | int]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = float(s["best"]), int(s["best_epoch"]), int(s["bad_epochs"])
