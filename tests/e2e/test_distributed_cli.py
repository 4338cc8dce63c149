"""``longshort train --nproc 2`` end to end: a rank killed with SIGKILL fails the job quickly; the run resumes from
its last sharded checkpoint on 2 processes, and the same checkpoint resumes on 1 process to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

ARGS = ["distributed.strategy=fsdp", "data.builtin.n=400", "data.builtin.length=16", "model.hidden_dim=16",
        "model.num_heads=2", "model.num_lstm_layers=2", "model.conv_dilations=[1]", "model.dropout=0.0",
        "train.epochs=5", "train.batch_size=16", "train.checkpoint_every=2", "train.progress=off",
        "train.tensorboard=false", "train.early_stopping.patience=null",
        "diagnostics.analysis=false", "diagnostics.report=false",
        "train.optim.eps=1e-6",  # see tests/training/dist_common.py: zero-gradient parameters and Adam's eps
        # no random draws that depend on how a batch is split across ranks (small sets are augmented by default)
        "train.augment.noise.prob=0", "train.selection=val"]


def _longshort(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "longshort", "train", *[str(a) for a in args]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _rank_pid(tag: str, rank: int) -> int | None:
    """The pid of the worker process of ``rank`` among the processes started with LONGSHORT_TEST_TAG=tag."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LONGSHORT_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_sigkill_of_a_rank_fails_the_job_and_the_run_resumes_on_2_and_on_1_process(tmp_path: Path) -> None:
    run, tag = tmp_path / "run", uuid.uuid4().hex
    job = _longshort("--nproc", 2, "--out", run, *ARGS, env={"LONGSHORT_TEST_TAG": tag})
    deadline = time.time() + 180
    while not (run / "checkpoints" / "last.json").exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    pid = _rank_pid(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    job.wait(timeout=60)
    assert job.returncode != 0 and time.time() - killed < 60
    assert not (run / "metrics.json").exists()
    step = json.loads((run / "checkpoints" / "last.json").read_text())["step"]
    assert 0 < step < 5 * 18  # stopped in the middle: 5 epochs of 18 steps

    one = tmp_path / "one"  # the same 2-rank checkpoint, resumed by a single process (no torchrun)
    shutil.copytree(run, one)
    two = _longshort("--nproc", 2, "--resume", run)
    out, err = two.communicate(timeout=300)
    assert two.returncode == 0, err[-3000:]
    assert f"run directory: {run}" in out
    single = _longshort("--resume", one)
    _, err1 = single.communicate(timeout=300)
    assert single.returncode == 0, err1[-3000:]
    for d in (run, one):
        assert len(pd.read_csv(d / "history.csv")) == 5 and (d / "metrics.json").is_file()
    a, b = load_file(str(run / "model.safetensors")), load_file(str(one / "model.safetensors"))
    # Same global batches either way (no dropout), so the same weights up to float summation order, which some
    # 90 AdamW steps amplify to a few 1e-3 on some weights (5 steps agree within 1e-4: tests/training).
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-2, rtol=1e-2, msg=lambda m, k=k: f"{k}: {m}")
    h2, h1 = pd.read_csv(run / "history.csv"), pd.read_csv(one / "history.csv")
    torch.testing.assert_close(torch.tensor(h2["train_loss"].to_numpy()), torch.tensor(h1["train_loss"].to_numpy()),
                               atol=1e-3, rtol=0)


def test_plan_command_prints_and_writes_the_memory_table(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "longshort", "plan", "--nproc", "2", "4", "--steps", "1", "--json",
                           out, "data.builtin.n=60", "data.builtin.length=12", "model.hidden_dim=16",
                           "model.num_heads=2", "model.num_lstm_layers=2", "model.conv_dilations=[1]"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "memory per rank" in proc.stderr and "training time" in proc.stderr
    plan = json.loads(out.read_text())
    rows = {(r["strategy"], r["nproc"]) for r in plan["memory"]}
    assert {("none", 1), ("ddp", 2), ("fsdp", 2), ("ddp", 4), ("fsdp", 4)} <= rows
    fsdp4 = next(r for r in plan["memory"] if r["strategy"] == "fsdp" and r["nproc"] == 4)
    ddp4 = next(r for r in plan["memory"] if r["strategy"] == "ddp" and r["nproc"] == 4)
    assert fsdp4["params"] < 0.3 * ddp4["params"] and fsdp4["activations"] == ddp4["activations"]
    # the process-memory column, fitted to probe runs at batch 8 and 16: grows with the per-rank batch
    none = next(r for r in plan["memory"] if r["strategy"] == "none")
    assert "process peak (RSS)" in proc.stderr and none["rss"] > ddp4["rss"] > 0


S2S = ["--task", "seq2seq", "seq2seq.model.emb_dim=8", "seq2seq.model.hidden_dim=16", "seq2seq.model.dropout=0.0",
       "data.builtin.n=200", "train.epochs=2", "train.batch_size=16", "train.tensorboard=false",
       "train.progress=off", "train.early_stopping.patience=null", "train.optim.eps=1e-6",
       "diagnostics.report=false"]


def test_seq2seq_trains_under_ddp_and_fsdp_on_2_processes_as_on_one(tmp_path: Path) -> None:
    """The one Trainer runs seq2seq data-parallel as it does the classifier: the same loss curve as one process
    (the tolerance of tests/training/test_distributed.py), and rank 0 writes the finished run directory."""
    one = _longshort("--out", tmp_path / "one", *S2S)
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err[-3000:]
    ref = pd.read_csv(tmp_path / "one" / "history.csv")
    for strategy in ("ddp", "fsdp"):
        run = tmp_path / strategy
        job = _longshort("--nproc", 2, "--out", run, *S2S, f"distributed.strategy={strategy}")
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
        assert f"run directory: {run}" in out
        for name in ("model.safetensors", "metrics.json", "vocab_target.json", "test_predictions.tsv"):
            assert (run / name).is_file(), (strategy, name)
        got = pd.read_csv(run / "history.csv")
        for col in ("train_loss", "val_loss", "val_free_loss"):
            torch.testing.assert_close(torch.tensor(got[col].to_numpy()), torch.tensor(ref[col].to_numpy()),
                                       atol=1e-4, rtol=0, msg=lambda m, c=col, s=strategy: f"{s} {c}: {m}")
