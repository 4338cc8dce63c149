"""Built-in datasets, generated deterministically from a seed (nothing is downloaded).

``regimes``: 9-feature, 3-class multivariate market-regime sequences (task classify).
``signal``: 3-feature sequences with a numeric target of known noise (task regress); see :func:`signal`.

Generating process. Each sequence belongs to one regime k in {bear, range, bull}, drawn uniformly. Its 9
features follow a vector autoregression of order one,

    x_0 ~ N(0, I),    x_t = A_k x_{t-1} + m_k + S e_t,    e_t ~ N(0, I),    t = 1..T-1,

where ``S`` is a fixed lower-triangular noise factor shared by all regimes (correlated features), ``m_k`` is
the regime's drift along a fixed unit direction ``v`` (``-drift * v``, ``0``, ``+drift * v``) and ``A_k`` its
persistence (``rho_trend * I`` for bear and bull, ``rho_range * I`` for range: trending regimes are more
persistent). ``S`` and ``v`` come from a fixed seed, so the process is the same whatever the data seed.

Auxiliary target. Each sequence also carries ``aux``, its forward move: the process is run ``horizon`` (5)
steps past the end and ``aux`` is the mean of ``v . x`` over those steps, the analogue of a forward return
along the drift direction. The extra steps come from their own random stream, so ``X`` and ``y`` are the
same with or without it, and the target is unknown from ``X`` alone (its noise lies in the future). It gives
the multi-task loss (``train.loss.aux_weight``) a defined, regime-related regression target.

Best possible accuracy. With the parameters known, the Bayes-optimal classifier picks the regime with the
highest exact log-likelihood of ``x_1..x_{T-1}`` given ``x_0`` (``x_0`` has the same law in every regime, and
the priors are equal). :func:`bayes_accuracy` applies it to a large fresh sample and returns its accuracy
with a standard error: no learned model can beat that number on this data, up to sampling error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from longshort.data.types import SequenceData

REGIMES = ["bear", "range", "bull"]
N_FEATURES = 9


@dataclass(frozen=True)
class RegimeProcess:
    drift: float = 0.15
    rho_trend: float = 0.6
    rho_range: float = 0.3

    def params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A [3, C, C], m [3, C], S [C, C]) for the three regimes."""
        rng = np.random.default_rng(20240517)  # fixed: the process itself never changes with the data seed
        v = rng.normal(size=N_FEATURES)
        v /= np.linalg.norm(v)
        g = rng.normal(size=(N_FEATURES, N_FEATURES)) * 0.3
        cov = np.eye(N_FEATURES) + g @ g.T
        s = np.linalg.cholesky(cov / np.mean(np.diag(cov)))
        eye = np.eye(N_FEATURES)
        a = np.stack([self.rho_trend * eye, self.rho_range * eye, self.rho_trend * eye])
        m = np.stack([-self.drift * v, np.zeros(N_FEATURES), self.drift * v])
        return a, m, s

    def sample(self, n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` sequences of ``length`` steps: X float32 [n, length, 9], y int64 [n]."""
        a, m, s = self.params()
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, size=n)
        x = np.empty((n, length, N_FEATURES))
        x[:, 0] = rng.normal(size=(n, N_FEATURES))
        noise = rng.normal(size=(n, length, N_FEATURES)) @ s.T
        for t in range(1, length):  # a recursion: each step needs the previous one
            x[:, t] = self._step(a, m, y, x[:, t - 1], noise[:, t])
        return x.astype(np.float32), y.astype(np.int64)

    @staticmethod
    def _step(a: np.ndarray, m: np.ndarray, y: np.ndarray, prev: np.ndarray, noise: np.ndarray) -> np.ndarray:
        return np.einsum("nij,nj->ni", a[y], prev) + m[y] + noise

    def forward_move(self, x: np.ndarray, y: np.ndarray, seed: int, horizon: int = 5) -> np.ndarray:
        """Mean of ``v . x`` over the ``horizon`` steps after each sequence's last one: float32 [n].

        The future noise comes from a stream of its own (``(seed, 1)``), apart from the one ``sample`` uses."""
        a, m, s = self.params()
        v = m[2] / np.linalg.norm(m[2])
        rng = np.random.default_rng([seed, 1])
        prev, total = x[:, -1].astype(np.float64), np.zeros(len(x))
        for _ in range(horizon):
            prev = self._step(a, m, y, prev, rng.normal(size=prev.shape) @ s.T)
            total += prev @ v
        return (total / horizon).astype(np.float32)

    def log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """Exact log p(x_1..x_{T-1} | x_0, regime) up to a shared constant: [n, 3]."""
        a, m, s = self.params()
        prec = np.linalg.inv(s @ s.T)
        x = x.astype(np.float64)
        out = np.empty((x.shape[0], 3))
        for k in range(3):
            r = x[:, 1:] - x[:, :-1] @ a[k].T - m[k]
            out[:, k] = -0.5 * np.einsum("ntc,cd,ntd->n", r, prec, r)
        return out

    def bayes_accuracy(self, length: int, n: int = 20000, seed: int = 987654) -> tuple[float, float]:
        """Accuracy of the Bayes-optimal classifier on ``n`` fresh sequences, and its standard error."""
        x, y = self.sample(n, length, seed)
        acc = float(np.mean(self.log_likelihoods(x).argmax(1) == y))
        return acc, float(np.sqrt(acc * (1 - acc) / n))


def regimes(n: int = 4000, length: int = 50, seed: int = 0) -> SequenceData:
    process = RegimeProcess()
    x, y = process.sample(n, length, seed)
    return SequenceData(
        X=x,
        lengths=np.full(n, length, dtype=np.int64),
        y=y,  # indices into class_names
        feature_names=[f"f{i}" for i in range(N_FEATURES)],
        source="builtin:regimes",
        class_names=list(REGIMES),
        aux=process.forward_move(x, y, seed),
    )


SIGNAL_NOISE = 0.5  # the std of the signal set's target noise: no model's RMSE can be below it (in expectation)
SIGNAL_PHI = 0.8  # the features' AR(1) coefficient


def signal(n: int = 4000, length: int = 50, seed: int = 0) -> SequenceData:
    """``n`` sequences of ``length`` steps with a numeric target whose best possible RMSE is known.

    Generating process. Three features, each an independent stationary AR(1) with coefficient 0.8 and unit
    variance (``x_0 ~ N(0, 1)``, ``x_t = 0.8 x_{t-1} + 0.6 e_t``). The target is a fixed function of the whole
    sequence plus independent noise::

        y = 1.5 * mean_t(x0) + mean_t(x1 * x2) + 0.5 * x0[T-1] + eps,    eps ~ N(0, 0.5^2)

    a level (the first feature's mean), an interaction (the co-movement of the other two) and the last step.
    ``E[y | x]`` is the function itself, so the best any model can do is predict it, and its RMSE is the noise
    std, 0.5 (``SIGNAL_NOISE``): the noise floor a trained regressor is measured against.
    """
    rng = np.random.default_rng([seed, 7])
    x = np.empty((n, length, 3))
    x[:, 0] = rng.normal(size=(n, 3))
    innovations = rng.normal(size=(n, length, 3)) * np.sqrt(1 - SIGNAL_PHI**2)
    for t in range(1, length):  # a recursion: each step needs the previous one
        x[:, t] = SIGNAL_PHI * x[:, t - 1] + innovations[:, t]
    mean = 1.5 * x[:, :, 0].mean(1) + (x[:, :, 1] * x[:, :, 2]).mean(1) + 0.5 * x[:, -1, 0]
    y = mean + rng.normal(size=n) * SIGNAL_NOISE
    return SequenceData(X=x.astype(np.float32), lengths=np.full(n, length, dtype=np.int64),
                        y=y[:, None].astype(np.float32), feature_names=["x0", "x1", "x2"], source="builtin:signal")


GAPS_SHARE = 0.05  # the share of each gaps sequence's values that are missing


def gaps(n: int = 1000, length: int = 40, seed: int = 0) -> SequenceData:
    """Two classes told apart only by *where* values are missing (for ``data.missing``): two channels of N(0, 1)
    noise, 5% of each sequence's values missing (NaN), all in its first half (class ``early``) or all in its
    second half (``late``). The values carry no signal, so a model finds the class only if it is shown where
    values were absent (``data.missing=mask``); filled with zeros or the mean they look like ordinary values."""
    rng = np.random.default_rng([seed, 11])
    x = rng.normal(size=(n, length, 2)).astype(np.float32)
    y = rng.integers(0, 2, n)
    half = max(1, length // 2)
    k = max(1, min(half * 2, round(GAPS_SHARE * length * 2)))
    for i in range(n):
        cells = rng.choice(half * 2, size=k, replace=False)
        x[i, cells // 2 + (length - half if y[i] else 0), cells % 2] = np.nan
    return SequenceData(X=x, lengths=np.full(n, length, dtype=np.int64), y=y, feature_names=["x0", "x1"],
                        source="builtin:gaps", class_names=["early", "late"])


@dataclass(frozen=True)
class Builtin:
    make: Callable[..., SequenceData]
    summary: str
    best_accuracy: Callable[[int], tuple[float, float]] | None = None
    task: str = "classify"  # the task its targets are for: classify (class labels) or regress (numbers)
    noise_floor: float | None = None  # regress: the best possible RMSE (the std of the target's noise)


@functools.lru_cache(maxsize=16)
def _regimes_best(length: int) -> tuple[float, float]:
    """The regimes data's Bayes accuracy at ``length`` (20,000 fresh sequences, about 1-3 s; the same every call,
    so computed once per length and process)."""
    return RegimeProcess().bayes_accuracy(length)


BUILTINS: dict[str, Builtin] = {
    "regimes": Builtin(
        make=regimes,
        summary="9 features, 3 market regimes (bear/range/bull) from a VAR(1) per regime; Bayes accuracy known; "
        "aux target: the 5-step forward move along the drift",
        best_accuracy=_regimes_best,
    ),
    "gaps": Builtin(
        make=gaps,
        summary="2 channels of noise with 5% of values missing; the class (early/late) is where they are missing "
        "(for data.missing: mask finds it, zero and mean cannot)",
    ),
    "signal": Builtin(
        make=signal,
        summary="3 AR(1) features; numeric target = a fixed function of the sequence + noise of std 0.5 (task "
        "regress; best possible RMSE 0.5)",
        task="regress",
        noise_floor=SIGNAL_NOISE,
    ),
}
