"""analyse_run on small run directories: the four files, their keys, and numbers tied to independent computations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from longshort.config import save_config, validate
from longshort.data.batching import sequential_batches, to_tensors
from longshort.data.pipeline import prepare
from longshort.diagnostics.analyse import _future_series, analyse_run, training_loss
from longshort.errors import RunDirError
from longshort.nn.classifier import SequenceClassifier
from longshort.run import Run
from longshort.training.checkpoint import save_weights
from longshort.training.classify import classifier_trainer

MODEL = {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 2, "conv_dilations": [1]}


def make_run(d: Path, raw: dict[str, Any]) -> Path:
    """A run directory as training leaves it (config, preprocessing, weights), with untrained weights."""
    cfg = validate({"model": MODEL, **raw})
    d.mkdir(parents=True)
    splits = prepare(cfg.data, cfg.seed)
    save_config(cfg, d / "config.yaml")
    splits.prep.save(d / "preprocess.json")
    torch.manual_seed(0)
    model = SequenceClassifier(splits.train.n_features, len(splits.prep.class_names), cfg.model)
    save_weights(model, d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diag_runs")
    rng = np.random.default_rng(0)
    n = 700
    close = 100 + np.cumsum(rng.normal(0, 0.5, n))
    pd.DataFrame({"close": close, "volume": rng.uniform(1, 2, n)}).to_csv(root / "series.csv", index=False)
    return {
        "seq": make_run(root / "seq", {"data": {"source": "builtin:regimes", "builtin": {"n": 300, "length": 16}},
                                       "train": {"batch_size": 16}}),
        "series": make_run(root / "series", {"data": {"source": str(root / "series.csv"),
                                                      "series": {"window": 12, "target": "close", "horizon": 3}},
                                             "train": {"batch_size": 16}}),
    }


@pytest.fixture(scope="module")
def analysed(runs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {name: analyse_run(d, n_batches=2, seed=1, hessian_iters=6) for name, d in runs.items()}


def test_files_and_keys(runs: dict[str, Path], analysed: dict[str, dict[str, Any]]) -> None:
    for name, d in runs.items():
        out = d / "diagnostics"
        land = json.loads((out / "landscape.json").read_text())
        assert {"directions", "1d", "2d", "hessian_top_eigenvalue", "gradient_predictiveness"} <= set(land)
        assert land["directions"].startswith("filter-normalised")
        assert len(land["1d"]["alpha"]) == len(land["1d"]["loss"]) == 21
        assert len(land["2d"]["alpha"]) == len(land["2d"]["beta"]) == 11
        assert np.asarray(land["2d"]["loss"]).shape == (11, 11)
        assert land["1d"]["loss"][10] == land["2d"]["loss"][5][5]  # both at alpha = beta = 0: the weights
        assert land["1d"]["alpha"][10] == 0.0
        assert isinstance(land["hessian_top_eigenvalue"], float) and land["hessian_top_eigenvalue"] > 0
        gp = land["gradient_predictiveness"]
        assert len(gp["ratio"]) == len(gp["step_size"]) == 5 and gp["loss0"] == pytest.approx(land["1d"]["loss"][10])
        assert gp["ratio"][0] == pytest.approx(1.0, abs=0.1)  # a small step: the gradient predicts the decrease
        info = json.loads((out / "information.json").read_text())
        assert {"estimator", "bias", "label"} <= set(info)
        lab = info["label"]
        assert len(lab["t"]) == len(lab["mi"]) == len(lab["baseline"]) > 0
        gates = json.loads((out / "gates_final.json").read_text())
        assert len(gates["rows"]) == 2 * 2 * 4  # two blocks x two directions x (3 gates + memory)
        assert gates["healthy_ranges"]["forget"] == [0.3, 0.7]
        with np.load(out / "attention.npz") as npz:
            assert set(npz.files) == {"attn_1", "lengths", "index", "y"}
            w = npz["attn_1"]
            assert w.shape[:2] == (4, 2) and w.shape[2] == w.shape[3] == int(npz["lengths"].max())
            np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        assert analysed[name]["landscape"]["1d"] == land["1d"]


def test_future_part_only_for_a_series(analysed: dict[str, dict[str, Any]]) -> None:
    seq, series = analysed["seq"]["information"], analysed["series"]["information"]
    assert "future" not in seq and "no continuous target" in seq["future_omitted"]
    fut = series["future"]
    assert fut["k"] == [1, 2, 5, 10] and len(fut["mi"]) == 4 and fut["target"] == "close"
    assert "future_omitted" not in series


def test_future_targets_line_up_with_the_windows(runs: dict[str, Path]) -> None:
    """The rebuilt target series, scaled like the close feature, is the close feature at every window step."""
    run = Run.load(runs["series"])
    splits = prepare(run.config.data, run.config.seed)
    assert splits.val is not None
    series, name = _future_series(run.config, "val", splits.val, [1, 5])  # type: ignore[misc]
    j = splits.prep.feature_names.index("close")
    w = splits.val.X.shape[1]
    scaled = (series[:, :w] - splits.prep.mean[j]) / splits.prep.std[j]
    np.testing.assert_allclose(scaled, splits.val.X[:, :, j], atol=1e-4)
    assert series.shape == (len(splits.val), w + 5) and name == "close"
    # the last window's targets run past the split's end: unknown, not taken from the next split
    assert np.isnan(series[-1, -1]) and np.isfinite(series[0, -1])


def test_the_loss_is_the_trainers(runs: dict[str, Path], tmp_path: Path) -> None:
    run = Run.load(runs["seq"])
    cfg = run.config
    splits = prepare(cfg.data, cfg.seed)
    train, val = to_tensors(splits.train), to_tensors(splits.val)  # type: ignore[arg-type]
    trainer = classifier_trainer(cfg.train.model_copy(update={"device": "cpu"}), run.model, train, None,
                      num_classes=3, seed=cfg.seed, run_dir=tmp_path)
    batch = next(sequential_batches(val, 16, torch.device("cpu")))
    run.model.eval()
    with torch.no_grad():
        ours = training_loss(cfg, train.y, 3)(run.model, batch)  # type: ignore[arg-type]
        theirs = trainer.task.compute_loss(batch)[0]
    assert batch.aux is not None and cfg.train.loss.aux_weight > 0  # the aux term is in both
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(RunDirError):
        analyse_run(tmp_path)
