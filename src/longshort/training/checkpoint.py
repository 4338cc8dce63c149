"""Checkpoints: weights as safetensors, training state as a weights-only torch file, written atomically.

A checkpoint is a directory ``checkpoints/step-NNNNNNN/`` holding ``model.safetensors`` and ``state.pt``.
The tags ``last`` and ``best`` are small JSON pointer files replaced with ``os.replace`` only after the
directory is complete, so a process killed at any instant leaves every tag pointing at a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from longshort.errors import RunDirError

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


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(state_dict_for_saving(model), str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise RunDirError(f"weights file {path} not found")
    model.load_state_dict(load_file(str(path), device=str(next(model.parameters()).device)))


def save_checkpoint(ckpt_dir: Path, tags: list[str], model: nn.Module, state: dict[str, Any], step: int) -> Path:
    """Write weights + state for ``step`` and point each tag at it; drop checkpoints no tag points at."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:09d}"
    final = ckpt_dir / name
    if not final.exists():
        tmp = ckpt_dir / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(state_dict_for_saving(model), str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
        os.replace(tmp, final)
    for tag in tags:
        _atomic_write_text(ckpt_dir / f"{tag}.json", json.dumps({"dir": name, "step": step}))
    live = {json.loads(p.read_text())["dir"] for p in ckpt_dir.glob("*.json")}
    for old in ckpt_dir.glob("step-*"):
        if old.name not in live:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_path(ckpt_dir: Path, tag: str) -> Path | None:
    pointer = ckpt_dir / f"{tag}.json"
    if not pointer.is_file():
        return None
    return ckpt_dir / json.loads(pointer.read_text())["dir"]


def load_state(path: Path) -> dict[str, Any]:
    """Training state, loaded with ``weights_only=True`` (no arbitrary code from the file runs)."""
    return torch.load(path / STATE, map_location="cpu", weights_only=True)


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
    (for the loop's own keys)."""
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
