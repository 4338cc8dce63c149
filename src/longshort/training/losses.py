"""Training losses, chosen by name: cross-entropy, focal, adaptive (focal + confidence penalty), the auxiliary
regression loss, and a time-aware focal loss for per-step (sequence) targets.

Multi-task: the trainer forms ``w_main * L_main + w_aux * L_aux`` from ``build_loss(...)`` (the main,
classification loss) and :func:`aux_loss` (the auxiliary regression loss); the weights are fixed at
``(1, loss.aux_weight)`` unless a task-weighting scheme (``train.tasks``) changes them per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from longshort.training.config import ADAPTIVE_CONFIDENCE_PENALTY as ADAPTIVE_CONFIDENCE_PENALTY
from longshort.training.config import LossConfig as LossConfig
from longshort.training.config import LossName as LossName
from longshort.training.config import TimeWeighting as TimeWeighting

Reduction = Literal["mean", "sum", "none"]


ClassLoss = Callable[[Tensor, Tensor], Tensor]


def _check_class_inputs(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must be [batch] = {tuple(logits.shape[:1])}, got shape {tuple(target.shape)}")


def _one_minus_p(logp: Tensor) -> Tensor:
    # 1 - p computed as -expm1(log p): exact for p near 1, where 1 - exp(log p) cancels. Clamped away from 0 so
    # that (1 - p)^gamma with 0 < gamma < 1 has a finite gradient on a saturated prediction (clamp passes no
    # gradient there, which is the right limit); the value changes by at most 1e-38^gamma.
    return (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    normalize: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """Focal loss (Lin et al. 2017): per example ``alpha * (1 - p_t)^gamma * CE_t``, ``p_t`` the softmax
    probability of the true class.

    ``CE_t`` is exactly torch's per-example ``F.cross_entropy(..., weight=weight, label_smoothing=...,
    reduction="none")``: with label smoothing it is the cross-entropy against the smoothed target
    ``(1 - eps) * one_hot + eps / K`` (the modulating factor still uses the unsmoothed ``p_t``); with ``weight``
    it carries the true class's weight (and, under smoothing, each class's weight in the uniform part, as torch
    does). ``"mean"`` divides the sum by ``sum_i weight[target_i]`` (by B without weights), so with
    ``gamma=0, alpha=1`` this is ``F.cross_entropy`` to rounding, weights and smoothing included.
    ``alpha`` is a global scale (seed 000's AdaptiveLoss), not RetinaNet's per-class alpha: class balance comes
    from ``weight``. Computed in float32 from log_softmax.

    ``normalize``: every example's term is divided by the batch's (class-weighted) mean modulating factor
    ``m = alpha * (1 - p_t)^gamma``, taken as a constant (detached). The focal loss is typically 10-50x smaller
    than cross-entropy (``alpha`` = 0.25 and ``(1 - p)^2`` on the many easy examples), which leaves a fixed-weight
    term added to it (an auxiliary loss, a confidence penalty) to dominate the gradient; normalised, the loss is
    on cross-entropy's scale while the examples keep the same relative weights. With ``gamma=0`` it is exactly
    cross-entropy, whatever ``alpha``.
    """
    _check_class_inputs(logits, target)
    if alpha < 0:
        raise ValueError(f"focal alpha must be >= 0, got {alpha}")
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    z = logits.float()
    w = None if weight is None else weight.to(device=z.device, dtype=torch.float32)
    ce = F.cross_entropy(z, target, weight=w, label_smoothing=label_smoothing, reduction="none")
    logp_t = z.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    mod = alpha * _one_minus_p(logp_t).pow(gamma)
    per = mod * ce
    if normalize:
        m = mod.detach()
        mean_mod = m.mean() if w is None else (m * w[target]).sum() / w[target].sum()
        per = per / mean_mod.clamp_min(torch.finfo(per.dtype).tiny)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    denom = per.new_tensor(float(len(target))) if w is None else w[target].sum()
    return per.sum() / denom


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy ``H(p) = -sum_k p_k log p_k`` (nats) of ``softmax(logits)`` over the last dim, in float32."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def confidence_penalty(logits: Tensor, beta: float) -> Tensor:
    """Pereyra et al. 2017's confidence penalty ``-beta * mean_i H(p_i)``: added to a loss, minimising it raises
    the entropy of the predictions, i.e. penalises confident (low-entropy) outputs.

    Seed 000's AdaptiveLoss adds ``-0.1 * mean(sum p log p) = +0.1 * mean H``: minimising that *lowers* the
    entropy, rewarding confidence, the opposite of its name; the sign here is the paper's.
    """
    if beta < 0:
        raise ValueError(f"confidence_penalty must be >= 0, got {beta}")
    return -beta * entropy(logits).mean()


def _with_penalty(base: ClassLoss, beta: float) -> ClassLoss:
    if beta == 0:
        return base

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        # Plain mean over the batch (class weights do not enter): the penalty is about the outputs, not labels.
        return base(logits, target) + confidence_penalty(logits, beta)

    return loss


def _cross_entropy(cfg: LossConfig, weight: Tensor | None) -> ClassLoss:
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=cfg.label_smoothing)

    return _with_penalty(loss, cfg.resolved_confidence_penalty)


def _focal(cfg: LossConfig, weight: Tensor | None) -> ClassLoss:
    alpha, gamma, eps, norm = cfg.focal_alpha, cfg.focal_gamma, cfg.label_smoothing, cfg.focal_normalize

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(logits, target, alpha=alpha, gamma=gamma, weight=weight, label_smoothing=eps,
                          normalize=norm)

    return _with_penalty(loss, cfg.resolved_confidence_penalty)


# "adaptive" is the focal loss whose confidence penalty defaults to 0.1 (resolved_confidence_penalty).
LOSSES: dict[str, Callable[[LossConfig, Tensor | None], ClassLoss]] = {
    "cross_entropy": _cross_entropy,
    "focal": _focal,
    "adaptive": _focal,
}


def balanced_class_weights(y: Tensor, num_classes: int) -> Tensor:
    """``n / (k * count_c)`` per class (scikit-learn's 'balanced'); a class absent from training gets 0."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"class labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    counts = torch.bincount(y, minlength=num_classes).float()
    w = len(y) / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, w, torch.zeros_like(w))


def build_loss(cfg: LossConfig, train_y: Tensor, num_classes: int) -> ClassLoss:
    """The main loss ``loss(logits [B, K], target [B] long) -> scalar`` named by ``cfg.name``; class weights
    (when on) come from ``train_y``, on its device."""
    weight = balanced_class_weights(train_y, num_classes) if cfg.class_weights else None
    return LOSSES[cfg.name](cfg, weight)


def aux_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The auxiliary regression loss: mean squared error in float32. Shapes must match exactly (no silent
    broadcasting of [B, 1] against [B])."""
    if pred.shape != target.shape:
        raise ValueError(f"aux prediction shape {tuple(pred.shape)} != aux target shape {tuple(target.shape)}")
    return F.mse_loss(pred.float(), target.float())


def time_weights(
    lengths: Tensor, T_max: int, alpha0: float = 1.0, weighting: TimeWeighting = "constant", rate: float = 1.0
) -> Tensor:
    """Time-aware weights ``alpha_t = alpha0 * f(u)``, ``u = (t + 1) / T`` with ``T`` each sequence's length:
    constant ``f = 1``; linear ``f = u`` (later steps weigh more); reverse ``f = 1 - u + 1/T`` (earlier steps
    weigh more, the last still ``1/T``); exp ``f = exp(rate * (u - 1))`` (1 at the last step). Returns float32
    ``[B, T_max]``, zero at ``t >= T``."""
    if alpha0 < 0:
        raise ValueError(f"alpha0 must be >= 0, got {alpha0}")
    if weighting not in ("constant", "linear", "reverse", "exp"):
        raise ValueError(f"weighting must be 'constant', 'linear', 'reverse' or 'exp', got {weighting!r}")
    if T_max < 0:
        raise ValueError(f"T_max must be >= 0, got {T_max}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [batch], got shape {tuple(lengths.shape)}")
    n = lengths.to(torch.float32).unsqueeze(1)  # [B, 1]
    t1 = torch.arange(1, T_max + 1, device=lengths.device, dtype=torch.float32)  # t + 1
    u = t1 / n.clamp_min(1)
    if weighting == "constant":
        f = torch.ones_like(u)
    elif weighting == "linear":
        f = u
    elif weighting == "reverse":
        f = 1 - u + 1 / n.clamp_min(1)
    else:
        f = torch.exp(rate * (u - 1))
    return torch.where(t1 <= n, alpha0 * f, torch.zeros_like(f))


def sequence_focal_loss(
    logits: Tensor,
    target: Tensor,
    lengths: Tensor | None = None,
    *,
    alpha0: float = 1.0,
    gamma: float = 2.0,
    weighting: TimeWeighting = "constant",
    rate: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    """Focal loss for per-step targets: ``L = -sum_t alpha_t (1 - p_t)^gamma log p_t`` (seed 003), with
    time-aware ``alpha_t`` from :func:`time_weights`.

    ``logits`` [B, T, K], ``target`` [B, T] long. A position counts when ``t < lengths[b]`` (when given) and
    ``target != ignore_index``. Each sequence's ``T`` is ``lengths[b]``; without lengths it is the index of its
    last counted position + 1 (the count of counted positions when the padding is trailing; never less than a
    counted position's ``t + 1``, so ``u`` stays in (0, 1]). Other positions contribute nothing and get zero
    gradient whatever their logits (even inf/NaN). ``"mean"``: the total over counted positions divided by their
    number (0 when there are none); ``"sum"``: the total; ``"none"``: per-sequence sums [B].
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, time, classes], got shape {tuple(logits.shape)}")
    B, T, _ = logits.shape
    if target.shape != (B, T):
        raise ValueError(f"target must be [batch, time] = {(B, T)}, got shape {tuple(target.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    steps = torch.arange(T, device=logits.device)
    valid = target != ignore_index
    if lengths is not None:
        if lengths.shape != (B,):
            raise ValueError(f"lengths must be [batch] = ({B},), got shape {tuple(lengths.shape)}")
        lengths = lengths.to(logits.device)
        # One check for both bounds (a single host sync).
        if bool(((lengths < 0) | (lengths > T)).any()):
            raise ValueError(f"lengths must lie in [0, {T}] (the time dim of logits), got {lengths.tolist()}")
        valid = valid & (steps < lengths.unsqueeze(1))
        seq_len = lengths
    else:
        # Last counted index + 1 (0 when none); amax needs a non-empty time dim.
        seq_len = torch.where(valid, steps + 1, 0).amax(1) if T else target.new_zeros(B)
    w = time_weights(seq_len, T, alpha0, weighting, rate) * valid
    # Mask before log_softmax, not after: masked_fill passes no gradient to the replaced entries, so padding
    # logits (even inf/NaN) neither change the loss nor receive gradient; masking only the product would still
    # send NaN back through log_softmax (0 * NaN).
    z = logits.float().masked_fill(~valid.unsqueeze(-1), 0.0)
    logp_t = z.log_softmax(-1).gather(-1, target.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)
    per_step = -w * _one_minus_p(logp_t).pow(gamma) * logp_t  # [B, T]
    if reduction == "none":
        return per_step.sum(1)
    if reduction == "sum":
        return per_step.sum()
    return per_step.sum() / valid.sum().clamp_min(1)
