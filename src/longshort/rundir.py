"""A run directory is owned by one process at a time: an exclusive lock file taken before anything is written.

``RUN_DIR/.longshort.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems) and
holds the owner's pid, host and start time; it is removed when the owner finishes or fails. A second writer
gets a one-line :class:`~longshort.errors.RunDirError` naming the holder. A lock whose pid is gone (the holder was
killed) on this host is stale and taken over; one from another host is reported, since its pid cannot be
checked from here. Hand-written because the standard ``fcntl`` locks vanish silently on some network file
systems and say nothing about who holds them; this file is what a user can inspect.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from longshort.errors import RunDirError

LOCK = ".longshort.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """The lock of ``run_dir``; :meth:`acquire` before writing, :meth:`release` when done."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK
        self.held = False
        self.created_dir = False

    def acquire(self) -> RunLock:
        self.created_dir = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(f"--out {self.dir}: a file of that name exists (choose a directory)") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # removed meanwhile, or being written: try again
                if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)  # stale: its process is gone
                    continue
                since = datetime.fromtimestamp(float(holder.get("since", 0))).strftime("%Y-%m-%d %H:%M:%S")
                raise RunDirError(f"run directory {self.dir} is in use by process {holder.get('pid')} on "
                                  f"{holder.get('host')} (since {since}); wait for it to finish or choose another "
                                  f"--out (if that process is gone, delete {self.path})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunDirError(f"could not take the lock {self.path}: other processes keep taking it")

    def _holder(self) -> dict[str, object] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:  # being written this instant, or damaged: young means the former
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
            if age < 5:
                time.sleep(0.1)
                return None
            return {"pid": -1, "host": socket.gethostname(), "since": 0}  # damaged and old: stale
        return holder if isinstance(holder, dict) else None

    def release(self) -> None:
        """Remove the lock; a directory this process created and left empty goes too (a failed start leaves
        nothing behind that blocks a retry)."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.dir.rmdir()  # only when empty


def check_out_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a ``--out`` that would overwrite something: a file, a non-empty directory that is not a longshort
    run, or a finished run (resume it instead); ``--resume`` of a directory with no run in it."""
    d = Path(run_dir)
    if resume:
        if not (d / "config.yaml").is_file():
            raise RunDirError(f"cannot resume {d}: no config.yaml there")
        if (d / "metrics.json").is_file():
            raise RunDirError(f"cannot resume {d}: it finished (metrics.json is written); nothing was changed. "
                              f"Evaluate or predict with it, or start a new run to train longer")
        return
    if d.exists() and not d.is_dir():
        raise RunDirError(f"--out {d}: a file of that name exists (choose a directory)")
    if (d / "config.yaml").exists():
        raise RunDirError(f"run directory {d} already holds a run: resume it with --resume {d} or choose another "
                          "--out")
    if d.is_dir() and any(p.name != LOCK for p in d.iterdir()):
        raise RunDirError(f"--out {d} is a directory with other files in it, not a longshort run: choose a new or "
                          "empty directory (nothing was written)")


def say_resumed(console: Any, run_dir: Path, resume: bool, resumed: bool, trainer: Any) -> None:
    """What ``--resume`` did: where it continues, or that there was no checkpoint to continue from."""
    if resumed:
        console.print(f"resumed {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch}, step {trainer.step}")
    elif resume:
        console.print(f"resume: {run_dir} has no checkpoint yet (it stopped before its first one): training from "
                      "the start")


def absolute_sources(cfg: Any) -> Any:
    """``cfg`` with ``data.source`` and ``data.test_source`` made absolute when they name files, so the run's
    config.yaml works from any directory (``--resume``, ``evaluate``); built-in names are left alone."""
    update = {}
    for key in ("source", "test_source"):
        value = getattr(cfg.data, key)
        if value and not str(value).startswith("builtin:") and Path(value).exists():
            update[key] = str(Path(value).resolve())
    if not update:
        return cfg
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})
