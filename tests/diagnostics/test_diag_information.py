"""Mutual-information estimates: ~0 for independent noise, the analytic value for a Gaussian pair, growing with
signal, and hidden states captured from the classifier's last BiLSTM block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from longshort.diagnostics.information import hidden_states, ksg_mi, mi_with_future, mi_with_label, ross_mi
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier


def test_ksg_matches_the_gaussian_mutual_information() -> None:
    """Bivariate Gaussian with correlation rho: I = -0.5 log(1 - rho^2)."""
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.6, 0.9):
        x = rng.standard_normal(1500)
        y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal(1500)
        assert ksg_mi(x[:, None], y) == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.04), rho


def test_ross_matches_a_known_mixture() -> None:
    """x | y ~ N(+-mu, 1) with y uniform on two classes and mu large: I -> log 2; mu = 0: I = 0."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1500)
    far = rng.standard_normal(1500) + np.where(y == 1, 8.0, -8.0)
    assert ross_mi(far[:, None], y) == pytest.approx(math.log(2), abs=0.03)
    assert ross_mi(rng.standard_normal((1500, 1)), y) < 0.02


def synthetic_states(signal: float, n: int = 300, t: int = 8, d: int = 6, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """h[n, t] = signal * (label direction) + noise, for steps t >= 2 only; lengths vary in [4, t]."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.standard_normal((3, d))
    h = rng.standard_normal((n, t, d))
    h[:, 2:] += signal * centres[y][:, None, :]
    lengths = rng.integers(4, t + 1, n)
    h[np.arange(t)[None, :] >= lengths[:, None]] = 0.0
    return h, y, lengths


def test_label_mi_is_near_zero_for_noise_and_grows_with_signal() -> None:
    for seed in range(3):
        noise = mi_with_label(*synthetic_states(0.0, seed=seed))
        assert noise["t"] == list(range(8))
        big = [i for i, n in enumerate(noise["n"]) if n >= 150]  # the null spread shrinks with the sample size
        assert len(big) >= 5
        assert max(noise["mi"][i] for i in big) < 0.08 and max(noise["baseline"][i] for i in big) < 0.08
    weak, strong = mi_with_label(*synthetic_states(0.5)), mi_with_label(*synthetic_states(2.0))
    # steps 0-1 carry no signal, steps 2+ do, and more signal means more information
    assert max(strong["mi"][:2]) < 0.08
    for i in range(2, 8):
        assert strong["mi"][i] > weak["mi"][i] > strong["baseline"][i] + 0.1
    assert min(strong["mi"][2:]) > 0.6  # log(3) = 1.10 is the ceiling
    assert max(strong["mi"][2:]) < math.log(3) + 0.05
    assert strong["n"][0] == 300 and strong["n"][-1] < 300  # step 7 only counts sequences that long


def test_label_mi_pooled_and_per_sequence() -> None:
    h, y, lengths = synthetic_states(2.0)
    pooled = mi_with_label(h, y, lengths, per_step=False)
    assert pooled["t"] is None and pooled["n"] == [int(lengths.sum())]
    assert pooled["mi"][0] > pooled["baseline"][0] + 0.3
    last = mi_with_label(h[:, 3], y)  # one state per sequence
    assert "t" not in last and last["mi"][0] > 0.6 and last["baseline"][0] < 0.08


def test_ross_estimator_agrees_with_scikit_learn_in_one_dimension() -> None:
    """In one dimension the joint estimate is scikit-learn's per-feature one: the same numbers."""
    from sklearn.feature_selection import mutual_info_classif

    rng = np.random.default_rng(4)
    for signal in (0.0, 0.5, 2.0):
        y = rng.integers(0, 3, 300)
        x = rng.standard_normal((300, 1)) + signal * y[:, None]
        ref = mutual_info_classif(x, y, discrete_features=False, n_neighbors=3, random_state=0)[0]
        assert ross_mi(x, y, k=3) == pytest.approx(ref, abs=1e-6)


def test_future_mi_picks_out_the_encoded_horizon() -> None:
    """h_t encodes y_{t+3} of a white-noise series: MI high at k = 3 only, and growing with the signal."""
    rng = np.random.default_rng(2)
    n, t, s = 200, 10, 16
    series = rng.standard_normal((n, s))
    series[:, 14:] = np.nan  # unknown targets are skipped
    lengths = rng.integers(5, t + 1, n)

    def states(signal: float) -> np.ndarray:
        h = rng.standard_normal((n, t, 4))
        h[..., 0] += signal * series[:, 3 : 3 + t]
        return h

    out = mi_with_future(states(3.0), series, [1, 3, 5], lengths, max_samples=1000)
    assert out["k"] == [1, 3, 5]
    # the truth is -0.5 log(1 - 0.9) = 1.15; KSG underestimates strong dependence, more so with the two pure-noise
    # components in the joint space (the estimator's known bias towards 0)
    assert 0.8 < out["mi"][1] < 1.2
    assert out["mi"][0] < 0.05 and out["mi"][2] < 0.05 and max(out["baseline"]) < 0.05
    assert out["n"][0] == 1000  # subsampled
    assert mi_with_future(states(0.5), series, [3], lengths)["mi"][0] < out["mi"][1]
    edge = mi_with_future(states(1.0), series, [13, 14], lengths)  # known targets end at step 13
    assert edge["n"] == [n, 0]  # k = 13: step 0 of every sequence; k = 14: nothing
    assert math.isnan(edge["mi"][1]) and not math.isnan(edge["mi"][0])


def test_hidden_states_capture_the_last_block() -> None:
    torch.manual_seed(0)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=2, conv_dilations=[1])
    model = SequenceClassifier(3, 2, cfg).train()
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 3, 5, 2])
    seen: dict[str, torch.Tensor] = {}
    model.lstms[1].register_forward_hook(lambda _m, _a, out: seen.__setitem__("block", out[0]))  # (y, cache)
    model.lstms[1].lstm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("lstm", out[0]))
    h = hidden_states(model, x, lengths)
    assert model.training  # mode restored (the capture itself ran in eval mode: deterministic)
    assert h.shape == (4, 6, 8)
    valid = torch.arange(6)[None, :] < lengths[:, None]
    torch.testing.assert_close(h[valid], seen["block"][valid])
    assert torch.all(h[~valid] == 0)
    fwd = hidden_states(model, x, lengths, part="forward")
    torch.testing.assert_close(fwd[valid], seen["lstm"][..., :4][valid])
    assert len(model.lstms[1]._forward_hooks) == len(model.lstms[1].lstm._forward_hooks) == 1  # the test's own
    # eval mode for the capture: dropout off, so two captures of a training-mode model agree
    torch.testing.assert_close(hidden_states(model, x, lengths, block=0), hidden_states(model, x, lengths, block=0))


def test_future_mi_of_discrete_tokens_picks_out_the_encoded_step() -> None:
    """A seq2seq decoder's case: h_t encodes the token y_{t+1} (5 classes): Ross's estimator finds it at k = 1
    only, near log(5) when the classes separate, at the baseline elsewhere."""
    rng = np.random.default_rng(3)
    n, t = 150, 8
    tokens = rng.integers(0, 5, (n, t + 2)).astype(np.float64)
    tokens[:, t + 1 :] = np.nan  # past the target's end
    lengths = rng.integers(4, t + 1, n)
    h = rng.standard_normal((n, t, 3)) * 0.1
    h[..., 0] += tokens[:, 1 : t + 1]  # well separated classes along one axis
    out = mi_with_future(h, tokens, [0, 1, 2], lengths, discrete=True)
    assert out["k"] == [0, 1, 2]
    assert 0.8 * math.log(5) < out["mi"][1] <= math.log(5) and max(out["baseline"]) < 0.1
    assert out["mi"][0] < 0.1 and out["mi"][2] < 0.1
