"""DDP and FSDP2 with 2 gloo processes on CPU (torchrun): the same losses and weights as one process on the same
global batch; per-rank memory of FSDP against DDP; gradient accumulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from dist_common import STEPS, make_trainer

WORKER = Path(__file__).with_name("dist_worker.py")
# the tiny model's blocks, in forward order: what FSDP2 shards (after the root) and activation checkpointing wraps
BLOCKS = [["convs.0", "TemporalConvBlock"], ["lstms.0", "BiLSTMBlock"], ["lstms.1", "BiLSTMBlock"],
          ["attns.1", "AttentionBlock"]]


def torchrun(*args: object, nproc: int = 2, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _single(tmp: Path, **train: Any) -> tuple[list[float], dict[str, torch.Tensor]]:
    tr = make_trainer(tmp, **train)
    losses: list[float] = []
    inner = tr.train_step

    def step(batch: Any) -> Any:
        out = inner(batch)
        losses.append(float(out["batch_loss"]))
        return out

    tr.train_step = step  # type: ignore[method-assign]
    tr.fit()
    return losses, {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def test_ddp_and_fsdp_match_one_process_and_fsdp_halves_the_memory(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_losses, ref_weights = _single(tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    assert len(ref_losses) == STEPS
    memory = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy / "result.json"
        out.parent.mkdir()
        res = torchrun(WORKER, strategy, out)
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(out.read_text())
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref_losses), atol=1e-4, rtol=0)
        weights = load_file(str(out.with_suffix(".safetensors")))
        assert weights.keys() == ref_weights.keys()
        for k, v in ref_weights.items():
            torch.testing.assert_close(weights[k], v, atol=1e-4, rtol=1e-4, msg=f"{strategy}: {k}")
        memory[strategy] = got["memory"]
    # per rank: parameters + gradients + optimizer state; FSDP shards all three across the 2 ranks
    assert memory["fsdp"]["total"] <= 0.55 * memory["ddp"]["total"], memory
    assert memory["ddp"]["params"] == sum(v.numel() * 4 for v in ref_weights.values() if v.is_floating_point())


def test_gradient_accumulation_gives_the_whole_batch_gradient(tmp_path: Path) -> None:
    _, whole = _single(tmp_path / "a")
    _, accum = _single(tmp_path / "b", grad_accum_steps=3)
    for k, v in whole.items():
        torch.testing.assert_close(accum[k], v, atol=2e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize(("strategy", "extra"), [
    ("ddp", {"grad_accum_steps": 2, "distributed": {"activation_checkpointing": True}}),
    ("fsdp", {"grad_accum_steps": 2, "distributed": {"reshard_after_forward": False}}),
])
def test_accumulation_checkpointing_and_shard_grad_op_match_one_process(tmp_path: Path, strategy: str,
                                                                        extra: dict[str, Any]) -> None:
    ref_losses, ref_weights = _single(tmp_path / "single")
    out = tmp_path / strategy / "result.json"
    out.parent.mkdir()
    res = torchrun(WORKER, strategy, out, json.dumps(extra))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref_losses), atol=1e-4, rtol=0)
    # the conv, BiLSTM and attention blocks recompute their activations in the backward
    assert got["checkpointed"] == (BLOCKS if extra["distributed"].get("activation_checkpointing") else [])
    assert got["fsdp_units"] == ([["", "SequenceClassifier"], *BLOCKS] if strategy == "fsdp" else [])
    weights = load_file(str(out.with_suffix(".safetensors")))
    assert weights.keys() == ref_weights.keys()  # activation checkpointing leaves the state-dict keys alone
    for k, v in ref_weights.items():
        torch.testing.assert_close(weights[k], v, atol=1e-4, rtol=1e-4, msg=k)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_fsdp_bf16_mixed_precision_and_pinned_offload_on_cuda(tmp_path: Path) -> None:
    for extra in ({"distributed": {"mixed_precision": "bf16"}}, {"distributed": {"cpu_offload": True}}):
        out = tmp_path / json.dumps(extra).replace('"', "").replace(" ", "") / "result.json"
        out.parent.mkdir(parents=True)
        res = torchrun(WORKER, "fsdp", out, json.dumps({**extra, "device": "cuda"}))
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(json.loads(out.read_text())["losses"]) == STEPS


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fsdp_bf16_policy_trains_on_cpu_with_the_lstm_in_float32(tmp_path: Path, precision: str) -> None:
    """distributed.mixed_precision=bf16 on 2 gloo ranks: with bf16 autocast (the default on a bf16 GPU, which
    crashed when the BiLSTM blocks got bf16 parameters and float32 input) and without (which silently ran the
    recurrence in bf16). The BiLSTM blocks are their own float32 units; the rest computes in bf16; activation
    checkpointing and explicit prefetch on top."""
    ref_losses, _ = _single(tmp_path / "single")
    out = tmp_path / "fsdp" / "result.json"
    out.parent.mkdir()
    extra = {"precision": precision, "distributed": {"mixed_precision": "bf16", "activation_checkpointing": True,
                                                     "prefetch": {"forward": 2, "backward": 1}}}
    res = torchrun(WORKER, "fsdp", out, json.dumps(extra))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["fsdp_units"] == [["", "SequenceClassifier"], *BLOCKS] and got["checkpointed"] == BLOCKS
    f32, b16 = "torch.float32", "torch.bfloat16"
    for lstm in ("lstms.0.lstm", "lstms.1.lstm"):  # the recurrence: float32 weights, input and output
        assert got["dtypes"][lstm] == [f"in:{f32}", f"out:{f32}", f"param:{f32}"], got["dtypes"]
    assert got["dtypes"]["attns.1.attn"] == [f"in:{b16}", f"out:{b16}", f"param:{b16}"]  # bf16 elsewhere
    # bf16 rounding (8 bits of mantissa) on a loss of ~1.1: within 0.02 of the fp32 one-process run each step
    losses = torch.tensor(got["losses"])
    assert losses.isfinite().all() and len(losses) == STEPS
    torch.testing.assert_close(losses, torch.tensor(ref_losses), atol=0.02, rtol=0)
    assert losses[-1] < losses[0]  # it trains


def test_fsdp_fp16_steps_through_the_sharded_grad_scaler_and_prefetch_is_set_per_unit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, a group of one: distributed.mixed_precision=fp16 gets torch's ShardedGradScaler (without
    train.precision=fp16), and distributed.prefetch becomes FSDP2's explicit prefetch lists over the units."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from longshort.training.distributed import DistributedConfig, _free_port, setup, shutdown

    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)  # restored after the test
    calls: dict[str, list[tuple[int, list[int]]]] = {"forward": [], "backward": []}
    for way in calls:
        original = getattr(FSDPModule, f"set_modules_to_{way}_prefetch")

        def spy(self: Any, modules: list[Any], way: str = way, original: Any = original) -> None:
            calls[way].append((id(self), [id(m) for m in modules]))
            original(self, modules)

        monkeypatch.setattr(FSDPModule, f"set_modules_to_{way}_prefetch", spy)
    dcfg = DistributedConfig(strategy="fsdp", mixed_precision="fp16", prefetch={"forward": 2, "backward": 1})
    ctx = setup(dcfg, torch.device("cpu"))
    try:
        tr = make_trainer(tmp_path, dcfg, ctx)
        assert tr.amp_dtype is None  # no autocast: FSDP's fp16 parameters alone
        assert isinstance(tr.scaler, ShardedGradScaler) and tr.scaler.is_enabled()
        units = [id(tr.model.convs[0]), id(tr.model.lstms[0]), id(tr.model.lstms[1]), id(tr.model.attns["1"])]
        assert calls["forward"] == [(units[0], units[1:3]), (units[1], units[2:4]), (units[2], units[3:])]
        assert calls["backward"] == [(units[1], units[:1]), (units[2], units[1:2]), (units[3], units[2:3])]
        hist = tr.fit()
        assert len(hist) == 1 and hist[0]["step"] == STEPS and torch.isfinite(torch.tensor(hist[0]["train_loss"]))
        assert tr.scaler.get_scale() > 0
    finally:
        shutdown(ctx)
