from __future__ import annotations

import itertools
import math

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor
from torch.nn import functional as F

from longshort.data.pairs import BOS_ID, EOS_ID, PAD_ID, encode_batch
from longshort.nn import AttentionConfig, Seq2Seq, Seq2SeqConfig
from longshort.nn.seq2seq import SCHEDULES, exponential, inverse_sigmoid, linear_with_floor

V_SRC, V_TGT = 11, 9
LENGTHS = torch.tensor([5, 3, 2])


def _model(seed: int = 0, dropout: float = 0.0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(emb_dim=8, hidden_dim=16, dropout=dropout, **kw)
    return Seq2Seq(V_SRC, V_TGT, cfg)


def _src(lengths: Tensor = LENGTHS, s: int | None = None, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = int(lengths.max()) if s is None else s
    src = torch.randint(4, V_SRC, (len(lengths), s), generator=g)
    valid = torch.arange(s).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(valid, src, torch.full_like(src, PAD_ID))


def _tgt(b: int = 3, t: int = 4, seed: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(4, V_TGT, (b, t), generator=g)
    tgt[:, 0] = BOS_ID
    return tgt


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        Seq2SeqConfig(nope=1)
    with pytest.raises(ValidationError):
        Seq2SeqConfig(hidden_dim=15)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"bridge": "zero"},
        {"enc_layers": 2, "dec_layers": 2},
        {"attention": AttentionConfig(kind="general", input_feeding=False)},
        {"attention": AttentionConfig(kind="local_monotonic", coverage=True, window=1)},
    ],
)
def test_shapes(kw: dict) -> None:
    m = _model(**kw)
    out = m(_src(), LENGTHS, _tgt())
    assert out.logits.shape == (3, 4, V_TGT)
    assert out.attention.shape == (3, 4, 5)
    assert out.coverage_loss.shape == ()
    assert out.fed_predictions.shape == (3, 4) and out.fed_predictions.dtype == torch.bool
    assert not out.fed_predictions.any()


def test_teacher_forcing_exact_and_sampling_changes_outputs() -> None:
    m = _model()
    src, tgt = _src(), _tgt(t=6)
    a = m(src, LENGTHS, tgt)
    b = m(src, LENGTHS, tgt, sampling_prob=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.logits, b.logits) and torch.equal(a.attention, b.attention)
    # the untrained model's predictions differ from the gold tokens, so feeding them changes the logits
    assert (a.logits[:, :-1].argmax(-1) != tgt[:, 1:]).any()
    c = m(src, LENGTHS, tgt, sampling_prob=1.0, generator=torch.Generator().manual_seed(3))
    assert c.fed_predictions[:, 1:].all() and not c.fed_predictions[:, 0].any()
    assert torch.equal(c.logits[:, 0], a.logits[:, 0])
    assert not torch.allclose(c.logits, a.logits)
    # sampling_prob=1 is the model fed its own argmax: the same as teacher forcing on those tokens
    fed = torch.cat([tgt[:, :1], c.logits[:, :-1].argmax(-1)], dim=1)
    assert torch.allclose(m(src, LENGTHS, fed).logits, c.logits, atol=1e-6)
    with pytest.raises(ValueError, match="sampling_prob"):
        m(src, LENGTHS, tgt, sampling_prob=1.5)


def test_fraction_of_fed_predictions() -> None:
    m = _model()
    b, t, p = 200, 30, 0.3
    lengths = torch.randint(1, 6, (b,), generator=torch.Generator().manual_seed(0))
    src = _src(lengths, s=5)
    tgt = torch.randint(4, V_TGT, (b, t))
    tgt[:, 0] = BOS_ID
    with torch.no_grad():
        out = m(src, lengths, tgt, sampling_prob=p, generator=torch.Generator().manual_seed(5))
        again = m(src, lengths, tgt, sampling_prob=p, generator=torch.Generator().manual_seed(5))
    fed = out.fed_predictions
    assert not fed[:, 0].any()
    n = b * (t - 1)
    frac = fed[:, 1:].float().mean().item()
    assert abs(frac - p) < 3 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(fed, again.fed_predictions)  # reproducible from the generator


@pytest.mark.parametrize("kind", ["bahdanau", "general", "local_predictive"])
def test_attention_rows_masked(kind: str) -> None:
    m = _model(attention=AttentionConfig(kind=kind))
    att = m(_src(), LENGTHS, _tgt()).attention
    mask = torch.arange(5).unsqueeze(0) < LENGTHS.unsqueeze(1)
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 4))
    assert (att.masked_select(~mask.unsqueeze(1).expand_as(att)) == 0).all()
    assert (att.masked_select(mask.unsqueeze(1).expand_as(att)) > 0).any()


@pytest.mark.parametrize("kw", [{}, {"enc_layers": 2, "attention": AttentionConfig(coverage=True)}])
def test_source_padding_does_not_change_logits(kw: dict) -> None:
    m = _model(**kw)
    tgt = _tgt(t=5)
    tight = m(_src(), LENGTHS, tgt)
    src = _src()
    garbage = torch.randint(4, V_SRC, (3, 9), generator=torch.Generator().manual_seed(7))
    valid = torch.arange(9).unsqueeze(0) < LENGTHS.unsqueeze(1)
    wide_src = torch.where(valid, F.pad(src, (0, 4)), garbage)  # 4 extra columns, non-PAD ids in the padding
    assert not torch.equal(wide_src[:, :5], src)
    wide = m(wide_src, LENGTHS, tgt)
    torch.testing.assert_close(wide.logits, tight.logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(wide.attention[..., :5], tight.attention, atol=1e-6, rtol=1e-5)
    assert (wide.attention[..., 5:] == 0).all()
    torch.testing.assert_close(wide.coverage_loss, tight.coverage_loss)


def test_greedy_decode_eos_and_matches_teacher_forcing() -> None:
    m = _model(dropout=0.3).train()
    src, max_len = _src(), 7
    early = 0
    for bias in [0.0, 1.0, 2.0, 3.0]:
        with torch.no_grad():
            m.out.bias[EOS_ID] = bias
        tokens, lengths = m.greedy_decode(src, LENGTHS, max_len)
        assert m.training  # mode restored
        assert tokens.dtype == torch.long and tokens.shape[0] == 3 and tokens.shape[1] <= max_len
        assert tokens.shape[1] == int(lengths.max())
        again, _ = m.eval().greedy_decode(src, LENGTHS, max_len)
        m.train()
        assert torch.equal(tokens, again)  # eval-mode independent
        for b in range(3):
            n = int(lengths[b])
            row = tokens[b]
            if n < max_len:
                assert row[n - 1] == EOS_ID
                early += 1
            assert not (row[: n - 1] == EOS_ID).any()
            assert (row[n:] == PAD_ID).all()
        m.eval()
        tgt_in = torch.cat([torch.full((3, 1), BOS_ID), tokens[:, :-1]], dim=1)
        pred = m(src, LENGTHS, tgt_in).logits.argmax(-1)
        m.train()
        valid = torch.arange(tokens.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        assert torch.equal(pred[valid], tokens[valid])
    assert 0 < early < 12  # some sequences stopped at EOS before max_len, some ran to it
    with torch.no_grad():
        m.out.bias[EOS_ID] = 100.0
    tokens, lengths = m.greedy_decode(src, LENGTHS, max_len)
    assert tokens.shape == (3, 1) and (tokens == EOS_ID).all() and (lengths == 1).all()
    with torch.no_grad():
        m.out.bias[EOS_ID] = -100.0
    tokens, lengths = m.greedy_decode(src, LENGTHS, max_len)
    assert tokens.shape == (3, max_len) and (lengths == max_len).all() and not (tokens == EOS_ID).any()


def test_coverage_loss() -> None:
    src, tgt = _src(), _tgt()
    assert _model()(src, LENGTHS, tgt).coverage_loss.item() == 0.0
    m = _model(attention=AttentionConfig(coverage=True))
    out = m(src, LENGTHS, tgt)
    assert out.coverage_loss.item() > 0
    out.coverage_loss.backward()
    assert m.attention.score.w_c.weight.grad is not None
    # one step has no past attention: no penalty
    assert m(src, LENGTHS, tgt[:, :1]).coverage_loss.item() == 0.0


def test_learns_reverse_a_little() -> None:
    g = torch.Generator().manual_seed(0)
    seqs = [
        torch.randint(4, V_SRC, (int(torch.randint(3, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(32)
    ]
    src, lengths = encode_batch(seqs)
    tgt_in, _ = encode_batch([[BOS_ID, *s[::-1]] for s in seqs])
    tgt_out, _ = encode_batch([[*s[::-1], EOS_ID] for s in seqs])
    torch.manual_seed(0)
    m = Seq2Seq(V_SRC, V_SRC, Seq2SeqConfig(emb_dim=16, hidden_dim=32, dropout=0.0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = m(src, lengths, tgt_in).logits
        loss = F.cross_entropy(logits.reshape(-1, V_SRC), tgt_out.reshape(-1), ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3


def test_schedules_formulas_and_monotone() -> None:
    assert inverse_sigmoid(0, 10) == pytest.approx(10 / 11)
    assert inverse_sigmoid(10, 10) == pytest.approx(10 / (10 + math.e))
    assert inverse_sigmoid(5, 10, c=5) == pytest.approx(10 / 11)
    assert inverse_sigmoid(1e6, 1) == 0.0
    assert linear_with_floor(0, 0.1, 0.2) == 1.0
    assert linear_with_floor(5, 0.1, 0.2) == pytest.approx(0.5)
    assert linear_with_floor(100, 0.1, 0.2) == 0.2
    assert linear_with_floor(1, 0.1, 0.2, start=0.8) == pytest.approx(0.7)
    assert exponential(0, 0.9) == 1.0
    assert exponential(2, 0.9) == pytest.approx(0.81)
    kwargs = {
        "inverse_sigmoid": {"k": 20.0, "c": 10.0},
        "linear_with_floor": {"slope": 0.01, "floor": 0.1},
        "exponential": {"gamma": 0.97},
    }
    assert set(SCHEDULES) == set(kwargs)
    for name, fn in SCHEDULES.items():
        vals = [fn(step, **kwargs[name]) for step in range(0, 1000, 7)]
        assert all(0.0 <= v <= 1.0 for v in vals)
        assert all(b <= a for a, b in itertools.pairwise(vals)), name
        assert vals[-1] < vals[0]
    with pytest.raises(ValueError):
        inverse_sigmoid(0, 0)
    with pytest.raises(ValueError):
        exponential(0, 1.5)


def test_hierarchical_bridge_reads_every_encoder_level() -> None:
    m = _model(enc_layers=3, hierarchical=True)
    assert m.bridge_h.in_features == 3 * 16
    src = _src()
    captured: dict[str, Tensor] = {}
    enc_forward = m.encoders[0].forward

    def spy(*a: object, **k: object) -> object:
        out = enc_forward(*a, **k)
        captured["h_n"], captured["c_n"] = out[1]
        return out

    m.encoders[0].forward = spy  # type: ignore[method-assign]
    _, _, (hs, _cs) = m.encode(src, LENGTHS)
    h_n = captured["h_n"]  # [layers * 2, B, H/2], layer-major
    every_level = torch.cat([h_n[k] for k in range(6)], -1)  # fwd/bwd of layers 1, 2, 3
    torch.testing.assert_close(hs[0], torch.tanh(m.bridge_h(every_level)))
    # the lowest level reaches the decoder's initial state directly: zeroing its part of the bridge changes it
    with torch.no_grad():
        m.bridge_h.weight[:, :16] = 0
    assert not torch.allclose(m.encode(src, LENGTHS)[2][0][0], hs[0])
    with pytest.raises(ValidationError, match="bridge=linear"):
        Seq2SeqConfig(hierarchical=True, bridge="zero")


def test_multi_modal_fields_have_own_encoders_and_are_fused() -> None:
    torch.manual_seed(0)
    m = Seq2Seq([V_SRC, 7], V_TGT, Seq2SeqConfig(emb_dim=8, hidden_dim=16, dropout=0.0))
    assert len(m.encoders) == 2 and m.src_embs[1].num_embeddings == 7 and m.bridge_h.in_features == 32
    lens2 = torch.tensor([2, 4, 1])
    f2 = torch.where(torch.arange(4)[None] < lens2[:, None], torch.randint(4, 7, (3, 4)), torch.zeros(3, 4).long())
    tgt = _tgt(t=5)
    out = m([_src(), f2], [LENGTHS, lens2], tgt)
    assert out.attention.shape == (3, 5, 5 + 4)  # one softmax over both fields' positions
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 5))
    mask = torch.cat([torch.arange(5)[None] < LENGTHS[:, None], torch.arange(4)[None] < lens2[:, None]], 1)
    assert (out.attention.masked_select(~mask[:, None].expand_as(out.attention)) == 0).all()
    assert (out.attention[..., 5:] > 0).any()  # the second field is attended
    other = f2.clone()
    other[0, 0] = 4 if int(f2[0, 0]) != 4 else 5
    assert not torch.allclose(m([_src(), other], [LENGTHS, lens2], tgt).logits[0], out.logits[0])
    torch.testing.assert_close(m([_src(), other], [LENGTHS, lens2], tgt).logits[1:], out.logits[1:])
    tok, ln = m.greedy_decode([_src(), f2], [LENGTHS, lens2], 6)
    assert tok.shape[0] == 3 and ln.shape == (3,)
    from longshort.nn.decoding import beam_search

    one = beam_search(m, [_src(), f2], [LENGTHS, lens2], 1, 6, alpha=0.0)
    assert torch.equal(one.tokens, tok) and torch.equal(one.lengths, ln)
    assert beam_search(m, [_src(), f2], [LENGTHS, lens2], 3, 6).tokens.shape[0] == 3
    with pytest.raises(ValueError, match="2 source field"):
        m(_src(), LENGTHS, tgt)


def test_bahdanau_query_order_attends_from_the_previous_state() -> None:
    """attention_query=previous: step t scores with h_(t-1) (the state before the cell) and the context enters
    the cell's input; checked against a hand computation of one step."""
    m = _model(attention_query="previous", attention=AttentionConfig(kind="bahdanau", input_feeding=False)).eval()
    assert m.cells[0].input_size == 8 + 16  # [emb(y_(t-1)); c_t]
    src, tgt = _src(), _tgt()
    with torch.no_grad():
        enc, mask, state = m.encode(src, LENGTHS)
        h0, c0 = state[0][0], state[1][0]
        att = m.attention(h0, enc, mask, step=0)  # from h_(t-1): the bridge's initial state
        x = torch.cat([m.tgt_emb(tgt[:, 0]), att.context], -1)
        h1, _ = m.cells[0](x, (h0, c0))
        want = m.out(torch.tanh(m.W_c(torch.cat([h1, att.context], -1))))
        logits, _, _, weights, _ = m.step(tgt[:, 0], state, torch.zeros(3, 16), enc, mask, 0, None)
        torch.testing.assert_close(logits, want)
        torch.testing.assert_close(weights, att.weights)
        luong = _model(attention=AttentionConfig(kind="bahdanau", input_feeding=False)).eval()
        assert luong.cells[0].input_size == 8
        out = m(src, LENGTHS, tgt)  # the whole decoder (teacher forcing) runs in this order too
    assert out.logits.shape == (3, 4, V_TGT) and torch.isfinite(out.logits).all()
