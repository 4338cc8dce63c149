"""The Python API mirrors the CLI: train(config) -> Run, load(run_dir).predict(x)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

import longshort

TINY = {
    "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 2, "conv_dilations": [1]},
    "train": {"epochs": 2, "batch_size": 16, "threads": 1, "schedule": {"max_lr": 0.03}, "selection": "val"},
}


def _long_parquet(path: Path, n: int = 60, seed: int = 0) -> np.ndarray:
    """Long-format Parquet: a row per (series, step); label = sign of the series' mean of f0."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for s in range(n):
        label = s % 2
        t = int(rng.integers(5, 12))
        f0 = rng.normal(2.0 if label else -2.0, 1.0, t)
        f1 = rng.normal(0, 1, t)
        rows += [{"series_id": f"s{s}", "time": k, "f0": f0[k], "f1": f1[k], "label": ["lo", "hi"][label]}
                 for k in range(t)]
        labels.append(label)
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_parquet(path)  # shuffled: time orders it
    return np.asarray(labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[longshort.Run, str]:
    d = tmp_path_factory.mktemp("api")
    _long_parquet(d / "train.parquet")
    cfg = {**TINY, "data": {"source": str(d / "train.parquet"), "long": {"time": "time"}}}
    cfg["train"] = {**TINY["train"], "progress": "rich", "tensorboard": True}
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    run = longshort.train(cfg, out=d / "run", console=console)
    return run, buf.getvalue()


def test_train_returns_a_run_with_metrics(trained: tuple[longshort.Run, str]) -> None:
    run, _ = trained
    assert set(run.metrics) >= {"val", "test"}
    assert run.metrics["test"]["accuracy"] >= 0.8
    assert run.prep.class_names == ["hi", "lo"]


def test_training_ends_with_the_diagnostics_and_the_report(trained: tuple[longshort.Run, str]) -> None:
    run, out = trained  # the defaults: diagnostics.analysis and diagnostics.report on
    d = run.dir / "diagnostics"
    for name in ("steps.csv", "landscape.json", "information.json", "gates_final.json", "attention.npz",
                 "predictions_test.npz"):
        assert (d / name).is_file(), name
    assert (run.dir / "report.html").is_file() and "report:" in out
    page = (run.dir / "report.html").read_text()
    assert page.count('class="plot"') >= 8  # learning curves, gradient norms, landscape, attention ...
    assert 'src="http' not in page and "<script" not in page  # one self-contained file


def test_rich_progress_shows_loss_accuracy_throughput(trained: tuple[longshort.Run, str]) -> None:
    _, out = trained
    assert "samples/s" in out and "loss" in out and "acc" in out
    assert "epoch 2/2" in out
    assert "total" in out and "BiLSTM blocks" in out  # the parameter table


def test_tensorboard_has_per_epoch_scalars(trained: tuple[longshort.Run, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = trained
    acc = EventAccumulator(str(run.dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/accuracy", "val/f1_macro"} <= tags
    assert [e.step for e in acc.Scalars("val/loss")] == [1, 2]


def test_load_predicts_the_same_as_the_trained_run(trained: tuple[longshort.Run, str], tmp_path: Path) -> None:
    run, _ = trained
    loaded = longshort.load(run.dir)
    rng = np.random.default_rng(3)
    x = np.zeros((4, 9, 2), dtype=np.float32)
    lengths = np.array([9, 5, 7, 6])
    for i, t in enumerate(lengths):
        x[i, :t, 0] = rng.normal(2.0 if i % 2 else -2.0, 1.0, t)
    p1, p2 = run.predict_proba(x, lengths), loaded.predict_proba(x, lengths)
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p1.sum(1), 1.0, rtol=1e-5)
    assert list(loaded.predict(x, lengths)) == ["lo", "hi", "lo", "hi"]


def test_evaluate_on_a_file_matches_predictions(trained: tuple[longshort.Run, str], tmp_path: Path) -> None:
    run, _ = trained
    labels = _long_parquet(tmp_path / "holdout.parquet", n=40, seed=9)
    m = run.evaluate(str(tmp_path / "holdout.parquet"))
    assert m["n"] == 40
    assert m["accuracy"] >= 0.8
    assert len(labels) == 40
