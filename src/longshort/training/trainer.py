"""The training loop: one straight read from the first batch to the last checkpoint.

Per batch: forward (under autocast when asked) -> loss -> backward -> clip -> optimizer -> schedule.
Per epoch: validate -> history row -> callbacks (progress, history.csv, TensorBoard) -> best/last checkpoint
-> early stopping. Everything needed to continue exactly (weights, optimizer, schedule, RNG, the position in
the epoch, history, early-stopping state) is in each checkpoint; the data order is a function of
(seed, epoch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from longshort.data.batching import Batch, TensorData, batch_indices, epoch_order, take
from longshort.evaluate.predict import batched_proba
from longshort.training.callbacks import Callback, EarlyStopping, EarlyStoppingConfig
from longshort.training.checkpoint import checkpoint_path, load_state, load_weights, save_checkpoint
from longshort.training.losses import LossConfig, build_loss
from longshort.training.optim import OptimConfig, ScheduleConfig, build_optimizer, build_schedule


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA GPUs that support it, fp32 elsewhere"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps inside an epoch; 0 = off")
    log_every: int = Field(10, ge=1, description="steps between progress-bar updates (each reads the loss)")
    progress: Literal["auto", "rich", "plain", "off"] = Field(
        "auto", description="auto: a rich bar on a terminal, a line per epoch otherwise"
    )
    tensorboard: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from longshort.errors import ConfigError

        raise ConfigError("train.device=cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. CPU defaults to fp32: autocast there breaks ``nn.LSTM``."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train: TensorData,
        val: TensorData | None,
        *,
        num_classes: int,
        seed: int,
        run_dir: Path,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg, self.seed, self.run_dir = cfg, seed, run_dir
        self.device = resolve_device(cfg.device)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.model = model.to(self.device)
        self.train_data, self.val_data = train, val
        self.num_classes = num_classes
        self.callbacks = callbacks or []
        assert train.y is not None
        self.loss_fn = build_loss(cfg.loss, train.y.to(self.device), num_classes)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.steps_per_epoch = -(-len(train) // cfg.batch_size)
        self.schedule = build_schedule(
            self.optimizer, cfg.schedule, cfg.epochs * self.steps_per_epoch, cfg.optim.lr
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.early = EarlyStopping(cfg.early_stopping)
        self.ckpt_dir = run_dir / "checkpoints"
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.finished = False
        # Running sums of the epoch in progress (loss * n, correct, n), checkpointed so a resumed epoch
        # reports the same train loss and accuracy as an uninterrupted one.
        self.epoch_sums = (0.0, 0, 0)

    # -- one step -------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def compute_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(loss, logits) for one batch; the auxiliary loss joins when the batch has an aux target."""
        with self.autocast():
            out = self.model(batch.x, batch.lengths)
        assert batch.y is not None
        loss = self.loss_fn(out.logits, batch.y)
        if batch.aux is not None and self.cfg.loss.aux_weight > 0:
            loss = loss + self.cfg.loss.aux_weight * F.mse_loss(out.aux.float(), batch.aux)
        return loss, out.logits

    def train_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Forward, backward, clip, update, schedule. Returns (loss, correct count) as tensors (no sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self.compute_loss(batch)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return loss.detach(), (logits.detach().argmax(1) == batch.y).sum()

    # -- the loop --------------------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, Batch]]:
        idx = batch_indices(epoch_order(len(self.train_data), self.seed, epoch), self.cfg.batch_size)
        for i in range(start, len(idx)):
            yield i, take(self.train_data, idx[i], self.device)

    def fit(self) -> list[dict[str, float]]:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.epoch < self.cfg.epochs and not self.finished:
                self._run_epoch()
            self.finished = True
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.history

    def _run_epoch(self) -> None:
        cfg, epoch = self.cfg, self.epoch
        self.model.train()
        for m in self.model.modules():  # epoch-driven modules, e.g. the LSTM's adaptive dropout schedule
            hook = getattr(m, "on_epoch", None)
            if callable(hook):
                hook(epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch, self.steps_per_epoch, self.batch)
        prev_loss, prev_correct, prev_seen = self.epoch_sums if self.batch else (0.0, 0, 0)
        loss_sum = torch.full((), prev_loss, dtype=torch.float64, device=self.device)
        correct = torch.full((), prev_correct, dtype=torch.long, device=self.device)
        seen, new, t0 = prev_seen, 0, time.perf_counter()
        for i, batch in self._batches(epoch, self.batch):
            loss, ok = self.train_step(batch)
            loss_sum += loss.double() * len(batch)
            correct += ok
            seen, new = seen + len(batch), new + len(batch)
            self.batch, self.step = i + 1, self.step + 1
            if self.batch % cfg.log_every == 0 or self.batch == self.steps_per_epoch:
                stats = {"batch": self.batch, "loss": loss_sum.item() / seen, "accuracy": correct.item() / seen,
                         "samples_per_s": new / (time.perf_counter() - t0)}
                for cb in self.callbacks:
                    cb.on_step(self, stats)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch < self.steps_per_epoch:
                self.epoch_sums = (loss_sum.item(), int(correct.item()), seen)
                self.save(["last"])
        elapsed = time.perf_counter() - t0
        row: dict[str, float] = {"epoch": epoch + 1, "step": self.step,
                                 "train_loss": loss_sum.item() / max(seen, 1),
                                 "train_accuracy": correct.item() / max(seen, 1),
                                 "samples_per_s": new / elapsed if new else 0.0,
                                 "lr": self.schedule.get_last_lr()[0]}
        if self.val_data is not None:
            m = self.evaluate(self.val_data)
            row |= {"val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_f1_macro": m["f1_macro"]}
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        improved = self.val_data is None or self.early.update(row)
        if self.val_data is not None and self.early.should_stop:
            self.finished = True
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        self.save(["last", "best"] if improved else ["last"])

    def predict_proba(self, data: TensorData) -> Tensor:
        """Class probabilities [N, K] in data order, in eval mode."""
        return batched_proba(self.model, data, self.cfg.eval_batch_size, self.autocast)

    def evaluate(self, data: TensorData) -> dict[str, float]:
        from sklearn.metrics import f1_score

        assert data.y is not None
        proba = self.predict_proba(data)
        y = data.y
        loss = F.nll_loss(torch.log(proba.clamp_min(1e-12)), y).item()
        pred = proba.argmax(1)
        return {
            "loss": loss,
            "accuracy": (pred == y).float().mean().item(),
            "f1_macro": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)),
        }

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "early_stopping": self.early.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "finished": self.finished,
            "history": self.history,
            "epoch_sums": list(self.epoch_sums),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, tags: list[str]) -> None:
        save_checkpoint(self.ckpt_dir, tags, self.model, self.state_dict(), self.step)

    def restore(self, tag: str = "last") -> bool:
        """Load checkpoint ``tag`` if there is one; True when something was restored."""
        path = checkpoint_path(self.ckpt_dir, tag)
        if path is None:
            return False
        load_weights(self.model, path / "model.safetensors")
        s = load_state(path)
        self.optimizer.load_state_dict(s["optimizer"])
        self.schedule.load_state_dict(s["schedule"])
        self.scaler.load_state_dict(s["scaler"])
        self.early.load_state_dict(s["early_stopping"])
        torch.set_rng_state(s["rng_cpu"])
        if "rng_cuda" in s and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["rng_cuda"], self.device)
        self.epoch, self.batch, self.step = int(s["epoch"]), int(s["batch"]), int(s["step"])
        self.finished = bool(s["finished"])
        self.history = list(s["history"])
        loss_sum, correct, seen = s["epoch_sums"]
        self.epoch_sums = (float(loss_sum), int(correct), int(seen))
        return True
