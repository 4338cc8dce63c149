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
    again = run_tune(cfg, tmp_path / "study", n_trials=4, timeout=None)  # a second worker joins the same study
    assert len(again.trials) == 4  # --n-trials counts the study's trials, whoever ran them


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


def test_a_worker_killed_mid_trial_leaves_it_failed_and_retried(tmp_path: Path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    study_dir = tmp_path / "study"
    space = json.dumps({"train.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    args = [sys.executable, "-m", "longshort", "tune", "--study-dir", str(study_dir), "--n-trials", "4",
            "data.builtin.n=160", "data.builtin.length=12", "model.num_heads=2", "model.num_lstm_layers=1",
            "model.conv_dilations=[1]", "model.hidden_dim=16", "train.epochs=6", "train.progress=off",
            "train.tensorboard=false", "train.threads=1", f"tune.space={space}", "tune.heartbeat_s=1",
            "tune.pruner=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"sqlite:///{study_dir / 'study.db'}"
    deadline = time.time() + 120
    running = []
    while not running:  # wait until the victim is inside a trial
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name="longshort", storage=url).trials
        except Exception:  # the study may not exist yet
            continue
        running = [t for t in trials if t.state.name == "RUNNING"]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(2.5)  # past the heartbeat's grace period (2 x heartbeat_s)
    survivor = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    trials = optuna.load_study(study_name="longshort", storage=url).trials
    states = [t.state.name for t in trials]
    killed = next(t for t in trials if t.number == running[0].number)
    assert killed.state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].state.name == "COMPLETE"
    assert retried[0].params == killed.params  # the same values, run again
    assert states.count("COMPLETE") == 4  # the study still reaches its trial count
