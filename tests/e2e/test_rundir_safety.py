"""A run directory is never written by two processes, never written into when it is not a run, and a damaged
weights file is caught on every load path (one line, exit 2), so nothing is lost or silently wrong."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from longshort.rundir import LOCK, RunLock


def _snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d``."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _one_line_error(res: object, *words: str) -> None:
    assert res.code == 2, (res.code, res.err)  # type: ignore[attr-defined]
    lines = [ln for ln in res.err.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err  # type: ignore[attr-defined]
    for w in words:
        assert w in lines[0], (w, lines[0])


def _flip(path: Path, at: int = -9) -> None:
    """Flip one byte near the end of ``path`` (the tensor data, after the header)."""
    b = bytearray(path.read_bytes())
    b[at] ^= 0xFF
    path.write_bytes(bytes(b))


_HOLD = ("import sys, time; from pathlib import Path; from longshort.rundir import RunLock; "
         "RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)")


def _holder(d: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(d)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_writes_nothing(helpers: Any, tmp_path: Path,
                                                                         cli_process: Callable) -> None:
    data, run = helpers.write_npz(tmp_path / "d.npz"), tmp_path / "run"
    holder = _holder(run)
    try:
        before = _snapshot(run)
        res = cli_process(*helpers.train_args(data, run, "seed=2"))
        _one_line_error(res, "in use by process", str(holder.pid))
        assert _snapshot(run) == before  # only the holder's lock file, untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lock_is_stale_and_the_run_proceeds(helpers: Any, tmp_path: Path,
                                                             cli_process: Callable) -> None:
    data, run = helpers.write_npz(tmp_path / "d.npz"), tmp_path / "run"
    holder = _holder(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (run / LOCK).is_file()  # left behind by the killed process
    res = cli_process(*helpers.train_args(data, run))
    assert res.code == 0, res.err
    assert (run / "model.safetensors").is_file() and not (run / LOCK).exists()  # released at the end


def test_a_finished_run_is_byte_identical_after_a_second_train_into_it(helpers: Any, tmp_path: Path,
                                                                       cli: Callable) -> None:
    data, run = helpers.write_npz(tmp_path / "d.npz"), tmp_path / "run"
    assert cli(*helpers.train_args(data, run)).code == 0
    before = _snapshot(run)
    res = cli(*helpers.train_args(data, run, "seed=2"))
    assert res.code == 2 and "already holds a run" in res.err
    assert _snapshot(run) == before


def test_out_on_a_directory_that_is_not_a_run_or_on_a_file_is_refused(helpers: Any, tmp_path: Path,
                                                                      cli: Callable) -> None:
    data = helpers.write_npz(tmp_path / "d.npz")
    other = tmp_path / "mine"
    (other / "checkpoints" / "step-important").mkdir(parents=True)
    (other / "metrics.json").write_text('{"mine": 1}')
    before = _snapshot(other)
    res = cli(*helpers.train_args(data, other))
    assert res.code == 2 and "not a longshort run" in res.err and "nothing was written" in res.err
    assert _snapshot(other) == before and (other / "checkpoints" / "step-important").is_dir()
    (tmp_path / "afile").write_text("x")
    res = cli(*helpers.train_args(data, tmp_path / "afile"))
    assert res.code == 2 and "a file of that name exists" in res.err
    assert (tmp_path / "afile").read_text() == "x"


def test_a_failed_start_leaves_nothing_that_blocks_a_retry(helpers: Any, tmp_path: Path, cli: Callable) -> None:
    run = tmp_path / "run"
    res = cli(*helpers.train_args(tmp_path / "missing.npz", run))
    assert res.code == 2
    assert not run.exists()  # the lock and the directory it made are gone
    assert cli(*helpers.train_args(helpers.write_npz(tmp_path / "d.npz"), run)).code == 0


def test_two_runs_started_in_the_same_second_get_two_directories(helpers: Any, tmp_path: Path) -> None:
    data = helpers.write_npz(tmp_path / "d.npz")
    args = [sys.executable, "-m", "longshort", *[str(a) for a in helpers.train_args(data, "")[:3]], *helpers.TINY]
    args = [a for a in args if a != "--out"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    dirs = {line.split("run directory: ", 1)[1] for o, _ in outs for line in o.splitlines()
            if "run directory: " in line}
    assert len(dirs) == 2, dirs


# -- integrity: a damaged weights file on every load path -------------------------------------------------


@pytest.fixture
def damaged(helpers: Any, tmp_path: Path, cli: Callable) -> tuple[Path, Path]:
    """A finished tiny run (with its data file) whose model.safetensors has one flipped data byte."""
    data, run = helpers.write_npz(tmp_path / "d.npz"), tmp_path / "run"
    assert cli(*helpers.train_args(data, run, "train.checkpoint_every=1")).code == 0
    _flip(run / "model.safetensors")
    return data, run


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_flipped_weights_byte_is_caught_by(command: str, damaged: tuple[Path, Path], tmp_path: Path,
                                             cli: Callable) -> None:
    data, run = damaged
    args = {"predict": ["predict", run, "--data", data, "--output", tmp_path / "p.csv"],
            "evaluate": ["evaluate", run],
            "export": ["export", run, "--format", "torch-export", "--out", tmp_path / "exp"]}[command]
    res = cli(*args)
    _one_line_error(res, "model.safetensors", "checksum")
    assert not (tmp_path / "p.csv").exists()


def test_a_flipped_checkpoint_byte_is_caught_on_resume(helpers: Any, tmp_path: Path, cli: Callable) -> None:
    from longshort.training.checkpoint import checkpoint_path

    data, run = helpers.write_npz(tmp_path / "d.npz"), tmp_path / "run"
    assert cli(*helpers.train_args(data, run)).code == 0
    (run / "metrics.json").unlink()
    last = checkpoint_path(run / "checkpoints", "last")
    assert last is not None
    _flip(last / "model.safetensors")
    _one_line_error(cli("train", "--resume", run), "model.safetensors", "checksum")


def test_a_damaged_state_or_pointer_is_one_line_on_resume(helpers: Any, tmp_path: Path, cli: Callable) -> None:
    from longshort.training.checkpoint import checkpoint_path

    data, run = helpers.write_npz(tmp_path / "d.npz"), tmp_path / "run"
    assert cli(*helpers.train_args(data, run)).code == 0
    (run / "metrics.json").unlink()  # as if it stopped after its last checkpoint
    last = checkpoint_path(run / "checkpoints", "last")
    assert last is not None
    state = last / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    _one_line_error(cli("train", "--resume", run), "state.pt")
    (run / "checkpoints" / "last.json").write_text("{garbage")
    _one_line_error(cli("train", "--resume", run), "last.json")


def test_a_seq2seq_run_checks_its_weights_too(tmp_path: Path, cli: Callable) -> None:
    run = tmp_path / "s2s"
    assert cli("train", "--task", "seq2seq", "--out", run, "data.builtin.n=60", "seq2seq.model.emb_dim=8",
               "seq2seq.model.hidden_dim=8", "train.epochs=1", "train.progress=off", "train.tensorboard=false",
               "diagnostics.report=false").code == 0
    _flip(run / "model.safetensors")
    _one_line_error(cli("evaluate", run), "model.safetensors", "checksum")


def test_the_lock_is_released_by_its_owner_only_once_and_refuses_while_held(tmp_path: Path) -> None:
    from longshort.errors import RunDirError

    a = RunLock(tmp_path / "r").acquire()
    with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
        RunLock(tmp_path / "r").acquire()
    a.release()
    a.release()  # idempotent
    assert not (tmp_path / "r").exists()  # it made the directory and left it empty: gone
    b = RunLock(tmp_path / "r").acquire()
    assert (tmp_path / "r" / LOCK).is_file()
    b.release()
    time.sleep(0)


def test_a_run_trained_on_a_relative_path_evaluates_from_another_directory(helpers: Any, tmp_path: Path,
                                                                           cli_process: Callable,
                                                                           cli: Callable) -> None:
    helpers.write_npz(tmp_path / "d.npz")
    res = cli_process(*helpers.train_args("d.npz", "run"))  # cwd: tmp_path
    assert res.code == 0, res.err
    assert Path(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["source"]
                ).is_absolute()
    assert Path.cwd() != tmp_path
    assert cli("evaluate", tmp_path / "run").code == 0  # rebuilds its test split from the recorded data path


def test_an_interrupted_run_resumes_from_another_directory_exactly(helpers: Any, tmp_path: Path, cli: Callable,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Trained from ``a/`` on a relative data path, stopped after its first epoch (Ctrl-C), resumed from ``b/``:
    it finds its data and ends with the weights of the same run left uninterrupted."""
    from safetensors.torch import load_file

    from longshort.training.trainer import Trainer

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    helpers.write_npz(a / "d.npz")
    args = helpers.train_args("d.npz", "run", "train.epochs=3")
    monkeypatch.chdir(a)
    assert cli(*[x if x != "run" else "full" for x in args]).code == 0

    real = Trainer._run_epoch

    def stop_after_first(self: Trainer) -> None:
        if self.epoch == 1:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(Trainer, "_run_epoch", stop_after_first)
    res = cli(*args)
    assert res.code == 130 and not (a / "run" / "metrics.json").exists()
    monkeypatch.setattr(Trainer, "_run_epoch", real)

    monkeypatch.chdir(b)
    res = cli("train", "--resume", a / "run")
    assert res.code == 0, res.err
    assert "resumed" in res.err and "at epoch 2" in res.err
    full, resumed = load_file(str(a / "full" / "model.safetensors")), load_file(str(a / "run" / "model.safetensors"))
    assert full.keys() == resumed.keys() and all((full[k] == resumed[k]).all() for k in full)
    assert cli("evaluate", a / "run").code == 0
