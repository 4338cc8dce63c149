from __future__ import annotations

from pathlib import Path

import pytest

from longshort.config import apply_overrides, config_keys, load_config, parse_override, save_config, validate
from longshort.errors import ConfigError


def test_overrides_are_typed_yaml_values() -> None:
    assert parse_override("train.epochs=5") == (["train", "epochs"], 5)
    assert parse_override("model.conv_dilations=[1,2]") == (["model", "conv_dilations"], [1, 2])
    assert parse_override("train.progress=off") == (["train", "progress"], "off")  # not YAML 1.1's False
    assert parse_override("train.tensorboard=false") == (["train", "tensorboard"], False)
    assert parse_override("train.early_stopping.patience=null") == (["train", "early_stopping", "patience"], None)


def test_override_never_evaluates_code() -> None:
    _, value = parse_override("data.source=__import__('os').system('false')")
    assert value == "__import__('os').system('false')"


def test_overrides_reach_the_typed_config() -> None:
    cfg = validate(apply_overrides({}, ["train.epochs=3", "model.dropout=0.1", "train.optim.lr=1e-3"]))
    assert cfg.train.epochs == 3 and cfg.model.dropout == 0.1 and cfg.train.optim.lr == pytest.approx(1e-3)


def test_unknown_key_names_it_and_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as e:
        validate(apply_overrides({}, ["train.epoch=3"]))
    msg = str(e.value)
    assert "train.epoch" in msg and "epochs" in msg and "batch_size" in msg


def test_bad_value_names_key_and_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"'data.format'.*'npz'.*'parquet'.*got 'xlsx'"):
        validate({"data": {"format": "xlsx"}})
    with pytest.raises(ConfigError, match=r"'model.dropout'.*less than 1"):
        validate({"model": {"dropout": 1.5}})


def test_override_into_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="'seed' is a value"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_saved_config_reloads_identically(tmp_path: Path) -> None:
    cfg = validate(apply_overrides({}, ["train.epochs=3", "data.series.window=17", "model.conv_dilations=[1]"]))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_yaml_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_leaf_key_is_documented_for_help() -> None:
    keys = {k for k, _, _ in config_keys()}
    assert {"train.epochs", "model.hidden_dim", "data.series.window", "train.optim.lr"} <= keys


def test_every_shipped_config_validates() -> None:
    from pathlib import Path

    from longshort.config import load_config

    files = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert {f.name for f in files} >= {"quickstart.yaml", "g2p.yaml", "reverse.yaml"}
    tasks = {f.name: load_config(f).task for f in files}
    assert tasks["g2p.yaml"] == tasks["reverse.yaml"] == "seq2seq" and tasks["quickstart.yaml"] == "classify"


def test_reading_and_validating_a_config_imports_no_torch() -> None:
    """The config tree is assembled from leaf modules (pydantic only), so a notebook or the CLI can read and check a
    config without paying for torch (make test's import-linter contract keeps it so; this is the end result)."""
    import subprocess
    import sys

    code = ("import sys; import longshort.config as c; c.validate({'task': 'seq2seq', 'train': {'epochs': 2}}); "
            "bad = [m for m in ('torch', 'numpy', 'pandas') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
