"""Mutual information between a network's hidden states and what they should encode: the label, a future target.

Estimator. k-nearest-neighbour estimators on a low-dimensional projection of the states, in nats:

- continuous target: Kraskov, Stögbauer & Grassberger (2004), their first estimator (KSG-1),
  ``I = psi(k) + psi(N) - <psi(n_x + 1) + psi(n_y + 1)>``, with ``eps_i`` the max-norm distance from point ``i``
  to its k-th neighbour in the joint space and ``n_x``/``n_y`` the points strictly within ``eps_i`` in each
  marginal;
- class label: Ross (2014)'s version for a discrete variable, ``I = psi(N) - <psi(N_y)> + psi(k) - <psi(m)>``,
  with ``d_i`` the distance from ``i`` to its k-th neighbour among the points of its own class (``N_y`` of them)
  and ``m_i`` the points of any class within ``d_i``. This is what scikit-learn's ``mutual_info_classif`` and
  ``mutual_info_regression`` compute, but those estimate each feature *separately*; here the projected state is
  one joint variable.

Neighbours: ``k = 5`` by default in :func:`mi_with_label`/:func:`mi_with_future` (3 in the bare estimators, as in
scikit-learn): a larger ``k`` lowers the variance and raises the bias (towards 0) for strong dependence.

Projection. ``h`` [N, T, D] (or [N, D]) is centred and projected on its first ``n_components`` (default 3)
principal axes, fitted once on all valid states (so every step shares one projection), and each component is
scaled to unit variance, as k-NN estimators need comparable axes. Ties are broken by a 1e-10 jitter.

Bias, and how to read the numbers:

- the projection loses information: by the data-processing inequality the estimate targets
  ``I(P h; y) <= I(h; y)``, a lower bound on what the full state holds;
- for independent variables KSG is nearly unbiased but scatters around 0 (with 3 components and ``k = 5``, up to
  about 0.05 nats at 300 samples and 0.1-0.15 at 60); values are clipped at 0 (as scikit-learn does), which
  biases the null upwards. The *permutation baseline* (the same estimate with the target shuffled across samples)
  measures that null level: only MI clearly above the baseline means something;
- for strong dependence KSG underestimates (it needs ``N >> exp(I)`` samples; the bias grows with dimension, and
  components that carry only noise add to it), so it saturates below ``log(n_classes)`` for a perfectly
  separable label (a Gaussian pair with I = 1.15 nats plus two noise components comes out near 0.95);
- pooled samples (several steps of one sequence) are not independent; the estimator stays consistent for
  stationary data, but its spread is larger than the sample count suggests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from torch import Tensor, nn

from longshort.diagnostics._util import model_mode

__all__ = [
    "BIAS",
    "ESTIMATOR",
    "hidden_states",
    "ksg_mi",
    "mi_with_future",
    "mi_with_label",
    "project",
    "ross_mi",
]

ESTIMATOR = (
    "k-NN mutual information in nats on the first principal components of h_t (unit variance): "
    "Ross (2014) for the class label, Kraskov-Stoegbauer-Grassberger (2004, estimator 1) for continuous targets"
)
BIAS = (
    "lower bound on I(h; target) (projection, data-processing inequality); near-unbiased but noisy around 0 for "
    "independent variables, clipped at 0, so the null level is positive: compare with the permutation baseline "
    "(same estimate, target shuffled); underestimates strong dependence (saturates below log(n_classes))"
)

Part = Literal["block", "lstm", "forward"]


def hidden_states(model: nn.Module, x: Tensor, lengths: Tensor | None = None, block: int = -1,
                  part: Part = "block") -> Tensor:
    """The states of a :class:`~longshort.nn.classifier.SequenceClassifier`'s BiLSTM block ``block`` (default the
    last) for ``x`` [B, T, C]: float32 [B, T, D] on the CPU, zero at padded steps, captured by a forward hook in
    one eval-mode, no-grad forward (modes and hooks are restored).

    ``part``: ``block`` the block's output (LSTM + skip + LayerNorm, D = hidden_dim, what the next block reads);
    ``lstm`` the raw bidirectional LSTM output (D = hidden_dim); ``forward`` its forward direction only
    (D = hidden_dim / 2). ``block`` and ``lstm`` at step t have seen the *whole* sequence (the backward direction
    reads it from the end); only ``forward`` is causal in the LSTM, though the convolutions before it still see
    ``sum(dilation * (kernel // 2))`` steps ahead. Use ``forward`` when asking what the state knows of the future.
    """
    blk = model.lstms[block]  # type: ignore[index]
    target = blk if part == "block" else blk.lstm
    got: list[Tensor] = []

    def hook(_m: nn.Module, _args: Any, out: Any) -> None:
        got.append((out[0] if isinstance(out, tuple) else out).detach())

    handle = target.register_forward_hook(hook)
    try:
        with torch.no_grad(), model_mode(model, False):
            model(x, lengths=lengths)
    finally:
        handle.remove()
    h = got[-1].float().cpu()
    if part == "forward":
        h = h[..., : blk.lstm.hidden_size]
    if lengths is not None:
        out_lengths = model.output_lengths(lengths) if hasattr(model, "output_lengths") else lengths
        valid = torch.arange(h.shape[1])[None, :] < out_lengths.cpu()[:, None]
        h = h * valid[..., None]
    return h.contiguous()


def _valid_mask(n: int, t: int, lengths: Tensor | np.ndarray | None) -> np.ndarray:
    if lengths is None:
        return np.ones((n, t), dtype=bool)
    lens = np.asarray(lengths.cpu() if isinstance(lengths, Tensor) else lengths)
    return np.arange(t)[None, :] < lens[:, None]


def project(h: np.ndarray, n_components: int = 3, mask: np.ndarray | None = None) -> np.ndarray:
    """``h`` [..., D] on its first ``n_components`` principal axes, each scaled to unit variance: [..., n].

    Axes and scales are fitted on the rows where ``mask`` (``h.shape[:-1]``) is True (all rows by default);
    components with no variance are left at 0."""
    flat = h.reshape(-1, h.shape[-1]).astype(np.float64)
    fit = flat if mask is None else flat[mask.reshape(-1)]
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = vt[: min(n_components, vt.shape[0])]
    z = (flat - mean) @ axes.T
    scale = (fit - mean) @ axes.T
    std = scale.std(0)
    z = np.where(std > 1e-12, z / np.where(std > 1e-12, std, 1.0), 0.0)
    return z.reshape(*h.shape[:-1], axes.shape[0])


def _jitter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + 1e-10 * rng.standard_normal(x.shape)


def _strict_counts(points: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Points strictly within ``radius[i]`` (max-norm) of each point, itself excluded."""
    tree = cKDTree(points)
    r = np.nextafter(radius, 0)
    return np.asarray(tree.query_ball_point(points, r, p=np.inf, return_length=True)) - 1


def ksg_mi(x: np.ndarray, y: np.ndarray, k: int = 3, seed: int = 0) -> float:
    """KSG estimator 1 of I(x; y) in nats for continuous ``x`` [N, dx] and ``y`` [N] or [N, dy], clipped at 0.

    ``y`` is standardised; ``x`` is used as given (pass :func:`project`'s output)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n = len(x)
    if n <= k:
        return float("nan")
    y = (y - y.mean(0)) / np.where(y.std(0) > 0, y.std(0), 1.0)
    x, y = _jitter(x, rng), _jitter(y, rng)
    joint = np.hstack([x, y])
    eps = cKDTree(joint).query(joint, k + 1, p=np.inf)[0][:, -1]
    nx, ny = _strict_counts(x, eps), _strict_counts(y, eps)
    mi = digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))
    return max(0.0, float(mi))


def ross_mi(x: np.ndarray, labels: np.ndarray, k: int = 3, seed: int = 0) -> float:
    """Ross (2014)'s estimator of I(x; label) in nats for continuous ``x`` [N, d] and discrete ``labels`` [N],
    clipped at 0. Classes with a single sample are left out (no within-class neighbour); a class with at most
    ``k`` samples uses ``k = N_y - 1`` for its points."""
    rng = np.random.default_rng(seed)
    x = _jitter(np.asarray(x, np.float64).reshape(len(x), -1), rng)
    labels = np.asarray(labels)
    keep = np.zeros(len(x), dtype=bool)
    radius = np.zeros(len(x))
    k_all = np.zeros(len(x))
    n_y = np.zeros(len(x))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        kc = min(k, len(idx) - 1)
        d = cKDTree(x[idx]).query(x[idx], kc + 1, p=np.inf)[0]
        radius[idx] = d[:, -1] if d.ndim == 2 else d
        k_all[idx], n_y[idx], keep[idx] = kc, len(idx), True
    if keep.sum() < 2 or len(np.unique(labels[keep])) < 2:
        return 0.0
    x, radius, k_all, n_y = x[keep], radius[keep], k_all[keep], n_y[keep]
    tree = cKDTree(x)
    m = np.asarray(tree.query_ball_point(x, radius, p=np.inf, return_length=True)) - 1  # within d_i, self out
    n = len(x)
    mi = digamma(n) - np.mean(digamma(n_y)) + np.mean(digamma(k_all)) - np.mean(digamma(np.maximum(m, 1)))
    return max(0.0, float(mi))


def _as_numpy(h: Tensor | np.ndarray) -> np.ndarray:
    return h.detach().cpu().numpy() if isinstance(h, Tensor) else np.asarray(h)


def mi_with_label(h: Tensor | np.ndarray, y: Tensor | np.ndarray, lengths: Tensor | np.ndarray | None = None,
                  *, per_step: bool = True, n_components: int = 3, k: int = 5, min_samples: int = 20,
                  seed: int = 0) -> dict[str, Any]:
    """I(h_t; label) per time step (``per_step``) or pooled over all valid steps, with its permutation baseline.

    ``h`` [N, T, D] (zero or anything at padded steps) with ``lengths`` [N], or [N, D] (one state per
    sequence); ``y`` [N] class indices. Per step ``t`` the samples are the sequences with ``t < lengths``; steps
    with fewer than ``min_samples`` of them are skipped. Returns ``{"t": [...], "mi": [...], "baseline": [...],
    "n": [...]}`` (``t`` omitted for [N, D] input; pooled: one value each in the lists, ``t`` = None). The
    baseline is the same estimate with ``y`` shuffled across sequences (one fixed permutation from ``seed``)."""
    h_np = _as_numpy(h)
    y_np = _as_numpy(y).reshape(-1)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y_np))
    if h_np.ndim == 2:
        z = project(h_np, n_components)
        return {"mi": [ross_mi(z, y_np, k, seed)], "baseline": [ross_mi(z, y_np[perm], k, seed)],
                "n": [len(y_np)]}
    n, t, _ = h_np.shape
    valid = _valid_mask(n, t, lengths)
    z = project(h_np, n_components, valid)
    if not per_step:
        ys = np.broadcast_to(y_np[:, None], (n, t))[valid]
        yp = np.broadcast_to(y_np[perm][:, None], (n, t))[valid]
        zs = z[valid]
        return {"t": None, "mi": [ross_mi(zs, ys, k, seed)], "baseline": [ross_mi(zs, yp, k, seed)],
                "n": [int(valid.sum())]}
    out: dict[str, list[Any]] = {"t": [], "mi": [], "baseline": [], "n": []}
    for step in range(t):
        rows = np.flatnonzero(valid[:, step])
        if len(rows) < min_samples:
            continue
        zs = z[rows, step]
        out["t"].append(step)
        out["mi"].append(ross_mi(zs, y_np[rows], k, seed))
        out["baseline"].append(ross_mi(zs, y_np[perm][rows], k, seed))
        out["n"].append(len(rows))
    return out


def mi_with_future(h: Tensor | np.ndarray, series: Tensor | np.ndarray, ks: Sequence[int],
                   lengths: Tensor | np.ndarray | None = None, *, n_components: int = 3, k: int = 5,
                   max_samples: int = 2000, min_samples: int = 20, seed: int = 0,
                   discrete: bool = False) -> dict[str, Any]:
    """I(h_t; y_{t+k}) for each horizon in ``ks``, pooled over sequences and valid steps, with a baseline.

    ``h`` [N, T, D]; ``series`` [N, S] with ``series[n, s]`` the target at step ``s`` of sequence ``n`` (step 0
    = the sequence's first step), ``S >= T`` so that targets after the sequence's end can be given; NaN where
    unknown. For each ``k`` the samples are the pairs ``(h[n, t], series[n, t + k])`` with ``t < lengths[n]``,
    ``t + k < S`` and a finite target, at most ``max_samples`` of them (a seeded random subset: the k-NN cost
    grows as N log N). Returns ``{"k": [...], "mi": [...], "baseline": [...], "n": [...]}``, NaN MI (and
    baseline) for a horizon with fewer than ``min_samples`` pairs; the baseline shuffles the targets of the
    pairs. ``discrete``: the targets are class ids (a seq2seq run's target tokens, NaN where there is none),
    estimated with :func:`ross_mi` instead of :func:`ksg_mi`."""
    h_np = _as_numpy(h)
    s_np = _as_numpy(series).astype(np.float64)
    n, t, _ = h_np.shape
    if s_np.shape[0] != n:
        raise ValueError(f"series has {s_np.shape[0]} rows for {n} sequences")
    valid = _valid_mask(n, t, lengths)
    z = project(h_np, n_components, valid)
    rng = np.random.default_rng(seed)
    out: dict[str, list[Any]] = {"k": [], "mi": [], "baseline": [], "n": []}
    for kk in ks:
        rows, steps = np.nonzero(valid)
        ahead = steps + int(kk)
        ok = (ahead >= 0) & (ahead < s_np.shape[1])
        rows, steps, ahead = rows[ok], steps[ok], ahead[ok]
        target = s_np[rows, ahead]
        fin = np.isfinite(target)
        rows, steps, target = rows[fin], steps[fin], target[fin]
        if len(target) > max_samples:
            pick = rng.choice(len(target), max_samples, replace=False)
            rows, steps, target = rows[pick], steps[pick], target[pick]
        out["k"].append(int(kk))
        out["n"].append(len(target))
        if len(target) < min_samples:
            out["mi"].append(float("nan"))
            out["baseline"].append(float("nan"))
            continue
        zs = z[rows, steps]
        estimate = ross_mi if discrete else ksg_mi
        out["mi"].append(estimate(zs, target, k, seed))
        out["baseline"].append(estimate(zs, rng.permutation(target), k, seed))
    return out
