"""``longshort tune``: hyperparameter search with Optuna (TPE sampler, median or Hyperband pruning on the per-epoch
validation metric), over a search space declared in the config (``tune.space``).

Every trial trains the config with its sampled values laid over it (``KEY=VALUE`` paths, the same keys as the CLI)
and reports ``tune.metric`` after each epoch, so the pruner can stop it early. The study lives in an RDB storage:
SQLite in the study directory by default (``STUDY_DIR/study.db``), or ``--storage postgresql://...`` so workers on
many machines join one study by running the same command. A heartbeat marks trials whose worker died as failed,
and ``RetryFailedTrialCallback`` queues them again. The best trial's config is written as ``best.yaml`` (accepted
by ``longshort train --config``), with the optimisation-history and parameter-importance plots.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from longshort.errors import ConfigError
from longshort.tune_config import ParamSpace as ParamSpace
from longshort.tune_config import TuneConfig as TuneConfig
from longshort.tune_config import _default_space as _default_space
from longshort.tune_config import space_for, tune_metric


def _sample(trial: Any, space: dict[str, ParamSpace]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "categorical":
            assert p.choices is not None
            values[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
        else:
            assert p.low is not None and p.high is not None
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
    return values


def trial_config(base: Any, values: dict[str, Any]) -> Any:
    """``base`` (a Config) with ``values`` (dotted keys) laid over it, validated."""
    from longshort.config import validate

    raw = base.model_dump(mode="json")
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"tune.space key '{key}': '{part}' is not a config section")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"tune.space key '{key}' is not a config key")
        node[leaf] = value
    return validate(raw)


def run_tune(cfg: Any, study_dir: Path, n_trials: int | None, timeout: float | None, storage: str | None = None,
             study_name: str = "longshort") -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    from longshort.config import save_config
    from longshort.run import setup
    from longshort.training.callbacks import Callback
    from longshort.training.config import LOWER_IS_BETTER

    t = cfg.tune
    space = space_for(t, cfg.train.schedule.name)
    if n_trials is None and timeout is None:
        raise ConfigError("tune needs --n-trials or --timeout (else it would run until interrupted)")
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{study_dir / 'study.db'}"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use since v2
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9 names it so
            retry = {"heartbeat_stale_trial_callback":
                     optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=t.max_retry)}
        else:
            retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=t.max_retry)}
        rdb = _storage(RDBStorage, url, heartbeat_interval=t.heartbeat_s, grace_period=2 * t.heartbeat_s,
                       **retry)
    pruner: optuna.pruners.BasePruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.train.epochs),
        "none": optuna.pruners.NopPruner,
    }[t.pruner]()
    metric = tune_metric(t.metric, cfg.task)
    direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    study = optuna.create_study(study_name=study_name, storage=rdb, load_if_exists=True, direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=t.startup_trials),
                                pruner=pruner)
    save_config(cfg, study_dir / "config.yaml")

    class Report(Callback):
        def __init__(self, trial: Any) -> None:
            self.trial = trial

        def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
            self.trial.report(row[metric], int(row["epoch"]))
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {int(row['epoch'])}: {metric} {row[metric]:.4f}")

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", worker)  # which of the study's workers ran it (host:pid)
        values = _sample(trial, space)
        try:
            c = trial_config(cfg, values)
        except ConfigError as exc:  # an invalid combination, e.g. heads that do not divide the hidden size
            if "not a config" in str(exc):
                raise
            raise optuna.TrialPruned(str(exc)) from None
        # the recipe `longshort train` runs (trials compare on validation, so selection=auto keeps a split); the
        # trial's directory holds its resolved config and checkpoints: `longshort train --config
        # trial-N/config.yaml` reruns it to the same weights
        trial_dir = study_dir / f"trial-{trial.number}"
        recipe = setup(c, trial_dir, callbacks=lambda _: [Report(trial)], need_validation=True)
        if recipe.splits.val is None:
            raise ConfigError("tune needs a validation split (data.split.val > 0)")
        trial_dir.mkdir(parents=True, exist_ok=True)
        save_config(recipe.cfg, trial_dir / "config.yaml")
        trainer = recipe.trainer
        trainer.fit()
        best = max if direction == "maximize" else min
        return float(best(r[metric] for r in trainer.history))

    # n_trials counts the study's finished trials (complete or pruned), whichever worker ran them: every worker
    # started with the same command stops once the study has that many, retried trials included.
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    callbacks = [optuna.study.MaxTrialsCallback(n_trials, states=states)] if n_trials is not None else []
    if n_trials is None or sum(t.state in states for t in study.trials) < n_trials:
        study.optimize(objective, timeout=timeout, catch=(), callbacks=callbacks)
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best_cfg = trial_config(cfg, {k: v for k, v in study.best_trial.params.items()})
        save_config(best_cfg, study_dir / "best.yaml")
        _plots(study, study_dir)
    return study


def _storage(cls: Any, url: str, **kwargs: Any) -> Any:
    """``cls(url, **kwargs)``, retried when workers started together race to create the schema of a new database
    (the loser sees the winner's half-made tables: a duplicate-key or duplicate-table error, then all is well)."""
    import random
    import time

    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            return cls(url, **kwargs)
        except SQLAlchemyError as exc:
            if attempt == 5:
                raise ConfigError(f"cannot open the study storage {url}: {exc}") from exc
            time.sleep(0.2 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _plots(study: Any, study_dir: Path) -> None:
    import warnings

    import optuna.visualization.matplotlib as ovm

    from longshort.report.plots import plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        ax = ovm.plot_optimization_history(study)
        ax.figure.tight_layout()
        ax.figure.savefig(study_dir / "optimization_history.png", dpi=110)
        plt.close(ax.figure)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        if len(complete) >= 2 and len(study.best_trial.params) >= 1:
            try:
                ax = ovm.plot_param_importances(study)
                ax.figure.tight_layout()
                ax.figure.savefig(study_dir / "param_importances.png", dpi=110)
                plt.close(ax.figure)
            except (RuntimeError, ValueError, ZeroDivisionError):  # all trials scored the same: no importance
                pass

