"""Data-parallel training under ``torchrun``: DDP or FSDP2 applied to a plain model from outside it.

``longshort train`` runs unchanged under ``torchrun --nproc_per_node N`` (or ``longshort train --nproc N``, which
launches torchrun). Each process reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment, joins the
process group (nccl on CUDA, gloo on CPU), builds the model from the same seed (and rank 0's weights are
broadcast, so every rank starts from one set of initial weights), then :func:`parallelize` wraps it:

- ``ddp``: ``DistributedDataParallel``: every rank holds the whole model, gradients are averaged.
- ``fsdp``: FSDP2 ``fully_shard`` on each temporal-conv block, BiLSTM block and attention block (seq2seq: each
  encoder; the decoder's cells stay in the root's unit: the decoder calls them once per target step, ranks' parts
  of a batch differ in target length, and a unit of its own would all-gather a different number of times on
  each rank), then on the root (seed 000's wrap policy, as torchtitan applies it): parameters,
  gradients and optimizer state are sharded across ranks; ``reshard_after_forward`` true frees the gathered
  parameters after each block's forward (the seed's FULL_SHARD), false keeps them for the backward (SHARD_GRAD_OP).
  Mixed precision (``distributed.mixed_precision``: bf16/fp16 parameters for compute, fp32 gradient reduction)
  is one ``MixedPrecisionPolicy`` per unit: the BiLSTM blocks of a ``model.lstm_fp32`` model get their own
  float32-parameter policy (inputs cast to float32 on entry, outputs back to the compute dtype on exit), so the
  recurrence runs in float32 with or without autocast while every other unit computes in bf16/fp16; it runs on
  CPU too (gloo). fp16 steps through torch's sharded GradScaler. ``distributed.prefetch`` sets FSDP2's explicit
  forward/backward all-gather prefetch over the units in forward order. Pinned CPU offload is a CUDA path; CPU
  offload without an accelerator is plain (unpinned) offload.
- activation checkpointing per block (both strategies): the block's activations are recomputed in the backward.

The global batch (``train.batch_size``) is the same as in one process: each rank takes its contiguous part of
every batch of the one deterministic epoch order (so a resumed run replays it), and each rank's loss is scaled by
``world * n_rank / n_global`` so that the averaged gradient is exactly the global batch's mean gradient even when
the last batch does not split evenly. Metrics are summed across ranks; validation runs the whole validation set
on every rank (FSDP needs every rank in each forward), so every rank takes the same early-stopping decision.
Only rank 0 prints progress and writes logs and the final ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from longshort.errors import ConfigError
from longshort.training.config import DistributedConfig as DistributedConfig


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world`` (``world == 1`` and ``enabled`` False for one process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(cfg: DistributedConfig, device: torch.device) -> DistContext:
    """Join the process group torchrun set up (no-op for one process); checks the strategy fits the launch."""
    world = env_world()
    if cfg.strategy == "none":
        if world > 1:
            raise ConfigError(f"started by torchrun with {world} processes but distributed.strategy=none: set "
                              "distributed.strategy=ddp or fsdp")
        return DistContext()
    if cfg.mixed_precision != "none" and cfg.strategy != "fsdp":
        raise ConfigError(f"distributed.mixed_precision={cfg.mixed_precision} is FSDP2's parameter policy: set "
                          "distributed.strategy=fsdp (ddp: train.precision=bf16 autocasts instead)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError("distributed.backend=nccl needs CUDA devices (use gloo on CPU)")
        if device.type == "cuda":
            torch.cuda.set_device(local)
        if "MASTER_ADDR" not in os.environ:  # one process without torchrun: a group of one on this machine only
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(backend, timeout=timedelta(seconds=cfg.timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), local, True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``); the CPU stays the CPU."""
    if device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards and activation checkpointing recomputes, in forward order: the classifier's conv
    blocks, then each BiLSTM block followed by its attention block (if any); a seq2seq model's encoders (not
    the decoder's per-step cells)."""
    units: list[nn.Module] = []
    convs, lstms, attns, encoders = (getattr(model, n, None) for n in ("convs", "lstms", "attns", "encoders"))
    if isinstance(convs, nn.ModuleList):
        units += list(convs)
    if isinstance(lstms, nn.ModuleList):
        for i, block in enumerate(lstms):  # the classifier's attention block i follows BiLSTM block i
            units.append(block)
            if isinstance(attns, nn.ModuleDict) and str(i) in attns:
                units.append(attns[str(i)])
    if isinstance(encoders, nn.ModuleList):
        units += list(encoders)
    return units


def inner(block: nn.Module) -> nn.Module:
    """The block under an activation-checkpointing wrapper (the block itself when there is none)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    return block._checkpoint_wrapped_module if isinstance(block, CheckpointWrapper) else block


def keeps_fp32(block: nn.Module) -> bool:
    """Whether ``block`` runs its recurrence in float32 whatever the compute dtype (a BiLSTM block of a
    ``model.lstm_fp32`` model)."""
    from longshort.nn.classifier import BiLSTMBlock

    b = inner(block)
    return isinstance(b, BiLSTMBlock) and b.fp32


def broadcast_parameters(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (one set of initial weights whatever each rank drew)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def _checkpoint_blocks(model: nn.Module) -> None:
    # torch's own wrapper (as torchtitan uses it): recompute in the backward, state-dict keys unchanged.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name in ("convs", "lstms", "encoders"):
        seq = getattr(model, name, None)
        if isinstance(seq, nn.ModuleList):
            for i, block in enumerate(seq):
                seq[i] = checkpoint_wrapper(block)
    attns = getattr(model, "attns", None)
    if isinstance(attns, nn.ModuleDict):
        for key in list(attns):
            attns[key] = checkpoint_wrapper(attns[key])


def parallelize(model: nn.Module, cfg: DistributedConfig, ctx: DistContext, device: torch.device) -> nn.Module:
    """The model as this strategy trains it (``model`` itself for strategy none, or a DDP wrapper, or the model
    with FSDP2 applied in place)."""
    if not ctx.enabled:
        return model
    broadcast_parameters(model)
    if cfg.activation_checkpointing:
        _checkpoint_blocks(model)
    if cfg.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: the auxiliary head gets no gradient when there is no aux target
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (ctx.world,))
    kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": cfg.reshard_after_forward}
    kw["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.cpu_offload else OffloadPolicy()
    policy = fp32_policy = MixedPrecisionPolicy()
    if cfg.mixed_precision != "none":
        dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        # the recurrence's own unit: float32 parameters and inputs, its output handed on in the compute dtype
        fp32_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, output_dtype=dtype)
    units = blocks(model)
    for block in units:
        fully_shard(block, mp_policy=fp32_policy if keeps_fp32(block) else policy, **kw)
    fully_shard(model, mp_policy=policy, **kw)
    set_prefetch(units, cfg.prefetch.forward, cfg.prefetch.backward)
    return model


def set_prefetch(units: list[nn.Module], forward: int, backward: int) -> None:
    """FSDP2's explicit prefetch over ``units`` (in forward order): each unit's forward all-gathers the next
    ``forward`` units, each unit's backward the ``backward`` units before it; 0 keeps FSDP2's implicit default."""
    for i, unit in enumerate(units):
        if forward:
            after = units[i + 1:i + 1 + forward]
            if after:
                unit.set_modules_to_forward_prefetch(after)  # type: ignore[operator]
        if backward:
            before = units[max(i - backward, 0):i][::-1]  # nearest first: the backward runs in reverse order
            if before:
                unit.set_modules_to_backward_prefetch(before)  # type: ignore[operator]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under a DDP wrapper (FSDP2 works in place, so the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    """FSDP2: accumulate gradients locally (no reduce-scatter) inside the block."""
    model.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)  # type: ignore[operator]


def local_part(idx: Tensor, ctx: DistContext) -> Tensor:
    """This rank's contiguous part of a global batch's indices (the first ``n % world`` ranks take one more)."""
    if not ctx.enabled:
        return idx
    return torch.tensor_split(idx, ctx.world)[ctx.rank]


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sharded_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (local shards of DTensors)."""

    def local(t: Tensor) -> Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    params = sum(local(p).numel() * p.element_size() for p in model.parameters())
    grads = sum(local(p.grad).numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, Tensor):
                    opt += local(v).numel() * v.element_size()
    return {"params": params, "grads": grads, "optimizer": opt, "total": params + grads + opt}
