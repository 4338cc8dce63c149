from __future__ import annotations

import numpy as np

from longshort.data.builtin import REGIMES, RegimeProcess, regimes


def test_regimes_are_deterministic_from_the_seed() -> None:
    a, b, c = regimes(200, 30, seed=1), regimes(200, 30, seed=1), regimes(200, 30, seed=2)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)
    assert a.X.shape == (200, 30, 9) and a.class_names == REGIMES
    assert set(np.unique(a.y)) == {0, 1, 2}


def test_bayes_classifier_uses_the_true_likelihood() -> None:
    p = RegimeProcess()
    x, y = p.sample(3000, 50, seed=5)
    ll = p.log_likelihoods(x)
    acc = float(np.mean(ll.argmax(1) == y))
    best, se = p.bayes_accuracy(50, n=3000, seed=6)
    assert abs(acc - best) < 5 * se + 0.01
    assert 0.85 < best < 0.97  # hard enough to leave room, easy enough to learn in minutes


def test_a_wrong_model_of_the_process_does_worse_than_bayes() -> None:
    p = RegimeProcess()
    x, y = p.sample(4000, 50, seed=5)
    wrong = RegimeProcess(drift=p.drift * 3, rho_trend=p.rho_range, rho_range=p.rho_trend)
    assert np.mean(wrong.log_likelihoods(x).argmax(1) == y) < np.mean(p.log_likelihoods(x).argmax(1) == y) - 0.05


def test_regimes_aux_is_the_forward_move_and_leaves_x_and_y_alone() -> None:
    p = RegimeProcess()
    d = regimes(3000, 30, seed=3)
    x, y = p.sample(3000, 30, seed=3)
    assert np.array_equal(d.X, x) and np.array_equal(d.y, y)  # the aux stream draws apart from X and y
    assert d.aux is not None and d.aux.shape == (3000,) and d.aux.dtype == np.float32
    assert np.array_equal(d.aux, regimes(3000, 30, seed=3).aux)
    means = [float(d.aux[d.y == k].mean()) for k in range(3)]
    assert means[0] < -0.1 and abs(means[1]) < 0.1 and means[2] > 0.1  # bear < 0 < bull
    # The future noise is not in X: aux is only partly predictable from the last step's projection.
    _, m, _ = p.params()
    v = m[2] / np.linalg.norm(m[2])
    r = np.corrcoef(d.X[:, -1] @ v, d.aux)[0, 1]
    assert 0.2 < r < 0.95
