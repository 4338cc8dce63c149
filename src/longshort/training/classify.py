"""The classification task of the one :class:`~longshort.training.trainer.Trainer`: sequences -> a class each.

Per epoch: the curriculum (which examples, in which order, cropped to which length; per-example difficulty scores
computed once when it first asks) and the main/auxiliary task weights (``train.tasks``). Per batch: augmentation
and mixup (when their epoch and phase allow) -> forward under autocast -> ``w_main * loss + w_aux * auxiliary``.
Validation: log-loss, accuracy and macro-F1 (and the auxiliary target's MSE). Every random draw is a function of
(seed, purpose, epoch, batch), so a resumed run replays the same batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.data.batching import Batch, TensorData, take
from longshort.diagnostics.monitor import DiagnosticsConfig
from longshort.evaluate.predict import batched_outputs, batched_proba
from longshort.nn.classifier import ClassifierOutput
from longshort.training import curriculum as cur
from longshort.training.augment import MixedBatch, augment, mixup, mixup_loss
from longshort.training.callbacks import Callback
from longshort.training.config import LossConfig
from longshort.training.distributed import DistContext, DistributedConfig
from longshort.training.losses import aux_loss, build_loss
from longshort.training.trainer import TrainConfig, Trainer

_PURPOSE = {"augment": 1, "mixup": 2}  # the seeds' purposes before the one loop (so runs replay as before)


class ClassifierObjective:
    """The classifier's one loss, ``w_main * main + w_aux * auxiliary MSE``: what the trainer minimises, what the
    diagnostics' loss landscape and Hessian look at (diagnostics/analyse.py) and what ``longshort plan`` times
    and measures. ``main`` is ``train.loss`` (cross-entropy, focal or adaptive, class weights from the training
    labels); the weights default to the initial ones (main 1, aux ``train.loss.aux_weight``)."""

    def __init__(self, cfg: LossConfig, train_y: Tensor, num_classes: int) -> None:
        self.main = build_loss(cfg, train_y, num_classes)
        self.aux_weight = cfg.aux_weight

    def __call__(self, out: ClassifierOutput, y: Tensor, aux: Tensor | None, weights: dict[str, float] | None = None,
                 mixed: MixedBatch | None = None) -> Tensor:
        w = weights if weights is not None else {"main": 1.0, "aux": self.aux_weight}
        main = self.main(out.logits, y) if mixed is None else mixup_loss(self.main, out.logits, mixed)
        loss = w["main"] * main
        if aux is not None and w["aux"] > 0:
            loss = loss + w["aux"] * aux_loss(out.aux, aux)
        return loss


class ClassifyTask:
    """Sequence classification with an optional auxiliary regression target (see the module's docstring)."""

    default_metric = "val_f1_macro"
    # (loss * n, correct, n, aux squared error * n): the order checkpoints before the one loop kept them in
    sums = ("loss", "correct", "n", "aux_se")

    def __init__(self, cfg: TrainConfig, train: TensorData, val: TensorData | None, num_classes: int) -> None:
        self.cfg, self.train_data, self.val_data, self.num_classes = cfg, train, val, num_classes
        # Curriculum: per-example difficulty (scorer loss), computed once when the curriculum asks for it.
        self.scores: Tensor | None = None
        self.task_w = {"main": 1.0, "aux": cfg.loss.aux_weight}
        self.tr: Trainer

    def bind(self, trainer: Trainer) -> None:
        self.tr = trainer
        assert self.train_data.y is not None
        self.objective = ClassifierObjective(self.cfg.loss, self.train_data.y.to(trainer.device), self.num_classes)
        self.loss_fn = self.objective.main

    # -- what an epoch looks like -------------------------------------------------------------------------

    def epoch_size(self, epoch: int) -> int:
        """Training examples in ``epoch`` (the curriculum may use a subset; its size never depends on scores)."""
        n, c = len(self.train_data), self.cfg.curriculum
        if c.kind == "length" and c.mode == "filter":
            limit = cur.length_limit(c, epoch, max(1, int(self.train_data.lengths.max())))
            return len(cur.length_order(self.train_data.lengths, limit, torch.arange(n), c.mode))
        if c.kind == "difficulty" and cur.needs_scores(c, epoch):
            stage = cur.difficulty_stage(c, epoch, self.cfg.epochs)
            if stage is not None:
                return len(cur.difficulty_subset(torch.zeros(n), stage, c.stages, c.final_stage))
        return n

    def begin_epoch(self, epoch: int) -> None:
        self._prepare_curriculum(epoch)
        self._update_task_weights(epoch)

    def plan(self, epoch: int) -> cur.EpochPlan:
        """Which training examples ``epoch`` visits, in which order, cropped to which length: a function of
        (seed, epoch, curriculum scores, the last epoch's accuracy), so a resumed epoch replays it."""
        h = self.tr.history
        acc = h[-1]["train_accuracy"] if h else 0.0
        return cur.plan_epoch(self.cfg.curriculum, epoch, self.cfg.epochs, self.tr.seed, self.train_data.lengths,
                              self.scores, acc)

    def _prepare_curriculum(self, epoch: int) -> None:
        """Score the training examples when a difficulty or adaptive curriculum first needs them."""
        c, tr = self.cfg.curriculum, self.tr
        if self.scores is not None or not cur.needs_scores(c, epoch):
            return
        scorer = tr.model if c.scorer == "self" else cur.load_scorer(
            c.scorer, tr.device, self.train_data.channels, self.num_classes)
        self.scores = cur.score_examples(scorer, self.train_data, self.cfg.eval_batch_size, tr.device, tr.autocast)

    def _update_task_weights(self, epoch: int) -> None:
        """Main and auxiliary loss weights for ``epoch`` (train.tasks: fixed, performance-based, introduced late)."""
        has_aux = self.train_data.aux is not None
        perf = None
        if self.tr.history:
            last = self.tr.history[-1]
            perf = cur.task_performance(last.get("val_accuracy", last["train_accuracy"]),
                                        last.get("val_aux_mse", last.get("train_aux_mse")) if has_aux else None)
        self.task_w = cur.task_weights(self.cfg.tasks, self.cfg.loss.aux_weight if has_aux else 0.0, epoch, perf)

    # -- one step -------------------------------------------------------------------------------------

    def take(self, idx: Tensor, plan: cur.EpochPlan) -> Batch:
        b = take(self.train_data, idx, self.tr.device)
        if plan.limit is not None:
            x, lengths = cur.limit_batch(b.x, b.lengths, plan.limit)
            b = Batch(x, lengths, b.y, b.aux)
        return b

    def _transform(self, batch: Batch) -> tuple[Batch, MixedBatch | None]:
        """Augmentation and mixup for the batch about to run, when their epoch and phase allow them."""
        cfg, tr = self.cfg, self.tr
        epoch, i = tr.epoch, tr.batch
        p = tr.phase(epoch)
        if cfg.augment.enabled and epoch >= cfg.augment.start_epoch and (p is None or p.augment):
            x = augment(batch.x, batch.lengths, cfg.augment, tr.generator(_PURPOSE["augment"], epoch, i))
            batch = Batch(x, batch.lengths, batch.y, batch.aux)
        mixed = None
        if cfg.mixup.prob > 0 and epoch >= cfg.mixup.start_epoch and (p is None or p.mixup):
            g = tr.generator(_PURPOSE["mixup"], epoch, i)
            if float(torch.rand((), generator=g)) < cfg.mixup.prob:
                assert batch.y is not None
                mixed = mixup(batch.x, batch.lengths, batch.y, batch.aux, cfg.mixup.alpha, g)
                batch = Batch(mixed.x, mixed.lengths, batch.y, mixed.aux)
        return batch, mixed

    def micro_batches(self, batch: Batch, k: int) -> list[tuple[Any, float]]:
        batch, mixed = self._transform(batch)
        if k == 1 or mixed is not None:  # mixup pairs examples across the whole batch: it stays one piece
            return [((batch, mixed), 1.0)]
        parts = torch.tensor_split(torch.arange(len(batch), device=batch.x.device), k)
        return [((Batch(batch.x[p], batch.lengths[p], None if batch.y is None else batch.y[p],
                        None if batch.aux is None else batch.aux[p]), None), len(p) / len(batch)) for p in parts]

    def compute_loss(self, batch: Batch, mixed: MixedBatch | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(loss, logits, auxiliary squared error per example or None): w_main * main + w_aux * auxiliary."""
        with self.tr.autocast():
            out = self.tr.model(batch.x, batch.lengths)
        assert batch.y is not None
        loss = self.objective(out, batch.y, batch.aux, self.task_w, mixed)
        aux_se = None if batch.aux is None else (out.aux.detach().float() - batch.aux) ** 2
        return loss, out.logits, aux_se

    def loss(self, part: tuple[Batch, MixedBatch | None], j: int) -> tuple[Tensor, dict[str, Tensor | float]]:
        batch, mixed = part
        loss, logits, aux_se = self.compute_loss(batch, mixed)
        pred = logits.detach().argmax(1)
        if mixed is None:
            correct = (pred == batch.y).sum().double()
        else:  # expected accuracy against the two mixed labels
            correct = mixed.lam * (pred == mixed.y_a).sum().double() + (1 - mixed.lam) * (pred == mixed.y_b).sum()
        n = len(batch)  # the sums of a rank's stand-in batch (no examples of its own) are dropped by the trainer
        stats: dict[str, Tensor | float] = {"loss": loss.detach().double() * n, "correct": correct, "n": n}
        if aux_se is not None:
            stats["aux_se"] = aux_se.sum().double()
        return loss, stats

    def summary(self, sums: dict[str, float], fresh: dict[str, float], elapsed: float) -> dict[str, float]:
        n = max(sums["n"], 1)
        row = {"train_loss": sums["loss"] / n, "train_accuracy": sums["correct"] / n}
        if self.train_data.aux is not None:
            row["train_aux_mse"] = sums["aux_se"] / n
        return row

    # -- evaluation ------------------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        assert self.val_data is not None
        return {f"val_{k}": v for k, v in self.evaluate(self.val_data).items()}

    def predict_proba(self, data: TensorData) -> Tensor:
        """Class probabilities [N, K] in data order, in eval mode."""
        return batched_proba(self.tr.model, data, self.cfg.eval_batch_size, self.tr.autocast)

    def evaluate(self, data: TensorData) -> dict[str, float]:
        from sklearn.metrics import f1_score

        assert data.y is not None
        proba, aux = batched_outputs(self.tr.model, data, self.cfg.eval_batch_size, self.tr.autocast)
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

    def gate_probe(self, n: int) -> TensorData:  # the monitor takes the first n itself
        return self.val_data if self.val_data is not None else self.train_data

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = state.get("scores")


def classifier_trainer(
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
) -> Trainer:
    """The one trainer with the classification task on ``train`` (and ``val``)."""
    return Trainer(cfg, model, ClassifyTask(cfg, train, val, num_classes), seed=seed, run_dir=run_dir,
                   callbacks=callbacks, distributed=distributed, ctx=ctx, diagnostics=diagnostics)
