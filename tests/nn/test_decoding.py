from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from longshort.data.pairs import BOS_ID, EOS_ID, PAD_ID
from longshort.nn import AttentionConfig, Seq2Seq, Seq2SeqConfig
from longshort.nn.decoding import BeamResult, beam_search, length_penalty, sequence_log_prob

V = 12
LENGTHS = torch.tensor([5, 2, 4, 1, 3])
CONFIGS = [
    {},
    {"dec_layers": 2, "enc_layers": 2, "attention": AttentionConfig(coverage=True)},
    {"bridge": "zero", "attention": AttentionConfig(kind="general", input_feeding=False)},
]


def _model(seed: int = 0, eos_bias: float = 0.0, dropout: float = 0.0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    m = Seq2Seq(V, V, Seq2SeqConfig(emb_dim=8, hidden_dim=16, dropout=dropout, **kw))
    with torch.no_grad():
        m.out.bias[EOS_ID] += eos_bias
    return m.eval()


def _src(lengths: Tensor = LENGTHS, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = int(lengths.max())
    src = torch.randint(4, V, (len(lengths), s), generator=g)
    valid = torch.arange(s).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.where(valid, src, torch.full_like(src, PAD_ID))


def _check_rows(res: BeamResult, max_len: int) -> None:
    tokens, lengths = res.tokens, res.lengths
    assert tokens.dtype == torch.long and lengths.dtype == torch.long
    assert tokens.shape == (len(lengths), int(lengths.max())) and tokens.shape[1] <= max_len
    for row, n in zip(tokens, lengths.tolist(), strict=True):
        assert 1 <= n <= max_len
        assert (row[n:] == PAD_ID).all()
        assert not (row[: n - 1] == EOS_ID).any()
        if n < max_len:
            assert row[n - 1] == EOS_ID


# ---------------------------------------------------------------------------------------- a stub with a table


A, B = 4, 5  # two ordinary target tokens of the stub


class _TableModel(Seq2Seq):
    """``step`` ignores the network: its logits are ``log p(. | prefix)`` from ``table`` (missing prefixes put almost
    all mass on EOS). The output prefix travels in a third state tensor, so the beam must reorder it with the rest."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], max_steps: int = 8) -> None:
        super().__init__(6, 6, Seq2SeqConfig(emb_dim=2, hidden_dim=2, dropout=0.0))
        self.table, self.max_steps = table, max_steps

    def encode(self, src: Tensor, src_lengths: Tensor):  # type: ignore[override]
        enc, mask, (hs, cs) = super().encode(src, src_lengths)
        hist = torch.full((src.shape[0], self.max_steps + 1), PAD_ID, dtype=torch.long)
        return enc, mask, (hs, cs, hist)

    def probs(self, prefix: tuple[int, ...]) -> Tensor:
        p = torch.full((6,), 1e-6, dtype=torch.float64)
        for tok, q in self.table.get(prefix, {EOS_ID: 1.0}).items():
            p[tok] = q
        return p / p.sum()

    def log_prob(self, seq: list[int]) -> float:
        return sum(math.log(self.probs(tuple(seq[:i]))[tok]) for i, tok in enumerate(seq))

    def step(self, tokens, state, h_tilde, enc, mask, t, coverage, prepared=None):  # type: ignore[override]
        hs, cs, hist = state
        hist = hist.clone()
        hist[:, t] = tokens  # inputs: BOS, then the outputs so far
        logits = torch.stack([self.probs(tuple(row[1 : t + 1].tolist())).log().float() for row in hist])
        weights = mask.float() / mask.sum(-1, keepdim=True)
        return logits, (hs, cs, hist), h_tilde, weights, coverage


STUB_SRC, STUB_LEN = torch.tensor([[4, 5]]), torch.tensor([2])


# ------------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kw", CONFIGS)
def test_beam_one_is_greedy(kw: dict) -> None:
    src = _src()
    stopped = 0
    for seed, bias in [(0, 0.0), (1, 1.5), (2, 2.5), (3, 4.0)]:
        m = _model(seed, bias, **kw)
        g_tokens, g_lengths = m.greedy_decode(src, LENGTHS, 7)
        res = beam_search(m, src, LENGTHS, beam_size=1, max_len=7, alpha=0.0)
        assert torch.equal(res.tokens, g_tokens)
        assert torch.equal(res.lengths, g_lengths)
        stopped += int((g_lengths < 7).sum())
    assert stopped > 0  # some sequences ended with EOS before max_len


@pytest.mark.parametrize("kw", CONFIGS)
def test_scores_are_normalised_sequence_log_probs(kw: dict) -> None:
    src = _src()
    for seed, bias, alpha in [(0, 1.5, 0.6), (1, 2.5, 1.0), (2, 0.0, 0.0)]:
        m = _model(seed, bias, **kw)
        res = beam_search(m, src, LENGTHS, beam_size=4, max_len=6, alpha=alpha)
        _check_rows(res, 6)
        raw = sequence_log_prob(m, src, LENGTHS, res.tokens, res.lengths)
        assert raw.requires_grad  # scoring keeps gradients
        expected = raw.detach() / length_penalty(res.lengths, alpha)
        torch.testing.assert_close(res.scores, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", CONFIGS)
def test_batching_invariance(kw: dict) -> None:
    src = _src()
    m = _model(3, 2.0, **kw)
    batch = beam_search(m, src, LENGTHS, beam_size=3, max_len=6)
    for i, n in enumerate(LENGTHS.tolist()):
        alone = beam_search(m, src[i : i + 1, :n], LENGTHS[i : i + 1], beam_size=3, max_len=6)
        k = int(alone.lengths[0])
        assert int(batch.lengths[i]) == k
        assert torch.equal(batch.tokens[i, :k], alone.tokens[0, :k])
        torch.testing.assert_close(batch.scores[i], alone.scores[0], atol=1e-5, rtol=0)


def test_beam_beats_greedy_on_random_models() -> None:
    rows = at_least = better = 0
    lengths = torch.tensor([4, 1, 3, 5, 2, 4])
    for seed in range(10):
        m = _model(seed)  # EOS is rarely likely at first: long, varied hypotheses
        src = _src(lengths, seed=seed + 100)
        g_tokens, g_lengths = m.greedy_decode(src, lengths, 6)
        greedy = sequence_log_prob(m, src, lengths, g_tokens, g_lengths).detach()
        res = beam_search(m, src, lengths, beam_size=5, max_len=6, alpha=0.0)
        rows += len(lengths)
        at_least += int((res.scores >= greedy - 1e-5).sum())
        better += int((res.scores > greedy + 1e-3).sum())
    assert at_least >= 0.9 * rows
    assert better > 0


def test_beam_finds_what_greedy_misses() -> None:
    table = {
        (): {A: 0.5, B: 0.4, EOS_ID: 0.1},
        (A,): {A: 0.34, B: 0.33, EOS_ID: 0.33},
        (A, A): {EOS_ID: 1.0},
        (B,): {EOS_ID: 0.9, A: 0.1},
    }
    m = _TableModel(table)
    g_tokens, g_lengths = m.greedy_decode(STUB_SRC, STUB_LEN, 6)
    assert g_tokens.tolist() == [[A, A, EOS_ID]] and g_lengths.tolist() == [3]
    res = beam_search(m, STUB_SRC, STUB_LEN, beam_size=2, max_len=6, alpha=0.0)
    assert res.tokens.tolist() == [[B, EOS_ID]] and res.lengths.tolist() == [2]
    assert res.scores.item() == pytest.approx(m.log_prob([B, EOS_ID]), abs=1e-5)
    assert res.scores.item() > m.log_prob([A, A, EOS_ID]) + 0.5
    greedy = sequence_log_prob(m, STUB_SRC, STUB_LEN, g_tokens, g_lengths)
    assert greedy.item() == pytest.approx(m.log_prob([A, A, EOS_ID]), abs=1e-5)
    # one beam is greedy
    one = beam_search(m, STUB_SRC, STUB_LEN, beam_size=1, max_len=6, alpha=0.0)
    assert one.tokens.tolist() == [[A, A, EOS_ID]]


def test_length_penalty_values_and_longer_preferred() -> None:
    lengths = torch.tensor([1, 2, 7, 25])
    assert torch.equal(length_penalty(lengths, 0.0), torch.ones(4))
    torch.testing.assert_close(length_penalty(lengths, 1.0), torch.tensor([1.0, 7 / 6, 2.0, 5.0]))
    torch.testing.assert_close(length_penalty(lengths, 0.5), torch.tensor([1.0, (7 / 6) ** 0.5, 2**0.5, 5**0.5]))
    assert length_penalty(torch.tensor(7), 2.0).item() == pytest.approx(4.0)
    # [EOS] has raw log-prob -1.0, [A, EOS] -1.1: raw prefers the short one, lp(2) = 7/6 with alpha = 1 the long one
    p_a = 0.6
    table = {
        (): {EOS_ID: math.exp(-1.0), A: p_a, B: 1 - math.exp(-1.0) - p_a},
        (A,): {EOS_ID: math.exp(-1.1) / p_a, B: 1 - math.exp(-1.1) / p_a},
    }
    m = _TableModel(table)
    short, long = m.log_prob([EOS_ID]), m.log_prob([A, EOS_ID])
    assert short == pytest.approx(-1.0, abs=1e-4) and long == pytest.approx(-1.1, abs=1e-4)
    res0 = beam_search(m, STUB_SRC, STUB_LEN, beam_size=2, max_len=5, alpha=0.0)
    assert res0.tokens.tolist() == [[EOS_ID]] and res0.lengths.tolist() == [1]
    assert res0.scores.item() == pytest.approx(short, abs=1e-5)
    res1 = beam_search(m, STUB_SRC, STUB_LEN, beam_size=2, max_len=5, alpha=1.0)
    assert res1.tokens.tolist() == [[A, EOS_ID]] and res1.lengths.tolist() == [2]
    assert res1.scores.item() == pytest.approx(long / (7 / 6), abs=1e-5)


def test_rows_well_formed_mode_restored_and_validation() -> None:
    src = _src()
    for seed, bias, k in [(0, 0.0, 2), (1, 2.0, 5), (2, 3.0, 20), (3, 100.0, 3), (4, -100.0, 3)]:
        m = _model(seed, bias, dropout=0.3).train()
        res = beam_search(m, src, LENGTHS, beam_size=k, max_len=6)
        assert m.training and all(mod.training for mod in m.modules())
        _check_rows(res, 6)
        assert res.scores.shape == (5,) and torch.isfinite(res.scores).all()
        if bias == 100.0:
            assert res.tokens.tolist() == [[EOS_ID]] * 5
        if bias == -100.0:
            assert (res.lengths == 6).all() and not (res.tokens == EOS_ID).any()
    m = _model()
    res = beam_search(m, src, LENGTHS, beam_size=3, max_len=1)
    assert res.tokens.shape == (5, 1) and (res.lengths == 1).all()
    assert not (res.tokens == BOS_ID).all()
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(m, src, LENGTHS, beam_size=0, max_len=5)
    with pytest.raises(ValueError, match="max_len"):
        beam_search(m, src, LENGTHS, beam_size=2, max_len=0)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 3.0])
def test_wide_beam_is_exhaustive_search(alpha: float) -> None:
    # With beam_size >= V ** (max_len - 1) nothing is ever pruned before the last step, so beam search must return
    # the best of all sequences by brute force (EOS-terminated ones of every length, and EOS-free ones of max_len).
    max_len, lengths = 3, torch.tensor([3, 1, 2])
    m, src = _model(5), _src(lengths, seed=7)
    other = [v for v in range(V) if v != EOS_ID]
    seqs = [[EOS_ID], *[[a, EOS_ID] for a in other], *[[a, b, EOS_ID] for a in other for b in other]]
    seqs += [[a, b, c] for a in other for b in other for c in other]
    tokens = torch.tensor([s + [PAD_ID] * (max_len - len(s)) for s in seqs])
    seq_lengths = torch.tensor([len(s) for s in seqs])
    res = beam_search(m, src, lengths, beam_size=V ** (max_len - 1), max_len=max_len, alpha=alpha)
    with torch.no_grad():
        for i in range(len(lengths)):
            rep = src[i : i + 1].expand(len(seqs), -1)
            norm = sequence_log_prob(m, rep, lengths[i].repeat(len(seqs)), tokens, seq_lengths)
            norm = norm / length_penalty(seq_lengths, alpha)
            best = int(norm.argmax())
            assert res.scores[i].item() == pytest.approx(norm[best].item(), abs=1e-5)
            assert int(res.lengths[i]) == len(seqs[best])
            assert res.tokens[i, : len(seqs[best])].tolist() == seqs[best]


def test_finished_slots_frozen_and_no_early_stop_while_beatable() -> None:
    # [EOS] (p 0.75) is finished at step 0; [A, A, A, EOS] (p 0.25) only wins through the penalty (alpha 5:
    # lp(4) = 1.5 ** 5). A finished slot must not spawn children: here [EOS, A] and [EOS, B] would beat [A, A] and
    # push the A line out of a beam of 2. And the search must not stop after step 0, where [A] / lp(2) looks beaten
    # but [A, A, A, EOS] / lp(4) is not.
    table = {
        (): {EOS_ID: 0.75, A: 0.25},
        (A,): {A: 1.0},
        (A, A): {A: 1.0},
        (A, A, A): {EOS_ID: 1.0},
        (EOS_ID,): {A: 0.5, B: 0.5},
    }
    m = _TableModel(table)
    best = [A, A, A, EOS_ID]
    assert m.log_prob(best) / 1.5**5 > m.log_prob([EOS_ID]) > m.log_prob([A]) / (7 / 6) ** 5
    res = beam_search(m, STUB_SRC, STUB_LEN, beam_size=2, max_len=4, alpha=5.0)
    assert res.tokens.tolist() == [best] and res.lengths.tolist() == [4]
    assert res.scores.item() == pytest.approx(m.log_prob(best) / 1.5**5, abs=1e-5)
    res0 = beam_search(m, STUB_SRC, STUB_LEN, beam_size=2, max_len=4, alpha=0.0)
    assert res0.tokens.tolist() == [[EOS_ID]]
