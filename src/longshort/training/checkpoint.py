"""Checkpoints: weights as safetensors, training state as a weights-only torch file, written atomically.

A checkpoint is a directory ``checkpoints/step-NNNNNNN/`` holding ``model.safetensors`` and ``state.pt``.
The tags ``last`` and ``best`` are small JSON pointer files replaced with ``os.replace`` only after the
directory is complete, so a process killed at any instant leaves every tag pointing at a whole checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from longshort.config import Config, load_config
from longshort.data.pipeline import Preprocessor
from longshort.errors import RunDirError
from longshort.nn.classifier import SequenceClassifier
from longshort.nn.regression import regression_outputs

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


#: the safetensors metadata key of a weights file's checksum (:func:`tensors_sha256` of its tensors)
CHECKSUM = "longshort.sha256"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: what a weights file records of
    itself, so a changed or truncated byte of its data is caught on load (the header is checked by parsing)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_weights(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as safetensors at ``path`` with their checksum in the metadata (written as given: callers
    write to a temporary name and rename)."""
    save_file(tensors, str(path), metadata={**(metadata or {}), CHECKSUM: tensors_sha256(tensors)})


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_weights(state_dict_for_saving(model), tmp, metadata)
    os.replace(tmp, path)


def read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of the weights file ``path``, checked against the checksum it records (files written before
    checksums existed load unchecked). Every way the file can be unreadable is a one-line :class:`RunDirError`
    naming it."""
    if not path.is_file():
        raise RunDirError(f"weights file {path} not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            recorded = (f.metadata() or {}).get(CHECKSUM)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RunDirError(f"{path} is not a readable weights file ({str(exc).splitlines()[0]}); it is damaged or "
                          "not a longshort weights file") from None
    if recorded is not None and tensors_sha256(tensors) != recorded:
        raise RunDirError(f"{path} does not match the checksum it was written with: the file is damaged (a "
                          "changed or truncated byte); restore it or retrain")
    return tensors


def load_weights(model: nn.Module, path: Path) -> None:
    tensors = read_weights(path, next(model.parameters()).device)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise RunDirError(f"{path} does not fit this model ({str(exc).splitlines()[0]})") from None


def save_checkpoint(ckpt_dir: Path, tags: list[str], model: nn.Module, state: dict[str, Any], step: int) -> Path:
    """Write weights + state for ``step`` and point each tag at it; drop checkpoints no tag points at."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:09d}"
    final = ckpt_dir / name
    if not final.exists():
        tmp = ckpt_dir / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_weights(state_dict_for_saving(model), tmp / WEIGHTS)
        torch.save(state, tmp / STATE)
        os.replace(tmp, final)
    _point_tags(ckpt_dir, tags, name, step)
    return final


def _point_tags(ckpt_dir: Path, tags: list[str], name: str, step: int) -> None:
    """Point each tag at checkpoint ``name`` (atomically), then drop checkpoints no tag points at."""
    for tag in tags:
        _atomic_write_text(ckpt_dir / f"{tag}.json", json.dumps({"dir": name, "step": step}))
    live = {json.loads(p.read_text())["dir"] for p in ckpt_dir.glob("*.json")}
    for old in ckpt_dir.glob("step-*"):
        if old.name not in live:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_path(ckpt_dir: Path, tag: str) -> Path | None:
    pointer = ckpt_dir / f"{tag}.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError, TypeError, OSError):
        raise RunDirError(f"{pointer} is damaged (not the checkpoint pointer longshort writes)") from None
    path = ckpt_dir / str(name)
    if not path.is_dir() or path.parent != ckpt_dir:
        raise RunDirError(f"{pointer} points at {name}, which is not a checkpoint in {ckpt_dir}")
    return path


def load_state(path: Path) -> dict[str, Any]:
    """Training state, loaded with ``weights_only=True`` (no arbitrary code from the file runs); a damaged file,
    or one holding anything but tensors and plain values, is a one-line :class:`RunDirError`."""
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"{path / STATE} is missing: the checkpoint is incomplete") from None
    except Exception as exc:  # truncated zip, a pickle weights_only refuses, ...: the loader's own types vary
        raise RunDirError(f"{path / STATE} cannot be read as a longshort checkpoint state "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


def loop_state(trainer: Any) -> dict[str, Any]:
    """The state every training loop checkpoints: optimizer, schedule, grad scaler, early stopping, RNG, position
    (epoch, batch, step, finished), history, clipping and gradient-noise state. Each loop adds its own keys."""
    state: dict[str, Any] = {
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "early_stopping": trainer.early.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "epoch": trainer.epoch,
        "batch": trainer.batch,
        "step": trainer.step,
        "finished": trainer.finished,
        "history": trainer.history,
        "clipper": trainer.clipper.state_dict(),
        "noise": trainer.noise.state_dict(),
    }
    if trainer.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(trainer.device)
    return state


def restore_loop_state(trainer: Any, path: Path) -> dict[str, Any]:
    """Load the weights and :func:`loop_state` of checkpoint ``path`` into ``trainer``; returns the whole state
    (for the loop's own keys). A distributed checkpoint (``path/dcp``) loads on any number of ranks."""
    ctx = getattr(trainer, "dist", None)
    if is_distributed_checkpoint(path):
        s = load_distributed_checkpoint(path, trainer.model, trainer.optimizer, ctx.rank if ctx else 0)
    else:
        if ctx is not None and ctx.enabled:
            raise RunDirError(f"{path} is a single-process checkpoint: resume it with distributed.strategy=none")
        load_weights(trainer.model, path / WEIGHTS)
        s = load_state(path)
        trainer.optimizer.load_state_dict(s["optimizer"])
    trainer.schedule.load_state_dict(s["schedule"])
    trainer.scaler.load_state_dict(s["scaler"])
    trainer.early.load_state_dict(s["early_stopping"])
    torch.set_rng_state(s["rng_cpu"])
    if "rng_cuda" in s and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(s["rng_cuda"], trainer.device)
    trainer.epoch, trainer.batch, trainer.step = int(s["epoch"]), int(s["batch"]), int(s["step"])
    trainer.finished = bool(s["finished"])
    trainer.history = list(s["history"])
    trainer.clipper.load_state_dict(s["clipper"])
    trainer.noise.load_state_dict(s["noise"])
    return s


# -- distributed (DDP / FSDP2): torch.distributed.checkpoint, reshardable to any number of ranks ----------------

DCP_DIR = "dcp"


def save_distributed_checkpoint(ckpt_dir: Path, tags: list[str], model: nn.Module, optimizer: Any,
                                state: dict[str, Any], step: int, rank: int) -> Path:
    """Every rank calls this. Model and optimizer go to ``step-N/dcp`` with torch.distributed.checkpoint (each rank
    writes its shards; a later run may load them on any number of ranks, one process included); rank 0 also writes
    the full model as safetensors (gathered, for evaluation and deployment) and the loop state; each rank its RNG."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    name = f"step-{step:09d}"
    final, tmp = ckpt_dir / name, ckpt_dir / f".{name}.partial"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
    dist.barrier()
    if not final.exists():
        msd, osd = get_state_dict(model, optimizer)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / DCP_DIR))
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        torch.save({"rng_cpu": torch.get_rng_state()}, tmp / f"rng-rank{rank}.pt")
        if rank == 0:
            write_weights({k: v.contiguous() for k, v in full.items()}, tmp / WEIGHTS)
            torch.save({k: v for k, v in state.items() if k != "optimizer"}, tmp / STATE)
        dist.barrier()
        if rank == 0:
            os.replace(tmp, final)
    if rank == 0:
        _point_tags(ckpt_dir, tags, name, step)
    dist.barrier()
    return final


def is_distributed_checkpoint(path: Path) -> bool:
    return (path / DCP_DIR).is_dir()


def load_distributed_checkpoint(path: Path, model: nn.Module, optimizer: Any, rank: int) -> dict[str, Any]:
    """Model and optimizer from ``path/dcp`` into this run's layout (sharded or not, any number of ranks, with or
    without a process group); returns the loop state with ``optimizer`` removed (it is loaded already)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    state = load_state(path)
    own = path / f"rng-rank{rank}.pt"
    if own.is_file():  # same rank exists in the saved run: continue its dropout stream exactly
        state["rng_cpu"] = torch.load(own, weights_only=True)["rng_cpu"]
    return state


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[Config, Preprocessor, SequenceClassifier]:
    """(config, preprocessing, model with the run's weights on ``device``) of the classifier run in ``run_dir``;
    :class:`RunDirError` naming the missing file when it is not a finished run."""
    d = Path(run_dir)
    for name in ("config.yaml", "preprocess.json", "model.safetensors"):
        if not (d / name).is_file():
            raise RunDirError(f"{d} is not a finished run directory: {name} is missing")
    cfg = load_config(d / "config.yaml")
    prep = Preprocessor.load(d / "preprocess.json")
    model = SequenceClassifier(len(prep.feature_names), head_size(cfg, prep), cfg.model).to(device)
    load_weights(model, d / "model.safetensors")
    return cfg, prep, model


def head_size(cfg: Config, prep: Preprocessor) -> int:
    """The classifier's output width for this run: its classes, or task regress's targets x outputs per target."""
    if prep.regression:
        return regression_outputs(cfg.regress, len(prep.target_names)).size
    return len(prep.class_names)
