"""From a config to model-ready splits, and from a new file to model input with the same preprocessing.

Leakage rules enforced here:
- a continuous series is split by time *before* windowing, with ``gap`` rows (default window + horizon)
  dropped between train, validation and test, so no window or label straddles two splits;
- independent sequences are split at random, stratified by class (a regression target: not stratified),
  from the seed;
- scaling statistics (features and a regression target) and class weights come from the training split alone;
- the auxiliary regression target is read only from the training source: files read for prediction or
  evaluation (``load_for_model``) need no aux column, and the aux column is never a feature.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from longshort.data.builtin import BUILTINS
from longshort.data.config import DataConfig, SeriesFormat
from longshort.data.scaling import ragged_moments, ragged_normalise, scale_spread, series_normalise
from longshort.data.sources import Target, read_any
from longshort.data.types import Ragged, SequenceData, SeriesData
from longshort.data.windows import make_windows
from longshort.errors import ConfigError, DataError, RunDirError, read_json_object


@dataclass
class Preprocessor:
    """Everything fitted on the training split that new data must go through; saved as ``preprocess.json``."""

    layout: str  # sequences | long | series
    class_names: list[str]
    feature_names: list[str]
    mean: list[float] = field(default_factory=list)  # per feature; empty = no scaling
    std: list[float] = field(default_factory=list)
    aux_mean: float = 0.0
    aux_std: float = 1.0
    per_series: bool = False  # each sequence normalised over its own valid steps before mean/std (scale=series)
    # task regress: the targets' names and the training split's mean and std of each (y is learnt standardised)
    target_names: list[str] = field(default_factory=list)
    target_mean: list[float] = field(default_factory=list)
    target_std: list[float] = field(default_factory=list)
    # task classify: "int" when the training labels were integers (predict gives them back as integers)
    label_kind: str = ""
    # data.missing: how NaN feature values are filled (error: there are none), the training mean of each raw
    # feature's observed values (the mean / mask fill), and under mask the raw features before the indicators
    missing: str = "error"
    fill: list[float] = field(default_factory=list)
    n_raw: int = 0

    @property
    def regression(self) -> bool:
        """Whether ``y`` is a numeric target (task regress) rather than a class."""
        return bool(self.target_names)

    # -- fitting --------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, train: SequenceData, layout: str, scale: str, target: Target = "label",
            target_names: list[str] | None = None, scale_target: bool = True, missing: str = "error"
            ) -> Preprocessor:
        """``target="value"``: ``train.y`` is float [N, k], standardised per target when ``scale_target``;
        ``missing``: data.missing's policy for NaN features (fitted on the observed training values)."""
        train = _windows_or_copy(train, missing, scale == "series")
        fill = None
        if missing != "error" and len(train):
            fill = np.nan_to_num(_feature_moments(train, observed=True)[0])  # a feature never observed: 0
        names, n_raw = list(train.feature_names), train.n_features
        if fill is not None:  # the statistics below are of the filled training data
            train = _fill(train, missing, fill)
            if missing == "mask":
                names = names + [f"{n}_missing" for n in names]
        if target == "value":
            y = np.asarray(train.y, dtype=np.float64)
            k = y.shape[1]
            std = y.std(0) if scale_target else np.ones(k)
            prep = cls(layout=layout, class_names=[], feature_names=names,
                       per_series=scale == "series",
                       target_names=target_names or (["target"] if k == 1 else [f"target_{j}" for j in range(k)]),
                       target_mean=(y.mean(0) if scale_target else np.zeros(k)).tolist(),
                       target_std=np.where(std > 1e-12, std, 1.0).tolist())
        else:
            classes = train.class_names or _sorted_labels(train.y)
            ints = train.class_names is None and np.asarray(train.y).dtype.kind in "iu"
            prep = cls(layout=layout, class_names=list(classes), feature_names=names,
                       per_series=scale == "series", label_kind="int" if ints else "")
        if scale in ("standard", "series", "auto"):  # auto unresolved (no longshort.sizing): standard
            mean, std = _feature_moments(_series_normalised(train) if prep.per_series else train)
            prep.mean = mean.astype(float).tolist()
            prep.std = np.where(std > 1e-12, std, 1.0).astype(float).tolist()
        if train.aux is not None and len(train.aux):
            prep.aux_mean = float(train.aux.mean())
            prep.aux_std = float(train.aux.std()) or 1.0
        if fill is not None:
            prep.missing, prep.fill, prep.n_raw = missing, fill.astype(float).tolist(), n_raw
            if missing == "mask" and prep.mean:  # the indicators stay 0/1
                c = prep.n_raw
                prep.mean = prep.mean[:c] + [0.0] * c
                prep.std = prep.std[:c] + [1.0] * c
        return prep

    # -- applying -------------------------------------------------------------------------------------

    def scale_targets(self, y: np.ndarray, data: SequenceData) -> np.ndarray:
        """A regression target [N, k] in the training split's standard units (a file's k must match)."""
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if y.shape[1] != len(self.target_names):
            raise DataError(data.source, f"has {y.shape[1]} targets per sequence but the model was trained on "
                                         f"{len(self.target_names)} ({', '.join(self.target_names)})")
        return ((y - np.asarray(self.target_mean)) / np.asarray(self.target_std)).astype(np.float32)

    def unscale_targets(self, z: np.ndarray) -> np.ndarray:
        """Standard units back to the target's own: [N, k] (or [N, k, ...] with trailing axes, e.g. quantiles)."""
        z = np.asarray(z, dtype=np.float64)
        shape = (1, len(self.target_names)) + (1,) * (z.ndim - 2)
        return z * np.asarray(self.target_std).reshape(shape) + np.asarray(self.target_mean).reshape(shape)

    def encode_labels(self, data: SequenceData) -> np.ndarray:
        """Class indices for ``data.y``; a label never seen in training is an error naming it and its row."""
        assert data.y is not None
        y = data.y
        index = {c: i for i, c in enumerate(self.class_names)}
        if data.class_names is not None and y.dtype.kind in "iu":
            # readers with a fixed vocabulary give indices into it: map the vocabulary, not every label
            lut = np.asarray([index.get(str(c), -1) for c in data.class_names], dtype=np.int64)
            codes = lut[y]
            if (codes >= 0).all():
                return codes
            y = np.asarray(data.class_names)[y]
        keys = np.asarray([str(v) for v in y])
        unknown = ~np.isin(keys, self.class_names)
        if unknown.any():
            i = int(np.argmax(unknown))
            where = f"series_id {data.ids[i]}" if data.ids is not None else f"sequence {i}"
            raise DataError(
                data.source,
                f"label '{keys[i]}' of {where} is not one of the training classes "
                f"({', '.join(self.class_names)})",
            )
        return np.asarray([index[k] for k in keys], dtype=np.int64)

    def transform(self, data: SequenceData, labelled: bool = True) -> SequenceData:
        """Missing values filled (data.missing), scaled features (padding stays zero), encoded labels,
        standardised aux target."""
        raw_names = self.feature_names[: self.n_raw] if self.missing == "mask" else self.feature_names
        if data.feature_names != raw_names and data.n_features != len(raw_names):
            raise DataError(
                data.source,
                f"has {data.n_features} features but the model was trained on {len(raw_names)} "
                f"({', '.join(raw_names)})",
            )
        data = _windows_or_copy(data, self.missing, self.per_series)
        if self.missing != "error":
            data = _fill(data, self.missing, np.asarray(self.fill))
        windows, ragged = data.windows, data.ragged
        x: np.ndarray | None
        if ragged is not None:  # variable-length sequences back to back: every value is a real step
            values = ragged_normalise(ragged.values, ragged.offsets) if self.per_series else ragged.values
            if self.mean:
                values = (values - np.float32(self.mean)) / np.float32(self.std)
            ragged, x = Ragged(np.ascontiguousarray(values, dtype=np.float32), ragged.offsets), None
        elif windows is not None:  # full-length windows of one series: scale the rows once, keep the view
            values = windows.values
            if self.mean:
                values = np.subtract(values, np.float32(self.mean), dtype=np.float32)
                values /= np.float32(self.std)
            windows = replace(windows, values=np.ascontiguousarray(values, dtype=np.float32))
            x = windows.view()
        else:
            x = data.X
            if self.per_series:
                x = series_normalise(x, data.lengths)
            if self.mean:
                mask = np.arange(x.shape[1])[None, :] < data.lengths[:, None]
                x = ((x - np.float32(self.mean)) / np.float32(self.std)) * mask[..., None]
            x = x.astype(np.float32)
        if not labelled or data.y is None:
            y = None
        else:
            y = self.scale_targets(data.y, data) if self.regression else self.encode_labels(data)
        aux = None if data.aux is None else (data.aux - self.aux_mean) / self.aux_std
        return SequenceData(
            X=x, lengths=data.lengths, y=y, feature_names=self.feature_names,  # type: ignore[arg-type]
            source=data.source, aux=None if aux is None else aux.astype(np.float32), order=data.order,
            class_names=self.class_names, ids=data.ids, windows=windows, ragged=ragged,
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Preprocessor:
        data = read_json_object(path)
        try:
            return cls(**data)
        except TypeError as exc:  # a key missing or unknown: not a preprocess.json this version wrote
            raise RunDirError(f"{path} is damaged or from another program: {exc}") from None


@dataclass
class Splits:
    train: SequenceData
    val: SequenceData | None
    test: SequenceData | None
    prep: Preprocessor
    notes: list[str] = field(default_factory=list)  # what was done, for the user (sizes, gap, source)
    cached: list[Path] = field(default_factory=list)  # the row files the splits' windows are mapped from


def fill_missing(x: np.ndarray, lengths: np.ndarray, policy: str, fill: np.ndarray) -> np.ndarray:
    """[N, T, C] (or [N, T, 2C] under mask) float32 without NaN at real steps: ``policy`` ffill (the last
    observed value of the sequence, its first observed one before it, ``fill`` when it has none), zero, mean
    (``fill``, the training mean) or mask (the mean, then a 0/1 indicator channel per feature)."""
    x = np.asarray(x, dtype=np.float32)
    gap = np.isnan(x)
    valid = (np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None])[..., None]
    if policy == "ffill" and gap.any():
        # forward fill along time by the index of the last observed step (numpy has no ffill of its own)
        t = np.arange(x.shape[1])[None, :, None]
        last = np.maximum.accumulate(np.where(gap, -1, t), axis=1)
        # [N, C]: the first observed real step (0, a NaN, when none is: a padding zero is not an observation)
        first = np.argmax(~gap & valid, axis=1)
        idx = np.where(last >= 0, last, first[:, None, :])
        out = np.take_along_axis(x, idx, axis=1)
        out = np.where(np.isnan(out), fill.astype(np.float32), out)
    elif policy == "zero":
        out = np.where(gap, np.float32(0), x)
    else:  # mean, mask
        out = np.where(gap, fill.astype(np.float32), x)
    out = np.where(valid, out, np.float32(0))
    if policy == "mask":
        out = np.concatenate([out, (gap & valid).astype(np.float32)], axis=2)
    return out


def _windows_or_copy(data: SequenceData, missing: str, per_series: bool) -> SequenceData:
    """``data`` with its windows over only the rows they cover, or, where a step must be computed per window
    (ffill looks back within each window, scale=series normalises each one), materialised windows."""
    if data.windows is None:
        return data
    if missing == "ffill" or per_series:
        return data.replace(X=np.ascontiguousarray(data.X), windows=None)
    covered = data.windows.covered()
    return data.replace(X=covered.view(), windows=covered)


def _series_normalised(data: SequenceData) -> SequenceData:
    """``data`` with each sequence normalised over its own steps (``data.scale=series``)."""
    if data.ragged is not None:
        r = data.ragged
        return data.replace(ragged=Ragged(ragged_normalise(r.values, r.offsets), r.offsets))
    return data.replace(X=series_normalise(data.X, data.lengths))


def _fill(data: SequenceData, missing: str, fill: np.ndarray) -> SequenceData:
    """:func:`fill_missing` on the sequences, or on the rows once for windows (zero, mean, mask are per value);
    ragged sequences on their steps (ffill within each sequence)."""
    if data.ragged is not None:
        r = data.ragged
        return data.replace(ragged=Ragged(fill_ragged(r.values, r.offsets, missing, fill), r.offsets))
    if data.windows is None:
        return data.replace(X=fill_missing(data.X, data.lengths, missing, fill))
    rows = data.windows.values
    windows = replace(data.windows, values=fill_missing(rows[None], np.array([len(rows)]), missing, fill)[0])
    return data.replace(X=windows.view(), windows=windows)


def fill_ragged(values: np.ndarray, offsets: np.ndarray, policy: str, fill: np.ndarray) -> np.ndarray:
    """:func:`fill_missing` of sequences kept back to back ([steps, C] -> [steps, C], or [steps, 2C] under mask):
    ffill carries a value forward only within its own sequence, and before a sequence's first observed value
    uses that value (``fill`` when the sequence never observes the feature), as the padded form does."""
    x = np.asarray(values, dtype=np.float32)
    gap = np.isnan(x)
    if policy != "ffill" or not gap.any():
        return fill_missing(x[None], np.array([len(x)]), policy, fill)[0]
    n = len(x)
    lengths = np.diff(offsets)
    start = np.repeat(offsets[:-1], lengths)[:, None]  # [steps, 1]: the first step of each step's sequence
    stop = np.repeat(offsets[1:], lengths)[:, None]
    idx = np.arange(n)[:, None]
    last = np.maximum.accumulate(np.where(gap, -1, idx), axis=0)  # the last observed step so far (any sequence)
    nxt = np.minimum.accumulate(np.where(gap, n, idx)[::-1], axis=0)[::-1]  # the next observed step on
    first = np.take_along_axis(nxt, np.broadcast_to(start, x.shape), axis=0)  # a sequence's first observed
    src = np.where(last >= start, last, np.where(first < stop, first, -1))
    out = np.take_along_axis(x, np.maximum(src, 0), axis=0)
    return np.where(src >= 0, out, fill.astype(np.float32)).astype(np.float32)


CHUNK_ROWS = 1 << 18  # rows per pass of the streaming statistics


def _feature_moments(data: SequenceData, observed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float64) over the valid steps; ``observed``: of the non-NaN values only
    (NaN for a feature never observed). Windows of one series count each row once, read in chunks of
    :data:`CHUNK_ROWS` rows and merged (Chan et al.'s pairwise update), so no float64 copy of the data exists."""
    rows = data.valid_steps()
    chunks = (rows[i : i + CHUNK_ROWS] for i in range(0, len(rows), CHUNK_ROWS))
    c = data.n_features
    n, mean, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
    for chunk in chunks:
        x = chunk.astype(np.float64)
        seen = ~np.isnan(x) if observed else np.ones(x.shape, dtype=bool)
        k = seen.sum(0)
        if not k.any():
            continue
        safe = np.where(seen, x, 0.0)
        kk = np.maximum(k, 1)
        mu = safe.sum(0) / kk
        sq = (np.where(seen, x - mu, 0.0) ** 2).sum(0)
        total = n + k
        delta = mu - mean
        mean = np.where(total > 0, mean + delta * k / np.maximum(total, 1), mean)
        m2 = m2 + sq + delta**2 * n * k / np.maximum(total, 1)
        n = total
    with np.errstate(invalid="ignore", divide="ignore"):
        if observed:
            return np.where(n > 0, mean, np.nan), np.sqrt(m2 / np.maximum(n, 1))
        return mean, np.sqrt(m2 / np.maximum(n, 1))


def _sorted_labels(y: np.ndarray | None) -> list[str]:
    if y is None:
        raise DataError("(training data)", "has no labels")
    return [str(v) for v in np.unique(y)]


def target_kind(task: str) -> Target:
    """What a sequence's target is for ``task``: numbers for regress, a class label otherwise."""
    return "value" if task == "regress" else "label"


def read_source(source: str, cfg: DataConfig, seed: int, require_label: bool = True,
                with_aux: bool = True, target: Target = "label") -> SequenceData | SeriesData:
    """A file or ``builtin:NAME``; ``with_aux=False`` skips a file's auxiliary target (see ``read_any``);
    ``target="value"``: a numeric target per sequence (task regress) instead of a class label."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTINS:
            raise ConfigError(f"unknown built-in dataset '{name}' (available: {', '.join(BUILTINS)})")
        builtin = BUILTINS[name]
        wanted = "regress" if target == "value" else "classify"
        if builtin.task != wanted:
            fits = [k for k, b in BUILTINS.items() if b.task == wanted]
            raise ConfigError(f"built-in dataset '{name}' is a {builtin.task} set; task {wanted} has {', '.join(fits)}")
        data = builtin.make(n=cfg.builtin.n, length=cfg.builtin.length, seed=seed)
        if cfg.missing == "error" and np.isnan(data.X).any():
            raise DataError(source, "has missing values (NaN): set data.missing to ffill, zero, mean or mask")
        return data
    return read_any(Path(source), cfg, require_label=require_label, with_aux=with_aux, target=target)


def layout_of(raw: SequenceData | SeriesData) -> str:
    if isinstance(raw, SeriesData):
        return "series"
    return "long" if raw.ids is not None else "sequences"  # only the long-format reader names its sequences


def series_gap(cfg: DataConfig) -> int:
    s = cfg.series
    return cfg.split.gap if cfg.split.gap is not None else s.window + s.horizon


def _chronological_bounds(n: int, fractions: list[float], gap: int, source: str) -> list[tuple[int, int]]:
    """Consecutive [start, stop) row ranges with ``gap`` rows dropped between neighbours."""
    usable = n - gap * (len(fractions) - 1)
    if usable <= 0:
        raise DataError(source, f"has {n} rows, too few for {len(fractions)} splits with a gap of {gap} rows "
                                "between them (split.gap, default window + horizon)")
    sizes = [round(f * usable) for f in fractions[1:]]
    sizes = [usable - sum(sizes), *sizes]
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size + gap
    return bounds


def _window_split(part: SeriesData, scfg: SeriesFormat, name: str) -> SequenceData:
    try:
        return make_windows(part, scfg)
    except DataError as exc:
        raise DataError(exc.path, f"{name} split: {exc.detail} (lower split fractions or window/horizon)") from None


def _random_indices(n: int, fractions: list[float], seed: int, source: str) -> list[np.ndarray]:
    """A random split of ``n`` sequences with a numeric target (nothing to stratify by), from the seed."""
    sizes = [math.ceil(f * n) if f > 0 else 0 for f in fractions[1:]]
    if n - sum(sizes) < 2:
        raise DataError(source, f"has {n} sequences, too few for validation/test splits of "
                                f"{', '.join(f'{f:g}' for f in fractions[1:])} and a training split of two or more "
                                "(use more data, data.split.val=0 or --test-data FILE)")
    order = np.random.default_rng(seed).permutation(n)
    out, start = [], sum(sizes)
    out.append(np.sort(order[start:]))
    for size in sizes:
        out.append(np.sort(order[start - size:start]))
        start -= size
    return out


def _stratified_indices(y: np.ndarray, fractions: list[float], seed: int, source: str) -> list[np.ndarray]:
    """Random split preserving class proportions. A class with a single sequence trains (a split cannot hold
    it on both sides); a split too small to hold every class is one line naming the counts."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray([str(v) for v in y])
    classes, counts = np.unique(labels, return_counts=True)
    if len(labels) == 1:
        raise DataError(source, "has one sequence: a classifier needs sequences of at least two classes")
    if len(classes) < 2:
        raise DataError(source, f"all {len(labels)} sequences have label '{classes[0]}': a classifier needs at "
                                "least two classes")
    if all(f <= 0 for f in fractions[1:]):
        return [np.arange(len(y)), *[np.array([], dtype=np.int64) for _ in fractions[1:]]]
    single = np.isin(labels, classes[counts < 2])
    rest, rest_frac = np.flatnonzero(~single), 1.0
    out: list[np.ndarray] = []
    for name, frac in zip(("validation", "test"), fractions[1:], strict=False):
        if frac <= 0:
            out.append(np.array([], dtype=np.int64))
            continue
        share = frac / rest_frac
        key = "val" if name == "validation" else "test"
        instead = f"use more data, data.split.{key}=0" + (" or --test-data FILE" if key == "test" else "")
        if not len(rest):
            raise DataError(source, f"each of its {len(labels)} sequences is the only one of its class: none can be "
                                    f"held out for a {name} split; {instead}")
        n_part = math.ceil(share * len(rest))
        _, left = np.unique(labels[rest], return_counts=True)
        # a class an earlier split left with one sequence makes this split random (it cannot stratify)
        stratify = left.min() >= 2  # rest is not empty here
        need = len(left) if stratify else 1
        if len(rest) - n_part < need or n_part < need:
            raise DataError(source, f"{len(labels)} sequences of {len(classes)} classes are too few for a {name} "
                                    f"split of {frac:g} ({n_part} of {len(rest)}): each side of a stratified "
                                    f"split needs one sequence of every class; {instead}")
        rest, part = train_test_split(rest, test_size=share, random_state=seed,
                                      stratify=labels[rest] if stratify else None)
        out.append(np.sort(part))
        rest_frac -= frac
    return [np.sort(np.concatenate([rest, np.flatnonzero(single)])), *out]


def data_shape(raw: SequenceData | SeriesData,
               cfg: DataConfig) -> tuple[int, int, int, int, float, tuple[float, ...]]:
    """(sequences or windows, longest length, channels, classes, scale spread, 100 quantiles of the lengths
    (empty: all equal)) of data as read, before any split: what the size-aware defaults (``longshort.sizing``)
    look at. For a series the windows and classes are estimated from its rows (every stride-th window;
    down/flat/up), the spread is 1 and every window has the same length."""
    if isinstance(raw, SeriesData):
        s = cfg.series
        windows = max(0, (len(raw) - s.window - s.horizon) // s.stride + 1)
        return windows, s.window, len(raw.feature_names), 3, 1.0, ()
    classes = len(raw.class_names) if raw.class_names else (0 if raw.y is None else len(np.unique(raw.y)))
    spread = 1.0
    if cfg.scale == "auto" and raw.ragged is not None:
        spread = scale_spread(raw.ragged.values, raw.lengths, ragged_moments(raw.ragged.values, raw.ragged.offsets)[1])
    elif cfg.scale == "auto":
        spread = scale_spread(raw.X, raw.lengths)
    varies = len(raw) > 0 and bool(raw.lengths.min() < raw.lengths.max())
    quantiles = tuple(np.quantile(raw.lengths, (np.arange(100) + 0.5) / 100).tolist()) if varies else ()
    return len(raw), int(raw.lengths.max()) if len(raw) else 0, raw.n_features, classes, spread, quantiles


def prepare(cfg: DataConfig, seed: int, raw: SequenceData | SeriesData | None = None, *,
            target: Target = "label", scale_target: bool = True, cache_dir: Path | None = None) -> Splits:
    """Read, split, window and scale the data named by ``cfg`` (and ``cfg.test_source`` when set); ``raw``: the
    data already read from ``cfg.source`` (it is not read again). ``target="value"``: task regress's numeric
    targets, split at random and standardised on the training split when ``scale_target``. ``cache_dir``: the
    scaled rows of windowed splits go to files there and are memory-mapped (:func:`map_rows`)."""
    if raw is None:
        raw = read_source(cfg.source, cfg, seed, target=target)
    layout = layout_of(raw)
    fractions = [1 - cfg.split.val - (0 if cfg.test_source else cfg.split.test), cfg.split.val]
    if not cfg.test_source:
        fractions.append(cfg.split.test)
    notes: list[str] = []
    if isinstance(raw, SeriesData):
        gap = series_gap(cfg)
        bounds = _chronological_bounds(len(raw), fractions, gap, raw.source)
        names = ["train", "val", "test"]
        parts = [_window_split(raw.rows(a, b), cfg.series, names[i]) if b > a else None
                 for i, (a, b) in enumerate(bounds)]
        notes.append(f"chronological split of {len(raw)} rows, gap {gap} rows: " +
                     ", ".join(f"{names[i]} rows {a}-{b - 1}" for i, (a, b) in enumerate(bounds)))
    elif target == "value":
        assert raw.y is not None
        split = _random_indices(len(raw), fractions, seed, raw.source or cfg.source)
        parts = [raw.subset(i) if len(i) else None for i in split]
        notes.append(f"random split of independent sequences (seed {seed})")
    else:
        assert raw.y is not None
        split = _stratified_indices(raw.y, fractions, seed, raw.source or cfg.source)
        parts = [raw.subset(i) if len(i) else None for i in split]
        notes.append(f"stratified random split of independent sequences (seed {seed})")
    train = parts[0]
    assert train is not None
    names = [cfg.long.label] if layout == "long" and target == "value" else None
    prep = Preprocessor.fit(train, layout, cfg.scale, target, names, scale_target, cfg.missing)
    if cfg.test_source:
        test = load_for_model(cfg.test_source, cfg, prep, seed)
        notes.append(f"test set from {cfg.test_source}")
    else:
        test = None if parts[2] is None else prep.transform(parts[2])
    val = None if parts[1] is None else prep.transform(parts[1])
    out = Splits(train=prep.transform(train), val=val, test=test, prep=prep, notes=notes)
    if cache_dir is not None:
        for name in ("train", "val", "test"):
            part = getattr(out, name)
            if part is not None and part.windows is not None:
                mapped, path = map_rows(part, cache_dir, name)
                setattr(out, name, mapped)
                out.cached.append(path)
    return out


def map_rows(data: SequenceData, cache_dir: Path, name: str) -> tuple[SequenceData, Path]:
    """``data``'s windows over a copy-on-write memory map of their rows, written once to
    ``cache_dir/<name>-<digest of the rows>.npy``: processes that map the same file (the ranks of one machine)
    share its pages through the page cache, and the OS can page them out (data larger than memory). The file
    is created exclusively (a hard link from a private temporary), so ranks that race write it once; its name
    is the content's digest, so a file another run left is reused only for the same rows."""
    assert data.windows is not None
    rows = np.ascontiguousarray(data.windows.values, dtype=np.float32)
    digest = hashlib.blake2b(memoryview(rows).cast("B"), digest_size=10).hexdigest()
    path = cache_dir / f"{name}-{rows.shape[0]}x{rows.shape[1]}-{digest}.npy"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".{path.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, rows)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another rank was first: its file has the same content
            pass
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    mapped = np.load(path, mmap_mode="c")
    windows = replace(data.windows, values=mapped)
    return data.replace(X=windows.view(), windows=windows), path


def load_for_model(source: str, cfg: DataConfig, prep: Preprocessor, seed: int,
                   labels: Literal["require", "optional"] = "require") -> SequenceData:
    """Read a new file the way the training data was read, window it, and apply ``prep``.

    With ``labels="optional"`` (prediction) a file without labels is fine; labels that are there are still
    checked against the training classes. The auxiliary target is a training target only, so it is not
    read here: a file without the aux column (or .npz ``aux`` array) is fine, and one with it is not checked.
    """
    required = labels == "require"
    raw = read_source(source, cfg, seed, require_label=required, with_aux=False,
                      target="value" if prep.regression else "label")
    if isinstance(raw, SeriesData):
        raw = make_windows(raw, cfg.series, labelled=required)
    return prep.transform(raw, labelled=raw.y is not None)
