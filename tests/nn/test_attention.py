from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from longshort.nn import Attention, AttentionConfig, coverage_loss
from longshort.nn.attention import SCORES

B, S, HQ, HK = 3, 8, 4, 4
KINDS = list(SCORES)
LENGTHS = torch.tensor([8, 5, 2])


def _mask(lengths: Tensor = LENGTHS, s: int = S) -> Tensor:
    return torch.arange(s).unsqueeze(0) < lengths.unsqueeze(1)


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, HQ, generator=g), torch.randn(B, S, HK, generator=g), _mask()


@pytest.mark.parametrize("coverage", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_weights_sum_to_one_and_zero_on_padding(kind: str, coverage: bool) -> None:
    torch.manual_seed(0)
    att = Attention(HQ, HK, AttentionConfig(kind=kind, coverage=coverage, window=2))
    q, k, m = _inputs()
    cov = torch.rand(B, S) if coverage else None
    out = att(q, k, m, step=3, coverage=cov)
    assert out.weights.shape == (B, S) and out.context.shape == (B, HK)
    assert torch.all(out.weights[~m] == 0)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(B))
    assert torch.all(out.weights >= 0)
    torch.testing.assert_close(out.context, torch.einsum("bs,bsh->bh", out.weights, k))


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_row_gives_zero_weights_and_context(kind: str) -> None:
    att = Attention(HQ, HK, AttentionConfig(kind=kind))
    q, k, _ = _inputs()
    m = _mask(torch.tensor([8, 0, 3]))
    out = att(q, k, m, step=1)
    assert torch.isfinite(out.weights).all() and torch.isfinite(out.context).all()
    assert torch.all(out.weights[1] == 0) and torch.all(out.context[1] == 0)
    torch.testing.assert_close(out.weights[[0, 2]].sum(-1), torch.ones(2))


def test_none_is_masked_mean_of_keys() -> None:
    q, k, m = _inputs()
    out = Attention(HQ, HK, AttentionConfig(kind="none"))(q, k, m)
    for b, n in enumerate(LENGTHS.tolist()):
        torch.testing.assert_close(out.weights[b, :n], torch.full((n,), 1.0 / n))
        torch.testing.assert_close(out.context[b], k[b, :n].mean(0))


def test_dot_equals_hand_computation() -> None:
    q, k, m = _inputs()
    out = Attention(HQ, HK, AttentionConfig(kind="dot"))(q, k, m)
    for b, n in enumerate(LENGTHS.tolist()):
        e = torch.tensor([float(q[b] @ k[b, s]) for s in range(n)])
        a = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
        torch.testing.assert_close(out.weights[b, :n], a)
        torch.testing.assert_close(out.context[b], (a.unsqueeze(1) * k[b, :n]).sum(0))


def test_general_with_identity_equals_dot() -> None:
    q, k, m = _inputs()
    general = Attention(HQ, HK, AttentionConfig(kind="general"))
    with torch.no_grad():
        general.score.W.weight.copy_(torch.eye(HK))
    a, d = general(q, k, m), Attention(HQ, HK, AttentionConfig(kind="dot"))(q, k, m)
    torch.testing.assert_close(a.weights, d.weights)
    torch.testing.assert_close(a.context, d.context)


def test_dot_with_mismatched_dims_raises_naming_the_option() -> None:
    with pytest.raises(ValueError, match=re.escape("attention.kind='dot'")):
        Attention(3, 5, AttentionConfig(kind="dot"))


def _flat_general(att: Attention) -> Attention:
    """Content scores all zero, so only the Gaussian window shapes the weights."""
    with torch.no_grad():
        att.score.W.weight.zero_()
    return att


def test_local_monotonic_window_and_centre_follow_step() -> None:
    d, s = 2, 12
    att = _flat_general(Attention(HQ, HK, AttentionConfig(kind="local_monotonic", window=d)))
    q, k = torch.randn(2, HQ), torch.randn(2, s, HK)
    m = _mask(torch.tensor([12, 6]), s)
    pos = torch.arange(s)
    for step in (0, 3, 7, 20):
        out = att(q, k, m, step=step)
        expected = torch.tensor([min(step, 11), min(step, 5)], dtype=torch.float32)
        torch.testing.assert_close(out.position, expected)
        outside = (pos.unsqueeze(0) - expected.unsqueeze(1)).abs() > d
        assert torch.all(out.weights[outside] == 0)
        assert out.weights.argmax(-1).tolist() == expected.long().tolist()
        torch.testing.assert_close(out.weights.sum(-1), torch.ones(2))


def test_local_predictive_centre_moves_with_query() -> None:
    d, s = 2, 16
    att = _flat_general(Attention(HQ, HK, AttentionConfig(kind="local_predictive", window=d), attn_dim=HQ))
    with torch.no_grad():
        att.position.W_p.weight.copy_(torch.eye(HQ))
        att.position.v_p.weight.fill_(5.0)
    k = torch.randn(2, s, HK)
    m = _mask(torch.tensor([16, 10]), s)
    high, low = att(torch.full((2, HQ), 3.0), k, m), att(torch.full((2, HQ), -3.0), k, m)
    assert torch.all(high.position > torch.tensor([14.0, 8.5]))  # sigmoid near 1: p ~ L - 1
    assert torch.all(low.position < 0.5)  # sigmoid near 0: p ~ 0
    pos = torch.arange(s).float()
    for out in (high, low):
        outside = (pos.unsqueeze(0) - out.position.unsqueeze(1)).abs() > d
        assert torch.all(out.weights[outside] == 0)
        assert out.weights.argmax(-1).tolist() == out.position.round().long().tolist()
    assert torch.all(high.weights.argmax(-1) > low.weights.argmax(-1))


def test_coverage_is_running_sum_of_past_weights() -> None:
    torch.manual_seed(1)
    att = Attention(HQ, HK, AttentionConfig(kind="bahdanau", coverage=True))
    _, k, m = _inputs()
    cov, total = None, torch.zeros(B, S)
    for t in range(4):
        out = att(torch.randn(B, HQ), k, m, step=t, coverage=cov)
        total = total + out.weights
        torch.testing.assert_close(out.coverage, total)
        cov = out.coverage
    torch.testing.assert_close(cov.sum(-1), torch.full((B,), 4.0))


def test_large_coverage_lowers_weight_dot() -> None:
    att = Attention(HQ, HK, AttentionConfig(kind="dot", coverage=True))
    with torch.no_grad():
        att.score.cov_weight.fill_(2.0)
    q, k, m = _inputs()
    cov = torch.zeros(B, S)
    cov[:, 0] = 3.0
    plain, covered = att(q, k, m), att(q, k, m, coverage=cov)
    assert torch.all(covered.weights[:, 0] < plain.weights[:, 0])
    # the hand formula: softmax(q.k - w_cov * c)
    e = torch.einsum("bh,bsh->bs", q, k) - 2.0 * cov
    ref = torch.softmax(e.masked_fill(~m, float("-inf")), -1)
    torch.testing.assert_close(covered.weights, ref)


def test_large_coverage_lowers_weight_bahdanau() -> None:
    att = Attention(HQ, HK, AttentionConfig(kind="bahdanau", coverage=True), attn_dim=3)
    with torch.no_grad():
        for p in att.parameters():
            p.zero_()
        att.score.v.weight.fill_(-1.0)  # e_s = -sum tanh(w_c c_s): more coverage, lower score
        att.score.w_c.weight.fill_(1.0)
    q, k, m = _inputs()
    cov = torch.zeros(B, S)
    cov[:, 0] = 2.0
    out = att(q, k, m, coverage=cov)
    assert torch.all(out.weights[:, 0] < out.weights[:, 1])
    for b, n in enumerate(LENGTHS.tolist()):  # the uncovered positions share the rest equally
        torch.testing.assert_close(out.weights[b, 1:n], out.weights[b, 1].expand(n - 1))


def test_coverage_loss_hand_computation() -> None:
    a = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.9, 0.0, 0.0]])
    c = torch.tensor([[0.2, 0.6, 0.0, 1.0], [0.4, 0.4, 2.0, 0.0]])
    # row 0: min = 0.2 + 0.3 + 0.0 + 0.0 = 0.5; row 1: 0.1 + 0.7 + 0.0 + 0.0 = 0.8
    c[1, 1] = 0.7
    torch.testing.assert_close(coverage_loss(a, c), torch.tensor((0.5 + 0.8) / 2))


@pytest.mark.parametrize("kind", ["bahdanau", "dot", "general", "concat", "local_monotonic", "local_predictive"])
def test_gradients_reach_every_parameter(kind: str) -> None:
    torch.manual_seed(0)
    att = Attention(HQ, HK, AttentionConfig(kind=kind, coverage=True, window=3))
    q, k, m = _inputs()
    q.requires_grad_(True)
    out = att(q, k, m, step=2, coverage=torch.rand(B, S))
    (out.context.square().sum() + coverage_loss(out.weights, torch.rand(B, S))).backward()
    params = dict(att.named_parameters())
    assert params
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_gives_float32_weights(kind: str) -> None:
    att = Attention(HQ, HK, AttentionConfig(kind=kind, coverage=True))
    q, k, m = _inputs()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = att(q.bfloat16(), k.bfloat16(), m, step=2)
    except RuntimeError as err:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"bf16 autocast on CPU does not support these ops here: {err}")
    assert out.weights.dtype == torch.float32
    assert torch.all(out.weights[~m] == 0)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(B))


@pytest.mark.parametrize("kind", sorted(SCORES))
@pytest.mark.parametrize("coverage", [False, True])
def test_prepared_keys_give_the_same_step(kind: str, coverage: bool) -> None:
    q, k, _ = _inputs()
    torch.manual_seed(3)
    att = Attention(q.shape[1], k.shape[2], AttentionConfig(kind=kind, coverage=coverage))
    if coverage:  # a non-zero coverage weight, so the coverage path is exercised too
        for p in att.parameters():
            torch.nn.init.normal_(p)
    mask, cov = _mask(), torch.rand(k.shape[0], k.shape[1])
    plain = att(q, k, mask, step=2, coverage=cov)
    prepared = att.prepare(k)
    assert (prepared is None) == (kind in ("none", "dot"))
    fast = att(q, k, mask, step=2, coverage=cov, prepared=prepared)
    torch.testing.assert_close(fast.weights, plain.weights)
    torch.testing.assert_close(fast.context, plain.context)
