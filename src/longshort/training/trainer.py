"""The one training loop, for every task: one straight read from the first batch to the last checkpoint.

Per epoch: phase settings (learning rate, dropout, clipping, batch size) -> the modules' ``on_epoch`` hooks ->
the task's epoch set-up and plan (which examples, in which order) -> batches. Per batch: the task's
micro-batches -> its loss (forward under autocast when asked) -> backward -> monitor -> clip -> gradient noise
-> optimizer (Lookahead when on) -> schedule (per batch). After the epoch: schedule (per epoch) -> the task's
validation -> history row -> callbacks (progress, history.csv, TensorBoard) -> monitor -> best/last checkpoint
-> early stopping. A task (:class:`Task`: ``training/classify.py``, ``training/seq2seq_task.py``) supplies only
what differs; a new task is a new file, never a new loop.

Everything needed to continue exactly (weights, optimizer incl. Lookahead's slow weights, schedule, clipping and
noise state, curriculum scores, RNG, the position in the epoch, history, early stopping) is in each checkpoint;
the data order and every random draw (augmentation, mixup, scheduled sampling, gradient noise) are functions of
(seed, purpose, epoch, batch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from longshort.data.batching import batch_indices
from longshort.diagnostics.monitor import DiagnosticsConfig, Rollback, TrainingMonitor
from longshort.training import curriculum as cur
from longshort.training import precision
from longshort.training.callbacks import Callback, EarlyStopping
from longshort.training.checkpoint import (
    checkpoint_path,
    loop_state,
    restore_loop_state,
    save_checkpoint,
    save_distributed_checkpoint,
)
from longshort.training.config import TrainConfig as TrainConfig
from longshort.training.distributed import (
    DistContext,
    DistributedConfig,
    all_sum,
    device_for,
    fsdp_no_sync,
    local_part,
    parallelize,
)
from longshort.training.optim import (
    GradClipper,
    GradNoise,
    Lookahead,
    build_optimizer,
    build_schedule,
    scale_learning_rate,
)
from longshort.training.recipes import PhaseConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from longshort.errors import ConfigError

        raise ConfigError("train.device=cuda but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, model: nn.Module | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (``auto``: :func:`longshort.training.precision.resolve`)."""
    return precision.resolve(name, device, model).dtype


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixes them well; adjacent tuples give unrelated seeds)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


#: Purposes of the trainer's own random streams (a task numbers its own from 10 on).
_PURPOSE = {"noise": 3}


class Task(Protocol):
    """What one kind of model (classify, seq2seq, ...) supplies to the one :class:`Trainer`.

    The trainer owns the loop and everything every task shares: device, precision, DDP/FSDP2, optimizer,
    schedules, phases, clipping, gradient noise, accumulation, the monitor, callbacks, checkpoints, exact resume,
    early stopping and the modules' ``on_epoch`` hooks. A task owns its data and what differs: which examples an
    epoch visits, how a batch is drawn and turned into a loss, what validation measures, and any state of its
    own that a checkpoint must carry. ``bind`` is called once by the trainer, which the task keeps as
    ``self.tr`` (its model, device, autocast, epoch and step are what the task's methods read).
    """

    #: the early-stopping metric when ``train.early_stopping.metric`` is auto
    default_metric: str
    #: the names of the running sums ``loss`` returns, in a fixed order (``n``, the examples, is one of them)
    sums: tuple[str, ...]
    train_data: Any  # has __len__
    val_data: Any | None

    def bind(self, trainer: Trainer) -> None: ...

    def epoch_size(self, epoch: int) -> int:
        """Training examples in ``epoch`` (from the data's shape only: the step count of every epoch is known at
        the start, for the schedule)."""
        ...

    def begin_epoch(self, epoch: int) -> None:
        """Per-epoch set-up before the first batch (curriculum scores, task weights, ...)."""
        ...

    def plan(self, epoch: int) -> cur.EpochPlan:
        """The example indices of ``epoch`` in order (and a length limit): a function of the seed and the epoch."""
        ...

    def take(self, idx: Tensor, plan: cur.EpochPlan) -> Any:
        """The batch of examples ``idx`` on the trainer's device."""
        ...

    def micro_batches(self, batch: Any, k: int) -> list[tuple[Any, float]]:
        """The batch as it trains (after augmentation and the like), in ``k`` parts (or fewer, when it must stay
        one piece), each with its share of the batch."""
        ...

    def loss(self, batch: Any, part: int) -> tuple[Tensor, dict[str, Tensor | float]]:
        """(the loss to minimise, the running sums' increments of this part of the batch)."""
        ...

    def summary(self, sums: dict[str, float], fresh: dict[str, float], elapsed: float) -> dict[str, float]:
        """The epoch's train_* history columns from its running sums (``fresh``: those of this process only)."""
        ...

    def validate(self) -> dict[str, float]:
        """The val_* history columns (called only with a validation split)."""
        ...

    def evaluate(self, data: Any) -> dict[str, float]: ...

    def gate_probe(self, n: int) -> Any:
        """What the monitor runs the model on to sample gate statistics (of ``n`` sequences): data it can feed, or
        a callable."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Trainer:
    """The one training loop. Per epoch: phase settings (learning rate, dropout, clipping, batch size) -> the
    modules' ``on_epoch`` hooks -> the task's epoch set-up and plan -> batches. Per batch: the task's micro-batches
    -> forward and loss under autocast (the task's) -> backward (gradients synchronised on the last micro-batch)
    -> monitor -> clip -> gradient noise -> optimizer -> schedule. After the epoch: schedule (per epoch) ->
    validation -> history row -> callbacks -> monitor -> checkpoints -> early stopping."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        task: Task,
        *,
        seed: int,
        run_dir: Path,
        callbacks: list[Callback] | None = None,
        distributed: DistributedConfig | None = None,
        ctx: DistContext | None = None,
        diagnostics: DiagnosticsConfig | None = None,
    ) -> None:
        self.cfg, self.seed, self.run_dir = cfg, seed, run_dir
        self.dist = ctx or DistContext()
        self.dist_cfg = distributed or DistributedConfig()
        self.device = device_for(self.dist, resolve_device(cfg.device))
        self.amp_dtype = self._resolve_precision(model)
        self.model = parallelize(model.to(self.device), self.dist_cfg, self.dist, self.device)
        if self.dist.enabled:  # one set of initial weights (broadcast), then each rank its own dropout stream
            torch.manual_seed(_seed_for(seed, 7, self.dist.rank))
        self._loss_scale = 1.0  # world * n_rank / n_global for the batch in hand (1 in one process)
        self._local_n = 0  # this rank's examples in the batch in hand
        self.task = task
        self.train_data, self.val_data = task.train_data, task.val_data
        self.callbacks = callbacks or []
        self.phases = cfg.resolved_phases()
        self.phase_starts = list(np.cumsum([0] + [p.epochs for p in self.phases]))
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        task.bind(self)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.clipper = GradClipper(cfg.optim)
        self.noise = GradNoise(cfg.optim.grad_noise)
        self._dropout0 = {
            name: (m.p if isinstance(m, nn.Dropout) else m.dropout)
            for name, m in self.model.named_modules()
            if isinstance(m, (nn.Dropout, nn.MultiheadAttention))
        }
        self.steps_per_epoch = self.steps_in_epoch(0)
        self.schedule = build_schedule(self.optimizer, cfg.schedule, self._schedule_length(), cfg.optim.lr)
        self.scaler = self._grad_scaler()
        self.early = EarlyStopping(cfg.early_stopping, default_metric=task.default_metric)
        self.ckpt_dir = run_dir / "checkpoints"
        self.finished = False
        # Named running sums of the epoch in progress, checkpointed so a resumed epoch reports the same training
        # columns as an uninterrupted one.
        self.epoch_sums: dict[str, float] = dict.fromkeys(task.sums, 0.0)
        self.last_grad_norm = 0.0
        diag = diagnostics or DiagnosticsConfig()
        # gradient norms, spike/NaN actions and gate samples (diagnostics/monitor.py); files from rank 0 only
        self.monitor = TrainingMonitor(diag, self.model, run_dir, writes=self.dist.rank == 0,
                                       probe=task.gate_probe(diag.gate_sequences),
                                       fsdp=self.dist_cfg.strategy == "fsdp", tensorboard=cfg.tensorboard
                                       ) if diag.enabled else None
        self._has_checkpoint = False

    def _resolve_precision(self, model: nn.Module) -> torch.dtype | None:
        """The autocast dtype of ``train.precision``. ``auto`` on a CPU is decided once (rank 0's probe, for
        every rank), said on rank 0's output and written back into the config (``config.yaml`` then records it,
        so a resumed run computes as this one did)."""
        choice = precision.resolve(self.cfg.precision, self.device, model) if self.dist.is_main else None
        if self.dist.enabled:
            import torch.distributed as dist

            shared = [None if choice is None else (choice.name, choice.note)]
            dist.broadcast_object_list(shared, src=0)
            name, note = shared[0]  # type: ignore[misc]
            choice = precision.Choice(precision.resolve(name, self.device).dtype, note)
        assert choice is not None
        if choice.note is not None and self.dist.is_main:
            print(f"auto: {choice.note}")
        if self.cfg.precision == "auto" and self.device.type == "cpu":
            self.cfg.precision = choice.name  # type: ignore[assignment]
        mp = self.dist_cfg.mixed_precision if self.dist.enabled and self.dist_cfg.strategy == "fsdp" else "none"
        if mp != "none" and choice.dtype is not None and choice.name != mp:
            from longshort.errors import ConfigError

            raise ConfigError(f"train.precision={choice.name} autocasts to another dtype than "
                              f"distributed.mixed_precision={mp}: set train.precision={mp} or fp32")
        return choice.dtype

    def _grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 (autocast or FSDP's fp16 parameters) steps through a loss scaler; under FSDP torch's sharded one,
        which agrees on a skipped step across ranks (its inf/NaN check is all-reduced over the shards)."""
        fsdp = self.dist.enabled and self.dist_cfg.strategy == "fsdp"
        fp16 = self.amp_dtype == torch.float16 or (fsdp and self.dist_cfg.mixed_precision == "fp16")
        if fsdp:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            return ShardedGradScaler(self.device.type, enabled=fp16)
        return torch.amp.GradScaler(self.device.type, enabled=fp16)

    # -- phases: what an epoch looks like -----------------------------------------------------------------

    def phase_index(self, epoch: int) -> int | None:
        """The 0-based index of the phase ``epoch`` (0-based) falls in, or None without phases."""
        if not self.phases:
            return None
        return next((i for i in range(len(self.phases)) if epoch < self.phase_starts[i + 1]), len(self.phases) - 1)

    def phase(self, epoch: int) -> PhaseConfig | None:
        """The phase that ``epoch`` (0-based) falls in, or None without phases."""
        i = self.phase_index(epoch)
        return None if i is None else self.phases[i]

    def batch_size(self, epoch: int) -> int:
        p = self.phase(epoch)
        return p.batch_size if p is not None and p.batch_size is not None else self.cfg.batch_size

    def _scheduled(self, epoch: int) -> bool:
        """Whether the schedule drives the learning rate in ``epoch`` (not when a phase fixes it)."""
        p = self.phase(epoch)
        return p is None or p.lr is None

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-self.task.epoch_size(epoch) // self.batch_size(epoch))

    def _schedule_length(self) -> int:
        """Schedule steps over the run, in its interval (batches or epochs), counting scheduled epochs only."""
        epochs = [e for e in range(self.cfg.epochs) if self._scheduled(e)]
        if self.cfg.schedule.interval == "epoch":
            return max(len(epochs), 1)
        return max(sum(self.steps_in_epoch(e) for e in epochs), 1)

    def _apply_phase(self, epoch: int) -> None:
        """Set the phase's dropout, learning rate and clipping threshold (or restore the run's own)."""
        p = self.phase(epoch)
        if not self.phases:
            return
        for name, m in self.model.named_modules():
            if name in self._dropout0:
                rate = p.dropout if p is not None and p.dropout is not None else self._dropout0[name]
                if isinstance(m, nn.Dropout):
                    m.p = rate
                else:
                    m.dropout = rate
        if p is not None and p.lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = p.lr
        else:
            for g, lr in zip(self.optimizer.param_groups, self.schedule.get_last_lr(), strict=True):
                g["lr"] = lr
        threshold = self.cfg.optim.grad_clip
        if p is not None and p.grad_clip is not None:
            threshold = p.grad_clip or None  # 0 turns clipping off for the phase
        self.clipper.threshold = threshold

    def generator(self, purpose: int, epoch: int, batch: int = 0, *more: int) -> torch.Generator:
        """A generator seeded by (seed, purpose, epoch, batch, ...): every random draw of a step is replayed
        exactly by a resumed run. Tasks number their purposes from 10 on."""
        return torch.Generator().manual_seed(_seed_for(self.seed, purpose, epoch, batch, *more))

    # -- one step -------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batch: Any) -> dict[str, Tensor | float]:
        """One update on ``batch``. Returns the batch's running-sum increments (tensors: no sync) and, as
        ``loss``'s companion ``batch_loss``, the loss the monitor judged."""
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.task.micro_batches(batch, min(self.cfg.grad_accum_steps, len(batch)))
        loss = torch.zeros((), device=self.device)
        stats: dict[str, Tensor | float] = {}
        for j, (mb, share) in enumerate(parts):
            # gradient accumulation: each part's loss weighted by its share of the batch, gradients synchronised
            # across ranks only on the last part; the same gradient as the whole batch at once
            with self._grad_sync(j == len(parts) - 1):
                lj, sj = self.task.loss(mb, j)
                self.scaler.scale(lj * share * self._loss_scale).backward()
            loss = loss + lj.detach() * share
            for k, v in sj.items():
                stats[k] = stats[k] + v if k in stats else v
        verdict = self._guarded_update(loss)
        # the schedule follows the data position, skipped step or not (a resumed run stays aligned)
        if self.cfg.schedule.interval == "batch" and self._scheduled(self.epoch):
            _step_schedule(self.schedule, verdict)
        return stats | {"batch_loss": loss}

    def _guarded_update(self, loss: Tensor) -> str:
        """After ``backward``: ask the monitor, then clip, add gradient noise and step.

        Returns the verdict: ``apply`` / ``scaler`` (stepped), ``skip`` (gradients dropped, no optimizer step: the
        update never reaches the weights nor the optimizer's moments); raises :class:`Rollback` for a rollback."""
        verdict = "apply"
        if self.monitor is not None:
            enabled = self.scaler.is_enabled()
            verdict = self.monitor.check(loss, step=self.step + 1, epoch=self.epoch + 1,
                                         lr=self.optimizer.param_groups[0]["lr"],
                                         grad_scale=self.scaler.get_scale() if enabled else 1.0,
                                         scaler_enabled=enabled, can_rollback=self._has_checkpoint)
        if verdict in ("rollback", "skip"):
            self.optimizer.zero_grad(set_to_none=True)
            if verdict == "rollback":
                raise Rollback
            assert self.monitor is not None
            self.last_grad_norm = self.monitor.last["grad_norm"]
            return verdict
        self.scaler.unscale_(self.optimizer)
        self.last_grad_norm = self.clipper.clip(self.model)
        self.noise.apply(self.model, self.epoch, self.generator(_PURPOSE["noise"], self.epoch, self.batch))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return verdict

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        if sync or not self.dist.enabled:
            return contextlib.nullcontext()
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return fsdp_no_sync(self.model)

    # -- the loop --------------------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, Any]]:
        plan = self.task.plan(epoch)
        idx = batch_indices(plan.order, self.batch_size(epoch))
        for i in range(start, len(idx)):
            local = local_part(idx[i], self.dist)
            # world * n_rank / n_global: the ranks' averaged gradient is the global batch's mean gradient; a rank
            # left without examples (a last batch smaller than the world) runs one at weight 0 for the collectives
            self._loss_scale = self.dist.world * len(local) / len(idx[i])
            self._local_n = len(local)
            if len(local) == 0:
                local = idx[i][:1]
            yield i, self.task.take(local, plan)

    def fit(self) -> list[dict[str, float]]:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        if self.monitor is not None:
            self.monitor.on_fit_start(self.step)
            if self.monitor.cfg.anomaly.action == "rollback" and not self._has_checkpoint:
                self.save(["last"])  # something to roll back to before the first epoch's checkpoint
        try:
            while self.epoch < self.cfg.epochs and not self.finished:
                try:
                    self._run_epoch()
                except Rollback:
                    self._rollback()
            self.finished = True
        finally:
            if self.monitor is not None:
                self.monitor.close()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.history

    def _rollback(self) -> None:
        """Back to the last checkpoint, with the learning rate times ``diagnostics.anomaly.lr_factor``."""
        m = self.monitor
        assert m is not None
        rollbacks, target = m.rollbacks + 1, m.lr_scale * m.cfg.anomaly.lr_factor
        at = self.step + 1
        self.restore("last")  # weights, optimizer, schedule, RNG, data position, the monitor's statistics
        scale_learning_rate(self.optimizer, self.schedule, target / m.lr_scale)  # relative to the checkpoint's
        m.rollbacks, m.lr_scale = rollbacks, target
        print(f"diagnostics: gradient spike at step {at}: rolled back to step {self.step}, learning rate "
              f"x{target:.3g} (rollback {rollbacks} of {m.cfg.anomaly.max_rollbacks})", file=sys.stderr)

    def _run_epoch(self) -> None:
        cfg, epoch, names = self.cfg, self.epoch, self.task.sums
        self.model.train()
        self._apply_phase(epoch)
        self.task.begin_epoch(epoch)
        self.steps_per_epoch = self.steps_in_epoch(epoch)
        for m in self.model.modules():  # epoch-driven modules, e.g. the LSTM's adaptive dropout schedule
            hook = getattr(m, "on_epoch", None)
            if callable(hook):
                hook(epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch, self.steps_per_epoch, self.batch)
        prev = self.epoch_sums if self.batch else dict.fromkeys(names, 0.0)
        sums = {k: torch.full((), float(prev.get(k, 0.0)), dtype=torch.float64, device=self.device) for k in names}
        fresh = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in names}
        t0 = time.perf_counter()

        def totals(d: dict[str, Tensor]) -> dict[str, float]:
            return {k: float(v) for k, v in d.items()}

        for i, batch in self._batches(epoch, self.batch):
            stats = self.train_step(batch)
            if self._local_n:  # 0: this rank ran a stand-in example for the collectives only
                for k in names:
                    if k in stats:
                        sums[k] += stats[k]
                        fresh[k] += stats[k]
            self.batch, self.step = i + 1, self.step + 1
            if self.monitor is not None:
                self.monitor.maybe_sample_gates(self.step)
            if self.batch % cfg.log_every == 0 or self.batch == self.steps_per_epoch:
                row = self.task.summary(totals(sums), totals(fresh), time.perf_counter() - t0)
                key = getattr(self.task, "progress_metric", "train_accuracy")  # the bar's second figure
                progress = {"batch": self.batch, "loss": row["train_loss"], "accuracy": row[key],
                            "metric": key.removeprefix("train_"),
                            "samples_per_s": float(fresh["n"]) / (time.perf_counter() - t0)}
                for cb in self.callbacks:
                    cb.on_step(self, progress)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch < self.steps_per_epoch:
                # the epoch so far, all ranks
                self.epoch_sums = dict(zip(names, all_sum([float(sums[k]) for k in names], self.dist, self.device),
                                           strict=True))
                self.save(["last"])
        elapsed = time.perf_counter() - t0
        done, new = totals(sums), totals(fresh)
        if self.dist.enabled:  # the epoch's totals over all ranks
            done = dict(zip(names, all_sum([done[k] for k in names], self.dist, self.device), strict=True))
            new = dict(zip(names, all_sum([new[k] for k in names], self.dist, self.device), strict=True))
        if isinstance(self.optimizer, Lookahead) and cfg.optim.lookahead.sync_each_epoch:
            self.optimizer.sync()
        lr = self.optimizer.param_groups[0]["lr"]
        if cfg.schedule.interval == "epoch" and self._scheduled(epoch):
            self.schedule.step()
        row: dict[str, float] = {"epoch": epoch + 1, "step": self.step}
        row |= self.task.summary(done, new, elapsed)
        row["samples_per_s"] = new["n"] / elapsed if new["n"] else 0.0
        row["lr"] = lr
        phase = self.phase_index(epoch)
        if phase is not None:
            row["phase"] = phase + 1
        if self.val_data is not None:
            row |= self.task.validate()
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        self.epoch_sums = dict.fromkeys(names, 0.0)
        improved = self.val_data is None or self.early.update(row)
        if self.val_data is not None and self.early.should_stop:
            self.finished = True
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        if self.monitor is not None:
            self.monitor.on_epoch_end(epoch + 1, self.step)
        self.save(["last", "best"] if improved else ["last"])

    def evaluate(self, data: Any, **kwargs: Any) -> dict[str, float]:
        """The task's metrics on ``data`` (eval mode)."""
        return self.task.evaluate(data, **kwargs)  # type: ignore[call-arg]

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        diag = {} if self.monitor is None else {"diagnostics": self.monitor.state_dict()}
        return loop_state(self) | {"epoch_sums": dict(self.epoch_sums), "task": self.task.state_dict()} | diag

    def save(self, tags: list[str]) -> None:
        if self.monitor is not None:
            self.monitor.flush()  # the rows up to this checkpoint are on disk before it is
        self._has_checkpoint = True
        if self.dist.enabled:
            save_distributed_checkpoint(self.ckpt_dir, tags, self.model, self.optimizer, self.state_dict(), self.step,
                                        self.dist.rank)
        else:
            save_checkpoint(self.ckpt_dir, tags, self.model, self.state_dict(), self.step)

    def restore(self, tag: str = "last") -> bool:
        """Load checkpoint ``tag`` if there is one; True when something was restored."""
        path = checkpoint_path(self.ckpt_dir, tag)
        if path is None:
            return False
        s = restore_loop_state(self, path)
        saved = s["epoch_sums"]
        if not isinstance(saved, dict):  # checkpoints before the one loop kept the sums as a list, in order
            saved = dict(zip(self.task.sums, saved, strict=False))
        self.epoch_sums = {k: float(saved.get(k, 0.0)) for k in self.task.sums}
        if self.dist.rank != 0:  # the saved sums are all ranks' together: rank 0 carries them on
            self.epoch_sums = dict.fromkeys(self.task.sums, 0.0)
        self.task.load_state_dict(s.get("task", s))
        if self.monitor is not None and "diagnostics" in s:
            self.monitor.load_state_dict(s["diagnostics"])
        self._has_checkpoint = True
        return True


def _step_schedule(schedule: Any, verdict: str) -> None:
    """``schedule.step()`` after the update of ``verdict``: also after a skipped one (the schedule follows the data
    position), without torch's warning about a scheduler step with no optimizer step before it."""
    with warnings.catch_warnings():
        if verdict == "skip":
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        schedule.step()
