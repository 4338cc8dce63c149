"""The fast recurrence (one autograd Function, hand-written BPTT) against the reference step loop and nn.LSTM."""

from __future__ import annotations

import itertools

import pytest
import torch

from longshort.nn import recurrence
from longshort.nn.recurrence import (
    LayerNormParams,
    lstm_recurrence,
    lstm_recurrence_reference,
    set_workspace_limit,
)

OPTIONS = ("ln", "zoneout_mask", "zoneout_rate", "recurrent", "lengths")
TIME_SKIPS = ("residual", "highway")  # the skip through time (seed 003), at most one


def _combos(time_skips: bool = True) -> list[tuple[str, ...]]:
    out = []
    for n in range(len(OPTIONS) + 1):
        for c in itertools.combinations(OPTIONS, n):
            if "zoneout_mask" in c and "zoneout_rate" in c:
                continue  # training (mask) or evaluation (rate), never both
            out.append(c)
            if time_skips:
                out += [(*c, skip) for skip in TIME_SKIPS if not (skip == "highway" and "ln" in c)]
    return out


def _case(opts: tuple[str, ...], dtype: torch.dtype, t: int = 7, b: int = 5, h: int = 4, seed: int = 0) -> dict:
    """Inputs (leaves needing grad) and keyword options for one combination."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(True)

    gates = 5 * h if "highway" in opts else 4 * h
    leaves = {"xw": rnd(t, b, gates), "w_hh": rnd(gates, h, scale=0.5), "h0": rnd(b, h), "c0": rnd(b, h)}
    kw: dict = {}
    for skip in TIME_SKIPS:
        if skip in opts:
            kw["time_skip"] = skip
    if "ln" in opts:
        leaves.update(gw=rnd(4, h, scale=0.5), gb=rnd(4, h), cw=rnd(h, scale=0.5), cb=rnd(h))
    if "zoneout_mask" in opts:
        kw["zoneout_c"] = (torch.rand(t, b, h, generator=g) < 0.3).to(dtype)
        kw["zoneout_h"] = torch.rand(t, b, h, generator=g) < 0.4  # a bool mask works as well
    if "zoneout_rate" in opts:
        kw["zoneout_c"], kw["zoneout_h"] = 0.25, 0.1
    if "recurrent" in opts:
        kw["recurrent_mask"] = (torch.rand(b, h, generator=g) < 0.7).to(dtype) / 0.7
    if "lengths" in opts:
        kw["lengths"] = torch.tensor(([t, 3, 0, t - 1, 1] * b)[:b])  # ragged, one empty row
    return {"leaves": leaves, "kw": kw}


def _run(fn, case: dict) -> list[torch.Tensor]:
    """Outputs and the gradients of a loss touching out, h_T and c_T, w.r.t. every leaf."""
    lv, kw = case["leaves"], dict(case["kw"])
    if "gw" in lv:
        kw["ln"] = LayerNormParams(lv["gw"], lv["gb"], lv["cw"], lv["cb"])
    out, h_t, c_t, _ = fn(lv["xw"], lv["w_hh"], lv["h0"], lv["c0"], **kw)
    g = torch.Generator().manual_seed(1)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in (out, h_t, c_t))
    grads = torch.autograd.grad(loss, list(lv.values()))
    return [out, h_t, c_t, *grads]


def _names(case: dict) -> list[str]:
    return ["out", "h_T", "c_T", *(f"d_{k}" for k in case["leaves"])]


@pytest.mark.parametrize("opts", _combos(), ids=lambda c: "+".join(c) or "plain")
def test_fast_path_matches_reference_float64(opts: tuple[str, ...]) -> None:
    case = _case(opts, torch.float64)
    fast, ref = _run(lstm_recurrence, case), _run(lstm_recurrence_reference, case)
    for name, a, b in zip(_names(case), fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("opts", [
    (), ("ln", "zoneout_mask", "recurrent", "lengths"), ("ln", "zoneout_rate"),
    ("zoneout_mask", "recurrent", "lengths", "highway"), ("ln", "zoneout_rate", "residual"),
])
def test_fast_path_matches_reference_float32(opts: tuple[str, ...]) -> None:
    case = _case(opts, torch.float32, t=20, b=6, h=16, seed=3)
    fast, ref = _run(lstm_recurrence, case), _run(lstm_recurrence_reference, case)
    for name, a, b in zip(_names(case), fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_gradcheck_all_options() -> None:
    """Numerical gradients, independently of the reference loop."""
    case = _case(("ln", "zoneout_mask", "recurrent", "lengths"), torch.float64, t=4, b=3, h=3, seed=5)
    lv, kw = case["leaves"], case["kw"]
    names = list(lv)

    def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = dict(zip(names, xs, strict=True))
        ln = LayerNormParams(d["gw"], d["gb"], d["cw"], d["cb"])
        out, h, c, _ = lstm_recurrence(d["xw"], d["w_hh"], d["h0"], d["c0"], ln=ln, **kw)
        return out, h, c

    assert torch.autograd.gradcheck(f, tuple(lv.values()), fast_mode=True)


def _nn_lstm_case(dtype: torch.dtype) -> tuple[torch.nn.LSTM, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 8).to(dtype)
    x = torch.randn(9, 4, 3, dtype=dtype)
    h0, c0 = torch.randn(1, 4, 8, dtype=dtype), torch.randn(1, 4, 8, dtype=dtype)
    return lstm, x, h0, c0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_plain_matches_nn_lstm(dtype: torch.dtype) -> None:
    lstm, x, h0, c0 = _nn_lstm_case(dtype)
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    out, (h_n, c_n) = lstm(x, (h0, c0))
    (out.sum() + h_n.sum() * 2 + c_n.sum() * 3).backward()
    ref_grads = [p.grad.clone() for p in lstm.parameters()]  # type: ignore[union-attr]
    lstm.zero_grad()
    xw = x @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + lstm.bias_hh_l0
    out2, h2, c2, _ = lstm_recurrence(xw, lstm.weight_hh_l0, h0[0], c0[0])
    (out2.sum() + h2.sum() * 2 + c2.sum() * 3).backward()
    for a, b in [(out2, out), (h2, h_n[0]), (c2, c_n[0])]:
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for p, g in zip(lstm.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=tol, atol=tol)


def test_lengths_match_packed_nn_lstm() -> None:
    lstm, x, h0, c0 = _nn_lstm_case(torch.float64)
    lengths = torch.tensor([9, 2, 5, 1])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h_n, _) = lstm(packed, (h0, c0))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=9)
    xw = x @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + lstm.bias_hh_l0
    out2, h2, _, _ = lstm_recurrence(xw, lstm.weight_hh_l0, h0[0], c0[0], lengths=lengths)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(h2, h_n[0])


def test_no_grad_path_and_stats_path_agree_with_training_path() -> None:
    case = _case(("ln", "zoneout_rate", "lengths"), torch.float64)
    lv, kw = case["leaves"], case["kw"]
    ln = LayerNormParams(lv["gw"], lv["gb"], lv["cw"], lv["cb"])
    args = (lv["xw"], lv["w_hh"], lv["h0"], lv["c0"])
    with_grad = lstm_recurrence(*args, ln=ln, **kw)
    with torch.no_grad():
        without = lstm_recurrence(*args, ln=ln, **kw)
    stats = lstm_recurrence(*args, ln=ln, stats=True, **kw)
    assert with_grad[3] is None and stats[3] is not None
    for a, b, c in zip(with_grad[:3], without[:3], stats[:3], strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_backward_twice_with_retain_graph_and_buffer_reuse() -> None:
    """Pooled buffers must not be recycled while the graph can still run backward."""
    case = _case(("ln", "zoneout_mask", "recurrent"), torch.float64)
    lv, kw = case["leaves"], case["kw"]
    ln = LayerNormParams(lv["gw"], lv["gb"], lv["cw"], lv["cb"])
    out, _, _, _ = lstm_recurrence(lv["xw"], lv["w_hh"], lv["h0"], lv["c0"], ln=ln, **kw)
    first = torch.autograd.grad(out.sum(), list(lv.values()), retain_graph=True)
    # other calls of the same shapes in between: they must not take the live graph's buffers
    for _ in range(3):
        other = _case(("ln", "zoneout_mask", "recurrent"), torch.float64, seed=9)
        _run(lstm_recurrence, other)
    second = torch.autograd.grad(out.sum(), list(lv.values()))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_repeated_calls_are_identical_with_and_without_recycling() -> None:
    case = _case(("ln", "zoneout_mask", "recurrent", "lengths"), torch.float32, t=12, b=4, h=8)
    first = _run(lstm_recurrence, case)
    second = _run(lstm_recurrence, case)
    try:
        set_workspace_limit(0)
        third = _run(lstm_recurrence, case)
    finally:
        set_workspace_limit(1 << 30)
    for a, b, c in zip(first, second, third, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_in_place_change_of_output_is_caught() -> None:
    case = _case((), torch.float64)
    lv = case["leaves"]
    out, _, _, _ = lstm_recurrence(lv["xw"], lv["w_hh"], lv["h0"], lv["c0"])
    with pytest.raises(RuntimeError):
        out.mul_(2).sum().backward()


def test_non_contiguous_input_only_some_inputs_need_grad_and_empty_sequence() -> None:
    g = torch.Generator().manual_seed(0)
    xw_bt = torch.randn(5, 7, 16, generator=g, dtype=torch.float64)  # batch-first, made time-major by a view
    w = torch.randn(16, 4, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = c0 = torch.zeros(5, 4, dtype=torch.float64)
    xw = xw_bt.transpose(0, 1)
    fast = lstm_recurrence(xw, w, h0, c0)[0]
    ref = lstm_recurrence_reference(xw, w, h0, c0)[0]
    torch.testing.assert_close(fast, ref)
    (dw,) = torch.autograd.grad(fast.sum(), [w])
    (dw_ref,) = torch.autograd.grad(ref.sum(), [w])
    torch.testing.assert_close(dw, dw_ref)
    out, h, c, _ = lstm_recurrence(xw[:0], w, h0, c0)
    torch.testing.assert_close(c, c0)
    assert out.shape == (0, 5, 4)
    torch.testing.assert_close(h, h0)


def test_autocast_runs_the_recurrence_in_float32() -> None:
    case = _case(("ln",), torch.float32, t=6, b=3, h=8)
    lv = case["leaves"]
    ln = LayerNormParams(lv["gw"], lv["gb"], lv["cw"], lv["cb"])
    args = (lv["xw"], lv["w_hh"], lv["h0"], lv["c0"])
    expected = lstm_recurrence(*args, ln=ln)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lstm_recurrence(*args, ln=ln)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        lstm_recurrence(torch.zeros(3, 2, 8), torch.zeros(8, 3), torch.zeros(2, 2), torch.zeros(2, 2))


def test_pool_never_holds_more_than_its_limit() -> None:
    pool = recurrence._Pool(1000)
    like = torch.zeros(1)
    a, b = pool.take(like, 100), pool.take(like, 200)  # 400 and 800 bytes
    pool.give([a, b])
    assert pool._bytes == 400  # b did not fit
    assert pool.take(like, 10, 10).data_ptr() == a.data_ptr()
    assert pool._bytes == 0


def test_bernoulli_mask() -> None:
    like = torch.zeros(1, dtype=torch.float64)
    torch.manual_seed(0)
    m = recurrence.bernoulli_mask((40, 30, 50), 0.2, like)
    assert m.dtype == torch.float64 and m.shape == (40, 30, 50)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert abs(m.mean().item() - 0.2) < 0.01
    torch.manual_seed(0)
    assert torch.equal(recurrence.bernoulli_mask((40, 30, 50), 0.2, like), m)  # seeded like torch.rand
    assert recurrence.bernoulli_mask((3,), 0.0, like).sum() == 0
    assert recurrence.bernoulli_mask((3,), 1.0, like).sum() == 3


@pytest.fixture
def cpp_ops(monkeypatch: pytest.MonkeyPatch):
    """The C++ backend, forced for every float32 CPU call (built on first use: ~25 s once per machine)."""
    ops = recurrence._cpp_ops()
    if ops is None:
        pytest.skip("no C++ toolchain for the compiled recurrence")
    monkeypatch.setenv("LONGSHORT_RECURRENCE_CPP", "1")
    return ops


@pytest.mark.parametrize("opts", _combos(), ids=lambda c: "+".join(c) or "plain")
def test_cpp_backend_matches_reference_float32(cpp_ops, opts: tuple[str, ...]) -> None:
    case = _case(opts, torch.float32, t=9, b=5, h=12, seed=2)
    fast, ref = _run(lstm_recurrence, case), _run(lstm_recurrence_reference, case)
    for name, a, b in zip(_names(case), fast, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_cpp_backend_matches_nn_lstm_and_is_used(cpp_ops, monkeypatch: pytest.MonkeyPatch) -> None:
    used = []
    real = recurrence._forward_cpp
    monkeypatch.setattr(recurrence, "_forward_cpp", lambda *a, **k: used.append(1) or real(*a, **k))
    test_plain_matches_nn_lstm(torch.float32)
    assert used


def test_cpp_backend_retain_graph_and_broadcast_recurrent_mask(cpp_ops) -> None:
    case = _case(("ln", "zoneout_mask", "lengths"), torch.float32, t=6, b=5, h=8)
    lv, kw = case["leaves"], case["kw"]
    kw["recurrent_mask"] = torch.rand(1, 8) + 0.5  # broadcasts over the batch
    ln = LayerNormParams(lv["gw"], lv["gb"], lv["cw"], lv["cb"])
    args = (lv["xw"], lv["w_hh"], lv["h0"], lv["c0"])
    out = lstm_recurrence(*args, ln=ln, **kw)[0]
    ref = lstm_recurrence_reference(*args, ln=ln, **kw)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    first = torch.autograd.grad(out.sum(), list(lv.values()), retain_graph=True)
    second = torch.autograd.grad(out.sum(), list(lv.values()))
    expected = torch.autograd.grad(ref.sum(), list(lv.values()))
    for a, b, c in zip(first, second, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def _hand_step(xw_t: torch.Tensor, w_hh: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
    """One plain LSTM step written out: (h~, c_new, the extra gate's pre-activation or None)."""
    hid = h.shape[1]
    pre = xw_t + h @ w_hh.t()
    i, f = torch.sigmoid(pre[:, :hid]), torch.sigmoid(pre[:, hid : 2 * hid])
    g, o = torch.tanh(pre[:, 2 * hid : 3 * hid]), torch.sigmoid(pre[:, 3 * hid : 4 * hid])
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new, (pre[:, 4 * hid :] if pre.shape[1] > 4 * hid else None)


@pytest.mark.parametrize("skip", TIME_SKIPS)
@pytest.mark.parametrize("fn", [lstm_recurrence, lstm_recurrence_reference], ids=["fast", "reference"])
def test_time_skip_equations_by_hand(skip: str, fn) -> None:
    """Seed 003's forms through time: residual h_t = h_{t-1} + LSTM(h_{t-1}, x_t); highway
    h_t = T * LSTM(h_{t-1}, x_t) + (1 - T) * h_{t-1} with T = sigmoid(W_T [x_t; h_{t-1}] + b_T)."""
    g = torch.Generator().manual_seed(4)
    hid, gates = 3, (5 if skip == "highway" else 4) * 3
    xw = torch.randn(3, 2, gates, generator=g, dtype=torch.float64)
    w_hh = torch.randn(gates, hid, generator=g, dtype=torch.float64) * 0.5
    h, c = torch.randn(2, hid, generator=g, dtype=torch.float64), torch.randn(2, hid, generator=g, dtype=torch.float64)
    out, h_t, c_t, _ = fn(xw, w_hh, h, c, time_skip=skip)
    for t in range(3):
        h_lstm, c, t_pre = _hand_step(xw[t], w_hh, h, c)
        if skip == "residual":
            h = h + h_lstm
        else:
            tg = torch.sigmoid(t_pre)
            h = tg * h_lstm + (1 - tg) * h
        torch.testing.assert_close(out[t], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_t, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_t, c, rtol=1e-12, atol=1e-12)  # the cell is the plain LSTM's
    plain = fn(xw[..., : 4 * hid], w_hh[: 4 * hid], out.new_zeros(2, hid), out.new_zeros(2, hid))[0]
    assert not torch.allclose(fn(xw, w_hh, out.new_zeros(2, hid), out.new_zeros(2, hid), time_skip=skip)[0], plain)


@pytest.mark.parametrize("skip", TIME_SKIPS)
def test_gradcheck_time_skip(skip: str) -> None:
    opts = ("zoneout_mask", "recurrent", "lengths", skip)
    case = _case(opts, torch.float64, t=4, b=3, h=3, seed=6)
    lv, kw = case["leaves"], case["kw"]
    names = list(lv)

    def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = dict(zip(names, xs, strict=True))
        out, h, c, _ = lstm_recurrence(d["xw"], d["w_hh"], d["h0"], d["c0"], **kw)
        return out, h, c

    assert torch.autograd.gradcheck(f, tuple(lv.values()), fast_mode=True)


def test_time_skip_refusals() -> None:
    x, w = torch.zeros(2, 1, 8), torch.zeros(8, 2)
    h = torch.zeros(1, 2)
    ln = LayerNormParams(torch.ones(4, 2), torch.zeros(4, 2), torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="time_skip must be one of none, residual, highway, got 'wide'"):
        lstm_recurrence(x, w, h, h, time_skip="wide")
    with pytest.raises(ValueError, match="does not combine with layer norm"):
        lstm_recurrence(torch.zeros(2, 1, 10), torch.zeros(10, 2), h, h, ln=ln, time_skip="highway")
    with pytest.raises(ValueError, match="shape mismatch"):  # highway needs the fifth gate block
        lstm_recurrence(x, w, h, h, time_skip="highway")
