"""Leakage-free cross-validation: walk-forward folds never share rows, a fold at chance stays at chance, folds share
no model, optimizer or scaling state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from longshort.config import validate
from longshort.errors import ConfigError
from longshort.evaluate.validation import CVConfig, chance_gap, run_cv, walk_forward

TINY = {"model": {"hidden_dim": 16, "num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1], "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 64, "progress": "off", "tensorboard": False,
                  "schedule": {"max_lr": 0.01}, "threads": 1}}


def test_walk_forward_windows_never_share_a_row_and_a_small_gap_is_refused() -> None:
    window, horizon = 10, 3
    ends = np.arange(window - 1, 2000 - horizon)  # every window of a 2000-row series
    for scheme in ("expanding", "sliding"):
        folds = walk_forward(ends, CVConfig(folds=4, scheme=scheme), window, horizon)
        assert len(folds) == 4
        for f in folds:
            rows = lambda idx: set().union(*(range(e - window + 1, e + horizon + 1) for e in ends[idx]))  # noqa: E731
            assert not rows(f.train) & rows(f.test) and not rows(f.val) & rows(f.test)
            assert not rows(f.train) & rows(f.val)
            assert ends[f.train].max() < ends[f.test].min()
        tests = np.concatenate([f.test for f in folds])
        assert len(np.unique(tests)) == len(tests)  # each window is tested at most once
    # the least gap that keeps them apart works, one less is refused, naming the option and the minimum
    walk_forward(ends, CVConfig(folds=4, gap=window + horizon - 1), window, horizon)
    with pytest.raises(ConfigError, match=r"cv\.gap=11 would let training and test windows share rows.*>= .* = 12"):
        walk_forward(ends, CVConfig(folds=4, gap=11), window, horizon)
    with pytest.raises(ConfigError, match=r"cv\.embargo=0"):
        walk_forward(ends, CVConfig(folds=4, embargo=0), window, horizon)
    with pytest.raises(ConfigError, match="kfold"):
        walk_forward(ends, CVConfig(scheme="kfold"), window, horizon)


def _noise_series(path: Path, n: int = 6000, seed: int = 0) -> Path:
    """A random walk: the direction over the next steps is independent of everything before (labels are noise)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    volume = rng.lognormal(0, 0.3, n)
    pd.DataFrame({"close": close, "volume": volume}).to_csv(path, index=False)
    return path


def test_walk_forward_on_a_series_with_noise_labels_stays_at_chance(tmp_path: Path) -> None:
    data = _noise_series(tmp_path / "walk.csv")
    cfg = validate({**TINY, "data": {"source": str(data), "series": {"window": 12, "horizon": 3, "flat_band": 0.0,
                                                                       "target": "close"}},
                    "cv": {"folds": 4}})
    result = run_cv(cfg, tmp_path / "cv")
    assert len(result["folds"]) == 4 and result["scheme"] == "expanding"
    assert abs(chance_gap(result)) <= 3.0, result["summary"]  # accuracy within 3 points of the majority share
    assert (tmp_path / "cv" / "cv.png").is_file() and len(pd.read_csv(tmp_path / "cv" / "folds.csv")) == 4


def test_folds_share_no_model_optimizer_or_scaling_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from longshort.data import pipeline
    from longshort.training import trainer as trainer_mod

    seen: list[dict[str, Any]] = []
    init = trainer_mod.Trainer.__init__

    def spy(self: Any, cfg: Any, model: Any, *a: Any, **k: Any) -> None:
        init(self, cfg, model, *a, **k)
        seen.append({"model": id(model), "optimizer": id(self.optimizer), "state": len(self.optimizer.state),
                     "w0": next(model.parameters()).detach().clone()})

    fitted: list[int] = []
    fit = pipeline.Preprocessor.fit.__func__  # type: ignore[attr-defined]

    def fit_spy(cls: Any, train: Any, *args: Any, **kwargs: Any) -> Any:
        fitted.append(len(train))
        return fit(cls, train, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", spy)
    monkeypatch.setattr(pipeline.Preprocessor, "fit", classmethod(fit_spy))
    cfg = validate({**TINY, "data": {"builtin": {"n": 240, "length": 16}}, "cv": {"folds": 3}})
    result = run_cv(cfg, tmp_path / "cv")
    assert len(seen) == 3 and len({s["model"] for s in seen}) == 3 and len({s["optimizer"] for s in seen}) == 3
    assert all(s["state"] == 0 for s in seen)  # each fold's optimizer starts empty
    assert all(np.array_equal(s["w0"], seen[0]["w0"]) for s in seen)  # the same fresh initial weights every fold
    assert fitted == [r["train"] for r in result["folds"]]  # scaling fitted on each fold's training part alone
    assert all(0 <= r["accuracy"] <= 1 for r in result["folds"]) and "mean" in result["summary"]["accuracy"]
