"""Run by torchrun from test_distributed.py: 5 steps of the real Trainer under DDP or FSDP2, per-step global losses
and the final full weights written by rank 0. Not a test module itself (no test_ prefix)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, str(Path(__file__).parent))
from dist_common import STEPS, make_trainer

from longshort.training.distributed import DistributedConfig, setup, shutdown


def main() -> None:
    strategy, out = sys.argv[1], Path(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    dcfg = DistributedConfig(strategy=strategy, **extra.pop("distributed", {}))
    ctx = setup(dcfg, torch.device("cpu"))
    tr = make_trainer(out.parent / "run", dcfg, ctx, **extra)
    losses: list[float] = []
    inner = tr.train_step

    def step(batch):  # the global batch's mean loss: sum of local losses * n over all ranks / global n
        out = inner(batch)
        t = torch.tensor([float(out["batch_loss"]) * tr._local_n, float(tr._local_n)], dtype=torch.float64)
        dist.all_reduce(t)
        losses.append(float(t[0] / t[1]))
        return out

    tr.train_step = step
    tr.fit()
    full = get_model_state_dict(tr.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    mem = __import__("longshort.training.distributed", fromlist=["x"]).sharded_bytes(tr.model, tr.optimizer)
    if ctx.is_main:
        save_file({k: v.contiguous() for k, v in full.items()}, str(out.with_suffix(".safetensors")))
        wrapped = sum(type(m).__name__ == "CheckpointWrapper" for m in tr.model.modules())
        out.write_text(json.dumps({"losses": losses, "steps": STEPS, "memory": mem, "checkpoint_wrapped": wrapped}))
    shutdown(ctx)


if __name__ == "__main__":
    main()
