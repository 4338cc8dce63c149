"""Loss slices, the top Hessian eigenvalue and gradient predictiveness on models whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from longshort.diagnostics.landscape import (
    filter_normalised_direction,
    gradient_predictiveness,
    hessian_vector_product,
    loss_slice_1d,
    loss_slice_2d,
    top_hessian_eigenvalue,
)
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import LSTM, CellConfig


def snapshot(model: nn.Module) -> list[Tensor]:
    return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


def bit_identical(model: nn.Module, before: list[Tensor]) -> bool:
    now = [*model.parameters(), *model.buffers()]
    return len(now) == len(before) and all(torch.equal(a, b) for a, b in zip(now, before, strict=True))


def tiny_classifier() -> tuple[SequenceClassifier, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=2, conv_dilations=[1], dropout=0.0)
    model = SequenceClassifier(3, 2, cfg).eval()
    x, lengths, y = torch.randn(6, 7, 3), torch.tensor([7, 3, 5, 7, 2, 6]), torch.tensor([0, 1, 0, 1, 1, 0])
    return model, x, lengths, y


def test_direction_is_filter_normalised_and_zero_on_one_dim_params() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Conv1d(3, 5, 2))
    d = filter_normalised_direction(model, seed=1)
    for (name, p), di in zip(model.named_parameters(), d, strict=True):
        assert di.shape == p.shape
        if p.dim() == 1:
            assert torch.equal(di, torch.zeros_like(p)), name
        else:
            torch.testing.assert_close(di.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
    filt = filter_normalised_direction(model, seed=1, one_dim="filter")
    torch.testing.assert_close(filt[1].abs(), model[0].bias.detach().abs())
    assert all(torch.equal(a, b) for a, b in zip(d, filter_normalised_direction(model, seed=1), strict=True))
    assert not torch.equal(d[0], filter_normalised_direction(model, seed=2)[0])


def test_slices_restore_the_weights_and_start_at_the_loss() -> None:
    model, x, lengths, y = tiny_classifier()
    before = snapshot(model)

    def loss_fn() -> Tensor:
        return nn.functional.cross_entropy(model(x, lengths).logits, y)

    with torch.no_grad():
        at_weights = loss_fn().item()
    s1 = loss_slice_1d(model, loss_fn, [-1.0, -0.5, 0.0, 0.5, 1.0], seed=3)
    assert bit_identical(model, before)
    assert s1["loss"][2] == at_weights
    assert len(set(s1["loss"])) == 5 and "filter-normalised" in s1["directions"]
    s2 = loss_slice_2d(model, loss_fn, [-1.0, 0.0, 1.0], [-0.5, 0.0, 0.5, 1.0], seed=3)
    assert bit_identical(model, before)
    assert np.asarray(s2["loss"]).shape == (3, 4)
    assert s2["loss"][1][1] == at_weights
    assert s2["loss"][0][1] == pytest.approx(s1["loss"][0], abs=1e-6)  # beta = 0: the 1-D slice along d1

    def broken() -> Tensor:
        if not torch.equal(model.head[0].weight, before[0]) and broken.calls > 1:  # type: ignore[attr-defined]
            raise RuntimeError("boom")
        broken.calls += 1  # type: ignore[attr-defined]
        return loss_fn()

    broken.calls = 0  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        loss_slice_1d(model, broken, [0.0, 0.5, 1.0, 2.0])
    assert bit_identical(model, before)  # restored even when the loss raises mid-slice


class Quadratic(nn.Module):
    """L(w) = 0.5 (w - w*)^T A (w - w*) with a known A."""

    def __init__(self, a: Tensor, w0: Tensor, w_star: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w0.clone())
        self.a, self.w_star = a, w_star

    def loss(self) -> Tensor:
        r = self.w - self.w_star
        return 0.5 * r @ self.a @ r


def spd(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def test_quadratic_slice_is_the_expected_parabola() -> None:
    a = spd(4, 0)
    q = Quadratic(a, torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    q.w.data = q.w.data.view(2, 2)  # a 2-D weight: its rows are the filters
    q.w_star = q.w_star.view(2, 2)

    def loss() -> Tensor:
        r = (q.w - q.w_star).flatten()
        return 0.5 * r @ a @ r

    alphas = np.linspace(-2, 2, 9).tolist()
    s = loss_slice_1d(q, loss, alphas, seed=5)
    d = filter_normalised_direction(q, seed=5)[0].flatten()
    w = q.w.detach().flatten()
    expected = [0.5 * (w + t * d) @ a @ (w + t * d) for t in alphas]
    np.testing.assert_allclose(s["loss"], [e.item() for e in expected], rtol=1e-12)
    # a parabola in alpha: constant second difference d^T A d
    second = np.diff(s["loss"], 2) / (alphas[1] - alphas[0]) ** 2
    np.testing.assert_allclose(second, (d @ a @ d).item(), rtol=1e-9)


def test_top_hessian_eigenvalue_of_least_squares() -> None:
    """Linear least squares: L = mean((Xw + b - y)^2) has H = 2 [X 1]^T [X 1] / n in (w, b)."""
    rng = np.random.default_rng(0)
    n, p = 64, 5
    x = rng.normal(size=(n, p)) * np.array([3.0, 1.0, 0.5, 0.2, 2.0])
    y = rng.normal(size=n)
    lin = nn.Linear(p, 1).double()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    before = snapshot(lin)
    lam = top_hessian_eigenvalue(lin, lambda: ((lin(xt).squeeze(-1) - yt) ** 2).mean(), iters=100, tol=1e-10)
    xa = np.hstack([x, np.ones((n, 1))])
    expected = np.linalg.eigvalsh(2 * xa.T @ xa / n).max()
    assert lam == pytest.approx(expected, rel=1e-3)
    assert bit_identical(lin, before)


def test_top_hessian_eigenvalue_is_the_largest_algebraic_one() -> None:
    """Eigenvalues {-5, 1, 2}: power iteration first finds -5; the shifted pass must return 2."""
    a = torch.diag(torch.tensor([-5.0, 1.0, 2.0], dtype=torch.float64))
    q = Quadratic(a, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert top_hessian_eigenvalue(q, q.loss, iters=300, tol=1e-12) == pytest.approx(2.0, rel=1e-4)


@pytest.mark.parametrize("zoneout", [0.0, 0.2])
def test_hessian_vector_products_through_lstms_match_finite_differences(zoneout: float) -> None:
    """Through an LSTM on the fused CPU path (zoneout 0) and on the custom path (zoneout at eval: switched to the
    reference loop for double backward), Hv agrees with a central difference of the gradient: the double
    backward is complete, not silently missing the recurrence."""
    torch.manual_seed(1)
    m = LSTM(3, 4, 2, batch_first=True, bidirectional=True, cell=CellConfig(zoneout=zoneout)).double().eval()
    assert m.uses_fused_path == (zoneout == 0)
    x, lengths = torch.randn(3, 6, 3, dtype=torch.float64), torch.tensor([6, 2, 4])

    def loss() -> Tensor:
        out = m(x, lengths=lengths)[0]
        return (out**2).sum() + (out**3).sum()

    params = list(m.parameters())
    before = snapshot(m)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        hv = torch.cat([h.flatten() for h in hessian_vector_product(m, loss, v)])
        eps = 1e-5
        grads = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, v, strict=True):
                    p.add_(sign * eps * d)
            grads.append(torch.cat([gr.flatten() for gr in torch.autograd.grad(loss(), params)]))
            with torch.no_grad():
                for p, b in zip(params, before, strict=False):
                    p.copy_(b)
        fd = (grads[0] - grads[1]) / (2 * eps)
        torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-6)
    assert m.gate_stats is False and m.last_gate_stats == {}
    assert bit_identical(m, before)


def test_the_fast_custom_recurrence_is_not_twice_differentiable() -> None:
    """Why twice_differentiable exists: the custom fast path's Hessian-vector product misses the recurrence."""
    torch.manual_seed(1)
    m = LSTM(3, 4, batch_first=True, cell=CellConfig(zoneout=0.2)).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    params = list(m.parameters())
    v = [torch.ones_like(p) for p in params]

    def loss() -> Tensor:
        return (m(x)[0] ** 3).sum()

    good = hessian_vector_product(m, loss, v)
    gr = torch.autograd.grad(loss(), params, create_graph=True)
    try:
        bad = torch.autograd.grad(gr, params, grad_outputs=v, allow_unused=True)
    except RuntimeError:
        return  # an explicit refusal is fine too
    assert any(b is None or not torch.allclose(b, g) for b, g in zip(bad, good, strict=True))


def test_gradient_predictiveness_on_a_quadratic() -> None:
    a = spd(5, 1)
    w_star = torch.linspace(-1, 1, 5, dtype=torch.float64)
    q = Quadratic(a, torch.tensor([2.0, 0.0, -1.0, 0.5, 1.5], dtype=torch.float64), w_star)
    before = snapshot(q)
    etas = [0.01, 0.1, 0.5]
    out = gradient_predictiveness(q, q.loss, etas)
    assert bit_identical(q, before)
    r = q.w.detach() - w_star
    g = a @ r
    gn2 = (g @ g).item()
    assert out["loss0"] == pytest.approx(q.loss().item())
    assert out["grad_norm"] == pytest.approx(math.sqrt(gn2))
    for i, eta in enumerate(etas):
        actual = eta * gn2 - 0.5 * eta**2 * (g @ a @ g).item()
        assert out["actual_decrease"][i] == pytest.approx(actual, rel=1e-10)
        assert out["predicted_decrease"][i] == pytest.approx(eta * gn2)
        assert out["ratio"][i] == pytest.approx(1 - 0.5 * eta * (g @ a @ g).item() / gn2, rel=1e-10)
        assert out["grad_diff_norm"][i] == pytest.approx(eta * (a @ g).norm().item(), rel=1e-10)
        assert out["beta"][i] == pytest.approx((a @ g).norm().item() / math.sqrt(gn2), rel=1e-10)
    assert q.w.grad is None


def test_hessian_vector_product_through_the_classifier_and_its_attention() -> None:
    """Eval-mode MultiheadAttention runs a fused SDPA kernel without double backward: held to the math one."""
    model, x, lengths, y = tiny_classifier()
    model = model.double()
    x = x.double()

    def loss() -> Tensor:
        return nn.functional.cross_entropy(model(x, lengths).logits, y)

    params = list(model.parameters())
    before = snapshot(model)
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
         for i, p in enumerate(params)]
    hv = torch.cat([h.flatten() for h in hessian_vector_product(model, loss, v)])
    eps, grads = 1e-5, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d, b in zip(params, v, before, strict=False):
                p.copy_(b + sign * eps * d)
        gr = torch.autograd.grad(loss(), params, allow_unused=True)  # the aux head is not in this loss
        grads.append(torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten()
                                for g, p in zip(gr, params, strict=True)]))
    with torch.no_grad():
        for p, b in zip(params, before, strict=False):
            p.copy_(b)
    torch.testing.assert_close(hv, (grads[0] - grads[1]) / (2 * eps), rtol=1e-4, atol=1e-6)
