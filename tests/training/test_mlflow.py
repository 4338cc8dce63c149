"""MLflow tracking against a real local tracking store (SQLite, no server): params, per-epoch metrics, final
metrics and artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import longshort

mlflow = pytest.importorskip("mlflow")

TINY = {"data": {"builtin": {"n": 120}},
        "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1]},
        "train": {"epochs": 3, "batch_size": 32, "threads": 1, "progress": "off", "tensorboard": False},
        "diagnostics": {"report": False, "analysis": False}}


def test_a_run_appears_in_a_local_tracking_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {**TINY, "train": {**TINY["train"], "mlflow": {"uri": uri, "experiment": "tests"}}}
    longshort.train(cfg, out=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    params = run.data.params
    assert params["model.hidden_dim"] == "8" and params["train.epochs"] == "3" and params["task"] == "classify"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]  # one point per epoch
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 3
    assert "final.test.accuracy" in run.data.metrics
    assert (tmp_path / "mlruns").is_dir() and not (Path.cwd() / "mlruns").exists()  # beside the database
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "model.safetensors", "history.csv", "plots"} <= names


def test_missing_mlflow_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from longshort.errors import ConfigError
    from longshort.training.tracking import _client

    real = builtins.__import__

    def no_mlflow(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ConfigError, match=r"pip install 'longshort\[mlflow\]'"):
        _client("sqlite:///x.db")
