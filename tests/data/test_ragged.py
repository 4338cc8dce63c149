"""Variable-length sets kept as their real steps back to back (issue 22): the readers drop the padding, the
pipeline scales and fills the steps once, and every batch, padded to its own longest sequence, equals the batch
the padded form gave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from longshort.data.batching import take, to_tensors
from longshort.data.config import DataConfig
from longshort.data.pipeline import data_shape, fill_missing, fill_ragged, prepare
from longshort.data.sources import read_any
from longshort.data.types import Ragged, SequenceData, offsets_of
from longshort.errors import DataError
from longshort.runs import check_finite


def _padded(n: int = 40, t: int = 30, c: int = 3, seed: int = 0, nan: bool = False) -> SequenceData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, t + 1, n)
    lengths[0] = t
    x = (rng.standard_normal((n, t, c)) * rng.uniform(0.5, 20, (n, 1, c)) + 4).astype(np.float32)
    if nan:
        x[rng.random(x.shape) < 0.15] = np.nan
        x[1, :, 0] = np.nan  # a sequence that never observes feature 0
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0
    return SequenceData(X=x, lengths=lengths.astype(np.int64), y=np.array(["a", "b"] * (n // 2)),
                        feature_names=[f"f{i}" for i in range(c)], source="s.npz")


def _ragged(d: SequenceData) -> SequenceData:
    return d.replace(X=None, ragged=Ragged.from_padded(d.X, d.lengths))


def test_ragged_pads_selects_and_gathers_like_the_padded_array() -> None:
    d = _padded()
    r = Ragged.from_padded(d.X, d.lengths)
    assert r.values.shape == (int(d.lengths.sum()), 3)  # only the real steps
    np.testing.assert_array_equal(r.padded(), d.X)
    idx = np.array([7, 2, 2, 30])
    t = int(d.lengths[idx].max())
    np.testing.assert_array_equal(r.padded(idx), d.X[idx, :t])
    np.testing.assert_array_equal(r.select(idx).padded(), d.X[idx, :t])
    np.testing.assert_array_equal(offsets_of(np.array([2, 3])), [0, 2, 5])
    s = _ragged(d).subset(idx)
    assert s.ragged is not None and s.__dict__["_x"] is None  # still unpadded
    np.testing.assert_array_equal(s.X, d.X[idx, :t])
    assert s.steps == t and s.n_features == 3 and len(s) == 4


def test_batches_from_the_ragged_tensors_equal_the_padded_ones() -> None:
    d = _padded()
    padded, ragged = to_tensors(d.replace(y=np.zeros(len(d), dtype=np.int64))), to_tensors(
        _ragged(d).replace(y=np.zeros(len(d), dtype=np.int64)))
    assert ragged.offsets is not None and ragged.X.ndim == 2 and len(ragged) == len(d)
    for idx in (torch.tensor([3, 0, 9]), torch.tensor([5]), torch.arange(len(d))):
        a, b = take(padded, idx, torch.device("cpu")), take(ragged, idx, torch.device("cpu"))
        torch.testing.assert_close(b.x, a.x, rtol=0, atol=0)
        torch.testing.assert_close(b.lengths, a.lengths)
    torch.testing.assert_close(ragged.head(4).X, padded.head(4).X, rtol=0, atol=0)


@pytest.mark.parametrize("missing", ["ffill", "zero", "mean", "mask"])
def test_filling_the_steps_equals_filling_the_padded_sequences(missing: str) -> None:
    d = _padded(nan=True)
    fill = np.array([9.0, -9.0, 0.5])
    want = fill_missing(d.X, d.lengths, missing, fill)
    r = Ragged.from_padded(d.X, d.lengths)
    got = Ragged(fill_ragged(r.values, r.offsets, missing, fill), r.offsets).padded()
    np.testing.assert_array_equal(got, want)
    if missing in ("ffill", "mean", "mask"):  # sequence 1 never observes feature 0: the fill, not a padding zero
        assert (want[1, : d.lengths[1], 0] == 9.0).all()


@pytest.mark.parametrize(("scale", "missing"), [("standard", "error"), ("series", "error"), ("standard", "ffill"),
                                                 ("series", "mask")])
def test_prepare_on_ragged_sets_equals_the_padded_pipeline(scale: str, missing: str) -> None:
    d = _padded(nan=missing != "error")
    cfg = DataConfig(source="s.npz", scale=scale, missing=missing)
    a, b = prepare(cfg, 0, raw=d), prepare(cfg, 0, raw=_ragged(d))
    assert b.train.ragged is not None and a.train.ragged is None
    np.testing.assert_allclose(b.prep.mean, a.prep.mean, rtol=1e-12)
    np.testing.assert_allclose(b.prep.std, a.prep.std, rtol=1e-12)
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        np.testing.assert_allclose(y.X, x.X, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(y.y, x.y)
    assert data_shape(_ragged(d), DataConfig(source="s.npz", scale="auto"))[4] == pytest.approx(
        data_shape(d, DataConfig(source="s.npz", scale="auto"))[4])


def test_readers_keep_variable_length_sets_ragged_and_equal_length_sets_padded(tmp_path) -> None:
    d = _padded(n=6, t=8, c=2)
    np.savez(tmp_path / "v.npz", X=d.X, lengths=d.lengths, y=np.arange(6) % 2)
    v = read_any(tmp_path / "v.npz", DataConfig(source="v.npz"))
    assert v.ragged is not None and v.ragged.values.shape == (int(d.lengths.sum()), 2)
    np.testing.assert_array_equal(v.X, d.X)
    np.savez(tmp_path / "e.npz", X=d.X, y=np.arange(6) % 2)
    assert read_any(tmp_path / "e.npz", DataConfig(source="e.npz")).ragged is None

    rows = [{"id": f"s{i}", "t": k, "a": float(d.X[i, k, 0]), "b": float(d.X[i, k, 1]), "label": i % 2}
            for i in range(6) for k in range(int(d.lengths[i]))]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # rows out of order: the reader sorts by time
    frame.to_csv(tmp_path / "long.csv", index=False)
    cfg = DataConfig.model_validate({"source": "long.csv", "long": {"series_id": "id", "time": "t"}})
    long = read_any(tmp_path / "long.csv", cfg)
    assert long.ragged is not None
    order = np.argsort([int(str(s)[1:]) for s in long.ids])
    np.testing.assert_array_equal(long.X[order], d.X)

    lines = ["@problemName x", "@timeStamps false", "@univariate true", "@equalLength false",
             "@classLabel true a b", "@data"]
    lines += [",".join(str(v) for v in d.X[i, : d.lengths[i], 0]) + (":a" if i % 2 else ":b") for i in range(6)]
    (tmp_path / "x.ts").write_text("\n".join(lines) + "\n")
    ts = read_any(tmp_path / "x.ts", DataConfig(source="x.ts"))
    assert ts.ragged is not None
    np.testing.assert_allclose(ts.X[..., 0], d.X[..., 0], rtol=1e-6)


def test_a_non_finite_step_of_a_ragged_set_names_its_sequence_and_step() -> None:
    d = _padded()
    d.X[5, 2, 1] = np.inf
    with pytest.raises(DataError, match="sequence 5, step 2, channel 1 is inf"):
        check_finite(_ragged(d))
