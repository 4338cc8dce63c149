"""Curriculum learning and multi-task weighting (seed 003, "Curriculum Learning for Sequence Tasks").

Which training examples an epoch uses, in which order and how long they are, plus the weights of the main
(classification) and auxiliary (regression) losses. Three curricula:

* ``length``: sequences are cropped to (or filtered by) a length limit that grows with the epoch;
* ``difficulty``: examples sorted by a scorer's per-example loss, easiest first, are introduced in cumulative
  stages ("baby steps");
* ``adaptive``: each batch slot draws a hard example with a probability that grows with training accuracy.

Everything here is a pure function of its arguments: the epoch's order comes from (seed, epoch) and an
explicit generator, so a resumed run replays it. The only state the trainer must checkpoint is the tensor of
per-example scores (``None`` until scoring). The trainer's call sequence is in :func:`plan_epoch`'s docstring.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.data.batching import TensorData, epoch_order, sequential_batches
from longshort.errors import ConfigError, RunDirError
from longshort.training.config import CurriculumConfig as CurriculumConfig
from longshort.training.config import TaskConfig as TaskConfig

TASKS = ("main", "aux")
_PERF_FLOOR = 1e-6  # performance is clamped to this before the log, so a task at 0 gets a tiny, finite weight
_STREAM = 3  # tags the curriculum's random stream apart from the data order's (seed 003)


# -- length curriculum ------------------------------------------------------------------------------------


def length_limit(cfg: CurriculumConfig, epoch: int, max_length: int) -> int:
    """The length limit L_e of ``epoch`` (0-based), between 1 and ``max_length`` (L_max, the longest sequence).

    linear: ``min(L_max, floor(start_length + rate * e))``; exp: ``min(L_max, floor(start_length *
    beta^(e / tau)))``. For any kind other than ``length`` the limit is ``max_length`` (no limit).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if cfg.kind != "length":
        return max_length
    if cfg.growth == "linear":
        value = cfg.start_length + cfg.rate * epoch
    else:
        try:
            value = cfg.start_length * cfg.beta ** (epoch / cfg.tau)
        except OverflowError:  # beta^(e/tau) beyond a float: far past any real sequence length
            return max_length
    # The epsilon keeps values meant to be whole (e.g. 10 + 0.7*10 = 16.999999999999996) from rounding down.
    return max(1, min(max_length, math.floor(value + 1e-9)))


def limit_batch(x: Tensor, lengths: Tensor, limit: int) -> tuple[Tensor, Tensor]:
    """Crop every sequence to its last ``limit`` valid steps, shifted to the front, zero padding after.

    ``x`` [B, T, C] (valid steps first, then padding), ``lengths`` [B]. Returns (x' [B, T', C], lengths'),
    ``lengths' = min(lengths, limit)`` and ``T' = max(lengths')``: row b of x' holds
    ``x[b, lengths[b] - lengths'[b] : lengths[b]]`` followed by zeros. One gather, on x's device; when no
    sequence is longer than ``limit`` the input is only trimmed to ``T'`` (a view, no copy).
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    b, t, c = x.shape
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B] = [{b}], got shape {tuple(lengths.shape)}")
    if limit < 1:
        raise ValueError(f"the length limit must be >= 1, got {limit}")
    if b == 0:
        return x, lengths
    if int(lengths.min()) < 0 or int(lengths.max()) > t:
        raise ValueError(f"lengths must lie in [0, T={t}], got min {int(lengths.min())}, max {int(lengths.max())}")
    new_len = lengths.clamp(max=limit)
    t_new = int(new_len.max())
    if bool((new_len == lengths).all()):
        return x[:, :t_new], lengths
    start = lengths - new_len  # first kept step of each row
    steps = torch.arange(t_new, device=x.device)
    valid = steps[None, :] < new_len[:, None]  # [B, T']
    src = (start[:, None] + steps[None, :]).masked_fill(~valid, 0)  # padded slots read step 0, zeroed below
    out = torch.gather(x, 1, src[..., None].expand(b, t_new, c))
    return out.masked_fill(~valid[..., None], 0), new_len


def length_order(lengths: Tensor, limit: int, order: Tensor, mode: Literal["crop", "filter"]) -> Tensor:
    """The example indices an epoch of the length curriculum uses, from the epoch's shuffled ``order``.

    crop: ``order`` unchanged (the batches are cropped with :func:`limit_batch`). filter: the entries of
    ``order`` whose sequence is at most ``limit`` long, in their shuffled order; if there is none, the entries
    of the shortest length instead (the trainer's :func:`limit_batch` then crops them to ``limit``).
    """
    if mode not in ("crop", "filter"):
        raise ValueError(f"curriculum.mode must be 'crop' or 'filter', got {mode!r}")
    if limit < 1:
        raise ValueError(f"the length limit must be >= 1, got {limit}")
    if mode == "crop" or order.numel() == 0:
        return order
    lens = lengths[order]
    keep = lens <= limit
    if not bool(keep.any()):
        keep = lens == lens.min()
    return order[keep]


# -- difficulty and adaptive curricula ------------------------------------------------------------------------


def needs_scores(cfg: CurriculumConfig, epoch: int) -> bool:
    """True when ``epoch`` trains on per-example scores (difficulty or adaptive, from ``score_after`` on).

    The trainer scores once, at the start of the first such epoch (when its checkpointed scores are None).
    """
    return cfg.kind in ("difficulty", "adaptive") and epoch >= cfg.score_after


def difficulty_stage(cfg: CurriculumConfig, epoch: int, epochs_total: int) -> int | None:
    """The difficulty stage of ``epoch`` (0-based), or None before scoring (and for other kinds).

    Epochs from ``score_after`` on are split into ``stages`` stages of ``stage_epochs`` epochs each; by default
    ``(epochs_total - score_after) // stages`` epochs each (at least 1), the last stage taking the rest. With
    fewer epochs left than stages, each epoch moves one stage on and the later stages are not reached.
    """
    if epoch < 0 or epochs_total < 1:
        raise ValueError(f"need epoch >= 0 and epochs_total >= 1, got epoch={epoch}, epochs_total={epochs_total}")
    if cfg.kind != "difficulty" or epoch < cfg.score_after:
        return None
    per = cfg.stage_epochs or max(1, (epochs_total - cfg.score_after) // cfg.stages)
    return min(cfg.stages - 1, (epoch - cfg.score_after) // per)


def _check_scores(scores: Tensor) -> None:
    if scores.ndim != 1:
        raise ValueError(f"scores must be [N], got shape {tuple(scores.shape)}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN: the scorer's loss is undefined for some examples")


def difficulty_subset(scores: Tensor, stage: int, stages: int, final_stage: str = "all") -> Tensor:
    """Indices of parts 0..``stage`` of the examples sorted by ``scores`` (loss), easiest first; with
    ``final_stage="hard"`` the last stage is the hardest part alone (seed 003's third phase) rather than all.

    The sorted examples are split into ``stages`` parts of equal size (the first ``N % stages`` parts one
    larger); ties are broken by index (stable sort), so the result is deterministic. Returned in score order:
    the trainer shuffles it with its seed.
    """
    _check_scores(scores)
    if stages < 1:
        raise ValueError(f"curriculum.stages must be >= 1, got {stages}")
    if not 0 <= stage < stages:
        raise ValueError(f"stage must lie in [0, {stages - 1}] (curriculum.stages={stages}), got {stage}")
    ranked = torch.sort(scores.cpu(), stable=True).indices
    parts = torch.tensor_split(ranked, stages)
    if final_stage == "hard" and stages > 1 and stage == stages - 1:
        return parts[-1]
    end = sum(len(p) for p in parts[: stage + 1])
    return ranked[:end]


def p_hard(cfg: CurriculumConfig, accuracy: float) -> float:
    """The adaptive curriculum's probability of a hard example: ``min(1, p0 + alpha * accuracy)``."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    return min(1.0, cfg.p0 + cfg.alpha * accuracy)


def adaptive_order(scores: Tensor, p_hard: float, hard_fraction: float, generator: torch.Generator) -> Tensor:
    """N example indices: each slot is a hard example with probability ``p_hard``, an easy one otherwise.

    Hard = the ``round(hard_fraction * N)`` examples of highest score (ties by index; at least one example in
    each pool when N >= 2); within its pool each slot draws uniformly, with replacement. All randomness comes
    from ``generator`` (a CPU ``torch.Generator``), so (seed, epoch) fixes the order.
    """
    _check_scores(scores)
    if not 0.0 <= p_hard <= 1.0:
        raise ValueError(f"p_hard must lie in [0, 1], got {p_hard}")
    if not 0.0 < hard_fraction < 1.0:
        raise ValueError(f"curriculum.hard_fraction must lie in (0, 1), got {hard_fraction}")
    n = scores.numel()
    if n < 2:
        return torch.arange(n)
    ranked = torch.sort(scores.cpu(), descending=True, stable=True).indices
    n_hard = max(1, min(n - 1, round(hard_fraction * n)))
    hard, easy = ranked[:n_hard], ranked[n_hard:]
    is_hard = torch.rand(n, generator=generator) < p_hard
    pick_hard = hard[torch.randint(n_hard, (n,), generator=generator)]
    pick_easy = easy[torch.randint(n - n_hard, (n,), generator=generator)]
    return torch.where(is_hard, pick_hard, pick_easy)


def curriculum_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of the curriculum's draws in ``epoch``: a stream of its own, fixed by (seed, epoch)."""
    state = np.random.SeedSequence([seed % 2**64, epoch, _STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)  # 63 bits: manual_seed takes any int64


def score_examples(
    model: nn.Module,
    data: TensorData,
    batch_size: int,
    device: torch.device | str,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Tensor:
    """Per-example cross-entropy [N] (float32, CPU, data order) of ``model`` on ``data``.

    In eval mode (no dropout) under ``torch.no_grad``; the model's train/eval mode is restored afterwards.
    ``model(x, lengths)`` must return an object with ``.logits`` and live on ``device``. Uses no random
    numbers, so scoring does not disturb a resumed run's RNG.
    """
    if data.y is None:
        raise ValueError("curriculum scoring needs labelled training data (data.y is None)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    try:
        with torch.no_grad():
            for batch in sequential_batches(data, batch_size, torch.device(device)):
                assert batch.y is not None
                with autocast():
                    logits = model(batch.x, batch.lengths).logits
                out.append(F.cross_entropy(logits.float(), batch.y, reduction="none").cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def load_scorer(scorer: str, device: torch.device | str, input_dim: int, num_classes: int) -> nn.Module:
    """The model of the trained run directory ``scorer`` (``train.curriculum.scorer``), on ``device``.

    The run must have been trained on the same data preparation (features, classes and scaling): its losses
    are computed on this run's prepared training split. Raises :class:`ConfigError` naming the option when the
    directory is not a finished run or its model does not fit the data.
    """
    if scorer == "self":
        raise ValueError("scorer='self' has no run directory: score with the model being trained")
    if not Path(scorer).is_dir():
        raise ConfigError(f"train.curriculum.scorer={scorer}: not a directory (use 'self' or a trained run)")
    from longshort.training.checkpoint import load_classifier

    try:
        _, _, model = load_classifier(scorer, device)
    except RunDirError as exc:
        raise ConfigError(f"train.curriculum.scorer={scorer}: {exc}") from None
    got = (model.input_dim, model.num_classes)
    if got != (input_dim, num_classes):
        raise ConfigError(
            f"train.curriculum.scorer={scorer}: its model takes {got[0]} features and {got[1]} classes, this "
            f"data has {input_dim} and {num_classes}"
        )
    return model


@dataclass(frozen=True)
class EpochPlan:
    """One epoch of the curriculum: the example indices to batch, in order, and the length limit to crop to."""

    order: Tensor  # int64 [M] indices into the training data (M = N except for filter and difficulty)
    limit: int | None  # crop every batch with limit_batch(x, lengths, limit); None = no cropping


def plan_epoch(
    cfg: CurriculumConfig,
    epoch: int,
    epochs_total: int,
    seed: int,
    lengths: Tensor,
    scores: Tensor | None,
    accuracy: float,
) -> EpochPlan:
    """The curriculum's plan for ``epoch``: a pure function of its arguments (so a resumed run replays it).

    ``lengths`` are the training data's [N]; ``scores`` the checkpointed per-example losses (None before
    scoring); ``accuracy`` the previous epoch's training accuracy (0.0 for the first epoch). The trainer, at
    the start of each epoch (also when resuming mid-epoch, since the plan is recomputed, not stored)::

        if cur.needs_scores(cfg.curriculum, epoch) and self.curriculum_scores is None:
            scorer = self.model if cfg.curriculum.scorer == "self" else cur.load_scorer(...)
            self.curriculum_scores = cur.score_examples(scorer, train, cfg.eval_batch_size, device, autocast)
        plan = cur.plan_epoch(cfg.curriculum, epoch, cfg.epochs, seed, train.lengths,
                              self.curriculum_scores, history[-1]["train_accuracy"] if history else 0.0)
        for i, idx in enumerate(batch_indices(plan.order, batch_size)):   # from the resume position on
            batch = take(train, idx, device)
            if plan.limit is not None:
                batch.x, batch.lengths = cur.limit_batch(batch.x, batch.lengths, plan.limit)

    ``self.curriculum_scores`` (a float32 CPU tensor or None) is the one piece of state to checkpoint.
    Epochs before scoring (and kind none) use ``epoch_order(N, seed, epoch)`` unchanged.
    """
    n = int(lengths.numel())
    base = epoch_order(n, seed, epoch)
    if cfg.kind == "length":
        max_length = max(1, int(lengths.max())) if n else 1
        limit = length_limit(cfg, epoch, max_length)
        return EpochPlan(length_order(lengths, limit, base, cfg.mode), limit if limit < max_length else None)
    if not needs_scores(cfg, epoch):
        return EpochPlan(base, None)
    if scores is None:
        raise ValueError(f"curriculum.kind={cfg.kind}: epoch {epoch} needs the examples' scores (none given)")
    if scores.numel() != n:
        raise ValueError(f"curriculum scores cover {scores.numel()} examples, the training data has {n}")
    if cfg.kind == "difficulty":
        stage = difficulty_stage(cfg, epoch, epochs_total)
        assert stage is not None
        subset = difficulty_subset(scores, stage, cfg.stages, cfg.final_stage)
        return EpochPlan(subset[epoch_order(len(subset), seed, epoch)], None)
    p = p_hard(cfg, accuracy)
    return EpochPlan(adaptive_order(scores, p, cfg.hard_fraction, curriculum_generator(seed, epoch)), None)


# -- multi-task weighting ---------------------------------------------------------------------------------------


def task_performance(accuracy: float, aux_mse: float | None) -> dict[str, float]:
    """Performance in (0, 1] per task for :func:`task_weights`: accuracy for main, ``1 / (1 + mse)`` for aux."""
    perf = {"main": accuracy}
    if aux_mse is not None:
        perf["aux"] = 1.0 / (1.0 + aux_mse)
    return perf


def task_weights(
    cfg: TaskConfig, aux_weight: float, epoch: int, performance: dict[str, float] | None
) -> dict[str, float]:
    """Loss weights ``{"main": w_main, "aux": w_aux}`` for ``epoch``.

    A task is active from its start epoch on; an inactive task weighs 0. fixed: ``(1, aux_weight)``.
    performance: over the n active tasks, ``w_i = n * softmax_i(log(perf_i) / tau)`` (= n * perf_i^(1/tau) /
    sum_j perf_j^(1/tau)), so equal performance gives 1 each and the better task weighs more; ``perf`` is
    clamped to >= 1e-6; with ``performance=None`` (nothing measured yet) each active task weighs 1. In
    performance mode ``aux_weight`` only switches the auxiliary task on (> 0) or off (0: pass 0 when the
    data has no aux target); an active task missing from ``performance`` is an error.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if aux_weight < 0:
        raise ValueError(f"loss.aux_weight must be >= 0, got {aux_weight}")
    starts = {"main": cfg.main_start_epoch, "aux": cfg.aux_start_epoch}
    active = [k for k in TASKS if epoch >= starts[k] and (k == "main" or aux_weight > 0)]
    weights = dict.fromkeys(TASKS, 0.0)
    if cfg.weighting == "fixed":
        for k in active:
            weights[k] = 1.0 if k == "main" else aux_weight
        return weights
    if not active:
        return weights
    if performance is None:
        return weights | dict.fromkeys(active, 1.0)
    missing = [k for k in active if k not in performance]
    if missing:
        raise ValueError(
            f"tasks.weighting=performance: no performance for active task(s) {missing} (got "
            f"{sorted(performance)}); pass loss.aux_weight=0 when the data has no aux target"
        )
    for k in active:
        v = performance[k]
        if not 0.0 <= v <= 1.0:  # also rejects NaN
            raise ValueError(f"tasks.weighting=performance: performance of '{k}' must lie in [0, 1], got {v}")
    perf = torch.tensor([performance[k] for k in active], dtype=torch.float64).clamp_min(_PERF_FLOOR)
    w = len(active) * torch.softmax(perf.log() / cfg.tau, dim=0)
    return weights | dict(zip(active, w.tolist(), strict=True))
