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
    # the conv, BiLSTM and attention blocks (1 + 2 + 1) recompute their activations in the backward
    assert got["checkpoint_wrapped"] == (4 if extra["distributed"].get("activation_checkpointing") else 0)
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
