"""gate_statistics against a hand-run LSTM: gate means, variances and memory utilisation from the weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from longshort.diagnostics.gates import HEALTHY_RANGES, gate_statistics
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import LSTM, CellConfig

LENGTHS = torch.tensor([6, 2, 4, 5])


def hand_run(m: LSTM, x: Tensor, lengths: Tensor) -> dict[tuple[int, str], dict[str, Tensor]]:
    """Each layer and direction one sequence and one step at a time in float64, from W_ih, W_hh, b_ih, b_hh.

    Gates in nn.LSTM's order i, f, g, o; the backward direction starts at each sequence's last valid step;
    layer k+1 reads [forward h_t, backward h_t] of layer k at the valid steps. Returns the i, f, o activations
    [n_valid, H] and the cell states [n_valid, H] of every valid (step, sequence) pair."""
    hid = m.hidden_size
    seqs = [x[b, : int(n)].double() for b, n in enumerate(lengths)]
    out: dict[tuple[int, str], dict[str, Tensor]] = {}
    for k in range(m.num_layers):
        layer_out = []
        for sfx in ("", "_reverse"):
            w_ih = getattr(m, f"weight_ih_l{k}{sfx}").double()
            w_hh = getattr(m, f"weight_hh_l{k}{sfx}").double()
            b = getattr(m, f"bias_ih_l{k}{sfx}").double() + getattr(m, f"bias_hh_l{k}{sfx}").double()
            acts: dict[str, list[Tensor]] = {"i": [], "f": [], "o": [], "c": []}
            hs_all = []
            for seq in seqs:
                steps = range(len(seq)) if sfx == "" else range(len(seq) - 1, -1, -1)
                h = c = torch.zeros(hid, dtype=torch.float64)
                hs = [torch.zeros(hid)] * len(seq)
                for t in steps:
                    pre = w_ih @ seq[t] + w_hh @ h + b
                    i = torch.sigmoid(pre[:hid])
                    f = torch.sigmoid(pre[hid : 2 * hid])
                    g = torch.tanh(pre[2 * hid : 3 * hid])
                    o = torch.sigmoid(pre[3 * hid :])
                    c = f * c + i * g
                    h = o * torch.tanh(c)
                    hs[t] = h
                    for name, v in (("i", i), ("f", f), ("o", o), ("c", c)):
                        acts[name].append(v)
                hs_all.append(torch.stack(hs))
            out[(k, sfx)] = {name: torch.stack(v) for name, v in acts.items()}
            layer_out.append(hs_all)
        seqs = [torch.cat([fw, bw], -1) for fw, bw in zip(*layer_out, strict=True)]
    return out


@pytest.mark.parametrize("layers", [1, 2])
def test_gate_statistics_equal_a_hand_computation(layers: int) -> None:
    torch.manual_seed(3)
    m = LSTM(3, 4, layers, batch_first=True, bidirectional=True)
    x = torch.randn(4, 6, 3)
    x[torch.arange(6)[None, :] >= LENGTHS[:, None]] = 0.0
    rows = gate_statistics(m, x, LENGTHS)
    ref = hand_run(m, x, LENGTHS)
    assert len(rows) == layers * 2 * 4
    for row in rows:
        assert row["layer"] == ""  # the model is the LSTM itself
        sfx = "" if row["direction"] == "forward" else "_reverse"
        r = ref[(row["sublayer"], sfx)]
        if row["gate"] == "memory":
            c = r["c"]
            util = c.std(0, unbiased=False).norm() / c.mean(0).norm()
            assert row["utilisation"] == pytest.approx(util.item(), rel=1e-5, abs=1e-5)
            assert row["mean"] is None and not row["flagged"]
        else:
            a = r[row["gate"][0]]
            assert a.shape == (int(LENGTHS.sum()), 4)  # valid steps x sequences, by units
            assert row["mean"] == pytest.approx(a.mean().item(), abs=1e-5)
            assert row["var"] == pytest.approx(a.var(unbiased=False).item(), abs=1e-5)
            low, high = HEALTHY_RANGES[row["gate"]]
            assert (row["healthy_low"], row["healthy_high"]) == (low, high)
            assert row["flagged"] == (not low <= row["mean"] <= high)


def test_padding_does_not_enter_the_statistics() -> None:
    """Garbage at padded steps changes nothing: the statistics are over valid steps only."""
    torch.manual_seed(4)
    m = LSTM(3, 4, batch_first=True, bidirectional=True)
    x = torch.randn(4, 6, 3)
    pad = torch.arange(6)[None, :] >= LENGTHS[:, None]
    clean = x.masked_fill(pad[..., None], 0.0)
    noisy = x.masked_fill(pad[..., None], 50.0)
    assert gate_statistics(m, clean, LENGTHS) == gate_statistics(m, noisy, LENGTHS)


def test_saturated_forget_gate_is_flagged() -> None:
    torch.manual_seed(5)
    m = LSTM(3, 4, batch_first=True)
    with torch.no_grad():
        m.bias_ih_l0[4:8] = 10.0  # forget gate ~ 1
    rows = {r["gate"]: r for r in gate_statistics(m, torch.randn(2, 5, 3))}
    assert rows["forget"]["mean"] > 0.99 and rows["forget"]["flagged"]
    assert set(rows) == {"input", "forget", "output", "memory"}


def test_model_state_is_restored_and_train_mode_uses_masks() -> None:
    torch.manual_seed(6)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=2, conv_dilations=[1],
                           cell=CellConfig(zoneout=0.3))
    model = SequenceClassifier(3, 2, cfg)
    model.eval()
    model.lstms[0].train()  # a module in its own mode must stay so
    x, lengths = torch.randn(4, 6, 3), LENGTHS
    before = torch.get_rng_state()
    ev = gate_statistics(model, x, lengths)
    tr = gate_statistics(model, x, lengths, train=True, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert not model.training and model.lstms[0].training and not model.lstms[1].training
    for blk in model.lstms:
        assert blk.lstm.gate_stats is False and blk.lstm.last_gate_stats == {}
    assert {r["layer"] for r in ev} == {"lstms.0.lstm", "lstms.1.lstm"}
    assert [r["mean"] for r in ev] != [r["mean"] for r in tr]  # zoneout masks in train mode change the gates
    assert tr == gate_statistics(model, x, lengths, train=True, seed=1)  # same seed, same masks


def test_no_lstm_is_an_error() -> None:
    with pytest.raises(ValueError, match="no longshort"):
        gate_statistics(torch.nn.Linear(2, 2), torch.randn(1, 2))
