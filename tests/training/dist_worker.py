"""Run by torchrun from test_distributed.py: 5 steps of the real Trainer under DDP or FSDP2, per-step global losses
and the final full weights written by rank 0, with the wrap units (FSDP units, activation-checkpointed blocks)
and the dtypes each LSTM and attention layer computed with in the forward. Not a test module itself (no test_
prefix)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule

sys.path.insert(0, str(Path(__file__).parent))
from dist_common import STEPS, make_trainer

from longshort.nn.lstm import LSTM
from longshort.training.distributed import DistributedConfig, inner, setup, sharded_bytes, shutdown, unwrap


def _name(name: str) -> str:
    return name.replace("._checkpoint_wrapped_module", "").replace("_checkpoint_wrapped_module.", "")


def _cls(m: nn.Module) -> str:
    """The module's own class under FSDP2's subclass (``FSDPSequenceClassifier`` -> ``SequenceClassifier``)."""
    return next(c for c in type(inner(m)).__mro__ if not issubclass(c, FSDPModule)).__name__


def watch_dtypes(model: nn.Module) -> dict[str, set[str]]:
    """Per LSTM and attention layer: the dtypes of its parameters as its forward ran (FSDP2's unsharded
    parameters: what the layer computed with) and of its first input and output ('in:...', 'out:...')."""
    seen: dict[str, set[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, (LSTM, nn.MultiheadAttention)):
            def hook(mod: nn.Module, args: tuple, out: object, key: str = _name(name)) -> None:
                s = seen.setdefault(key, set())
                s |= {f"param:{p.dtype}" for p in mod.parameters()}
                s.add(f"in:{args[0].dtype}")
                s.add(f"out:{(out[0] if isinstance(out, tuple) else out).dtype}")

            m.register_forward_hook(hook)
    return seen


def main() -> None:
    strategy, out = sys.argv[1], Path(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    dcfg = DistributedConfig(strategy=strategy, **extra.pop("distributed", {}))
    ctx = setup(dcfg, torch.device("cpu"))
    tr = make_trainer(out.parent / "run", dcfg, ctx, **extra)
    seen = watch_dtypes(tr.model)
    losses: list[float] = []
    step_fn = tr.train_step

    def step(batch):  # the global batch's mean loss: sum of local losses * n over all ranks / global n
        out = step_fn(batch)
        t = torch.tensor([float(out["batch_loss"]) * tr._local_n, float(tr._local_n)], dtype=torch.float64)
        dist.all_reduce(t)
        losses.append(float(t[0] / t[1]))
        return out

    tr.train_step = step
    tr.fit()
    full = get_model_state_dict(tr.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    mem = sharded_bytes(tr.model, tr.optimizer)
    if ctx.is_main:
        save_file({k: v.contiguous() for k, v in full.items()}, str(out.with_suffix(".safetensors")))
        plain = unwrap(tr.model)  # DDP's wrapper off: module names as in the model
        units = [[n, _cls(m)] for n, m in plain.named_modules() if isinstance(m, FSDPModule)]
        checkpointed = [[n, _cls(m)] for n, m in plain.named_modules() if isinstance(m, CheckpointWrapper)]
        out.write_text(json.dumps({"losses": losses, "steps": STEPS, "memory": mem, "fsdp_units": units,
                                   "checkpointed": checkpointed, "dtypes": {k: sorted(v) for k, v in seen.items()},
                                   "precision": tr.cfg.precision}))
    shutdown(ctx)


if __name__ == "__main__":
    main()
