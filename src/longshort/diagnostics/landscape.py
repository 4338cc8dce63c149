"""The loss surface around a model's weights: 1-D/2-D slices, the top Hessian eigenvalue, gradient predictiveness.

Every function takes ``loss_fn``, a closure of no arguments returning the scalar loss at the model's *current*
weights (``lambda: trainer.compute_loss(batch)[0]``, or a mean over a few fixed batches). The functions move the
weights, call it, and put every parameter and buffer back bit for bit, whatever happens in between. They do not
change modes: put the model in eval mode first for a deterministic loss (dropout would make each evaluation a
different function), which is what :func:`longshort.diagnostics.analyse.analyse_run` does.

Directions (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"). A random Gaussian direction ``d`` is
*filter-normalised*: for every parameter with two or more dimensions, each filter (slice along dim 0: a row of a
Linear/LSTM weight, i.e. one unit's weights of one gate; one output channel of a Conv1d) is rescaled to the norm
of the same slice of the weights, ``d_i <- d_i / ||d_i|| * ||theta_i||``. A step ``alpha = 1`` then changes every
filter by about its own size, so slices of networks (or layers) with different weight scales are comparable and
scale-invariant layers (LayerNorm after a linear map) do not fake flatness. One-dimensional parameters (biases,
LayerNorm gains and shifts) get a zero direction by default (Li et al.'s choice for biases and batch-norm
parameters); ``one_dim="filter"`` treats each of their entries as a filter of its own (``d_i = sign(r_i) |theta_i|``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from longshort.nn.lstm import LSTM

__all__ = [
    "DIRECTIONS",
    "filter_normalised_direction",
    "gradient_predictiveness",
    "hessian_vector_product",
    "loss_slice_1d",
    "loss_slice_2d",
    "top_hessian_eigenvalue",
    "twice_differentiable",
]

LossFn = Callable[[], Tensor | float]
OneDim = Literal["zero", "filter"]

DIRECTIONS = (
    "filter-normalised random Gaussian directions (Li et al. 2018): each dim-0 slice of every weight with >= 2 "
    "dimensions scaled to the norm of the same slice of the weights; biases and norm parameters held fixed "
    "(zero direction)"
)


def _params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def filter_normalised_direction(model: nn.Module, seed: int, one_dim: OneDim = "zero") -> list[Tensor]:
    """One random direction per trainable parameter (same order as ``model.named_parameters()``), see module doc.

    Drawn on the CPU from ``torch.Generator().manual_seed(seed)`` in parameter order, so the direction depends on
    the seed and the architecture only (not on the device or the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _, p in _params(model):
        w = p.detach()
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)
        w64 = w.to("cpu", torch.float64)
        if w.dim() >= 2:
            dn = d.flatten(1).norm(dim=1).clamp_min(1e-30)
            wn = w64.flatten(1).norm(dim=1)
            d = d * (wn / dn).view(-1, *([1] * (w.dim() - 1)))
        elif one_dim == "filter":
            d = torch.sign(d) * w64.abs()
        else:
            d = torch.zeros_like(d)
        out.append(d.to(w.device, w.dtype))
    return out


@contextlib.contextmanager
def _weights_restored(model: nn.Module) -> Iterator[list[Tensor]]:
    """Snapshots of the trainable parameters (yielded, to offset from) and of every parameter and buffer, all
    copied back on exit: a slice or a gradient step never leaves the model moved, even after an exception."""
    state = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
    origin = [p.detach().clone() for _, p in _params(model)]
    try:
        yield origin
    finally:
        with torch.no_grad():
            for t, saved in state:
                t.copy_(saved)


def _set(model: nn.Module, origin: list[Tensor], steps: Sequence[tuple[float, list[Tensor]]]) -> None:
    """theta = origin + sum_k a_k d_k (computed from the origin each time: no drift from repeated adds)."""
    with torch.no_grad():
        for j, (_, p) in enumerate(_params(model)):
            v = origin[j].clone()
            for a, d in steps:
                if a:
                    v.add_(d[j], alpha=a)
            p.copy_(v)


def _value(loss: Tensor | float) -> float:
    return float(loss.detach()) if isinstance(loss, Tensor) else float(loss)


def loss_slice_1d(model: nn.Module, loss_fn: LossFn, alphas: Sequence[float], seed: int = 0,
                  one_dim: OneDim = "zero", direction: list[Tensor] | None = None) -> dict[str, Any]:
    """``{"directions", "alpha", "loss"}`` with ``loss[i] = loss_fn()`` at ``theta + alpha[i] d`` (no grad).

    ``d`` is :func:`filter_normalised_direction` (``seed``, ``one_dim``) unless ``direction`` is given. The
    model's weights are restored exactly afterwards."""
    d = direction if direction is not None else filter_normalised_direction(model, seed, one_dim)
    losses = []
    with _weights_restored(model) as origin, torch.no_grad():
        for a in alphas:
            _set(model, origin, [(float(a), d)])
            losses.append(_value(loss_fn()))
    return {"directions": DIRECTIONS if direction is None else "given", "alpha": [float(a) for a in alphas],
            "loss": losses}


def loss_slice_2d(model: nn.Module, loss_fn: LossFn, alphas: Sequence[float], betas: Sequence[float],
                  seed: int = 0, one_dim: OneDim = "zero") -> dict[str, Any]:
    """``{"directions", "alpha", "beta", "loss"}`` with ``loss[i][j]`` at ``theta + alpha[i] d1 + beta[j] d2``.

    ``d1`` and ``d2`` are filter-normalised directions drawn with seeds ``seed`` and ``seed + 1``: independent
    Gaussian draws, nearly orthogonal in the many dimensions of a network (they are not orthogonalised, which
    would break the per-filter scaling). Weights restored exactly afterwards."""
    d1 = filter_normalised_direction(model, seed, one_dim)
    d2 = filter_normalised_direction(model, seed + 1, one_dim)
    grid = []
    with _weights_restored(model) as origin, torch.no_grad():
        for a in alphas:
            row = []
            for b in betas:
                _set(model, origin, [(float(a), d1), (float(b), d2)])
                row.append(_value(loss_fn()))
            grid.append(row)
    return {"directions": DIRECTIONS, "alpha": [float(a) for a in alphas], "beta": [float(b) for b in betas],
            "loss": grid}


@contextlib.contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """Make every longshort LSTM of ``model`` double-differentiable for the block, then restore it.

    The LSTM's custom fast recurrence has a hand-written first-order backward only (``once_differentiable``), and
    cuDNN's RNN has no double backward. The fused ``_VF.lstm`` on the CPU is composed of ordinary ops and does
    double-differentiate (checked against finite differences of the gradient), so an LSTM that takes the fused
    path on the CPU is left alone; every other one gets ``gate_stats = True`` for the block, which routes its
    recurrence through ``lstm_recurrence_reference`` (a plain autograd step loop: exact, slower). cuDNN is off
    for the block too, for any plain ``nn.LSTM`` the model holds, and scaled dot-product attention (inside
    ``nn.MultiheadAttention``) is held to its math backend: the flash and memory-efficient kernels have no double
    backward."""
    lstms = [m for m in model.modules() if isinstance(m, LSTM)]
    saved = [(m, m.gate_stats, m.last_gate_stats) for m in lstms]
    try:
        for m in lstms:
            on_cpu = all(p.device.type == "cpu" for p in m.parameters())
            if not (m.uses_fused_path and on_cpu):
                m.gate_stats = True
        with torch.backends.cudnn.flags(enabled=False), sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for m, flag, last in saved:
            m.gate_stats, m.last_gate_stats = flag, last


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    """Inner product of two parameter-shaped lists, accumulated in float64."""
    return float(sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True)))


def _norm(a: list[Tensor]) -> float:
    return math.sqrt(_dot(a, a))


def _hvp_operator(model: nn.Module, loss_fn: LossFn) -> Callable[[list[Tensor]], list[Tensor]]:
    """``v -> Hv`` on one graph of ``g = dL/dtheta`` (built here with ``create_graph=True``, kept for every
    product): ``Hv = d(g . v)/dtheta``. Call inside :func:`twice_differentiable`."""
    params = [p for _, p in _params(model)]
    loss = loss_fn()
    if not isinstance(loss, Tensor) or loss.grad_fn is None:
        raise ValueError("loss_fn must return a tensor with a graph for Hessian-vector products")
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # a gradient without a graph (None, or constant: the loss is linear in that parameter) adds nothing to Hv
    live = [j for j, gr in enumerate(grads) if gr is not None and gr.requires_grad]

    def hvp(v: list[Tensor]) -> list[Tensor]:
        out: list[Tensor | None] = [None] * len(params)
        if live:
            out = list(torch.autograd.grad([grads[j] for j in live], params, grad_outputs=[v[j] for j in live],
                                           retain_graph=True, allow_unused=True))
        return [torch.zeros_like(p) if o is None else o.detach() for o, p in zip(out, params, strict=True)]

    return hvp


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, v: list[Tensor]) -> list[Tensor]:
    """``H v`` for ``v`` shaped like the trainable parameters (``named_parameters`` order), by double backward.

    LSTMs are made double-differentiable for the call (:func:`twice_differentiable`); weights are left as found."""
    with twice_differentiable(model), _weights_restored(model):
        return _hvp_operator(model, loss_fn)(v)


def top_hessian_eigenvalue(model: nn.Module, loss_fn: LossFn, iters: int = 20, tol: float = 1e-4,
                           seed: int = 0) -> float:
    """The largest eigenvalue of the Hessian of ``loss_fn`` in the trainable parameters, by power iteration.

    Each iteration is one Hessian-vector product (:func:`hessian_vector_product`, all on one graph of the
    gradient built once), and the estimate is the Rayleigh quotient ``v . Hv`` of the unit vector ``v``; it stops
    when two estimates agree to ``tol`` (relative) or after ``iters``. Power iteration finds the eigenvalue of
    largest *magnitude*; when that ``lambda`` is negative (a saddle or a maximum), a second power iteration on
    ``H - lambda I`` (eigenvalues ``lambda_i - lambda >= 0``, the largest being ``lambda_max - lambda``) gives the
    largest algebraic one. What is returned is ``lambda_max``, the sharpness. Convergence is geometric in
    ``lambda_2 / lambda_1``: with a small gap, ``iters=20`` gives a few-percent estimate (from below in magnitude).
    The start vector comes from ``seed``; LSTMs are made double-differentiable (:func:`twice_differentiable`).
    """
    params = [p for _, p in _params(model)]
    g = torch.Generator().manual_seed(seed)
    with twice_differentiable(model), _weights_restored(model):
        hvp = _hvp_operator(model, loss_fn)

        def power(shift: float) -> float:
            v = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, p.dtype) for p in params]
            n = _norm(v)
            v = [x / n for x in v]
            lam = math.nan
            for _ in range(max(1, iters)):
                hv = [h - shift * x for h, x in zip(hvp(v), v, strict=True)]
                new = _dot(v, hv)
                n = _norm(hv)
                if n == 0:
                    return new
                v = [x / n for x in hv]
                if not math.isnan(lam) and abs(new - lam) <= tol * max(abs(new), 1e-12):
                    return new
                lam = new
            return lam

        lam = power(0.0)
        if lam < 0:
            lam = power(lam) + lam
    return lam


def gradient_predictiveness(model: nn.Module, loss_fn: LossFn, step_sizes: Sequence[float]) -> dict[str, Any]:
    """How well the gradient at ``theta`` predicts the loss and the gradient along a gradient step (Santurkar et al.
    2018, "How Does Batch Normalization Help Optimization?", section 3.2).

    With ``g = grad L(theta)`` and, for each step size ``eta``, ``theta' = theta - eta g``, reported (lists in the
    order of ``step_sizes``):

    - ``loss0`` ``L(theta)``, ``grad_norm`` ``||g||``;
    - ``loss``: ``L(theta')``;
    - ``actual_decrease``: ``L(theta) - L(theta')``; ``predicted_decrease``: ``eta ||g||^2``, the first-order
      (linear) prediction of the decrease;
    - ``ratio``: actual / predicted; 1 where the loss is linear along ``-g``, below 1 where it curves up (for a
      quadratic, ``1 - eta g.Hg / (2 ||g||^2)``), negative when the step overshoots and the loss rises;
    - ``grad_diff_norm``: ``||grad L(theta') - g||``, Santurkar's gradient predictiveness (small = the gradient
      stays a good guide over the step);
    - ``beta``: ``grad_diff_norm / (eta ||g||)``, their effective beta-smoothness (the gradient's local Lipschitz
      constant along ``-g``; for a quadratic, ``||Hg|| / ||g||``).

    Gradients are taken with ``torch.autograd.grad`` (``.grad`` fields untouched); weights restored exactly.
    """
    params = [p for _, p in _params(model)]

    def loss_and_grad() -> tuple[float, list[Tensor]]:
        loss = loss_fn()
        assert isinstance(loss, Tensor), "loss_fn must return a tensor with a graph"
        gr = torch.autograd.grad(loss, params, allow_unused=True)
        return float(loss.detach()), [torch.zeros_like(p) if x is None else x.detach()
                                      for x, p in zip(gr, params, strict=True)]

    out: dict[str, Any] = {k: [] for k in ("loss", "actual_decrease", "predicted_decrease", "ratio",
                                            "grad_diff_norm", "beta")}
    with _weights_restored(model) as origin:
        loss0, g0 = loss_and_grad()
        gn2 = _dot(g0, g0)
        for eta in step_sizes:
            _set(model, origin, [(-float(eta), g0)])
            loss, g1 = loss_and_grad()
            diff = _norm([a - b for a, b in zip(g1, g0, strict=True)])
            pred = float(eta) * gn2
            out["loss"].append(loss)
            out["actual_decrease"].append(loss0 - loss)
            out["predicted_decrease"].append(pred)
            out["ratio"].append((loss0 - loss) / pred if pred > 0 else math.nan)
            out["grad_diff_norm"].append(diff)
            out["beta"].append(diff / (float(eta) * math.sqrt(gn2)) if pred > 0 else math.nan)
    return {"step_size": [float(e) for e in step_sizes], "loss0": loss0, "grad_norm": math.sqrt(gn2), **out}
