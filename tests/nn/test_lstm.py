from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import longshort.nn.lstm as lstm_mod
import longshort.nn.lstm as lstm_module
from longshort.nn.lstm import LSTM, CellConfig, StackConfig, adaptive_rate
from longshort.nn.recurrence import lstm_recurrence_reference

B, T, IN, H = 4, 9, 3, 5


# ------------------------------------------------------------------------------------------------ references


def ref_run(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b: Tensor,
    h0: Tensor,
    c0: Tensor,
    zc: Tensor | float | None = None,
    zh: Tensor | float | None = None,
    rmask: Tensor | None = None,
    ln: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """A plain step-by-step LSTM written for the tests: returns h [T,B,H], c [T,B,H], gates i,f,o [T,B,3,H]."""

    def norm(v: Tensor) -> Tensor:
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-5)

    hid = w_hh.shape[1]
    h, c = h0, c0
    hs, cs, acts = [], [], []
    for t in range(x.shape[0]):
        rec = (h if rmask is None else h * rmask) @ w_hh.T
        if ln is not None:
            rec = (norm(rec.view(-1, 4, hid)) * ln[0] + ln[1]).reshape(-1, 4 * hid)
        gates = x[t] @ w_ih.T + b + rec
        i, f, g, o = (gates[:, j * hid : (j + 1) * hid] for j in range(4))
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new if ln is None else norm(c_new) * ln[2] + ln[3])
        if zc is not None:
            z = zc[t] if isinstance(zc, Tensor) else zc
            c_new = z * c + (1 - z) * c_new
        if zh is not None:
            z = zh[t] if isinstance(zh, Tensor) else zh
            h_new = z * h + (1 - z) * h_new
        h, c = h_new, c_new
        hs.append(h)
        cs.append(c)
        acts.append(torch.stack([i, f, o], 1))
    return torch.stack(hs), torch.stack(cs), torch.stack(acts)


def weights(m: LSTM, k: int = 0, sfx: str = "") -> tuple[Tensor, Tensor, Tensor]:
    b = getattr(m, f"bias_ih_l{k}{sfx}") + getattr(m, f"bias_hh_l{k}{sfx}")
    return getattr(m, f"weight_ih_l{k}{sfx}"), getattr(m, f"weight_hh_l{k}{sfx}"), b


def layer_as_torch(m: LSTM, k: int) -> nn.LSTM:
    """Layer ``k`` of ``m`` as a one-layer nn.LSTM."""
    layer = nn.LSTM(m.layer_input_size(k), m.hidden_size, bidirectional=m.bidirectional)
    own = m.state_dict()
    layer.load_state_dict({name: own[name.replace("_l0", f"_l{k}")] for name in layer.state_dict()})
    return layer.train(m.training)


def run_torch(lstm: nn.LSTM, x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """nn.LSTM over a time-major padded batch, packed when lengths are given."""
    if lengths is None:
        return lstm(x)[0]
    out = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))[0]
    return pad_packed_sequence(out, total_length=x.shape[0])[0]


def pair(layers: int, bidirectional: bool, batch_first: bool = False, seed: int = 0) -> tuple[nn.LSTM, LSTM]:
    torch.manual_seed(seed)
    ref = nn.LSTM(IN, H, layers, batch_first=batch_first, bidirectional=bidirectional)
    return ref, LSTM.from_torch(ref)


def grads(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------- equality with nn.LSTM


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_custom_path_matches_nn_lstm_outputs_states_and_gradients(
    layers: int, bidirectional: bool, batch_first: bool
) -> None:
    ref, m = pair(layers, bidirectional, batch_first, seed=layers)
    m._force_custom = True
    assert not m.uses_fused_path
    d = 2 if bidirectional else 1
    x = torch.randn((B, T, IN) if batch_first else (T, B, IN))
    h0, c0 = torch.randn(layers * d, B, H), torch.randn(layers * d, B, H)
    proj = torch.randn((B, T, d * H) if batch_first else (T, B, d * H))
    results = []
    for module in (ref, m):
        xs, hs, cs = (v.clone().requires_grad_() for v in (x, h0, c0))
        out, (h, c) = module(xs, (hs, cs))
        ((out * proj).sum() + (h * h.detach()).sum() + 3 * c.sum()).backward()
        results.append((out, h, c, xs.grad, hs.grad, cs.grad, grads(module)))
    (o1, h1, c1, gx1, gh1, gc1, gw1), (o2, h2, c2, gx2, gh2, gc2, gw2) = results
    for a, b in [(o1, o2), (h1, h2), (c1, c2), (gx1, gx2), (gh1, gh2), (gc1, gc2)]:
        close(a, b)
    assert gw1.keys() == gw2.keys()
    for name in gw1:
        close(gw1[name], gw2[name])


@pytest.mark.parametrize("force_custom", [True, False])
def test_variable_lengths_match_packed_nn_lstm_and_each_sequence_alone(force_custom: bool) -> None:
    ref, m = pair(2, True, seed=11)
    m._force_custom = force_custom
    assert m.uses_fused_path is not force_custom
    lengths = torch.tensor([4, 9, 1, 6])
    x = torch.randn(T, B, IN)
    pad = torch.arange(T)[:, None] >= lengths
    x[pad] = 50.0  # garbage in the padding must not matter
    h0, c0 = torch.randn(4, B, H), torch.randn(4, B, H)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)

    ref_out, (rh, rc) = ref(packed, (h0, c0))
    out, (h, c) = m(packed, (h0, c0))
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert torch.equal(out.sorted_indices, ref_out.sorted_indices)
    close(out.data, ref_out.data)
    close(h, rh)
    close(c, rc)

    xs = x.clone().requires_grad_()
    out2, (h2, c2) = m(xs, (h0, c0), lengths=lengths)
    ref_padded = pad_packed_sequence(ref_out, total_length=T)[0]
    close(out2, ref_padded)
    assert torch.equal(out2[pad], torch.zeros_like(out2[pad]))
    close(h2, rh)
    close(c2, rc)
    for b, n in enumerate(lengths.tolist()):
        alone, (ha, ca) = ref(x[:n, b : b + 1], (h0[:, b : b + 1], c0[:, b : b + 1]))
        close(out2[:n, b], alone[:, 0])
        close(h2[:, b], ha[:, 0])
        close(c2[:, b], ca[:, 0])

    # gradients through the padded/length path equal nn.LSTM's on the packed sequence
    out2.pow(2).sum().backward()
    xr = x.clone().requires_grad_()
    pad_packed_sequence(ref(pack_padded_sequence(xr, lengths, enforce_sorted=False), (h0, c0))[0])[0].pow(
        2
    ).sum().backward()
    close(xs.grad, xr.grad)
    assert torch.equal(xs.grad[pad], torch.zeros_like(xs.grad[pad]))
    for name, g in grads(ref).items():
        close(getattr(m, name).grad, g)


def test_reverse_direction_starts_at_each_sequence_true_end() -> None:
    torch.manual_seed(3)
    m = LSTM(IN, H, bidirectional=True)
    m._force_custom = True
    lengths = torch.tensor([3, 7, 5, 1])
    x = torch.randn(7, B, IN)
    out, _ = m(x, lengths=lengths)
    cell = nn.LSTMCell(IN, H)
    cell.load_state_dict({n: getattr(m, f"{n}_l0_reverse") for n in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]})
    for b, n in enumerate(lengths.tolist()):
        # the reverse direction's first step reads the last valid input, from a zero state
        first, _ = cell(x[n - 1, b : b + 1])
        close(out[n - 1, b, H:], first[0])
        # and its state at t = 0 is the reverse direction's final state: run the valid part reversed by hand
        h = c = torch.zeros(1, H)
        for t in reversed(range(n)):
            h, c = cell(x[t, b : b + 1], (h, c))
        close(out[0, b, H:], h[0])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_cpu_path_equals_the_packed_one_in_outputs_and_gradients(bidirectional: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """need_state=False on a variable-length CPU batch runs oneDNN over the padded tensor (reverse direction
    over each sequence reversed in place) instead of the packed loop: same outputs and gradients."""
    torch.manual_seed(0)
    m = LSTM(5, 7, batch_first=True, bidirectional=bidirectional)
    lengths = torch.tensor([9, 1, 4, 9, 6])
    x = torch.randn(5, 9, 5)
    x = x.masked_fill(torch.arange(9)[None, :, None] >= lengths[:, None, None], 3.0)  # junk in the padding
    h0 = (torch.randn(m.num_directions, 5, 7), torch.randn(m.num_directions, 5, 7))
    calls = []
    padded = LSTM._forward_padded
    monkeypatch.setattr(LSTM, "_forward_padded", lambda self, *a: calls.append(1) or padded(self, *a))
    outs, grads = [], []
    for need_state in (True, False):
        xi = x.clone().requires_grad_(True)
        m.zero_grad()
        y, _ = m(xi, hx=h0, lengths=lengths, need_state=need_state)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in m.parameters()])
    assert calls == [1]  # the second call, and only it, took the padded path
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    assert bool((outs[1][1, 1:] == 0).all())  # padded steps are zero, as the packed path leaves them
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fused_path_equals_nn_lstm_exactly() -> None:
    torch.manual_seed(4)
    ref = nn.LSTM(IN, H, 2, batch_first=True, bidirectional=True, dropout=0.4)
    m = LSTM.from_torch(ref)
    assert m.uses_fused_path
    x = torch.randn(B, T, IN)
    lengths = torch.tensor([9, 2, 5, 7])
    for train in (True, False):
        ref.train(train)
        m.train(train)
        torch.manual_seed(5)
        a = ref(x)
        torch.manual_seed(5)
        b = m(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and torch.equal(a[1][1], b[1][1])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    (ro, (rh, rc)), (mo, (mh, mc)) = ref(packed), m(packed)
    assert torch.equal(ro.data, mo.data) and torch.equal(rh, mh) and torch.equal(rc, mc)
    po, (ph, pc) = m(x, lengths=lengths)
    assert torch.equal(po, pad_packed_sequence(ro, batch_first=True, total_length=T)[0])
    assert torch.equal(ph, rh) and torch.equal(pc, rc)
    ro.data.sum().backward()
    mo.data.sum().backward()
    for name, g in grads(ref).items():
        assert torch.equal(getattr(m, name).grad, g)


def test_unbatched_input_matches_nn_lstm() -> None:
    ref, m = pair(2, True, seed=6)
    m._force_custom = True
    x = torch.randn(T, IN)
    h0 = torch.randn(4, H), torch.randn(4, H)
    (ro, (rh, rc)), (mo, (mh, mc)) = ref(x, h0), m(x, h0)
    assert mo.shape == (T, 2 * H) and mh.shape == (4, H)
    close(mo, ro)
    close(mh, rh)
    close(mc, rc)


# ------------------------------------------------------------------------------------------------ conversion


def test_from_torch_to_torch_round_trip_and_state_dict_loading() -> None:
    ref, _ = pair(2, True, batch_first=True, seed=7)
    ref.eval()
    m = LSTM.from_torch(ref, cell=CellConfig(recurrent_dropout=0.3, weight_drop=0.2)).eval()
    back = m.to_torch()
    assert type(back) is nn.LSTM and back.batch_first and back.bidirectional and back.num_layers == 2
    x = torch.randn(B, T, IN)
    expected = ref(x)[0]
    assert torch.equal(back(x)[0], expected)
    close(m(x)[0], expected)

    fresh = LSTM(IN, H, 2, batch_first=True, bidirectional=True, cell=CellConfig(layer_norm=True))
    missing, unexpected = fresh.load_state_dict(ref.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("ln_") for k in missing)
    assert torch.equal(fresh.weight_hh_l1_reverse, ref.weight_hh_l1_reverse)


def test_to_torch_names_the_options_nn_lstm_cannot_express() -> None:
    with pytest.raises(ValueError, match="layer_norm"):
        LSTM(IN, H, cell=CellConfig(layer_norm=True)).to_torch()
    with pytest.raises(ValueError, match="self_attention"):
        LSTM(IN, H, cell=CellConfig(self_attention=True)).to_torch()
    with pytest.raises(ValueError, match="zoneout"):
        LSTM(IN, H, cell=CellConfig(zoneout_h=0.1)).to_torch()
    with pytest.raises(ValueError, match="highway"):
        LSTM(IN, H, 2, stack=StackConfig(skip="highway")).to_torch()
    with pytest.raises(ValueError, match="dense"):
        LSTM.from_torch(nn.LSTM(IN, H, 2), stack=StackConfig(skip="dense"))
    # a single layer has no skip to express
    assert isinstance(LSTM(IN, H, stack=StackConfig(skip="residual")).to_torch(), nn.LSTM)


def test_constructor_and_config_validation() -> None:
    with pytest.raises(NotImplementedError):
        LSTM(IN, H, proj_size=2)
    with pytest.raises(ValidationError):
        CellConfig(zoneout=1.0)
    with pytest.raises(ValidationError):
        CellConfig(recurrent_dropout=-0.1)
    with pytest.raises(ValidationError):
        CellConfig(dropout=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        StackConfig(skip="concat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lengths"):
        LSTM(IN, H)(torch.randn(T, B, IN), lengths=torch.tensor([1, 2, 3, T + 1]))


# --------------------------------------------------------------------------------------------------- zoneout


def test_zoneout_training_keeps_exactly_the_sampled_units() -> None:
    torch.manual_seed(8)
    p, steps, hid = 0.4, 12, 8
    m = LSTM(IN, hid, cell=CellConfig(zoneout=p)).train()
    assert not m.uses_fused_path
    m.record_masks = True
    x = torch.randn(steps, B, IN)
    h0, c0 = torch.randn(1, B, hid), torch.randn(1, B, hid)
    torch.manual_seed(123)
    out, (_, cn) = m(x, (h0, c0))
    keep_c, keep_h = m.last_masks["zoneout_c_l0"], m.last_masks["zoneout_h_l0"]
    assert keep_c.shape == keep_h.shape == (steps, B, hid)
    assert not torch.equal(keep_c, keep_h)
    for keep in (keep_c, keep_h):
        assert set(keep.unique().tolist()) == {0.0, 1.0}
        assert abs(keep.mean().item() - p) < 0.08
    # c_t of every step: the same seed reproduces the same masks; lengths = t + 1 returns c_t as c_n
    cs = []
    for t in range(steps):
        torch.manual_seed(123)
        _, (_, c_t) = m(x, (h0, c0), lengths=torch.full((B,), t + 1))
        assert torch.equal(m.last_masks["zoneout_c_l0"], keep_c)
        cs.append(c_t[0])
    c_all = torch.stack(cs)
    close(c_all[-1], cn[0], 0)
    prev_h = torch.cat([h0, out[:-1]])
    prev_c = torch.cat([c0, c_all[:-1]])
    for now, prev, keep in [(out, prev_h, keep_h.bool()), (c_all, prev_c, keep_c.bool())]:
        close(now[keep], prev[keep], 1e-6)  # kept units hold their previous value
        assert ((now[~keep] - prev[~keep]).abs() > 1e-6).all()  # every other unit moved
    # and the whole run is the zoneout recurrence with these masks
    ref_h, ref_c, _ = ref_run(x, *weights(m), h0[0], c0[0], zc=keep_c, zh=keep_h)
    close(out, ref_h)
    close(c_all, ref_c)


def test_zoneout_eval_uses_the_expectation_with_per_state_rates() -> None:
    torch.manual_seed(9)
    m = LSTM(IN, H, cell=CellConfig(zoneout=0.3, zoneout_h=0.1)).eval()
    x = torch.randn(T, B, IN)
    h0, c0 = torch.randn(1, B, H), torch.randn(1, B, H)
    out, (_, cn) = m(x, (h0, c0))
    assert torch.equal(out, m(x, (h0, c0))[0])  # deterministic
    ref_h, ref_c, _ = ref_run(x, *weights(m), h0[0], c0[0], zc=0.3, zh=0.1)
    close(out, ref_h)
    close(cn[0], ref_c[-1])
    # one step by hand: h_1 = 0.1 * h_0 + 0.9 * o * tanh(c~), c~ = f c_0 + i g
    w_ih, w_hh, b = weights(m)
    i, f, g, o = (x[0] @ w_ih.T + b + h0[0] @ w_hh.T).chunk(4, 1)
    c1 = torch.sigmoid(f) * c0[0] + torch.sigmoid(i) * torch.tanh(g)
    close(out[0], 0.1 * h0[0] + 0.9 * torch.sigmoid(o) * torch.tanh(c1))
    plain = ref_run(x, *weights(m), h0[0], c0[0])[0]
    assert (out - plain).abs().max() > 1e-2  # the rates matter


# ---------------------------------------------------------------------------------------- recurrent dropout


def test_recurrent_dropout_one_mask_per_sequence_fixed_in_time_and_off_at_eval() -> None:
    torch.manual_seed(10)
    p, hid = 0.5, 8
    m = LSTM(IN, hid, cell=CellConfig(recurrent_dropout=p)).train()
    assert not m.uses_fused_path
    m.record_masks = True
    x = torch.randn(T, B, IN)
    h0, c0 = torch.randn(1, B, hid), torch.randn(1, B, hid)
    out, _ = m(x, (h0, c0))
    mask = m.last_masks["recurrent_l0"]
    assert mask.shape == (B, hid)
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert len({tuple(row.tolist()) for row in mask}) > 1  # differs between sequences
    close(out, ref_run(x, *weights(m), h0[0], c0[0], rmask=mask)[0])  # the same mask at every step
    assert (out - ref_run(x, *weights(m), h0[0], c0[0])[0]).abs().max() > 1e-2
    m(x, (h0, c0))
    assert not torch.equal(m.last_masks["recurrent_l0"], mask)  # fresh per forward

    m.eval()
    assert m.uses_fused_path
    e1, e2 = m(x, (h0, c0))[0], m(x, (h0, c0))[0]
    assert torch.equal(e1, e2)
    plain = LSTM(IN, hid)
    plain.load_state_dict(m.state_dict())
    assert torch.equal(e1, plain.eval()(x, (h0, c0))[0])
    m._force_custom = True
    close(m(x, (h0, c0))[0], e1)


# -------------------------------------------------------------------------------------- variational dropout


@pytest.mark.parametrize("force_custom", [False, True])
def test_variational_input_and_output_dropout(force_custom: bool) -> None:
    torch.manual_seed(12)
    hid = 8
    m = LSTM(IN, hid, 2, cell=CellConfig(input_dropout=0.5, output_dropout=0.5)).train()
    m._force_custom = force_custom
    assert m.uses_fused_path is not force_custom
    m.record_masks = True
    x = torch.randn(T, B, IN)
    lengths = torch.tensor([9, 4, 7, 2])
    out, _ = m(x, lengths=lengths)
    masks = m.last_masks
    assert masks["input_l0"].shape == (B, IN) and masks["input_l1"].shape == (B, hid)
    assert masks["output_l0"].shape == masks["output_l1"].shape == (B, hid)
    # the same output features are zero at every valid step of a sequence, and different ones across sequences
    zero_cols = []
    for b, n in enumerate(lengths.tolist()):
        zeros = out[:n, b] == 0
        assert torch.equal(zeros.all(0), zeros.any(0))
        assert torch.equal(zeros[0], masks["output_l1"][b] == 0)
        zero_cols.append(tuple(zeros[0].tolist()))
    assert len(set(zero_cols)) > 1
    for name in ("input_l0", "input_l1"):
        assert len({tuple(r.tolist()) for r in masks[name]}) > 1
    # the run equals plain LSTM layers on masked inputs/outputs, one mask per sequence broadcast over time
    y0 = run_torch(layer_as_torch(m, 0), x * masks["input_l0"], lengths) * masks["output_l0"]
    y1 = run_torch(layer_as_torch(m, 1), y0 * masks["input_l1"], lengths) * masks["output_l1"]
    close(out, y1)
    # evaluation: identity
    m.eval()
    assert torch.equal(m(x, lengths=lengths)[0], m(x, lengths=lengths)[0])
    close(m(x, lengths=lengths)[0], run_torch(m.to_torch(), x, lengths))


# ------------------------------------------------------------------------------------------------ layer norm


def test_layer_norm_normalises_each_gate_recurrent_term(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(13)
    hid = 8
    m = LSTM(IN, hid, cell=CellConfig(layer_norm=True))
    assert not m.uses_fused_path
    assert torch.equal(m.ln_gates_weight_l0, torch.ones(4, hid))
    assert torch.equal(m.ln_gates_bias_l0, torch.zeros(4, hid))
    x = torch.randn(T, B, IN)
    h0, c0 = torch.randn(1, B, hid), torch.randn(1, B, hid)
    captured: list[tuple[Tensor, Tensor]] = []
    real = F.layer_norm

    def spy(
        inp: Tensor, shape: list[int], weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
    ) -> Tensor:
        res = real(inp, shape, weight, bias, eps)
        if inp.dim() == 3:  # the per-gate normalisation of the recurrent term [B, 4, H]
            captured.append((inp.detach(), res.detach()))
        return res

    # Watch the specification loop; tests/nn/test_recurrence.py holds the fast path to it, LN included.
    monkeypatch.setattr(lstm_module, "lstm_recurrence", lstm_recurrence_reference)
    monkeypatch.setattr(torch.nn.functional, "layer_norm", spy)
    out, _ = m(x, (h0, c0))
    monkeypatch.undo()
    assert len(captured) == T
    for t, (pre, normed) in enumerate(captured):
        h_prev = h0[0] if t == 0 else out[t - 1]
        close(pre, (h_prev @ m.weight_hh_l0.T).view(B, 4, hid))  # what is normalised: W_* h_{t-1}, per gate
        close(normed.mean(-1), torch.zeros(B, 4), 1e-5)
        var = pre.var(-1, unbiased=False)
        close(normed.var(-1, unbiased=False), var / (var + 1e-5), 1e-4)  # unit variance up to LayerNorm's eps
    # the full cell with non-trivial gains and biases
    with torch.no_grad():
        for name in ("ln_gates_weight_l0", "ln_gates_bias_l0", "ln_cell_weight_l0", "ln_cell_bias_l0"):
            getattr(m, name).normal_()
    ln = (m.ln_gates_weight_l0, m.ln_gates_bias_l0, m.ln_cell_weight_l0, m.ln_cell_bias_l0)
    out, (_, cn) = m(x, (h0, c0))
    ref_h, ref_c, _ = ref_run(x, *weights(m), h0[0], c0[0], ln=ln)
    close(out, ref_h)
    close(cn[0], ref_c[-1])
    assert (out - ref_run(x, *weights(m), h0[0], c0[0])[0]).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------- weight drop


def test_weight_drop_masks_whole_recurrent_weights_in_training_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(14)
    p, hid = 0.5, 8
    m = LSTM(IN, hid, cell=CellConfig(weight_drop=p)).train()
    m._force_custom = True
    m.record_masks = True
    used: list[Tensor] = []
    real = lstm_mod.lstm_recurrence

    def spy(xw: Tensor, w_hh: Tensor, *args: object, **kwargs: object):
        used.append(w_hh.detach().clone())
        return real(xw, w_hh, *args, **kwargs)

    monkeypatch.setattr(lstm_mod, "lstm_recurrence", spy)
    before = m.weight_hh_l0.detach().clone()
    x = torch.randn(T, B, IN)
    m(x)[0].sum().backward()
    keep = m.last_masks["weight_hh_l0"].bool()
    w = used[-1]
    assert torch.equal(w[~keep], torch.zeros_like(w[~keep]))  # exactly zero where dropped
    close(w[keep], before[keep] / (1 - p), 1e-6)
    assert 0.4 < (w == 0).float().mean().item() < 0.6
    assert torch.equal(m.weight_hh_l0, before)  # the parameter itself is untouched
    assert torch.equal(m.weight_hh_l0.grad[~keep], torch.zeros_like(w[~keep]))  # no gradient through dropped weights
    m(x)
    assert not torch.equal(m.last_masks["weight_hh_l0"].bool(), keep)  # fresh mask each forward

    m.eval()
    m(x)
    assert torch.equal(used[-1], before)  # evaluation: the full matrix

    # the fused path (run layer by layer) uses the same effective matrix
    m.train()
    m._force_custom = False
    assert m.uses_fused_path
    out, _ = m(x)
    keep = m.last_masks["weight_hh_l0"]
    torch_lstm = m.to_torch()
    with torch.no_grad():
        torch_lstm.weight_hh_l0.mul_(keep / (1 - p))
    close(out, torch_lstm(x)[0], 1e-6)


def test_forget_bias_initialisation() -> None:
    for fb in (1.0, 2.5):
        m = LSTM(IN, H, 2, bidirectional=True, cell=CellConfig(forget_bias=fb))
        for k in range(2):
            for sfx in ("", "_reverse"):
                b = getattr(m, f"bias_ih_l{k}{sfx}") + getattr(m, f"bias_hh_l{k}{sfx}")
                assert torch.equal(b[H : 2 * H], torch.full((H,), fb))
                assert (b[:H] != fb).all() and (b[2 * H :] != fb).all()
    assert CellConfig().forget_bias == 1.0


# ----------------------------------------------------------------------------------------------------- stacks


def test_highway_output_is_gated_mix_of_layer_and_input() -> None:
    torch.manual_seed(15)
    m = LSTM(IN, 4, 2, bidirectional=True, stack=StackConfig(skip="highway")).eval()
    assert not m.uses_fused_path
    assert torch.equal(m.highway["1"].bias, torch.full((8,), -1.0))
    x = torch.randn(T, B, IN)
    lengths = torch.tensor([9, 3, 6, 1])
    out, (hn, _) = m(x, lengths=lengths)
    y0 = run_torch(layer_as_torch(m, 0), x, lengths)
    h1 = run_torch(layer_as_torch(m, 1), y0, lengths)
    gate = torch.sigmoid(y0 @ m.highway["1"].weight.T + m.highway["1"].bias)
    close(out, gate * h1 + (1 - gate) * y0)
    assert hn.shape == (4, B, 4)
    pad = torch.arange(T)[:, None] >= lengths
    assert torch.equal(out[pad], torch.zeros(int(pad.sum()), 8))


def test_residual_output_is_layer_plus_input() -> None:
    torch.manual_seed(16)
    m = LSTM(IN, 4, 3, batch_first=True, bidirectional=True, stack=StackConfig(skip="residual")).eval()
    x = torch.randn(B, T, IN)
    out, _ = m(x)
    xt = x.transpose(0, 1)
    y0 = run_torch(layer_as_torch(m, 0), xt)
    y1 = run_torch(layer_as_torch(m, 1), y0) + y0
    y2 = run_torch(layer_as_torch(m, 2), y1) + y1
    close(out, y2.transpose(0, 1))


def _time_skip_by_hand(m: LSTM, x: Tensor, sfx: str, lengths: Tensor) -> Tensor:
    """Layer 0, direction ``sfx`` of ``m`` (time_skip on) stepped by hand from zero state: [T, B, H]."""
    w_ih, w_hh, b = weights(m, 0, sfx)
    h = c = x.new_zeros(x.shape[1], m.hidden_size)
    outs = []
    for t in range(x.shape[0]):
        gates = x[t] @ w_ih.T + b + h @ w_hh.T
        i, f, g, o = gates.chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_lstm = torch.sigmoid(o) * torch.tanh(c_new)
        if m.cell.time_skip == "residual":
            h_new = h + h_lstm
        else:
            tg = torch.sigmoid(x[t] @ getattr(m, f"weight_ti_l0{sfx}").T + h @ getattr(m, f"weight_th_l0{sfx}").T
                               + getattr(m, f"bias_t_l0{sfx}"))
            h_new = tg * h_lstm + (1 - tg) * h
        valid = (t < lengths)[:, None]
        h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
        outs.append(h * valid)
    return torch.stack(outs)


@pytest.mark.parametrize("skip", ["residual", "highway"])
def test_time_skip_layer_steps_like_the_seed_equations(skip: str) -> None:
    """Seed 003's skips through time inside one layer (both directions, ragged lengths), the highway gate's own
    weights [H, in], [H, H], [H] with b_T = 1 at init; gradients reach them; nn.LSTM cannot express either."""
    torch.manual_seed(21)
    m = LSTM(IN, H, bidirectional=True, cell=CellConfig(time_skip=skip)).double().eval()
    assert not m.uses_fused_path
    names = {n for n, _ in m.named_parameters()}
    if skip == "highway":
        assert m.weight_ti_l0.shape == (H, IN) and m.weight_th_l0_reverse.shape == (H, H)
        assert torch.equal(m.bias_t_l0, torch.ones(H, dtype=torch.float64))
    else:
        assert names == {n for n, _ in LSTM(IN, H, bidirectional=True).named_parameters()}  # none extra
    x = torch.randn(T, B, IN, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 6, 1])
    out, (hn, _) = m(x, lengths=lengths)
    fwd = _time_skip_by_hand(m, x, "", lengths)
    rev_idx = torch.where(torch.arange(T)[:, None] < lengths, lengths - 1 - torch.arange(T)[:, None],
                          torch.arange(T)[:, None])
    x_rev = x.gather(0, rev_idx[..., None].expand_as(x))
    bwd = _time_skip_by_hand(m, x_rev, "_reverse", lengths)
    bwd = bwd.gather(0, rev_idx[..., None].expand_as(bwd))
    close(out, torch.cat([fwd, bwd], -1), tol=1e-10)
    close(hn[0], fwd[lengths - 1, torch.arange(B)], tol=1e-10)  # h_n: the skipped state at each row's end
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    with pytest.raises(ValueError, match=f"time_skip='{skip}'"):
        m.to_torch()


def test_time_skip_config_refusals() -> None:
    with pytest.raises(ValidationError, match="time_skip=highway does not combine with layer_norm"):
        CellConfig(time_skip="highway", layer_norm=True)
    with pytest.raises(ValidationError, match="time_skip=residual does not combine with self_attention"):
        CellConfig(time_skip="residual", self_attention=True)
    assert CellConfig(time_skip="residual", layer_norm=True).time_skip == "residual"


def test_dense_layers_read_the_input_and_all_previous_outputs() -> None:
    torch.manual_seed(17)
    m = LSTM(IN, 4, 3, bidirectional=True, stack=StackConfig(skip="dense")).eval()
    assert [m.layer_input_size(k) for k in range(3)] == [IN, IN + 8, IN + 16]
    assert m.weight_ih_l1_reverse.shape == (16, IN + 8) and m.weight_ih_l2.shape == (16, IN + 16)
    x = torch.randn(T, B, IN)
    out, (hn, cn) = m(x)
    assert out.shape == (T, B, 8) and hn.shape == cn.shape == (6, B, 4)
    y0 = run_torch(layer_as_torch(m, 0), x)
    y1 = run_torch(layer_as_torch(m, 1), torch.cat([x, y0], -1))
    y2 = run_torch(layer_as_torch(m, 2), torch.cat([x, y0, y1], -1))
    close(out, y2)


# ----------------------------------------------------------------------------------------- adaptive schedule


def test_dropout_scale_zero_makes_training_deterministic_and_equal_to_eval() -> None:
    torch.manual_seed(18)
    cfg = CellConfig(zoneout=0.3, recurrent_dropout=0.3, input_dropout=0.3, output_dropout=0.3, weight_drop=0.3)
    m = LSTM(IN, H, 2, dropout=0.3, bidirectional=True, cell=cfg).train()
    x = torch.randn(T, B, IN)
    assert not torch.equal(m(x)[0], m(x)[0])  # scale 1: random
    m.set_dropout_scale(0.0)
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    plain = LSTM(IN, H, 2, bidirectional=True)
    plain.load_state_dict(m.state_dict())
    close(a, m.eval()(x)[0], 1e-6)
    close(a, plain.eval()(x)[0], 1e-6)  # zoneout at scale 0 is the plain cell too

    m.train()
    m.set_dropout_scale(0.5)
    m.record_masks = True
    m(x)
    values = set(m.last_masks["recurrent_l0"].unique().tolist())  # kept units scaled for the halved rate 0.15
    assert max(values) == pytest.approx(1 / (1 - 0.15)) and values <= {0.0, max(values)}
    with pytest.raises(ValueError):
        m.set_dropout_scale(4.0)  # 0.3 * 4 >= 1


def test_adaptive_rate_and_schedule_helper() -> None:
    assert adaptive_rate(0.4, 0.1, 3) == pytest.approx(0.4 * math.exp(-0.3))
    assert adaptive_rate(0.4, 0.0, 10) == 0.4
    lstm = LSTM(IN, H, cell=CellConfig(zoneout=0.2, dropout_decay=0.2))
    lstm.on_epoch(5)  # what the trainer calls at the start of epoch 5
    assert lstm.dropout_scale == pytest.approx(math.exp(-1.0))
    plain = LSTM(IN, H, cell=CellConfig(zoneout=0.2))
    plain.on_epoch(5)
    assert plain.dropout_scale == 1.0


# ----------------------------------------------------------------------------------------------- gate stats


def test_gate_stats_per_layer_and_direction() -> None:
    torch.manual_seed(19)
    m = LSTM(IN, H, 2, bidirectional=True)
    assert m.uses_fused_path
    m.gate_stats = True
    assert not m.uses_fused_path
    m(torch.randn(T, B, IN), lengths=torch.tensor([9, 4, 2, 7]))
    stats = m.last_gate_stats
    assert set(stats) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    for s in stats.values():
        assert set(s) == {"i_mean", "i_var", "f_mean", "f_var", "o_mean", "o_var", "cell_utilisation"}
        for key in ("i_mean", "i_var", "f_mean", "f_var", "o_mean", "o_var"):
            assert 0 < s[key] < 1
        assert 0 < s["cell_utilisation"] < math.inf

    # the numbers themselves, against a hand-run single layer
    one = LSTM(IN, H)
    one.gate_stats = True
    x = torch.randn(T, B, IN)
    one(x)
    _, cs, acts = ref_run(x, *weights(one), torch.zeros(B, H), torch.zeros(B, H))
    got = one.last_gate_stats["l0"]
    for j, gate in enumerate("ifo"):
        assert got[f"{gate}_mean"] == pytest.approx(acts[:, :, j].mean().item(), abs=1e-5)
        assert got[f"{gate}_var"] == pytest.approx(acts[:, :, j].var(unbiased=False).item(), abs=1e-5)
    flat = cs.reshape(-1, H)
    util = flat.std(0, unbiased=False).norm() / flat.mean(0).norm()
    assert got["cell_utilisation"] == pytest.approx(util.item(), rel=1e-4)


def test_gate_stats_off_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    flags: list[object] = []
    real = lstm_mod.lstm_recurrence

    def spy(*args: object, **kwargs: object):
        flags.append(kwargs.get("stats", args[9] if len(args) > 9 else False))
        return real(*args, **kwargs)

    monkeypatch.setattr(lstm_mod, "lstm_recurrence", spy)
    m = LSTM(IN, H, bidirectional=True)
    m._force_custom = True
    m(torch.randn(T, B, IN))
    assert flags == [False, False]
    assert m.last_gate_stats == {}


# --------------------------------------------------------------------------------------------- self-attention


def ref_attention(m: LSTM, x: Tensor) -> Tensor:
    """The self-attention LSTM by hand, one sequence at a time, attention weights from explicit dot products."""
    w_ih, w_hh, b = weights(m)
    w_ch, w_q = m.weight_ch_l0, m.weight_q_l0
    hid = w_hh.shape[1]
    outs = []
    for seq in x.unbind(1):
        h = c = torch.zeros(hid)
        past: list[Tensor] = []
        hs = []
        for xt in seq:
            ctx = torch.zeros(hid)
            if past:
                q = w_q @ h
                scores = torch.stack([q.dot(p) / math.sqrt(hid) for p in past])
                alpha = torch.softmax(scores, 0)
                ctx = sum(a * p for a, p in zip(alpha, past, strict=True))
            gates = w_ih @ xt + b + w_hh @ h + w_ch @ ctx
            i, f, g, o = gates.chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            past.append(h)
            hs.append(h)
        outs.append(torch.stack(hs))
    return torch.stack(outs, 1)


def test_self_attention_lstm_matches_hand_computation_and_is_causal() -> None:
    torch.manual_seed(20)
    m = LSTM(IN, 6, cell=CellConfig(self_attention=True)).eval()
    assert not m.uses_fused_path and m.weight_ch_l0.shape == (24, 6)
    x = torch.randn(8, 3, IN)
    out = m(x)[0]
    close(out, ref_attention(m, x))

    # causality: the output at t0 depends on no input after t0
    t0 = 4
    x2 = x.clone()
    x2[t0 + 1 :] = torch.randn(8 - t0 - 1, 3, IN)
    out2 = m(x2)[0]
    close(out2[: t0 + 1], out[: t0 + 1], 1e-7)
    assert (out2[t0 + 1 :] - out[t0 + 1 :]).abs().max() > 1e-3
    xg = x.clone().requires_grad_()
    m(xg)[0][t0].sum().backward()
    assert torch.equal(xg.grad[t0 + 1 :], torch.zeros_like(xg.grad[t0 + 1 :]))
    assert (xg.grad[: t0 + 1].abs().sum((1, 2)) > 0).all()
    assert m.weight_ch_l0.grad is not None and m.weight_q_l0.grad is not None

    # without context weights it is the plain LSTM
    plain = layer_as_torch(m, 0)
    assert (out - plain(x)[0]).abs().max() > 1e-3
    with torch.no_grad():
        m.weight_ch_l0.zero_()
    close(m(x)[0], plain(x)[0])


def test_self_attention_respects_lengths_in_both_directions() -> None:
    torch.manual_seed(21)
    m = LSTM(IN, H, 2, bidirectional=True, cell=CellConfig(self_attention=True)).eval()
    lengths = torch.tensor([6, 2, 8, 5])
    x = torch.randn(8, B, IN)
    x[torch.arange(8)[:, None] >= lengths] = 30.0
    out, (hn, cn) = m(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        alone, (ha, ca) = m(x[:n, b : b + 1])
        close(out[:n, b], alone[:, 0])
        close(hn[:, b], ha[:, 0])
        close(cn[:, b], ca[:, 0])
        assert torch.equal(out[n:, b], torch.zeros_like(out[n:, b]))
