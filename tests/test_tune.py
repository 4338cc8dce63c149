"""longshort tune: an Optuna study in SQLite, the best config as YAML train accepts, pruning of invalid trials."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("optuna")

from longshort.config import load_config, validate
from longshort.errors import ConfigError
from longshort.tune import run_tune, trial_config

BASE = {"data": {"builtin": {"n": 160, "length": 12}},
        "model": {"num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1], "hidden_dim": 16},
        "train": {"epochs": 2, "progress": "off", "tensorboard": False, "threads": 1}}


def test_study_in_sqlite_writes_the_best_config_train_accepts(tmp_path: Path) -> None:
    space = {"model.hidden_dim": {"type": "categorical", "choices": [16, 32]},
             "train.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    cfg = validate({**BASE, "tune": {"space": space, "startup_trials": 2}})
    study = run_tune(cfg, tmp_path / "study", n_trials=3, timeout=None)
    assert (tmp_path / "study" / "study.db").is_file()
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    best = load_config(tmp_path / "study" / "best.yaml")  # what `longshort train --config` reads
    assert best.model.hidden_dim == study.best_params["model.hidden_dim"]
    assert best.train.optim.lr == pytest.approx(study.best_params["train.optim.lr"])
    assert 1e-4 <= best.train.optim.lr <= 1e-2
    assert (tmp_path / "study" / "optimization_history.png").is_file()
    again = run_tune(cfg, tmp_path / "study", n_trials=1, timeout=None)  # a second worker joins the same study
    assert len(again.trials) == 4


def test_heads_that_do_not_divide_the_hidden_size_are_pruned(tmp_path: Path) -> None:
    space = {"model.num_heads": {"type": "categorical", "choices": [3]}}
    study = run_tune(validate({**BASE, "tune": {"space": space}}), tmp_path / "s", n_trials=2, timeout=None)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert not (tmp_path / "s" / "best.yaml").exists()


def test_space_keys_must_be_config_keys() -> None:
    with pytest.raises(ConfigError, match=r"tune.space key 'model.nope'"):
        trial_config(validate(BASE), {"model.nope": 1})
    with pytest.raises(ConfigError, match="low < high"):
        validate({"tune": {"space": {"model.dropout": {"type": "float", "low": 0.5, "high": 0.1}}}})
