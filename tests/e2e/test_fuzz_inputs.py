"""Hypothesis fuzzing of what users hand to ``longshort train``: malformed .npz arrays, malformed CSV tables,
arbitrary bytes as a data file, and invalid values for every config key. Whatever is drawn, the answer is exit
status 2 and exactly one ``error: ...`` line (no traceback, no warning, no progress output before it), and
nothing is written: no run directory appears.

The examples are bounded and derandomized (the same draws on every CI run) so the suite stays well under two
minutes; ``HYPOTHESIS_PROFILE=deep`` draws ten times as many, randomly, for a longer local hunt.
"""

from __future__ import annotations

import os
import tempfile
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import annotated_types
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from longshort.config import Config

settings.register_profile("ci", max_examples=30, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

TINY = ["model.hidden_dim=8", "model.num_heads=2", "model.num_lstm_layers=2", "model.conv_dilations=[1]",
        "train.epochs=1", "train.batch_size=16", "train.tensorboard=false", "train.progress=off",
        "train.threads=1", "diagnostics.analysis=false", "diagnostics.report=false"]


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def refused(helpers: Any, d: Path, data: Path | str, *extra: str) -> str:
    """Run ``train`` on ``data`` into ``d/out``; assert exit 2, one error line, nothing written; the line."""
    before = sorted(p.name for p in d.iterdir())
    res = helpers.invoke("train", "--data", data, "--out", d / "out", *TINY, *extra)
    assert res.code == 2, f"exit {res.code} for {data}:\n{res.err[-2000:]}"
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert res.out == ""
    assert sorted(p.name for p in d.iterdir()) == before, "a refused run wrote something"
    return lines[0]


# -- .npz arrays ---------------------------------------------------------------------------------------------

NPZ_DEFECTS = ["nan", "inf", "-inf", "ndim", "no_channels", "lengths_high", "lengths_zero", "lengths_shape",
               "y_shape", "y_one_class", "y_fractional", "x_text", "empty", "no_x", "no_y", "lengths_float"]


@st.composite
def bad_npz(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], str]:
    n = draw(st.integers(4, 24))
    t = draw(st.integers(2, 12))
    c = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.normal(size=(n, t, c)).astype(draw(st.sampled_from([np.float32, np.float64])))
    lengths = rng.integers(1, t + 1, size=n)
    y = np.array(["a", "b"] * n)[:n]
    i, s, ch = draw(st.integers(0, n - 1)), draw(st.integers(0, t - 1)), draw(st.integers(0, c - 1))
    defect = draw(st.sampled_from(NPZ_DEFECTS))
    arrays: dict[str, np.ndarray] = {"X": X, "lengths": lengths, "y": y}
    if defect in ("nan", "inf", "-inf"):
        lengths[i] = t  # the bad value lies inside the sequence
        X[i, s, ch] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[defect]
    elif defect == "ndim":
        arrays["X"] = X.reshape(n, t * c) if draw(st.booleans()) else X[..., None]
    elif defect == "no_channels":
        arrays["X"] = X[:, :, :0]
    elif defect == "lengths_high":
        lengths[i] = t + draw(st.integers(1, 10**6))
    elif defect == "lengths_zero":
        lengths[i] = -draw(st.integers(0, 5))
    elif defect == "lengths_shape":
        arrays["lengths"] = lengths[: draw(st.integers(0, n - 1))]
    elif defect == "y_shape":
        arrays["y"] = np.resize(y, draw(st.integers(0, 3 * n).filter(lambda k: k != n)))
    elif defect == "y_one_class":
        arrays["y"] = np.full(n, draw(st.sampled_from(["a", "7", "class one"])))
    elif defect == "y_fractional":
        arrays["y"] = np.arange(n) + 0.5
    elif defect == "x_text":
        arrays["X"] = np.full((n, t, c), draw(st.text(min_size=1, max_size=4)))
    elif defect == "empty":
        arrays = {"X": X[:0], "y": y[:0]}
    elif defect == "no_x":
        arrays = {draw(st.sampled_from(["x", "data", "X_train"])): X, "y": y}
    elif defect == "no_y":
        del arrays["y"]
    elif defect == "lengths_float":
        arrays["lengths"] = lengths + 0.25
    return arrays, defect


@settings(settings.get_profile(PROFILE))
@given(bad_npz())
def test_malformed_npz_arrays_are_one_line_errors(helpers: Any, case: tuple[dict[str, np.ndarray], str]) -> None:
    arrays, defect = case
    with workdir() as d:
        path = d / "d.npz"
        np.savez(path, **arrays)
        line = refused(helpers, d, path)
        assert str(path) in line, (defect, line)


# -- CSV tables ----------------------------------------------------------------------------------------------

NOT_A_NUMBER = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=",\n\r\"\x00"), min_size=1,
                       max_size=8).filter(lambda s: _not_numeric(s))


def _not_numeric(s: str) -> bool:
    if not s.strip() or s.strip().lower() in ("nan", "na", "n/a", "null", "none", "inf", "-inf", "+inf",
                                              "infinity", "-infinity", "#n/a", "<na>", "-nan", "1.#ind", "1.#qnan",
                                              "-1.#ind", "-1.#qnan", "#na", "#n/a n/a", "-na", "nan", "true", "false"):
        return False
    try:
        float(s)
    except ValueError:
        return True
    return False


CSV_DEFECTS = ["text_cell", "inf_cell", "empty_cell", "drop_label", "drop_series_id_and_close", "dup_column",
               "empty_label", "one_class", "header_only", "extra_field", "two_labels"]


@st.composite
def bad_table(draw: st.DrawFn) -> tuple[str, str]:
    n_series = draw(st.integers(4, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = []
    for k in range(n_series):
        for t in range(int(rng.integers(2, 6))):
            rows.append({"series_id": f"s{k}", "time": t, "f1": rng.normal(), "f2": rng.normal(),
                         "label": "ab"[k % 2]})
    df = pd.DataFrame(rows)
    r = draw(st.integers(0, len(df) - 1))
    col = draw(st.sampled_from(["f1", "f2"]))
    defect = draw(st.sampled_from(CSV_DEFECTS))
    if defect in ("text_cell", "inf_cell", "empty_cell"):
        df[col] = df[col].astype(object)
        df.loc[r, col] = {"text_cell": draw(NOT_A_NUMBER), "inf_cell": draw(st.sampled_from(["inf", "-inf"])),
                          "empty_cell": None}[defect]
    elif defect == "drop_label":
        df = df.drop(columns="label")
    elif defect == "drop_series_id_and_close":
        df = df.drop(columns="series_id")  # then read as one series, whose target column 'close' is missing
    elif defect == "empty_label":
        df.loc[r, "label"] = None
    elif defect == "one_class":
        df["label"] = "a"
    elif defect == "two_labels":
        first = df.index[df["series_id"] == df.loc[r, "series_id"]]
        if len(first) < 2:
            df = pd.concat([df, df.loc[[r]]], ignore_index=True)
            first = df.index[df["series_id"] == df.loc[r, "series_id"]]
        df.loc[first[-1], "label"] = "b" if df.loc[first[0], "label"] == "a" else "a"
    text = df.to_csv(index=False)
    if defect == "dup_column":
        text = text.replace("f2", "f1", 1) if col == "f2" else text.replace("label", "f1", 1)
    elif defect == "header_only":
        text = text.splitlines()[0] + "\n"
    elif defect == "extra_field":
        lines = text.splitlines()
        lines[1 + r] += "," + draw(st.sampled_from(["1", "x"]))  # (a trailing comma alone is read as no field)
        text = "\n".join(lines) + "\n"
    return text, defect


@settings(settings.get_profile(PROFILE))
@given(bad_table())
def test_malformed_csv_tables_are_one_line_errors(helpers: Any, case: tuple[str, str]) -> None:
    text, defect = case
    with workdir() as d:
        path = d / "d.csv"
        path.write_text(text, encoding="utf-8")
        line = refused(helpers, d, path)
        assert str(path) in line, (defect, line)


@settings(settings.get_profile(PROFILE))
@given(st.binary(max_size=300), st.sampled_from([".npz", ".csv", ".parquet", ".ts"]))
def test_arbitrary_bytes_as_a_data_file_are_one_line_errors(helpers: Any, blob: bytes, suffix: str) -> None:
    with workdir() as d:
        path = d / f"d{suffix}"
        path.write_bytes(blob)
        line = refused(helpers, d, path)
        assert str(path) in line, line


# -- config values -------------------------------------------------------------------------------------------

YAML_WORDS = {"true", "false", "null", "none", "~", "yes", "no", "on", "off", "y", "n", "nan", "inf"}


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, list[Any]]]:
    """(key, annotation, metadata) of every leaf field under ``model``."""
    out: list[tuple[str, Any, list[Any]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaves(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", ann, list(field.metadata)))
    return out


def _kinds(ann: Any) -> set[Any]:
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, __import__("types").UnionType) else (ann,)
    return set(args)


def _invalid_values(ann: Any, metadata: list[Any]) -> list[st.SearchStrategy[str]]:
    """Strategies of YAML texts that no value of the field accepts (empty when there is none to make)."""
    kinds = _kinds(ann)
    if str in kinds or Any in kinds:
        return []
    words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=2, max_size=10).filter(
        lambda w: w not in YAML_WORDS)
    out: list[st.SearchStrategy[str]] = []
    literal = [a for k in kinds if typing.get_origin(k) is Literal for a in typing.get_args(k)]
    if literal:
        out.append(words.filter(lambda w: w not in literal))
    if int in kinds and bool not in kinds:
        out += [words, st.integers(2**32, 10**30).map(str), st.sampled_from(["1.5", "[1]", "{a: 1}"])]
    if float in kinds:
        out += [words, st.sampled_from([".inf", "-.inf", ".nan", "1e400", "[0.1]"])]
    if bool in kinds:
        out.append(st.sampled_from(["maybe", "2", "[true]", "{a: 1}"]))
    if int in kinds or float in kinds:
        for m in metadata:
            if isinstance(m, annotated_types.Ge):
                out.append(st.just(str(m.ge - 1)))
            elif isinstance(m, annotated_types.Gt):
                out.append(st.just(str(m.gt - 1 if int in kinds and float not in kinds else m.gt)))
            elif isinstance(m, annotated_types.Le):
                out.append(st.just(str(m.le + 1)))
            elif isinstance(m, annotated_types.Lt):
                out.append(st.just(str(m.lt)))
    if typing.get_origin(ann) is list or any(typing.get_origin(k) is list for k in kinds):
        out.append(st.just("{a: 1}"))
    return out


FUZZED = [(key, strategies) for key, ann, meta in _leaves(Config)
          if (strategies := _invalid_values(ann, meta)) and key not in ("task",)]


@st.composite
def bad_override(draw: st.DrawFn) -> tuple[str, str]:
    key, strategies = draw(st.sampled_from(FUZZED))
    return key, draw(st.one_of(strategies))


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples * 3)
@given(bad_override())
def test_invalid_config_values_are_one_line_errors_naming_the_key(helpers: Any, case: tuple[str, str]) -> None:
    key, value = case
    with workdir() as d:
        data = helpers.write_npz(d / "d.npz", n=30)
        line = refused(helpers, d, data, f"{key}={value}")
        assert key in line or f"'{key.rsplit('.', 1)[0]}'" in line, (key, value, line)


def test_the_fuzzed_keys_cover_the_config() -> None:
    """Every numeric, boolean, choice and list key gets invalid values drawn for it (string keys take any text)."""
    assert len(FUZZED) >= 150
