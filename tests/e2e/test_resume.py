"""A run killed with SIGKILL mid-epoch and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longshort.training.checkpoint import checkpoint_path, load_state

ARGS = [
    "data.source=builtin:regimes", "data.builtin.n=480", "data.builtin.length=24", "seed=7",
    "model.hidden_dim=32", "model.num_heads=2", "model.num_lstm_layers=2", "model.conv_dilations=[1,2]",
    "train.epochs=4", "train.batch_size=16", "train.checkpoint_every=3", "train.threads=1",
    "train.progress=off", "train.tensorboard=false", "train.early_stopping.patience=null",
    "diagnostics.analysis=false", "diagnostics.report=false",
]
STEPS_PER_EPOCH = 21  # 336 training sequences / 16


def _cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "longshort", "train", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _last_step(run: Path) -> int:
    pointer = run / "checkpoints" / "last.json"
    try:
        return int(json.loads(pointer.read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cmd("--out", str(full), *ARGS), check=True, env=_env(), capture_output=True)

    proc = subprocess.Popen(_cmd("--out", str(killed), *ARGS), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = STEPS_PER_EPOCH + 6  # a checkpoint inside the second epoch
    deadline = time.monotonic() + 120
    while _last_step(killed) < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()

    last = checkpoint_path(killed / "checkpoints", "last")
    assert last is not None
    state = load_state(last)
    assert 0 < state["batch"] < STEPS_PER_EPOCH, "the checkpoint resumed from must be mid-epoch"
    assert state["step"] < 4 * STEPS_PER_EPOCH

    subprocess.run(_cmd("--resume", str(killed)), check=True, env=_env(), capture_output=True)

    for rel in ("model.safetensors",):
        a, b = load_file(str(full / rel)), load_file(str(killed / rel))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{rel}: {k} differs after resume"
    wa = load_file(str(checkpoint_path(full / "checkpoints", "last") / "model.safetensors"))
    wb = load_file(str(checkpoint_path(killed / "checkpoints", "last") / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # The history (losses, accuracies) of the epochs run after the resume is the same too.
    hist_a = (full / "history.csv").read_text().splitlines()
    hist_b = (killed / "history.csv").read_text().splitlines()
    drop = hist_a[0].split(",").index("samples_per_s")

    def strip(lines: list[str]) -> list[list[str]]:
        return [[v for i, v in enumerate(line.split(",")) if i != drop] for line in lines]

    assert len(hist_a) == 5
    assert strip(hist_a) == strip(hist_b)
