"""Series for ``task: forecast``: reading them (CSV/Parquet, one series or many in long format; ``.tsf``; the
built-in seasonal AR process), holding out the last steps, and cutting (lookback, horizon) windows.

A :class:`SeriesSet` holds every series whole, with its target columns, past covariates and known-future columns
(calendar features included). Nothing is cut or scaled when read. :func:`prepare_forecast` then:

- holds out, per series, the last ``H`` steps for test and the ``H`` before them for validation (with
  ``--test-data``: that file's last ``H`` steps per series are the test, and the training file keeps only its
  validation holdout); a training window's targets end where the validation targets begin, so no training
  target is ever a validation or test target;
- standardises past covariates and known-future columns with the mean and std of the training part of every
  series (calendar features are sin/cos, already in [-1, 1]);
- leaves the target raw: each window is scaled by the mean and std of its own lookback (:func:`window_scale`),
  which the model sees, so nothing from a window's future enters its scaling.

A window at origin ``o`` of a series reads its steps ``[o - L, o)`` and predicts ``[o, o + H)``; a series shorter
than the lookback is padded on the left with its first row (the scaling ignores the padding).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from longshort.errors import ConfigError, DataError

#: the seasonal period of each .tsf frequency (Godahewa et al. 2021, the Monash archive's conventions)
TSF_SEASON = {"yearly": 1, "quarterly": 4, "monthly": 12, "weekly": 52, "daily": 7, "hourly": 24,
              "half_hourly": 48, "minutely": 60, "10_minutes": 144, "4_seconds": 900}


@dataclass
class SeriesSet:
    """Whole series: ``target[i]`` [T_i, k], ``past[i]`` [T_i, p], ``known[i]`` [T_i, f] (float64), ``times[i]``
    (datetime64 [T_i], or None when the source has no parsed time)."""

    ids: list[str]
    target: list[np.ndarray]
    past: list[np.ndarray]
    known: list[np.ndarray]
    times: list[np.ndarray | None]
    target_names: list[str]
    past_names: list[str] = field(default_factory=list)
    known_names: list[str] = field(default_factory=list)
    season: int | None = None  # the source's own seasonal period (built-in, .tsf frequency), when it has one
    source: str = ""
    horizon: int | None = None  # a .tsf file's @horizon

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.target], dtype=np.int64)

    def cut(self, drop: int) -> SeriesSet:
        """Every series without its last ``drop`` steps."""
        def c(a: Any) -> Any:
            return None if a is None else a[: len(a) - drop]
        return SeriesSet(self.ids, [c(a) for a in self.target], [c(a) for a in self.past],
                         [c(a) for a in self.known], [c(a) for a in self.times], self.target_names, self.past_names,
                         self.known_names, self.season, self.source, self.horizon)


# ------------------------------------------------------------------------------------------------ built-in

SAR_PHI, SAR_SEASONAL_PHI, SAR_PERIOD = 0.5, 0.6, 12  # (1 - phi B)(1 - Phi B^12) y_t = e_t
SEASONAL_AR_SUMMARY = ("64 series x 360 steps of a seasonal AR process (period 12), each shifted and scaled; its "
                       "conditional mean and quantiles are known (the oracle in metrics.json; data.builtin.n / "
                       "length to resize)")


def seasonal_ar(n: int = 64, length: int = 360, seed: int = 0) -> SeriesSet:
    """``n`` series of ``length`` steps of the seasonal AR process ``(1 - 0.5 B)(1 - 0.6 B^12) z_t = e_t``,
    ``e_t ~ N(0, 1)``, each shifted and scaled, ``y_t = level + scale * z_t`` (level ~ N(0, 10^2), scale ~
    logN(0, 1)): a global model must scale each series itself. Its conditional mean and quantiles given the
    past are known exactly (:func:`sar_oracle`)."""
    rng = np.random.default_rng(seed)
    burn = 120
    m, phi, big = SAR_PERIOD, SAR_PHI, SAR_SEASONAL_PHI
    z = np.zeros((n, length + burn))
    e = rng.normal(size=(n, length + burn))
    for t in range(length + burn):  # a recursion: each step needs the previous ones
        z[:, t] = e[:, t] + (phi * z[:, t - 1] if t >= 1 else 0.0) + (big * z[:, t - m] if t >= m else 0.0) \
            - (phi * big * z[:, t - m - 1] if t >= m + 1 else 0.0)
    z = z[:, burn:]
    level = rng.normal(size=n) * 10
    scale = np.exp(rng.normal(size=n))
    y = level[:, None] + scale[:, None] * z
    return SeriesSet(ids=[f"s{i}" for i in range(n)], target=[y[i][:, None] for i in range(n)],
                     past=[np.zeros((length, 0)) for _ in range(n)], known=[np.zeros((length, 0)) for _ in range(n)],
                     times=[None] * n, target_names=["y"], season=m, source="builtin:seasonal_ar")


def _sar_coefficients() -> tuple[np.ndarray, np.ndarray]:
    """AR coefficients ``a`` (lags 1..m+1) and the MA(inf) weights ``psi`` of the built-in process."""
    m, phi, big = SAR_PERIOD, SAR_PHI, SAR_SEASONAL_PHI
    a = np.zeros(m + 2)
    a[1], a[m], a[m + 1] = phi, big, -phi * big
    psi = np.zeros(512)
    psi[0] = 1.0
    for j in range(1, len(psi)):
        psi[j] = sum(a[i] * psi[j - i] for i in range(1, min(j, m + 1) + 1))
    return a, psi


def sar_oracle(history: np.ndarray, horizon: int, level: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(conditional mean [H], conditional std [H]) of the next ``horizon`` steps of one built-in series in its own
    units, given its whole ``history`` [T] and its (known) ``level`` and ``scale``."""
    a, psi = _sar_coefficients()
    z = list((np.asarray(history, np.float64) - level) / scale)
    mean = []
    for _ in range(horizon):
        v = sum(a[i] * z[-i] for i in range(1, len(a)) if len(z) >= i)
        z.append(v)
        mean.append(v)
    sd = np.sqrt(np.cumsum(psi[:horizon] ** 2))
    return level + scale * np.array(mean), scale * sd


def sar_levels(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(level [n], scale [n]) of :func:`seasonal_ar`'s series for these arguments."""
    rng = np.random.default_rng(seed)
    rng.normal(size=(n, length + 120))
    return rng.normal(size=n) * 10, np.exp(rng.normal(size=n))


# ------------------------------------------------------------------------------------------------ readers


def read_forecast_source(source: str, fc: Any, n: int, length: int, seed: int, need_target: bool = True
                         ) -> SeriesSet:
    """The series of ``data.source`` (a file or ``builtin:seasonal_ar``) for the ``forecast.*`` section ``fc``;
    ``need_target=False`` reads a table of covariates only (predict's ``--future`` rows)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name != "seasonal_ar":
            raise ConfigError(f"built-in dataset '{name}' is not a forecasting set; task forecast has seasonal_ar")
        return seasonal_ar(n=n, length=length, seed=seed)
    path = Path(source)
    if not path.is_file():
        raise DataError(path, "not found" if not path.exists() else "is not a file")
    suffix = path.suffix.lower()
    if suffix == ".tsf":
        return read_tsf(path)
    if suffix in (".csv", ".parquet", ".pq"):
        from longshort.data.sources import read_table

        return read_series_table(read_table(path, "csv" if suffix == ".csv" else "parquet"), fc, path, need_target)
    raise DataError(path, f"task forecast reads .csv, .parquet or .tsf files, not {suffix or 'no suffix'}")


def _times(col: pd.Series, path: Path) -> np.ndarray | None:
    """The time column parsed as datetimes, or None when it is a plain counter (numbers)."""
    if pd.api.types.is_numeric_dtype(col.dtype):
        return None
    parsed = pd.to_datetime(col, errors="coerce", utc=False, format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(path, f"column '{col.name}' is not a time: row {col.index[i]} holds {str(col.iloc[i])!r}")
    return parsed.to_numpy(dtype="datetime64[ns]")


def read_series_table(df: pd.DataFrame, fc: Any, path: Path, need_target: bool = True) -> SeriesSet:
    """One series (a row per step) or many (long format: ``forecast.id_column``) from a table."""
    from longshort.data.sources import _numeric_column, _stable_order

    cols = list(df.columns)
    for role in ("past_covariates", "known_future", "target"):
        for c in getattr(fc, role):
            if c not in cols:
                raise DataError(path, f"forecast.{role} names column '{c}', which is missing (columns are: "
                                      f"{', '.join(cols)})")
    has_id, has_time = fc.id_column in cols, fc.time_column in cols
    if fc.calendar and not has_time:
        raise DataError(path, f"forecast.calendar needs the time column '{fc.time_column}', which is missing")
    taken = {fc.id_column, fc.time_column, *fc.past_covariates, *fc.known_future}
    targets = list(fc.target) or [c for c in cols if c not in taken and pd.api.types.is_numeric_dtype(df[c].dtype)]
    if not need_target:
        targets = [c for c in targets if c in cols and c in fc.target]
    elif not targets:
        for c in (c for c in cols if c not in taken):  # a would-be target column with text in it: name the row
            _numeric_column(df, c, path, fc.id_column if has_id else None)
        raise DataError(path, "no numeric column to forecast (set forecast.target; columns are: "
                              f"{', '.join(cols)})")
    y = np.stack([_numeric_column(df, c, path, fc.id_column if has_id else None) for c in targets], 1) if targets \
        else np.zeros((len(df), 0))
    past = np.stack([_numeric_column(df, c, path) for c in fc.past_covariates], 1) if fc.past_covariates else \
        np.zeros((len(df), 0))
    known = np.stack([_numeric_column(df, c, path) for c in fc.known_future], 1) if fc.known_future else \
        np.zeros((len(df), 0))
    times = _times(df[fc.time_column], path) if has_time else None
    groups = df[fc.id_column].astype(str).to_numpy() if has_id else np.zeros(len(df), dtype=object)
    out = SeriesSet([], [], [], [], [], targets, list(fc.past_covariates), list(fc.known_future), source=str(path))
    for sid in dict.fromkeys(groups):
        rows = np.flatnonzero(groups == sid)
        if has_time:
            sub = df.iloc[rows]
            order = rows[_stable_order(sub, fc.time_column, path)]
            key = sub[fc.time_column].to_numpy()[_stable_order(sub, fc.time_column, path)]
            if len(key) > 1 and (key[1:] == key[:-1]).any():
                j = int(np.argmax(key[1:] == key[:-1])) + 1
                raise DataError(path, f"series '{sid}' has two rows at {fc.time_column} {key[j]} (row "
                                      f"{df.index[order[j]]}); one row per step")
        else:
            order = rows
        out.ids.append(str(sid) if has_id else path.stem)
        out.target.append(y[order])
        out.past.append(past[order])
        out.known.append(known[order])
        out.times.append(None if times is None else times[order])
    return add_calendar(out, fc.calendar, path)


_CALENDAR_ATTR = {"hour": "hour", "dayofweek": "day_of_week", "day": "day", "month": "month",
                  "dayofyear": "day_of_year"}


def add_calendar(data: SeriesSet, features: list[str], path: Path | str = "") -> SeriesSet:
    """``data`` with sin/cos calendar columns appended to its known-future columns."""
    if not features:
        return data
    periods = {"hour": 24, "dayofweek": 7, "day": 31, "month": 12, "dayofyear": 366}
    for i, t in enumerate(data.times):
        if t is None:
            raise DataError(path, "forecast.calendar needs a time column of dates or timestamps, not numbers")
        idx = pd.DatetimeIndex(t)
        parts = []
        for f in features:
            v = np.asarray(getattr(idx, _CALENDAR_ATTR[f]), np.float64) - (1 if f in ("day", "month", "dayofyear")
                                                                            else 0)
            parts += [np.sin(2 * np.pi * v / periods[f]), np.cos(2 * np.pi * v / periods[f])]
        data.known[i] = np.concatenate([data.known[i], np.stack(parts, 1)], 1)
    data.known_names = data.known_names + [f"{f}_{w}" for f in features for w in ("sin", "cos")]
    return data


def future_rows(t: np.ndarray, horizon: int) -> np.ndarray:
    """The next ``horizon`` timestamps after ``t`` [T]: at the frequency pandas infers from its last steps
    (calendar months stay months), else at its last spacing."""
    with warnings.catch_warnings():  # pandas 3 announces an offset return type; either works below
        warnings.simplefilter("ignore")
        freq = pd.infer_freq(pd.DatetimeIndex(t[-8:])) if len(t) >= 3 else None
    if freq is not None:
        return pd.date_range(t[-1], periods=horizon + 1, freq=freq)[1:].to_numpy(dtype="datetime64[ns]")
    step = t[-1] - t[-2] if len(t) > 1 else np.timedelta64(1, "D")
    return t[-1] + step * np.arange(1, horizon + 1)


def read_tsf(path: Path) -> SeriesSet:
    """A ``.tsf`` file (the Monash forecasting archive's format): ``@attribute`` lines, ``@frequency``,
    ``@horizon``, ``@missing``, ``@equallength``, then ``@data`` with one series per line,
    ``attr1:attr2:...:v1,v2,...``. A missing value (``?``) is refused, naming the line: filling it is a modelling
    choice that longshort will not make silently."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text (byte {exc.start}); is it a .tsf file?") from None
    attrs: list[tuple[str, str]] = []
    meta: dict[str, str] = {}
    data_at = None
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if data_at is None:
            if not line.startswith("@"):
                raise DataError(path, f"line {no}: expected an @ header line before @data, got {line[:40]!r}")
            words = line.split()
            key = words[0].lower()
            if key == "@attribute":
                if len(words) != 3:
                    raise DataError(path, f"line {no}: @attribute needs a name and a type")
                attrs.append((words[1], words[2].lower()))
            elif key == "@data":
                data_at = no
            else:
                meta[key[1:]] = words[1] if len(words) > 1 else ""
    if data_at is None:
        raise DataError(path, "no @data line")
    freq = meta.get("frequency", "").lower()
    out = SeriesSet([], [], [], [], [], ["value"], source=str(path), season=TSF_SEASON.get(freq))
    if "horizon" in meta:
        try:
            out.horizon = int(meta["horizon"])
        except ValueError:
            raise DataError(path, f"@horizon {meta['horizon']!r} is not a whole number") from None
    time_attr = next((i for i, (_, kind) in enumerate(attrs) if kind == "date"), None)
    name_attr = next((i for i, (_, kind) in enumerate(attrs) if kind == "string"), None)
    for no in range(data_at + 1, len(lines) + 1):
        line = lines[no - 1].strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != len(attrs) + 1:
            raise DataError(path, f"line {no}: {len(parts) - 1} attribute values, the header declares {len(attrs)}")
        tokens = parts[-1].split(",")
        values = np.empty(len(tokens))
        for j, tok in enumerate(tokens):
            tok = tok.strip()
            if tok == "?":
                raise DataError(path, f"line {no}: value {j + 1} is missing ('?'); fill or drop it first")
            try:
                values[j] = float(tok)
            except ValueError:
                raise DataError(path, f"line {no}: value {j + 1} is {tok!r}, not a number") from None
            if not math.isfinite(values[j]):
                raise DataError(path, f"line {no}: value {j + 1} is {tok}, not a finite number")
        sid = parts[name_attr] if name_attr is not None else f"T{len(out.ids) + 1}"
        times = None
        if time_attr is not None and freq in _TSF_OFFSET:
            start = pd.to_datetime(parts[time_attr], format="%Y-%m-%d %H-%M-%S", errors="coerce")
            if not pd.isna(start):
                times = pd.date_range(start, periods=len(values), freq=_TSF_OFFSET[freq]).to_numpy()
        out.ids.append(sid)
        out.target.append(values[:, None])
        out.past.append(np.zeros((len(values), 0)))
        out.known.append(np.zeros((len(values), 0)))
        out.times.append(times)
    if not out.ids:
        raise DataError(path, "no series after @data")
    return out


_TSF_OFFSET = {"yearly": "YS", "quarterly": "QS", "monthly": "MS", "weekly": "W", "daily": "D", "hourly": "h",
               "half_hourly": "30min", "minutely": "min", "10_minutes": "10min", "4_seconds": "4s"}


# ------------------------------------------------------------------------------------------------ season


def guess_season(data: SeriesSet, lookback_cap: int) -> tuple[int, str]:
    """The seasonal period and why: the source's own, else the lag in [2, cap] with the largest mean
    autocorrelation (of the first differences' ... of the series, over the series) when it is above 0.3."""
    if data.season:
        return data.season, f"{data.source}'s own"
    cap = max(2, min(lookback_cap, int(data.lengths.min()) // 3))
    acf = np.zeros(cap + 1)
    count = 0
    for y in data.target[:200]:
        z = y[:, 0] - y[:, 0].mean()
        var = float(z @ z)
        if var <= 0 or len(z) <= cap + 1:
            continue
        acf += np.array([float(z[lag:] @ z[:-lag]) / var if lag else 1.0 for lag in range(cap + 1)])
        count += 1
    if count:
        acf /= count
        # a trend gives large autocorrelation at every lag: look for a peak above its neighbours
        peaks = [lag for lag in range(2, cap) if acf[lag] > acf[lag - 1] and acf[lag] >= acf[lag + 1]]
        best = max(peaks, key=lambda lag: acf[lag], default=None)
        if best is not None and acf[best] > 0.3:
            return best, f"the autocorrelation's highest peak ({acf[best]:.2f} at lag {best})"
    return 1, "no seasonal autocorrelation peak above 0.3"


# ------------------------------------------------------------------------------------------------ windows


@dataclass
class WindowSet:
    """Windows over the rows of ``values`` (all series, each padded on the left by ``L`` copies of its first
    row, end to end): window ``j`` reads rows ``starts[j] .. starts[j] + L + H`` (its lookback, then its horizon);
    ``valid[j]`` of its lookback steps are real. Columns: ``k`` targets (raw), then ``p`` past covariates, then
    ``f`` known-future columns (both standardised). ``series[j]`` and ``origin[j]`` say where it comes from."""

    values: np.ndarray  # float32 [rows, k + p + f]
    starts: np.ndarray  # int64 [M]
    valid: np.ndarray  # int64 [M]
    series: np.ndarray  # int64 [M]
    origin: np.ndarray  # int64 [M]
    k: int
    p: int
    f: int
    lookback: int
    horizon: int
    mase_scale: np.ndarray  # float64 [M, k]: the in-sample seasonal-naive MAE before each origin
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [M, H, k] raw units
    has_future: bool = True  # whether the horizon rows hold real targets (False: predict's future)

    def __len__(self) -> int:
        return len(self.starts)

    def subset(self, idx: np.ndarray) -> WindowSet:
        return WindowSet(self.values, self.starts[idx], self.valid[idx], self.series[idx], self.origin[idx], self.k,
                         self.p, self.f, self.lookback, self.horizon, self.mase_scale[idx],
                         {k: v[idx] for k, v in self.baselines.items()}, self.has_future)

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """[B, L + H, k + p + f] rows of windows ``idx``."""
        rows = self.starts[idx][:, None] + np.arange(self.lookback + self.horizon)
        return self.values[rows]


@dataclass
class FeatureScaler:
    """Mean/std of the past-covariate and known-future columns on the training part (saved as preprocess.json)."""

    mean: list[float]
    std: list[float]
    target_names: list[str]
    past_names: list[str]
    known_names: list[str]
    lookback: int
    horizon: int
    season: int
    calendar: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureScaler:
        return cls(**d)


def fit_scaler(train: SeriesSet, lookback: int, horizon: int, season: int, calendar: list[str]) -> FeatureScaler:
    cov = [np.concatenate([p, f], 1) for p, f in zip(train.past, train.known, strict=True)]
    allrows = np.concatenate(cov, 0) if cov and cov[0].shape[1] else np.zeros((1, 0))
    std = allrows.std(0) if len(allrows) else np.zeros(allrows.shape[1])
    # calendar columns are sin/cos already: left as they are
    n_cal = 2 * len(calendar)
    mean, sd = allrows.mean(0), np.where(std > 1e-12, std, 1.0)
    if n_cal:
        mean[-n_cal:], sd[-n_cal:] = 0.0, 1.0
    return FeatureScaler(mean.tolist(), sd.tolist(), train.target_names, train.past_names, train.known_names,
                         lookback, horizon, season, list(calendar))


def mase_scale(y: np.ndarray, m: int) -> np.ndarray:
    """The in-sample seasonal-naive MAE of ``y`` [T, k] (naive with lag 1 when the series is not longer than m);
    1 where it is zero (a constant history), so MASE stays finite."""
    lag = m if len(y) > m else 1
    if len(y) <= lag:
        return np.ones(y.shape[1])
    s = np.abs(y[lag:] - y[:-lag]).mean(0)
    return np.where(s > 1e-12, s, 1.0)


def baseline_forecasts(hist: np.ndarray, horizon: int, m: int) -> dict[str, np.ndarray]:
    """Naive, seasonal-naive and drift forecasts [H, k] from a whole history ``hist`` [T, k]."""
    h = np.arange(1, horizon + 1)
    last = hist[-1]
    out = {"naive": np.repeat(last[None], horizon, 0)}
    if len(hist) >= m > 1:
        out["seasonal_naive"] = hist[len(hist) - m + (h - 1) % m]
    else:
        out["seasonal_naive"] = out["naive"]
    slope = (hist[-1] - hist[0]) / (len(hist) - 1) if len(hist) > 1 else np.zeros_like(last)
    out["drift"] = last[None] + h[:, None] * slope[None]
    return out


def build_windows(data: SeriesSet, scaler: FeatureScaler, origins: list[np.ndarray], *, with_future: bool = True,
                  with_baselines: bool = False) -> WindowSet:
    """Windows of ``data`` at ``origins[i]`` (an int array per series): each reads the ``L`` steps before its
    origin and the ``H`` from it. ``with_future=False``: the horizon rows past a series' end are zeros (predict)."""
    L, H = scaler.lookback, scaler.horizon
    mean, std = np.asarray(scaler.mean), np.asarray(scaler.std)
    blocks, starts, valid, series, origin, mscale = [], [], [], [], [], []
    base: dict[str, list[np.ndarray]] = {"naive": [], "seasonal_naive": [], "drift": []}
    offset = 0
    for i in range(len(data)):
        y, cov = data.target[i], np.concatenate([data.past[i], data.known[i]], 1)
        cov = (cov - mean) / std if cov.shape[1] else cov
        rows = np.concatenate([y, cov], 1)
        extra = max(0, int(origins[i].max(initial=0)) + H - len(rows)) if len(origins[i]) else 0
        padded = np.concatenate([np.repeat(rows[:1], L, 0), rows, np.zeros((extra, rows.shape[1]))], 0)
        o = np.asarray(origins[i], np.int64)
        blocks.append(padded)
        starts.append(offset + o)  # padded row o .. o + L is original o - L .. o
        valid.append(np.minimum(o, L))
        series.append(np.full(len(o), i))
        origin.append(o)
        mscale.append(np.stack([mase_scale(y[:oo], scaler.season) for oo in o]) if len(o) else
                      np.zeros((0, y.shape[1])))
        if with_baselines:
            for oo in o:
                for name, v in baseline_forecasts(y[:oo], H, scaler.season).items():
                    base[name].append(v)
        offset += len(padded)
    values = np.concatenate(blocks, 0).astype(np.float32) if blocks else np.zeros((0, 0), np.float32)
    k = len(scaler.target_names)
    ws = WindowSet(values, np.concatenate(starts), np.concatenate(valid), np.concatenate(series),
                   np.concatenate(origin), k, len(scaler.past_names), len(scaler.known_names), L, H,
                   np.concatenate(mscale), has_future=with_future)
    if with_baselines:
        ws.baselines = {name: np.stack(v) for name, v in base.items()}
    return ws


def window_scale(past_y: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loc [B, k], scale [B, k]): the mean and std of each window's real lookback steps (the last ``valid``);
    a flat lookback is scaled by its level's magnitude (or 1), never by zero."""
    L = past_y.shape[1]
    mask = (np.arange(L)[None] >= (L - valid)[:, None])[..., None]
    n = np.maximum(valid, 1)[:, None]
    loc = (past_y * mask).sum(1) / n
    var = (((past_y - loc[:, None]) ** 2) * mask).sum(1) / n
    sd = np.sqrt(var)
    fallback = np.where(np.abs(loc) > 1e-8, np.abs(loc), 1.0)
    return loc, np.where(sd > 1e-6 * np.maximum(np.abs(loc), 1.0), sd, fallback)


MIN_HISTORY = 8  # steps a training window reads at least (fewer where a series has no more)


@dataclass
class ForecastSplits:
    train: WindowSet
    val: WindowSet | None
    test: WindowSet | None
    scaler: FeatureScaler
    data: SeriesSet
    notes: list[str]
    test_data: SeriesSet | None = None


def auto_lookback(cfg_lookback: int, horizon: int, season: int, shortest_train: int) -> int:
    if cfg_lookback:
        return cfg_lookback
    return max(2, min(max(3 * horizon, 2 * season, 24), max(shortest_train, 2)))


def prepare_forecast(data: SeriesSet, fc: Any, seed: int, test_data: SeriesSet | None = None) -> ForecastSplits:
    """Holdouts, scaling and windows (see the module's docstring)."""
    H = fc.horizon
    notes: list[str] = []
    held = 2 * H if test_data is None else H  # the steps each training series gives to val (and test)
    need = held + H + 1
    short = [(sid, n) for sid, n in zip(data.ids, data.lengths, strict=True) if n < need]
    if short:
        sid, n = short[0]
        holdouts = "validation and test holdouts" if test_data is None else "a validation holdout"
        raise DataError(data.source, f"series '{sid}' has {n} steps; forecast.horizon={H} needs at least {need} "
                                     f"({holdouts} of {H} steps each, {H} to train on and 1 of history); "
                                     f"{len(short)} of {len(data)} series are that short: lower forecast.horizon")
    train_part = data.cut(held)
    season = fc.season
    if not season:
        season, why = guess_season(train_part, max(2, fc.lookback or 4 * H))
        notes.append(f"season: {season} ({why}; forecast.season to set it)")
    lookback = auto_lookback(fc.lookback, H, season, int(train_part.lengths.min()) - H)
    if not fc.lookback:
        notes.append(f"lookback: {lookback} steps (forecast.lookback to set it)")
    scaler = fit_scaler(train_part, lookback, H, season, list(fc.calendar))
    # training origins: targets [o, o + H) inside the training part, with at least MIN_HISTORY steps (or the
    # whole lookback) before them: a window scaled by the spread of one or two steps would train on outliers
    first = min(lookback, MIN_HISTORY)
    train_origins = [np.arange(min(first, max(1, n - H)), n - H + 1) for n in train_part.lengths]
    train = build_windows(data, scaler, train_origins)
    val_origins = [np.array([n - held]) for n in data.lengths]
    val = build_windows(data, scaler, val_origins, with_baselines=True)
    if test_data is None:
        test = build_windows(data, scaler, [np.array([n - H]) for n in data.lengths], with_baselines=True)
    else:
        check_like(test_data, scaler, "--test-data")
        short = [(sid, n) for sid, n in zip(test_data.ids, test_data.lengths, strict=True) if n < H + 1]
        if short:
            raise DataError(test_data.source, f"series '{short[0][0]}' has {short[0][1]} steps; the test needs "
                                              f"forecast.horizon={H} steps and at least 1 of history")
        test = build_windows(test_data, scaler, [np.array([n - H]) for n in test_data.lengths], with_baselines=True)
    return ForecastSplits(train, val, test, scaler, data, notes, test_data)


def check_like(data: SeriesSet, scaler: FeatureScaler, what: str) -> None:
    """``data`` has the columns the model was trained on (targets, past covariates, known-future columns)."""
    for role, have, want in (("target", data.target_names, scaler.target_names),
                             ("past covariate", data.past_names, scaler.past_names),
                             ("known-future", data.known_names, scaler.known_names)):
        if have != want:
            missing = [c for c in want if c not in have]
            raise DataError(data.source, f"{what}: {role} columns {have} differ from the model's {want}"
                                         + (f" (missing: {', '.join(missing)})" if missing else ""))


def extend_future(data: SeriesSet, future: SeriesSet | None, scaler: FeatureScaler, fc: Any
                  ) -> tuple[SeriesSet, WindowSet]:
    """``data`` with ``horizon`` rows appended to every series (targets zero, known-future columns from
    ``future``, calendar from the time column's spacing) and the window at each series' end (predict)."""
    H = scaler.horizon
    given = [c for c in scaler.known_names if not any(c.startswith(f"{cal}_") for cal in scaler.calendar)]
    if given and future is None:
        raise DataError(data.source, f"the model reads known-future columns {', '.join(given)}: give their next "
                                     f"{H} rows per series with --future FILE")
    by_id = {} if future is None else dict(zip(future.ids, range(len(future)), strict=True))
    out = SeriesSet([], [], [], [], [], data.target_names, data.past_names, data.known_names, data.season,
                    data.source, data.horizon)
    for i, sid in enumerate(data.ids):
        known_next = np.zeros((H, 0))
        if given:
            assert future is not None
            if sid not in by_id:
                raise DataError(future.source, f"no rows for series '{sid}' (the known-future columns' next {H} "
                                               "steps are needed for every series)")
            j = by_id[sid]
            missing = [c for c in given if c not in future.known_names]
            if missing:
                raise DataError(future.source, f"missing known-future column(s) {', '.join(missing)}")
            cols = [future.known_names.index(c) for c in given]
            if len(future.known[j]) < H:
                raise DataError(future.source, f"series '{sid}' has {len(future.known[j])} future rows; the "
                                               f"horizon needs {H}")
            known_next = future.known[j][:H, cols]
        t = data.times[i]
        times = None
        if t is not None:
            times = np.concatenate([t, future_rows(t, H)])
        elif scaler.calendar:
            raise DataError(data.source, "the model reads calendar features: the file needs its time column")
        n_cal = 2 * len(scaler.calendar)
        known_hist = data.known[i][:, : data.known[i].shape[1] - n_cal] if n_cal else data.known[i]
        out.ids.append(sid)
        out.target.append(np.concatenate([data.target[i], np.zeros((H, data.target[i].shape[1]))]))
        out.past.append(np.concatenate([data.past[i], np.zeros((H, data.past[i].shape[1]))]))
        out.known.append(np.concatenate([known_hist, known_next]) if given else np.zeros((len(t) + H if t is not None
                                                                                          else len(data.target[i]) + H,
                                                                                          0)))
        out.times.append(times)
    if scaler.calendar:
        out.known_names = [c for c in out.known_names if c in given]
        out = add_calendar(out, scaler.calendar, data.source)
    origins = [np.array([len(y) - H]) for y in out.target]
    ws = build_windows(out, scaler, origins, with_future=False)
    return out, ws
