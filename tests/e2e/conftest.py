"""End-to-end helpers: run the ``longshort`` CLI in-process or as a real process, tiny models, tiny data.

In-process runs (``cli`` fixture, :func:`invoke`) call :func:`longshort.cli.main` and take well under a
second plus training time; a subprocess run (``cli_process``) pays ~2 s of imports, so it is kept for the
checks where the real process matters (exit status, exactly one line on stderr, no traceback).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longshort.cli import main

# A model small enough that 2 epochs on ~100 short sequences take about a second on one CPU core.
TINY = [
    "model.hidden_dim=8",
    "model.num_heads=2",
    "model.num_lstm_layers=2",
    "model.conv_dilations=[1]",
    "train.epochs=2",
    "train.batch_size=16",
    "train.tensorboard=false",
    "train.progress=off",
    "train.schedule.max_lr=0.03",  # 12 steps of OneCycle: learn fast (robust over 16 seeds)
    "train.threads=1",  # many threads on a small or busy machine make these tiny steps 10x slower
    "train.selection=val",  # these tests exercise the validation split (small data would train on all)
    # the after-training analysis and report (a few seconds a run) are covered by tests/test_api.py and
    # tests/report; the monitor itself stays on
    "diagnostics.analysis=false",
    "diagnostics.report=false",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def _exit_code(exc: SystemExit) -> int:
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _main(args: Sequence[object]) -> int:
    """``main(args)``, turning argparse's SystemExit into its status and keeping torch's thread count."""
    threads = torch.get_num_threads()  # train.threads=1 sets it process-wide; other tests keep theirs
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        return _exit_code(exc)
    finally:
        torch.set_num_threads(threads)


def invoke(*args: object) -> Result:
    """``longshort ARGS`` in-process with stdout/stderr redirected (for fixtures wider than a test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _main(args)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``cli("train", "--data", path, ...)``: run ``longshort`` in-process, capturing its output with capsys."""

    def run(*args: object) -> Result:
        capsys.readouterr()  # drop anything printed before
        code = _main(args)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def cli_process(tmp_path: Path) -> Callable[..., Result]:
    """``cli_process("train", ...)``: run ``python -m longshort`` as a real process (slow: ~2 s)."""

    def run(*args: object) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "longshort", *[str(a) for a in args]],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


def train_args(data: object, out: object, *extra: object) -> list[object]:
    """Arguments of a tiny ``longshort train`` run."""
    return ["train", "--data", data, "--out", out, *TINY, *extra]


# -- data ------------------------------------------------------------------------------------------------


def make_sequences(n: int = 120, seed: int = 0, min_len: int = 10, max_len: int = 30, channels: int = 3,
                   shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variable-length sequences, zero-padded: class 'b' has channel 0 around +1.5, class 'a' around -1.5.

    Returns X [n, max_len, channels], lengths [n], labels [n] ('a' or 'b', both present). ``shift`` is
    added to every valid step of every channel.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n)
    cls = np.arange(n) % 2
    rng.shuffle(cls)
    X = np.zeros((n, max_len, channels), dtype=np.float32)
    for i in range(n):
        x = rng.normal(0.0, 1.0, (lengths[i], channels))
        x[:, 0] += 1.5 if cls[i] else -1.5
        X[i, : lengths[i]] = x + shift
    return X, lengths.astype(np.int64), np.array(["a", "b"])[cls]


def write_npz(path: Path, n: int = 120, seed: int = 0, labelled: bool = True, shift: float = 0.0) -> Path:
    X, lengths, y = make_sequences(n, seed, shift=shift)
    arrays = {"X": X, "lengths": lengths} | ({"y": y} if labelled else {})
    np.savez(path, **arrays)
    return path


def long_frame(n: int = 80, seed: int = 0, labels: Sequence[str] = ("a", "b")) -> pd.DataFrame:
    """Long format: a row per (series_id, time) with features f1, f2 and the series' label.

    Rows are shuffled, so the reader has to sort them by time. The label is learnable from f1's sign.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        level = (labels.index(label) - (len(labels) - 1) / 2) * 3.0
        for t in range(int(rng.integers(6, 13))):
            rows.append({"series_id": f"s{seed}-{i:03d}", "time": t, "f1": level + rng.normal(),
                         "f2": rng.normal(), "label": label})
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def series_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A continuous price-like series: a row per step with ``step`` (the row number), ``close``, ``volume``."""
    rng = np.random.default_rng(seed)
    close = 100.0 + np.cumsum(rng.normal(0.0, 0.5, n))
    return pd.DataFrame({"step": np.arange(n, dtype=np.float64), "close": close,
                         "volume": rng.uniform(1.0, 2.0, n)})


class Helpers:
    """What the test modules need from here, handed out by the ``helpers`` fixture (conftest is not imported)."""

    TINY = TINY
    train_args = staticmethod(train_args)
    invoke = staticmethod(invoke)
    make_sequences = staticmethod(make_sequences)
    write_npz = staticmethod(write_npz)
    long_frame = staticmethod(long_frame)
    series_frame = staticmethod(series_frame)


@pytest.fixture(scope="session")
def helpers() -> type[Helpers]:
    return Helpers


# -- runs shared by several tests (trained once per session) ----------------------------------------------


@dataclass
class TrainedRun:
    dir: Path
    data: Path  # the training file
    overrides: list[str]  # every KEY=VALUE the run was trained with, --data included
    result: Result


@pytest.fixture(scope="session")
def npz_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A tiny model trained through the CLI on 120 variable-length npz sequences of classes a and b."""
    root = tmp_path_factory.mktemp("npz_run")
    data = write_npz(root / "train.npz")
    res = invoke(*train_args(data, root / "run"))
    assert res.code == 0, res.err
    return TrainedRun(root / "run", data, [*TINY, f"data.source={data}"], res)


@pytest.fixture(scope="session")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """A tiny model trained through the CLI on a long-format CSV (series_id, time, f1, f2, label)."""
    root = tmp_path_factory.mktemp("long_run")
    data = root / "train.csv"
    long_frame(120, seed=0).to_csv(data, index=False)
    extra = ["data.long.time=time"]
    res = invoke(*train_args(data, root / "run", *extra))
    assert res.code == 0, res.err
    return TrainedRun(root / "run", data, [*TINY, *extra, f"data.source={data}"], res)
