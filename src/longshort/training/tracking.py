"""MLflow tracking (``train.mlflow.uri``): the resolved config as params, each epoch's metrics, then the run's
final metrics and files as artifacts.

Through ``mlflow.MlflowClient`` only, never the module-level active run, so a notebook's own ``mlflow`` state is
left alone and several runs in one process do not collide. The MLflow run's id is kept in
``RUN_DIR/mlflow.json``: a resumed run logs into the same MLflow run, and :func:`finish_mlflow` (called once the
metrics and the report are written) adds the artifacts and marks it finished.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from longshort.errors import ConfigError
from longshort.training.callbacks import Callback

RECORD = "mlflow.json"
ARTIFACTS = ("config.yaml", "metrics.json", "preprocess.json", "model.safetensors", "history.csv", "report.html")
_BATCH = 100  # MLflow takes at most 100 params per log_batch call


def _client(uri: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError("train.mlflow.uri needs mlflow, which is not installed: pip install "
                          "'longshort[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


def flat_params(raw: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as text (lists and dicts as JSON)."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flat_params(v, key + ".")
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def _numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) metrics dict, with dotted keys (MLflow metrics are numbers only)."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out |= _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[f"{prefix}{k}"] = float(v)
    return out


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside the database for ``sqlite:///PATH`` (MLflow's own
    default, ``./mlruns``, is relative to whatever the current directory is), the server's choice otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


class MLflowLogger(Callback):
    """Logs a run to MLflow: params at the start, every epoch's history row (step = the epoch)."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.m = cfg.train.mlflow
        self.client = _client(self.m.uri)  # here, before training: a missing mlflow is one line up front
        self.run_id: str | None = None

    def on_fit_start(self, trainer: Any) -> None:
        from mlflow.entities import Param

        record = self.run_dir / RECORD
        if record.is_file():  # a resumed run continues its MLflow run
            self.run_id = json.loads(record.read_text())["run_id"]
            return
        exp = self.client.get_experiment_by_name(self.m.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            self.m.experiment, artifact_location=artifact_root(self.m.uri))
        run = self.client.create_run(exp_id, run_name=self.m.run_name or self.run_dir.name,
                                     tags={"longshort.run_dir": str(self.run_dir.resolve()),
                                           "longshort.task": self.cfg.task})
        self.run_id = run.info.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"tracking_uri": self.m.uri, "experiment_id": exp_id,
                                      "run_id": self.run_id}, indent=1))
        params = [Param(k, v[:6000]) for k, v in flat_params(self.cfg.model_dump(mode="json")).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _BATCH])

    def on_epoch_end(self, trainer: Any, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        step, now = int(row.get("epoch", trainer.epoch)), int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _numbers(row).items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)


def finish_mlflow(cfg: Any, run_dir: Path) -> str | None:
    """Log the finished run's final metrics (``final.val.*``, ``final.test.*``, ...) and files as artifacts, and
    mark the MLflow run finished; returns its id (None when this run logged nothing)."""
    record = Path(run_dir) / RECORD
    if not cfg.train.mlflow.uri or not record.is_file():
        return None
    from mlflow.entities import Metric

    run_id = json.loads(record.read_text())["run_id"]
    client = _client(cfg.train.mlflow.uri)
    metrics_file = Path(run_dir) / "metrics.json"
    if metrics_file.is_file():
        now = int(time.time() * 1000)
        final = [Metric(f"final.{k}", v, now, 0) for k, v in _numbers(json.loads(metrics_file.read_text())).items()]
        for i in range(0, len(final), 1000):
            client.log_batch(run_id, metrics=final[i:i + 1000])
    for name in ARTIFACTS:
        if (Path(run_dir) / name).is_file():
            client.log_artifact(run_id, str(Path(run_dir) / name))
    if (Path(run_dir) / "plots").is_dir():
        client.log_artifacts(run_id, str(Path(run_dir) / "plots"), artifact_path="plots")
    client.set_terminated(run_id, "FINISHED")
    return run_id
