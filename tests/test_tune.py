"""longshort tune: an Optuna study in SQLite or PostgreSQL, the best config as YAML train accepts, pruning of
invalid trials, several workers on one study, and a killed worker's trial retried.

The storage tests run on SQLite always and on PostgreSQL when ``LONGSHORT_TEST_POSTGRES`` names a server
(``.ci/run`` starts one on 127.0.0.1 with ``.ci/postgres.sh``); each test gets a fresh database there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from longshort.config import load_config, validate
from longshort.errors import ConfigError
from longshort.tune import run_tune, trial_config

PG_URL = os.environ.get("LONGSHORT_TEST_POSTGRES")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL for one study: SQLite in the study directory, or a fresh database on the test server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study' / 'study.db'}"
        return
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set LONGSHORT_TEST_POSTGRES (.ci/run starts one)")
    import sqlalchemy as sa

    name = f"longshort_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


BASE = {"data": {"builtin": {"n": 160, "length": 12}},
        "model": {"num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1], "hidden_dim": 16},
        "train": {"epochs": 2, "progress": "off", "tensorboard": False, "threads": 1}}


def test_a_study_writes_the_best_config_train_accepts(tmp_path: Path, storage: str) -> None:
    space = {"model.hidden_dim": {"type": "categorical", "choices": [16, 32]},
             "train.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    cfg = validate({**BASE, "tune": {"space": space, "startup_trials": 2}})
    study = run_tune(cfg, tmp_path / "study", n_trials=3, timeout=None, storage=storage)
    assert (tmp_path / "study" / "study.db").is_file() == storage.startswith("sqlite")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    best = load_config(tmp_path / "study" / "best.yaml")  # what `longshort train --config` reads
    assert best.model.hidden_dim == study.best_params["model.hidden_dim"]
    assert best.train.optim.lr == pytest.approx(study.best_params["train.optim.lr"])
    assert 1e-4 <= best.train.optim.lr <= 1e-2
    assert (tmp_path / "study" / "optimization_history.png").is_file()
    # a second worker joins the same study
    again = run_tune(cfg, tmp_path / "study", n_trials=4, timeout=None, storage=storage)
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


def _worker_args(study_dir: Path, storage: str, n_trials: int, epochs: int) -> list[str]:
    import json
    import sys

    space = json.dumps({"train.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    return [sys.executable, "-m", "longshort", "tune", "--study-dir", str(study_dir), "--n-trials", str(n_trials),
            "--storage", storage, "data.builtin.n=160", "data.builtin.length=12", "model.num_heads=2",
            "model.num_lstm_layers=1", "model.conv_dilations=[1]", "model.hidden_dim=16", f"train.epochs={epochs}",
            "train.progress=off", "train.tensorboard=false", "train.threads=1", f"tune.space={space}",
            "tune.heartbeat_s=1", "tune.pruner=none"]


def test_two_worker_processes_share_one_study(tmp_path: Path, storage: str) -> None:
    import subprocess

    import optuna

    args = _worker_args(tmp_path / "study", storage, n_trials=4, epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="longshort", storage=storage).trials
    assert all(t.state.name == "COMPLETE" for t in trials)
    # Each worker stops once the study has 4 finished trials; both may be mid-trial at the 4th, so up to 5.
    assert 4 <= len(trials) <= 5
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes ran trials of the one study
    assert len({t.number for t in trials}) == len(trials)


def test_a_worker_killed_mid_trial_leaves_it_failed_and_retried(tmp_path: Path, storage: str) -> None:
    import signal
    import subprocess
    import time

    import optuna

    url = storage
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The victim asks for more trials than it can run before the poll below sees one of them reporting, so it is
    # always killed inside a trial; and its trials are 10x longer than the survivor's, so the trial the poll saw
    # report its first epoch is still running when the kill lands (a slow poll once saw a 6-epoch trial finish
    # between its snapshot and the kill).
    victim = subprocess.Popen(_worker_args(tmp_path / "study", storage, n_trials=50, epochs=60), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    running = []
    while not running:  # wait until the victim is inside a trial
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name="longshort", storage=url).trials
        except Exception:  # the study may not exist yet
            continue
        # inside a trial that has reported an epoch: its heartbeat is recorded by then (optuna never fails a
        # trial that died before its first heartbeat)
        running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    at_kill = optuna.load_study(study_name="longshort", storage=url).trials
    assert [t.number for t in at_kill if t.state.name == "RUNNING"] == [running[0].number]  # killed inside it
    done = sum(t.state.name == "COMPLETE" for t in at_kill)
    time.sleep(2.5)  # past the heartbeat's grace period (2 x heartbeat_s)
    target = done + 2  # the retried trial and one more
    survivor = subprocess.run(_worker_args(tmp_path / "study", storage, n_trials=target, epochs=6), env=env,
                              capture_output=True, text=True, timeout=300)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    trials = optuna.load_study(study_name="longshort", storage=url).trials
    states = [t.state.name for t in trials]
    killed = next(t for t in trials if t.number == running[0].number)
    assert killed.state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].state.name == "COMPLETE"
    assert retried[0].params == killed.params  # the same values, run again
    assert states.count("COMPLETE") == target  # the study still reaches its trial count


def test_a_trial_is_the_run_train_starts_from_its_config(tmp_path: Path) -> None:
    """A trial goes through the recipe `longshort train` runs (run.setup), diagnostics and checkpoints included, and
    keeps its resolved config: training that config gives the trial's weights, bit for bit."""
    import torch
    from safetensors.torch import load_file

    from longshort.run import train
    from longshort.training.checkpoint import checkpoint_path

    cfg = validate({**BASE, "tune": {"space": {"train.optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2}},
                                     "pruner": "none", "startup_trials": 1}})
    run_tune(cfg, tmp_path / "study", n_trials=1, timeout=None, storage=None)
    trial = tmp_path / "study" / "trial-0"
    assert (trial / "diagnostics" / "steps.csv").is_file()  # the user's diagnostics section, not a trial's own
    train(load_config(trial / "config.yaml"), out=tmp_path / "run")
    last = [checkpoint_path(d / "checkpoints", "last") for d in (trial, tmp_path / "run")]
    assert last[0] is not None and last[1] is not None
    a, b = (load_file(str(p / "model.safetensors")) for p in last)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_default_space_moves_the_rate_that_the_schedule_uses() -> None:
    from longshort.tune_config import space_for

    onecycle = validate({"tune": {}})
    assert "train.schedule.max_lr" in space_for(onecycle.tune, onecycle.train.schedule.name)
    assert "train.optim.lr" not in space_for(onecycle.tune, "onecycle")
    cosine = validate({"train": {"schedule": {"name": "cosine"}}})
    assert "train.optim.lr" in space_for(cosine.tune, cosine.train.schedule.name)
    assert "train.schedule.max_lr" not in space_for(cosine.tune, "cosine")
    own = validate({"tune": {"space": {"model.dropout": {"type": "float", "low": 0.0, "high": 0.3}}}})
    assert list(space_for(own.tune, "cosine")) == ["model.dropout"]  # the user's space as given
