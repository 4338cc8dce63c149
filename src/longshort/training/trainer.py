"""The training loop: one straight read from the first batch to the last checkpoint.

Per epoch: phase settings (learning rate, dropout, clipping, batch size) -> curriculum (which examples, in which
order, how long) -> batches. Per batch: augmentation and mixup -> forward (under autocast when asked) -> weighted
main + auxiliary loss -> backward -> clip -> gradient noise -> optimizer (Lookahead when on) -> schedule (per
batch). After the epoch: schedule (per epoch) -> validate -> history row -> callbacks (progress, history.csv,
TensorBoard) -> best/last checkpoint -> early stopping.

Everything needed to continue exactly (weights, optimizer incl. Lookahead's slow weights, schedule, clipping and
noise state, curriculum scores, RNG, the position in the epoch, history, early stopping) is in each checkpoint;
the data order and every random draw of augmentation, mixup and gradient noise are functions of (seed, epoch,
batch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from longshort.data.batching import Batch, TensorData, batch_indices, take
from longshort.diagnostics.monitor import DiagnosticsConfig, Rollback, TrainingMonitor
from longshort.evaluate.predict import batched_outputs, batched_proba
from longshort.training import curriculum as cur
from longshort.training.augment import AugmentConfig, MixedBatch, MixupConfig, augment, mixup, mixup_loss
from longshort.training.callbacks import Callback, EarlyStopping, EarlyStoppingConfig
from longshort.training.checkpoint import (
    checkpoint_path,
    loop_state,
    restore_loop_state,
    save_checkpoint,
    save_distributed_checkpoint,
)
from longshort.training.curriculum import CurriculumConfig, TaskConfig
from longshort.training.distributed import (
    DistContext,
    DistributedConfig,
    all_sum,
    device_for,
    fsdp_no_sync,
    local_part,
    parallelize,
)
from longshort.training.losses import LossConfig, aux_loss, build_loss
from longshort.training.optim import (
    GradClipper,
    GradNoise,
    Lookahead,
    OptimConfig,
    ScheduleConfig,
    build_optimizer,
    build_schedule,
    scale_learning_rate,
)
from longshort.training.recipes import PhaseConfig, RecipeName, merge_under, preset_phases, recipe_values


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    recipe: RecipeName = Field(
        "default",
        description="preset laid under your own train.* values: plain = unweighted cross-entropy + AdamW with "
        "the OneCycle schedule and no clipping, auxiliary loss, augmentation or Lookahead; seed = seed "
        "000's full loop (see docs/training.md)",
    )
    epochs: int = Field(
        12, ge=1, description="epochs in all (with train.phases: their sum); unset: a run chooses them from "
        "train.steps or its automatic budget in optimizer steps for the data's size (config.yaml records them)"
    )
    steps: int | None = Field(
        None, ge=1, description="training budget in optimizer steps, turned into whole epochs when the data is "
        "read; null: train.epochs if set, else an automatic budget (see docs/training.md)"
    )
    batch_size: int = Field(
        64, ge=1, description="unset: about a tenth of the training sequences, between 8 and 64, chosen by a run"
    )
    selection: Literal["auto", "val", "last"] = Field(
        "auto", description="how the kept weights are chosen: val = the best epoch by "
        "train.early_stopping.metric on the validation split (and early stopping); last = no validation split, "
        "all sequences train, the final weights are kept; auto = val when the validation split holds at "
        "least 200 sequences, else last"
    )
    eval_batch_size: int = Field(256, ge=1)
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    mixup: MixupConfig = MixupConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    tasks: TaskConfig = TaskConfig()
    phases: list[PhaseConfig] = Field([], description="consecutive phases with their own lr, dropout, clip, batch")
    phase_preset: Literal["none", "seed"] = Field(
        "none", description="seed: seed 000's warm-up / main / fine-tune phases scaled to train.epochs"
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA GPUs that support it, fp32 elsewhere"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps inside an epoch; 0 = off")
    grad_accum_steps: int = Field(
        1, ge=1, description="split each batch into this many micro-batches (same gradient, less activation memory)"
    )
    log_every: int = Field(10, ge=1, description="steps between progress-bar updates (each reads the loss)")
    progress: Literal["auto", "rich", "plain", "off"] = Field(
        "auto", description="auto: a rich bar on a terminal, a line per epoch otherwise"
    )
    tensorboard: bool = True

    @model_validator(mode="before")
    @classmethod
    def _presets(cls, data: Any) -> Any:
        """With explicit phases, epochs is their sum; then the recipe is laid under the given values (its start
        epochs scaled to that epoch count)."""
        if not isinstance(data, dict):
            return data
        phases = data.get("phases")
        if isinstance(phases, list) and phases:
            # Malformed phases are left alone here: field validation says what is wrong.
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                data = {**data, "epochs": sum(
                    int(p.epochs if isinstance(p, PhaseConfig) else p.get("epochs", 1)) for p in phases
                )}
        recipe = data.get("recipe", "default")
        if recipe != "default" and isinstance(recipe, str):
            try:
                base = recipe_values(recipe, data.get("epochs"))
            except ValueError:
                base = {}  # the Literal check reports the unknown name
            data = merge_under(base, data)
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.phases and self.phase_preset != "none":
            raise ValueError("set train.phases or train.phase_preset, not both")
        if self.phase_preset != "none" and self.epochs < 3:
            raise ValueError(f"phase_preset={self.phase_preset} needs train.epochs >= 3, got {self.epochs}")
        return self

    def resolved_phases(self) -> list[PhaseConfig]:
        """The phases in force: explicit ``phases``, the preset's scaled to ``epochs``, or none."""
        if self.phases:
            return list(self.phases)
        if self.phase_preset != "none":
            return preset_phases(self.phase_preset, self.epochs)
        return []


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


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixes them well; adjacent tuples give unrelated seeds)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


_PURPOSE = {"augment": 1, "mixup": 2, "noise": 3}


def start_monitor(tr: Any) -> None:
    """Open the monitor's files; with ``anomaly.action=rollback``, make sure there is a checkpoint to go back to."""
    if tr.monitor is None:
        return
    tr.monitor.on_fit_start(tr.step)
    if tr.monitor.cfg.anomaly.action == "rollback" and not tr._has_checkpoint:
        tr.save(["last"])  # something to roll back to before the first epoch's checkpoint


def guarded_update(tr: Any, loss: Tensor, noise_generator: torch.Generator) -> str:
    """After ``backward``: ask the monitor, then clip, add gradient noise and step (both training loops use this).

    Returns the verdict: ``apply`` / ``scaler`` (stepped), ``skip`` (gradients dropped, no optimizer step: the update
    never reaches the weights nor the optimizer's moments); raises :class:`Rollback` for a rollback."""
    verdict = "apply"
    if tr.monitor is not None:
        enabled = tr.scaler.is_enabled()
        verdict = tr.monitor.check(loss, step=tr.step + 1, epoch=tr.epoch + 1, lr=tr.optimizer.param_groups[0]["lr"],
                                   grad_scale=tr.scaler.get_scale() if enabled else 1.0, scaler_enabled=enabled,
                                   can_rollback=tr._has_checkpoint)
    if verdict in ("rollback", "skip"):
        tr.optimizer.zero_grad(set_to_none=True)
        if verdict == "rollback":
            raise Rollback
        tr.last_grad_norm = tr.monitor.last["grad_norm"]
        return verdict
    tr.scaler.unscale_(tr.optimizer)
    tr.last_grad_norm = tr.clipper.clip(tr.model)
    tr.noise.apply(tr.model, tr.epoch, noise_generator)
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    return verdict


def step_schedule(schedule: Any, verdict: str) -> None:
    """``schedule.step()`` after the update of ``verdict``: also after a skipped one (the schedule follows the data
    position), without torch's warning about a scheduler step with no optimizer step before it."""
    with warnings.catch_warnings():
        if verdict == "skip":
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        schedule.step()


def rollback(tr: Any) -> None:
    """Back to the last checkpoint, with the learning rate times ``diagnostics.anomaly.lr_factor``."""
    m = tr.monitor
    assert m is not None
    rollbacks, target = m.rollbacks + 1, m.lr_scale * m.cfg.anomaly.lr_factor
    at = tr.step + 1
    tr.restore("last")  # weights, optimizer, schedule, RNG, data position, the monitor's statistics
    scale_learning_rate(tr.optimizer, tr.schedule, target / m.lr_scale)  # relative to the checkpoint's scale
    m.rollbacks, m.lr_scale = rollbacks, target
    print(f"diagnostics: gradient spike at step {at}: rolled back to step {tr.step}, learning rate x{target:.3g} "
          f"(rollback {rollbacks} of {m.cfg.anomaly.max_rollbacks})", file=sys.stderr)


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
        distributed: DistributedConfig | None = None,
        ctx: DistContext | None = None,
        diagnostics: DiagnosticsConfig | None = None,
    ) -> None:
        self.cfg, self.seed, self.run_dir = cfg, seed, run_dir
        self.dist = ctx or DistContext()
        self.dist_cfg = distributed or DistributedConfig()
        self.device = device_for(self.dist, resolve_device(cfg.device))
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.model = parallelize(model.to(self.device), self.dist_cfg, self.dist, self.device)
        if self.dist.enabled:  # one set of initial weights (broadcast), then each rank its own dropout stream
            torch.manual_seed(_seed_for(seed, 7, self.dist.rank))
        self._loss_scale = 1.0  # world * n_rank / n_global for the batch in hand (1 in one process)
        self._local_n = 0  # this rank's examples in the batch in hand
        self.train_data, self.val_data = train, val
        self.num_classes = num_classes
        self.callbacks = callbacks or []
        self.phases = cfg.resolved_phases()
        self.phase_starts = list(np.cumsum([0] + [p.epochs for p in self.phases]))
        assert train.y is not None
        self.loss_fn = build_loss(cfg.loss, train.y.to(self.device), num_classes)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.clipper = GradClipper(cfg.optim)
        self.noise = GradNoise(cfg.optim.grad_noise)
        # Curriculum: per-example difficulty (scorer loss), computed once when the curriculum asks for it.
        self.scores: Tensor | None = None
        self._dropout0 = {
            name: (m.p if isinstance(m, nn.Dropout) else m.dropout)
            for name, m in self.model.named_modules()
            if isinstance(m, (nn.Dropout, nn.MultiheadAttention))
        }
        self.steps_per_epoch = self.steps_in_epoch(0)
        self.schedule = build_schedule(self.optimizer, cfg.schedule, self._schedule_length(), cfg.optim.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.early = EarlyStopping(cfg.early_stopping)
        self.ckpt_dir = run_dir / "checkpoints"
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.finished = False
        # Running sums of the epoch in progress (loss * n, correct, n, aux squared error * n), checkpointed so a
        # resumed epoch reports the same train loss and accuracy as an uninterrupted one.
        self.epoch_sums = (0.0, 0.0, 0, 0.0)
        self.task_w = {"main": 1.0, "aux": cfg.loss.aux_weight}
        self.last_grad_norm = 0.0
        diag = diagnostics or DiagnosticsConfig()
        # gradient norms, spike/NaN actions and gate samples (diagnostics/monitor.py); files from rank 0 only
        self.monitor = TrainingMonitor(diag, self.model, run_dir, writes=self.dist.rank == 0,
                                       probe=val if val is not None else train,
                                       fsdp=self.dist_cfg.strategy == "fsdp", tensorboard=cfg.tensorboard
                                       ) if diag.enabled else None
        self._has_checkpoint = False

    # -- phases and curriculum: what an epoch looks like --------------------------------------------------

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

    def epoch_size(self, epoch: int) -> int:
        """Training examples in ``epoch`` (the curriculum may use a subset; its size never depends on scores)."""
        n, c = len(self.train_data), self.cfg.curriculum
        if c.kind == "length" and c.mode == "filter":
            limit = cur.length_limit(c, epoch, max(1, int(self.train_data.lengths.max())))
            return len(cur.length_order(self.train_data.lengths, limit, torch.arange(n), c.mode))
        if c.kind == "difficulty" and cur.needs_scores(c, epoch):
            stage = cur.difficulty_stage(c, epoch, self.cfg.epochs)
            if stage is not None:
                return len(cur.difficulty_subset(torch.zeros(n), stage, c.stages))
        return n

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-self.epoch_size(epoch) // self.batch_size(epoch))

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

    def _prepare_curriculum(self, epoch: int) -> None:
        """Score the training examples when a difficulty or adaptive curriculum first needs them."""
        c = self.cfg.curriculum
        if self.scores is not None or not cur.needs_scores(c, epoch):
            return
        scorer = self.model if c.scorer == "self" else cur.load_scorer(
            c.scorer, self.device, int(self.train_data.X.shape[-1]), self.num_classes)
        self.scores = cur.score_examples(scorer, self.train_data, self.cfg.eval_batch_size, self.device,
                                         self.autocast)

    def _generator(self, purpose: str, epoch: int, batch: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(_seed_for(self.seed, _PURPOSE[purpose], epoch, batch))

    def plan(self, epoch: int) -> cur.EpochPlan:
        """Which training examples ``epoch`` visits, in which order, cropped to which length: a function of
        (seed, epoch, curriculum scores, the last epoch's accuracy), so a resumed epoch replays it."""
        acc = self.history[-1]["train_accuracy"] if self.history else 0.0
        return cur.plan_epoch(self.cfg.curriculum, epoch, self.cfg.epochs, self.seed, self.train_data.lengths,
                              self.scores, acc)

    def _update_task_weights(self, epoch: int) -> None:
        """Main and auxiliary loss weights for ``epoch`` (train.tasks: fixed, performance-based, introduced late)."""
        has_aux = self.train_data.aux is not None
        perf = None
        if self.history:
            last = self.history[-1]
            perf = cur.task_performance(last.get("val_accuracy", last["train_accuracy"]),
                                        last.get("val_aux_mse", last.get("train_aux_mse")) if has_aux else None)
        self.task_w = cur.task_weights(self.cfg.tasks, self.cfg.loss.aux_weight if has_aux else 0.0, epoch, perf)

    # -- one step -------------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _transform(self, batch: Batch) -> tuple[Batch, MixedBatch | None]:
        """Augmentation and mixup for the batch about to run, when their epoch and phase allow them."""
        cfg, epoch, i = self.cfg, self.epoch, self.batch
        p = self.phase(epoch)
        if cfg.augment.enabled and epoch >= cfg.augment.start_epoch and (p is None or p.augment):
            x = augment(batch.x, batch.lengths, cfg.augment, self._generator("augment", epoch, i))
            batch = Batch(x, batch.lengths, batch.y, batch.aux)
        mixed = None
        if cfg.mixup.prob > 0 and epoch >= cfg.mixup.start_epoch and (p is None or p.mixup):
            g = self._generator("mixup", epoch, i)
            if float(torch.rand((), generator=g)) < cfg.mixup.prob:
                assert batch.y is not None
                mixed = mixup(batch.x, batch.lengths, batch.y, batch.aux, cfg.mixup.alpha, g)
                batch = Batch(mixed.x, mixed.lengths, batch.y, mixed.aux)
        return batch, mixed

    def compute_loss(self, batch: Batch, mixed: MixedBatch | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(loss, logits, auxiliary squared error per example or None): w_main * main + w_aux * auxiliary."""
        with self.autocast():
            out = self.model(batch.x, batch.lengths)
        assert batch.y is not None
        main = self.loss_fn(out.logits, batch.y) if mixed is None else mixup_loss(self.loss_fn, out.logits, mixed)
        loss = self.task_w["main"] * main
        aux_se = None
        if batch.aux is not None:
            aux_se = (out.aux.detach().float() - batch.aux) ** 2
            if self.task_w["aux"] > 0:
                loss = loss + self.task_w["aux"] * aux_loss(out.aux, batch.aux)
        return loss, out.logits, aux_se

    def train_step(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        """One update. Returns (loss, correct count, aux squared-error sum) as tensors (no sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        batch, mixed = self._transform(batch)
        k = min(self.cfg.grad_accum_steps, len(batch))
        if k == 1 or mixed is not None:  # mixup pairs examples across the whole batch: it stays one piece
            loss, logits, aux_se = self.compute_loss(batch, mixed)
            self.scaler.scale(loss * self._loss_scale).backward()
        else:
            loss, logits, aux_se = self._accumulate(batch, k)
        verdict = guarded_update(self, loss, self._generator("noise", self.epoch, self.batch))
        # the schedule follows the data position, skipped step or not (a resumed run stays aligned)
        if self.cfg.schedule.interval == "batch" and self._scheduled(self.epoch):
            step_schedule(self.schedule, verdict)
        pred = logits.detach().argmax(1)
        if mixed is None:
            correct = (pred == batch.y).sum().double()
        else:  # expected accuracy against the two mixed labels
            correct = mixed.lam * (pred == mixed.y_a).sum().double() + (1 - mixed.lam) * (pred == mixed.y_b).sum()
        return loss.detach(), correct, None if aux_se is None else aux_se.sum().double()

    def _accumulate(self, batch: Batch, k: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Gradient accumulation: ``k`` micro-batches, each's loss weighted by its share of the batch, gradients
        synchronised across ranks only on the last one. The same gradient as the whole batch at once."""
        parts = torch.tensor_split(torch.arange(len(batch), device=batch.x.device), k)
        loss = torch.zeros((), device=self.device)
        logits, aux = [], []
        for j, part in enumerate(parts):
            mb = Batch(batch.x[part], batch.lengths[part], None if batch.y is None else batch.y[part],
                       None if batch.aux is None else batch.aux[part])
            with self._grad_sync(j == k - 1):
                lj, lg, ae = self.compute_loss(mb)
                self.scaler.scale(lj * (len(part) / len(batch)) * self._loss_scale).backward()
            loss = loss + lj.detach() * (len(part) / len(batch))
            logits.append(lg)
            if ae is not None:
                aux.append(ae)
        return loss, torch.cat(logits), torch.cat(aux) if aux else None

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        if sync or not self.dist.enabled:
            return contextlib.nullcontext()
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return fsdp_no_sync(self.model)

    # -- the loop --------------------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, Batch]]:
        plan = self.plan(epoch)
        idx = batch_indices(plan.order, self.batch_size(epoch))
        for i in range(start, len(idx)):
            local = local_part(idx[i], self.dist)
            # world * n_rank / n_global: the ranks' averaged gradient is the global batch's mean gradient; a rank
            # left without examples (a last batch smaller than the world) runs one at weight 0 for the collectives
            self._loss_scale = self.dist.world * len(local) / len(idx[i])
            self._local_n = len(local)
            if len(local) == 0:
                local = idx[i][:1]
            b = take(self.train_data, local, self.device)
            if plan.limit is not None:
                x, lengths = cur.limit_batch(b.x, b.lengths, plan.limit)
                b = Batch(x, lengths, b.y, b.aux)
            yield i, b

    def fit(self) -> list[dict[str, float]]:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        start_monitor(self)
        try:
            while self.epoch < self.cfg.epochs and not self.finished:
                try:
                    self._run_epoch()
                except Rollback:
                    rollback(self)
            self.finished = True
        finally:
            if self.monitor is not None:
                self.monitor.close()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.history

    def _run_epoch(self) -> None:
        cfg, epoch = self.cfg, self.epoch
        self.model.train()
        self._apply_phase(epoch)
        self._prepare_curriculum(epoch)
        self._update_task_weights(epoch)
        self.steps_per_epoch = self.steps_in_epoch(epoch)
        for m in self.model.modules():  # epoch-driven modules, e.g. the LSTM's adaptive dropout schedule
            hook = getattr(m, "on_epoch", None)
            if callable(hook):
                hook(epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch, self.steps_per_epoch, self.batch)
        prev_loss, prev_correct, prev_seen, prev_se = self.epoch_sums if self.batch else (0.0, 0.0, 0, 0.0)
        loss_sum = torch.full((), prev_loss, dtype=torch.float64, device=self.device)
        correct = torch.full((), prev_correct, dtype=torch.float64, device=self.device)
        aux_sum = torch.full((), prev_se, dtype=torch.float64, device=self.device)
        has_aux = self.train_data.aux is not None
        seen, new, t0 = prev_seen, 0, time.perf_counter()
        for i, batch in self._batches(epoch, self.batch):
            loss, ok, se = self.train_step(batch)
            n = self._local_n  # this rank's examples (0 when it only ran a stand-in for the collectives)
            loss_sum += loss.double() * n
            correct += ok * (n > 0)
            if se is not None:
                aux_sum += se * (n > 0)
            seen, new = seen + n, new + n
            self.batch, self.step = i + 1, self.step + 1
            if self.monitor is not None:
                self.monitor.maybe_sample_gates(self.step)
            if self.batch % cfg.log_every == 0 or self.batch == self.steps_per_epoch:
                stats = {"batch": self.batch, "loss": loss_sum.item() / seen, "accuracy": correct.item() / seen,
                         "samples_per_s": new / (time.perf_counter() - t0)}
                for cb in self.callbacks:
                    cb.on_step(self, stats)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch < self.steps_per_epoch:
                ls, ok_sum, n_seen, se_sum = all_sum([loss_sum.item(), correct.item(), seen, aux_sum.item()],
                                                     self.dist, self.device)  # the epoch so far, all ranks
                self.epoch_sums = (ls, ok_sum, int(n_seen), se_sum)
                self.save(["last"])
        elapsed = time.perf_counter() - t0
        if self.dist.enabled:  # the epoch's totals over all ranks
            ls, ok_sum, n_seen, se_sum, n_new = all_sum(
                [loss_sum.item(), correct.item(), seen, aux_sum.item(), new], self.dist, self.device)
            loss_sum.fill_(ls)
            correct.fill_(ok_sum)
            aux_sum.fill_(se_sum)
            seen, new = int(n_seen), int(n_new)
        if isinstance(self.optimizer, Lookahead) and cfg.optim.lookahead.sync_each_epoch:
            self.optimizer.sync()
        lr = self.optimizer.param_groups[0]["lr"]
        if cfg.schedule.interval == "epoch" and self._scheduled(epoch):
            self.schedule.step()
        row: dict[str, float] = {"epoch": epoch + 1, "step": self.step,
                                 "train_loss": loss_sum.item() / max(seen, 1),
                                 "train_accuracy": correct.item() / max(seen, 1),
                                 "samples_per_s": new / elapsed if new else 0.0,
                                 "lr": lr}
        if has_aux:
            row["train_aux_mse"] = aux_sum.item() / max(seen, 1)
        phase = self.phase_index(epoch)
        if phase is not None:
            row["phase"] = phase + 1
        if self.val_data is not None:
            m = self.evaluate(self.val_data)
            row |= {"val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_f1_macro": m["f1_macro"]}
            if "aux_mse" in m:
                row["val_aux_mse"] = m["aux_mse"]
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        improved = self.val_data is None or self.early.update(row)
        if self.val_data is not None and self.early.should_stop:
            self.finished = True
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)
        if self.monitor is not None:
            self.monitor.on_epoch_end(epoch + 1, self.step)
        self.save(["last", "best"] if improved else ["last"])

    def predict_proba(self, data: TensorData) -> Tensor:
        """Class probabilities [N, K] in data order, in eval mode."""
        return batched_proba(self.model, data, self.cfg.eval_batch_size, self.autocast)

    def evaluate(self, data: TensorData) -> dict[str, float]:
        from sklearn.metrics import f1_score

        assert data.y is not None
        proba, aux = batched_outputs(self.model, data, self.cfg.eval_batch_size, self.autocast)
        y = data.y
        loss = F.nll_loss(torch.log(proba.clamp_min(1e-12)), y).item()
        pred = proba.argmax(1)
        m = {
            "loss": loss,
            "accuracy": (pred == y).float().mean().item(),
            "f1_macro": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)),
        }
        if data.aux is not None:  # the auxiliary target's MSE (standardised units), for task weighting and logs
            m["aux_mse"] = float(((aux - data.aux.cpu()) ** 2).mean()) if len(aux) else 0.0
        return m

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        diag = {} if self.monitor is None else {"diagnostics": self.monitor.state_dict()}
        return loop_state(self) | {"epoch_sums": list(self.epoch_sums), "scores": self.scores} | diag

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
        loss_sum, correct, seen, aux_se = s["epoch_sums"]
        self.epoch_sums = (float(loss_sum), float(correct), int(seen), float(aux_se))
        if self.dist.rank != 0:  # the saved sums are all ranks' together: rank 0 carries them on
            self.epoch_sums = (0.0, 0.0, 0, 0.0)
        self.scores = s["scores"]
        if self.monitor is not None and "diagnostics" in s:
            self.monitor.load_state_dict(s["diagnostics"])
        self._has_checkpoint = True
        return True
