"""``longshort plan``: model complexity, memory per rank and training time, before training (seed 000's
"Model Complexity Analysis" and time scenarios).

For the classifier a config describes it reports:

1. parameters by component (``SequenceClassifier.parameter_counts``) and their total;
2. memory per rank, in bytes, for no distribution (``none``, one process), ``ddp`` and ``fsdp`` (FSDP2: one
   ``fully_shard`` per conv, BiLSTM and attention block, then the root) at N ranks:

   - parameters and gradients: the bytes of every parameter tensor (fp32: 4 per element). ddp keeps all of
     them on every rank; fsdp shards each tensor on dim 0, padded up to a multiple of N, so a rank holds
     ``ceil(dim0 / N) * (numel / dim0)`` elements of it;
   - optimizer state: AdamW keeps ``exp_avg`` and ``exp_avg_sq`` (two parameter-sized tensors) plus a scalar
     fp32 ``step`` tensor per parameter tensor (as ``torch.optim.AdamW`` stores it); SGD with momentum one
     ``momentum_buffer``, plain SGD nothing; Lookahead (``optim.lookahead.enabled``) adds a slow copy of the
     parameters. fsdp shards the parameter-sized states like the parameters; the step scalars are per rank;
   - gathered (fsdp only): the transient all-gathered unit during forward and backward, taken as the largest
     wrapped unit's full parameter bytes (units: each ``model.convs[i]``, each ``model.lstms[i]``, each block
     of ``model.attns``, and the root holding the rest);
   - activations, by measurement: one forward in train mode at a small probe batch (2 sequences of the
     configured length) under ``torch.autograd.graph.saved_tensors_hooks``, summing the bytes of the distinct
     storages saved for backward (deduplicated by ``untyped_storage().data_ptr()``, parameters' own storages
     excluded) plus the model's outputs. The assumption: at a fixed sequence length, activation memory is
     linear in the batch, so it is scaled linearly to the per-rank batch (``ceil(train.batch_size / N)`` for
     ddp and fsdp). A second probe forward at twice the probe batch separates the per-sequence slope from a
     batch-independent part (on CPU, oneDNN's LSTM workspace holds a weight-sized buffer per direction), so
     activations = fixed + per-sequence bytes x batch; without it a small probe batch would count that part
     once per sequence. Every sequence is taken at the full padded length, so this is an upper bound for
     variable-length data.

   This counts the tensors the training step keeps, not the allocator's peak: transient buffers inside an
   operation, gradient temporaries during backward, DDP's gradient buckets and FSDP's prefetch of the next unit
   are not included, nor is the CUDA context or allocator fragmentation;
3. training time for ``train.epochs`` epochs: ``k`` real training steps (forward, cross-entropy plus the
   auxiliary loss, backward, clipping, optimizer step) after one warm-up step, at the per-rank batch on this
   machine, times the steps per epoch (``ceil(train size / train.batch_size)``) and the epochs. For N > 1 this
   assumes N devices each as fast as this one and no communication cost (ideal scaling); the measured
   one-process figure is given alongside.

:func:`measured_peak` validates the memory estimate: one real training step, then the actual bytes of the
parameters, gradients and ``optimizer.state`` tensors plus the bytes saved for backward at that batch.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from longshort.config import Config
from longshort.data.pipeline import data_shape, prepare, read_source
from longshort.nn.classifier import SequenceClassifier
from longshort.sizing import DataShape, resolve
from longshort.training.classify import ClassifierObjective
from longshort.training.optim import GradClipper, Lookahead, build_optimizer
from longshort.training.trainer import resolve_device

__all__ = [
    "MemoryRow",
    "activation_bytes_per_sample",
    "activation_profile",
    "measured_peak",
    "memory_rows",
    "plan",
    "print_plan",
    "time_steps",
]

STEP_BYTES = 4  # torch.optim.AdamW's per-tensor ``step``: a 0-dim float32 tensor


@dataclass
class MemoryRow:
    """Bytes per rank for one (strategy, N)."""

    strategy: str  # none | ddp | fsdp
    nproc: int
    params: int
    grads: int
    optimizer: int
    activations: int
    gathered: int  # fsdp: the largest unit's all-gathered parameters; 0 otherwise
    total: int


# -- helpers ------------------------------------------------------------------------------------------------


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sharded_numel(p: Tensor, n: int) -> int:
    """Elements of ``p`` one of ``n`` ranks holds when sharded on dim 0, padded to a multiple of ``n``."""
    if p.dim() == 0:
        return p.numel()  # a scalar is not split (FSDP2 shards on dim 0; the classifier has none)
    rest = p.numel() // p.shape[0] if p.shape[0] else 0
    return math.ceil(p.shape[0] / n) * rest


def _state_factor(cfg: Config) -> tuple[int, bool]:
    """(parameter-sized fp32 states per parameter, whether each parameter tensor also has a ``step`` scalar)."""
    o = cfg.train.optim
    if o.name == "adamw":
        states, step = 2, True
    else:
        states, step = (1 if o.momentum > 0 else 0), False
    return states + (1 if o.lookahead.enabled else 0), step


def _fsdp_units(model: nn.Module) -> list[list[nn.Parameter]]:
    """FSDP2 units as ``fully_shard`` per block then root would make them: each conv, BiLSTM and attention
    block, then the root with every parameter not in a block."""
    blocks: list[nn.Module] = []
    for name in ("convs", "lstms"):
        blocks += list(getattr(model, name, []))
    attns = getattr(model, "attns", None)
    if attns is not None:
        blocks += list(attns.values())
    units = [_params(b) for b in blocks]
    inside = {id(p) for u in units for p in u}
    units.append([p for p in _params(model) if id(p) not in inside])
    return [u for u in units if u]


def _nbytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


@contextmanager
def _saved_storages(model: nn.Module) -> Iterator[dict[int, int]]:
    """Record ``{storage data_ptr: nbytes}`` of every tensor saved for backward inside the block, parameters'
    own storages excluded."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no storage (e.g. a sparse or nested tensor)
            return t
        ptr = s.data_ptr()
        if ptr and ptr not in own:
            seen[ptr] = max(seen.get(ptr, 0), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def _add_outputs(seen: dict[int, int], *outputs: Tensor | None) -> int:
    for t in outputs:
        if t is None:  # ClassifierOutput.cache of a forward without a cache
            continue
        s = t.untyped_storage()
        seen.setdefault(s.data_ptr(), s.nbytes())
    return sum(seen.values())


def _probe_batch(batch: int, length: int, input_dim: int, num_classes: int, device: torch.device,
                 seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random full-length inputs, labels and aux targets (from their own generator: global RNG untouched)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, input_dim, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    aux = torch.randn(batch, generator=g)
    lengths = torch.full((batch,), length, dtype=torch.long)
    return x.to(device), lengths.to(device), y.to(device), aux.to(device)


def _loss(out: Any, y: Tensor, aux: Tensor, cfg: Config) -> Tensor:
    """The trainer's objective (:class:`~longshort.training.classify.ClassifierObjective`: train.loss plus the
    auxiliary loss at its weight) on the probe batch, class weights from the probe's labels."""
    return ClassifierObjective(cfg.train.loss, y, out.logits.shape[1])(out, y, aux)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the estimate -------------------------------------------------------------------------------------------


def _saved_bytes(model: nn.Module, batch: int, length: int, input_dim: int) -> int:
    """Bytes saved for backward plus outputs in one forward of ``batch`` random full-length sequences."""
    num_classes = int(getattr(model, "num_classes", 2))
    x, lengths, _, _ = _probe_batch(batch, length, input_dim, num_classes, _device(model))
    with _saved_storages(model) as seen:
        out = model(x, lengths)
    return _add_outputs(seen, *out)


def activation_profile(model: nn.Module, length: int, input_dim: int, probe_batch: int = 2) -> tuple[float, int]:
    """(bytes per sequence, batch-independent bytes) of the activations saved for backward, from train-mode
    forwards at ``probe_batch`` and ``2 * probe_batch`` sequences of ``length`` steps (a line through both).
    The model's mode is restored; its weights are not changed."""
    if probe_batch < 1:
        raise ValueError(f"probe_batch must be >= 1, got {probe_batch}")
    was_training = model.training
    model.train()
    try:
        small = _saved_bytes(model, probe_batch, length, input_dim)
        large = _saved_bytes(model, 2 * probe_batch, length, input_dim)
    finally:
        model.train(was_training)
    per_sample = (large - small) / probe_batch
    fixed = round(small - per_sample * probe_batch)
    if fixed < 0 or per_sample <= 0:  # not the expected shape: fall back to plain proportional scaling
        return large / (2 * probe_batch), 0
    return per_sample, fixed


def activation_bytes_per_sample(model: nn.Module, length: int, input_dim: int, probe_batch: int = 2) -> float:
    """Activation bytes per sequence of ``length`` steps: the slope of :func:`activation_profile` (its
    batch-independent part is passed to :func:`memory_rows` as ``act_fixed_bytes``)."""
    return activation_profile(model, length, input_dim, probe_batch)[0]


def memory_rows(model: nn.Module, cfg: Config, nprocs: list[int], act_bytes_per_sample: float,
                act_fixed_bytes: int = 0) -> list[MemoryRow]:
    """Bytes per rank: ``none`` at N=1, then ``ddp`` and ``fsdp`` at each N of ``nprocs``. Activations are
    ``act_fixed_bytes + act_bytes_per_sample * per-rank batch``."""
    params = _params(model)
    param_bytes = _nbytes(params)
    states, step = _state_factor(cfg)
    step_bytes = STEP_BYTES * len(params) if step else 0
    global_batch = cfg.train.batch_size
    largest_unit = max((_nbytes(u) for u in _fsdp_units(model)), default=0)

    def acts(n: int) -> int:
        return act_fixed_bytes + round(act_bytes_per_sample * math.ceil(global_batch / n))

    def row(strategy: str, n: int, p: int, g: int, o: int, a: int, gathered: int) -> MemoryRow:
        return MemoryRow(strategy, n, p, g, o, a, gathered, p + g + o + a + gathered)

    opt_full = states * param_bytes + step_bytes
    rows = [row("none", 1, param_bytes, param_bytes, opt_full, acts(1), 0)]
    for n in nprocs:
        rows.append(row("ddp", n, param_bytes, param_bytes, opt_full, acts(n), 0))
    for n in nprocs:
        shard = sum(_sharded_numel(p, n) * p.element_size() for p in params)
        rows.append(row("fsdp", n, shard, shard, states * shard + step_bytes, acts(n), largest_unit))
    return rows


# -- measurements -------------------------------------------------------------------------------------------


def _step(model: nn.Module, opt: torch.optim.Optimizer, clipper: GradClipper, cfg: Config,
          batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
    x, lengths, y, aux = batch
    opt.zero_grad(set_to_none=True)
    _loss(model(x, lengths), y, aux, cfg).backward()
    clipper.clip(model)
    opt.step()


def measured_peak(model: nn.Module, cfg: Config, batch: int, length: int, input_dim: int,
                  num_classes: int) -> dict[str, int]:
    """One real training step on a copy of ``model`` at ``batch``; the actual bytes of its parameters,
    gradients and optimizer state afterwards, and of the tensors saved for backward (plus outputs) during it."""
    m = copy.deepcopy(model).train()
    opt = build_optimizer(m, cfg.train.optim)
    clipper = GradClipper(cfg.train.optim)
    x, lengths, y, aux = _probe_batch(batch, length, input_dim, num_classes, _device(m))
    opt.zero_grad(set_to_none=True)
    with _saved_storages(m) as seen:
        out = m(x, lengths)
    activations = _add_outputs(seen, *out)
    _loss(out, y, aux, cfg).backward()
    clipper.clip(m)
    opt.step()
    params = _params(m)
    states: list[Tensor] = [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]
    if isinstance(opt, Lookahead):
        states += list(opt.slow.values())
    result = {
        "params": _nbytes(params),
        "grads": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer": sum(t.numel() * t.element_size() for t in states),
        "activations": activations,
    }
    result["total"] = sum(result.values())
    return result


def time_steps(model: nn.Module, cfg: Config, batch: int, length: int, input_dim: int, num_classes: int,
               steps: int = 3) -> float:
    """Seconds per training step (forward, loss, backward, clip, optimizer step) at ``batch``: the mean of
    ``steps`` timed steps after one warm-up step, on a copy of ``model`` on its device."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    m = copy.deepcopy(model).train()
    device = _device(m)
    opt = build_optimizer(m, cfg.train.optim)
    clipper = GradClipper(cfg.train.optim)
    data = _probe_batch(batch, length, input_dim, num_classes, device)
    _step(m, opt, clipper, cfg, data)  # warm-up: allocations, kernel selection, lazy optimizer state
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        _step(m, opt, clipper, cfg, data)
    _sync(device)
    return (time.perf_counter() - start) / steps


# -- the plan -----------------------------------------------------------------------------------------------


# -- process memory (RSS), calibrated by two probe runs ---------------------------------------------------------


class RSSPeak:
    """``with RSSPeak() as p: ...`` then ``p.peak``: the peak resident memory of this process inside the block,
    above where it stood at the start, sampled by a thread every ~0.2 ms from /proc/self/statm (Linux). The
    kernel's own peak (ru_maxrss) cannot be reset and would include import-time peaks."""

    def __init__(self) -> None:
        import threading
        from pathlib import Path

        self._statm, self._page = Path("/proc/self/statm"), os.sysconf("SC_PAGE_SIZE")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start = self.top = 0

    def rss(self) -> int:
        return int(self._statm.read_text().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._done.is_set():
            self.top = max(self.top, self.rss())
            time.sleep(0.0002)

    def __enter__(self) -> RSSPeak:
        self.start = self.top = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.top = max(self.top, self.rss())

    @property
    def peak(self) -> int:
        return self.top - self.start


def _rss_probe(cfg: Config, batch: int, length: int, input_dim: int, num_classes: int) -> int:
    """In this (fresh) process: :class:`RSSPeak` of two real training steps at ``batch`` (after a batch-1 step, so
    library start-up is not counted)."""
    torch.manual_seed(cfg.seed)
    model = SequenceClassifier(input_dim, num_classes, cfg.model)
    opt = build_optimizer(model, cfg.train.optim)
    clipper = GradClipper(cfg.train.optim)
    _step(model, opt, clipper, cfg, _probe_batch(1, length, input_dim, num_classes, torch.device("cpu")))
    probe = _probe_batch(batch, length, input_dim, num_classes, torch.device("cpu"))
    with RSSPeak() as watch:
        for _ in range(2):
            _step(model, opt, clipper, cfg, probe)
    return watch.peak


def rss_profile(cfg: Config, length: int, input_dim: int, num_classes: int, batches: tuple[int, int] = (8, 16)
                ) -> tuple[float, float] | None:
    """(bytes per sequence, fixed bytes) of the process's peak resident memory during training, fitted to two probe
    runs in fresh processes (peak RSS cannot be reset inside one); None where /proc is missing (not Linux)."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/statm").is_file():
        return None
    peaks = []
    for b in batches:
        job = {"config": cfg.model_dump(mode="json"), "batch": b, "length": length, "input_dim": input_dim,
               "num_classes": num_classes}
        out = subprocess.run([sys.executable, "-m", "longshort.plan", "--rss-probe"], input=json.dumps(job),
                             capture_output=True, text=True, check=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        peaks.append(int(out.stdout.strip().splitlines()[-1]))
    slope = (peaks[1] - peaks[0]) / (batches[1] - batches[0])
    return slope, peaks[0] - slope * batches[0]


def plan(cfg: Config, nprocs: list[int] | None = None, measure_steps: int = 3, rss: bool = True) -> dict[str, Any]:
    """Parameters, memory per rank and training-time estimate for ``cfg``'s classifier, as a JSON-able dict."""
    if cfg.task != "classify":
        raise ValueError(f"plan covers the classifier (task: classify), got task: {cfg.task}")
    ns = list(dict.fromkeys(nprocs or [1, 2, 4, 8]))
    if any(n < 1 for n in ns):
        raise ValueError(f"nproc must be >= 1, got {ns}")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    raw = read_source(cfg.data.source, cfg.data, cfg.seed)
    cfg, _ = resolve(cfg, DataShape(*data_shape(raw, cfg.data)))  # the model and budget a run would choose
    splits = prepare(cfg.data, cfg.seed, raw)
    input_dim, num_classes = splits.train.n_features, len(splits.prep.class_names)
    length = splits.train.steps
    device = resolve_device(cfg.train.device)
    model = SequenceClassifier(input_dim, num_classes, cfg.model).to(device)

    components = model.parameter_counts()
    per_sample, fixed = activation_profile(model, length, input_dim)
    rows = memory_rows(model, cfg, ns, per_sample, fixed)
    rss_fit = rss_profile(cfg, length, input_dim, num_classes) if rss and device.type == "cpu" else None
    rss_rows = {}
    if rss_fit is not None:
        none_state = next(r for r in rows if r.strategy == "none")
        full_state = none_state.params + none_state.grads + none_state.optimizer
        for r in rows:  # the probe's fit at this rank's batch, less the state FSDP shards away
            b = math.ceil(cfg.train.batch_size / r.nproc) if r.strategy != "none" else cfg.train.batch_size
            saved = full_state - (r.params + r.grads + r.optimizer)
            rss_rows[f"{r.strategy}:{r.nproc}"] = int(rss_fit[1] + rss_fit[0] * b - saved)

    global_batch = cfg.train.batch_size
    train_size = len(splits.train)
    steps_per_epoch = math.ceil(train_size / global_batch)
    epochs = cfg.train.epochs
    per_rank = {n: math.ceil(global_batch / n) for n in sorted({1, *ns})}
    timed: dict[int, float] = {}
    for b in sorted(set(per_rank.values()), reverse=True):
        timed[b] = time_steps(model, cfg, b, length, input_dim, num_classes, measure_steps)
    seconds = {str(n): timed[b] for n, b in per_rank.items()}
    estimated = {str(n): timed[b] * steps_per_epoch * epochs for n, b in per_rank.items()}

    o = cfg.train.optim
    opt_desc = ("AdamW: exp_avg + exp_avg_sq (fp32) and a 4-byte step per parameter tensor" if o.name == "adamw"
                else f"SGD: {'one momentum buffer' if o.momentum > 0 else 'no state (momentum 0)'}")
    notes = [
        f"data: {train_size} training sequences of {length} steps, {input_dim} features, {num_classes} classes",
        f"parameters fp32 ({next(model.parameters()).element_size()} bytes); optimizer {opt_desc}"
        + ("; Lookahead adds a slow copy of the parameters" if o.lookahead.enabled else ""),
        f"activations measured: tensors saved for backward in train-mode forwards of 2 and 4 sequences "
        f"({per_sample / 2**10:,.1f} KiB per sequence + {fixed / 2**10:,.1f} KiB fixed), scaled linearly to the "
        "per-rank batch ceil(train.batch_size / N); assumes activation memory linear in the batch at fixed "
        "length, every sequence at the full padded length",
        "fsdp: FSDP2 fully_shard per conv/BiLSTM/attention block then root; params, grads and parameter-sized "
        "optimizer states sharded on dim 0 (padded to a multiple of N); gathered = the largest unit's full "
        "parameters (the root stays gathered through forward in FSDP2 and the next unit may be prefetched, so "
        "the true transient can be larger)",
        "memory counts the tensors training keeps, not the allocator peak (no operation workspaces, gradient "
        "temporaries, DDP buckets, CUDA context or fragmentation)",
        *(["process peak (RSS): fitted to two training steps at batch 8 and 16 run in fresh processes on this "
           f"machine ({rss_fit[0] / 2**20:.2f} MiB per sequence + {rss_fit[1] / 2**20:.1f} MiB), at the per-rank "
           "batch; what the operating system sees, allocator and workspaces included"] if rss_fit else []),
        f"time: mean of {measure_steps} training steps after 1 warm-up on {device.type} "
        f"({torch.get_num_threads()} CPU threads), times {steps_per_epoch} steps/epoch x {epochs} epochs",
        "N > 1: assumes N devices each as fast as this one and no communication cost (ideal scaling); the "
        f"measured 1-process figure is {estimated['1']:,.1f} s at batch {global_batch}",
    ]
    if cfg.train.resolved_phases():
        notes.append("train.phases may change the batch size per phase; this plan uses train.batch_size")
    return {
        "input_dim": input_dim,
        "num_classes": num_classes,
        "length": length,
        "device": device.type,
        "components": components,
        "total_params": sum(components.values()),
        "param_tensors": len(_params(model)),
        "optimizer": o.name,
        "activation_bytes_per_sample": per_sample,
        "activation_fixed_bytes": fixed,
        "global_batch": global_batch,
        "per_rank_batch": {str(n): b for n, b in per_rank.items()},
        "memory": [asdict(r) | ({"rss": rss_rows[f"{r.strategy}:{r.nproc}"]} if rss_rows else {}) for r in rows],
        "seconds_per_step": seconds,
        "train_size": train_size,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "estimated_seconds": estimated,
        "notes": notes,
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f}"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:,.1f} s"
    if s < 7200:
        return f"{s / 60:,.1f} min"
    return f"{s / 3600:,.1f} h"


def print_plan(result: dict[str, Any], console: Console) -> None:
    """Rich tables: parameters by component, memory per rank (MiB), time estimate; then the notes."""
    total = result["total_params"]
    t = Table(title="parameters by component", show_edge=False)
    t.add_column("component")
    t.add_column("parameters", justify="right")
    t.add_column("share", justify="right")
    for name, n in result["components"].items():
        t.add_row(name, f"{n:,}", f"{100 * n / total:.1f}%" if total else "-")
    t.add_row("total", f"{total:,}", "100.0%", style="bold")
    console.print(t)

    m = Table(title="memory per rank (MiB)", show_edge=False)
    has_rss = bool(result["memory"]) and "rss" in result["memory"][0]
    cols = ["strategy", "N", "batch/rank", "params", "grads", "optimizer", "activations", "gathered", "total"]
    for col in cols + (["process (RSS)"] if has_rss else []):
        m.add_column(col, justify="left" if col == "strategy" else "right")
    for r in result["memory"]:
        m.add_row(r["strategy"], str(r["nproc"]), str(result["per_rank_batch"][str(r["nproc"])]), _mib(r["params"]),
                  _mib(r["grads"]), _mib(r["optimizer"]), _mib(r["activations"]), _mib(r["gathered"]),
                  _mib(r["total"]), *([_mib(r["rss"])] if has_rss else []))
    console.print(m)

    s = Table(title=f"training time ({result['epochs']} epochs x {result['steps_per_epoch']} steps)", show_edge=False)
    for col in ("N", "batch/rank", "s/step", "estimated"):
        s.add_column(col, justify="right")
    for n, est in result["estimated_seconds"].items():
        s.add_row(n, str(result["per_rank_batch"][n]), f"{result['seconds_per_step'][n]:.4f}", _duration(est))
    console.print(s)
    for note in result["notes"]:
        console.print(f"note: {note}")


if __name__ == "__main__":  # the --rss-probe worker of rss_profile: a config on stdin, the peak in bytes on stdout
    import sys

    if sys.argv[1:] == ["--rss-probe"]:
        from longshort.config import validate

        job = json.loads(sys.stdin.read())
        print(_rss_probe(validate(job["config"]), job["batch"], job["length"], job["input_dim"], job["num_classes"]))
