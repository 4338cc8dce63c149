"""The Python API, mirroring the CLI: ``train(config) -> Run``, ``load(run_dir) -> Run``, ``Run.predict``.

``train`` writes a run directory (the unit users share, compare, resume and deploy; its files are listed in
:mod:`longshort.runs`, which loads it back: ``Run`` and ``load`` are re-exported here).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from longshort.config import Config, load_config, save_config, validate
from longshort.data.batching import to_tensors
from longshort.data.builtin import BUILTINS
from longshort.data.pipeline import Splits, data_shape, prepare, read_source, target_kind
from longshort.data.types import SequenceData, SeriesData
from longshort.errors import ConfigError, RunDirError
from longshort.evaluate.metrics import classification_metrics, regression_metrics
from longshort.evaluate.predict import batched_head, batched_proba
from longshort.finish import after_training
from longshort.nn.classifier import SequenceClassifier, training_memory
from longshort.nn.regression import regression_outputs
from longshort.report.plots import confusion_matrix_png, learning_curve_png, predicted_vs_true_png
from longshort.rundir import RunLock, absolute_sources, check_out_dir
from longshort.rundir import say_resumed as _say_resumed
from longshort.runs import RegressRun
from longshort.runs import Run as Run
from longshort.runs import load as load
from longshort.sizing import LONG_SERIES, DataShape, resolve
from longshort.training.callbacks import Callback, HistoryCSV, PlainProgress, ProgressBar, TensorBoard
from longshort.training.checkpoint import checkpoint_path, head_size, load_weights, save_weights
from longshort.training.classify import classifier_trainer
from longshort.training.distributed import DistContext, barrier, shutdown
from longshort.training.distributed import setup as setup_distributed
from longshort.training.regress import RegressTask
from longshort.training.trainer import Trainer, resolve_device


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


# -- training ----------------------------------------------------------------------------------------


def default_run_dir(cfg: Config) -> Path:
    """``runs/<date>-<time>-<data>`` (taken by a run started in the same second, train adds a random suffix)."""
    src = cfg.data.source.removeprefix("builtin:")
    stem = Path(src).stem or "data"
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{stem}"


def _callbacks(cfg: Config, run_dir: Path, console: Console, extra: list[Callback] | None = None) -> list[Callback]:
    style = cfg.train.progress
    if style == "auto":
        style = "rich" if console.is_terminal else "plain"
    cbs: list[Callback] = [HistoryCSV(run_dir / "history.csv")]
    if style == "rich":
        cbs.append(ProgressBar(console))
    elif style == "plain":
        cbs.append(PlainProgress())
    if cfg.train.tensorboard:
        cbs.append(TensorBoard(run_dir / "tb"))
    if cfg.diagnostics.enabled:
        from longshort.diagnostics.trajectory import ParamTrajectory

        cbs.append(ParamTrajectory(run_dir))
    if cfg.train.mlflow.uri:
        from longshort.training.tracking import MLflowLogger

        cbs.append(MLflowLogger(cfg, run_dir))
    return cbs + list(extra or [])


def _describe(splits: Splits, model: SequenceClassifier, batch_size: int, console: Console) -> None:
    for note in splits.notes:
        console.print(f"data: {note}")
    sizes = {k: len(v) for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v}
    prep = splits.prep
    if prep.regression:
        what = "targets " + ", ".join(f"{name} (training mean {m:.4g}, std {sd:.4g})" for name, m, sd in
                                      zip(prep.target_names, prep.target_mean, prep.target_std, strict=True))
    else:
        counts = np.bincount(np.asarray(splits.train.y), minlength=len(prep.class_names))
        what = "classes " + ", ".join(f"{c} {n}" for c, n in zip(prep.class_names, counts, strict=True))
    console.print("data: " + ", ".join(f"{k} {n}" for k, n in sizes.items()) + " sequences; "
                  f"{splits.train.n_features} features; {what}")
    if len(splits.train) <= batch_size:
        console.print(f"[yellow]warning:[/] the training split ({len(splits.train)} sequences) fits in one batch "
                      f"(train.batch_size={batch_size}): one optimizer step per epoch; a smaller batch "
                      "usually trains better")
    table = Table(title="parameters", show_edge=False)
    table.add_column("component")
    table.add_column("parameters", justify="right")
    counts_by = model.parameter_counts()
    for name, n in counts_by.items():
        table.add_row(name, f"{n:,}")
    table.add_row("total", f"{sum(counts_by.values()):,}", style="bold")
    console.print(table)


def train(config: Config | dict[str, Any] | str | Path | None = None, *, out: str | Path | None = None,
          resume: str | Path | None = None, console: Console | None = None, data: Any = None,
          test_data: Any = None, callbacks: list[Callback] | None = None) -> Any:
    """Train a model and write a run directory; with ``resume`` continue that run from its last checkpoint.

    ``data`` / ``test_data``: the training and test data in memory, instead of ``data.source`` /
    ``data.test_source`` (``(X, y)``, ``(X, y, lengths)``, a dict of those, a list of 2-D arrays with a ``y``,
    or a pandas DataFrame; see :mod:`longshort.data.memory`). They are kept in ``RUN_DIR/data/`` and
    ``config.yaml`` points at them, so the run reruns from its directory alone. ``callbacks``: your own
    :class:`~longshort.training.callbacks.Callback` objects, called after the built-in ones (docs/python.md).

    Under torchrun (``distributed.strategy`` ddp or fsdp) every process calls this; rank 0 alone prints, writes
    the run directory's files and returns the :class:`Run` (the other ranks return None)."""
    console = console or _console()
    staged: Path | None = None
    if resume is not None:
        if data is not None or test_data is not None:
            raise ConfigError("resume continues a run on its own data: pass neither data nor test_data")
        run_dir = Path(resume)
        check_out_dir(run_dir, resume=True)
        cfg = load_config(run_dir / "config.yaml")
    else:
        cfg = config if isinstance(config, Config) else (
            validate(config or {}) if isinstance(config, dict | None) else load_config(config))
        cfg, staged = _stage_memory(cfg, data, test_data)
        run_dir = Path(out) if out else default_run_dir(cfg)
    try:
        run = _train(cfg, run_dir, resume, console, callbacks, named=out is not None or resume is not None)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    if staged is not None:
        _keep_staged(staged, run_dir, run)
    return run


def _stage_memory(cfg: Config, data: Any, test_data: Any) -> tuple[Config, Path | None]:
    """``cfg`` reading in-memory ``data`` / ``test_data`` from files written into a temporary directory (moved
    into the run directory by :func:`_keep_staged` once the run exists)."""
    from longshort.data.memory import write_source

    if data is None and test_data is None:
        return cfg, None
    staged = Path(tempfile.mkdtemp(prefix="longshort-data-"))
    update: dict[str, Any] = {}
    try:
        if data is not None:
            update["source"] = str(write_source(data, staged, "train"))
        if test_data is not None:
            update["test_source"] = str(write_source(test_data, staged, "test"))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    raw = cfg.model_dump(mode="json", exclude_unset=True)
    raw.setdefault("data", {}).update(update)
    return validate(raw), staged


def _keep_staged(staged: Path, run_dir: Path, run: Any) -> None:
    """Move the staged data files into ``RUN_DIR/data/`` and point ``config.yaml`` (and ``run.config``) at
    them."""
    files = list(staged.iterdir())
    if run is None or not files or not (run_dir / "config.yaml").is_file():  # (None: not rank 0 under torchrun)
        shutil.rmtree(staged, ignore_errors=True)
        return
    keep = run_dir / "data"
    keep.mkdir(exist_ok=True)
    moved = {str(f): str((keep / f.name).resolve()) for f in files}
    for f in files:
        shutil.move(str(f), keep / f.name)
    shutil.rmtree(staged, ignore_errors=True)
    cfg = load_config(run_dir / "config.yaml")
    for key in ("source", "test_source"):
        value = getattr(cfg.data, key)
        if value and str(Path(value)) in moved:
            setattr(cfg.data, key, moved[str(Path(value))])
    save_config(cfg, run_dir / "config.yaml")
    if hasattr(run, "config"):
        run.config = cfg


def _train(cfg: Config, run_dir: Path, resume: str | Path | None, console: Console,
           extra: list[Callback] | None, named: bool) -> Any:
    ctx = setup_distributed(cfg.distributed, resolve_device(cfg.train.device))
    lock = RunLock(run_dir)
    try:
        run_dir, lock = _agree_on_run_dir(run_dir, resume is not None, ctx, named=named)
        if not ctx.is_main:
            console = Console(quiet=True)
        if cfg.task == "seq2seq":
            from longshort.seq2seq_run import train_seq2seq

            callbacks = _callbacks(cfg, run_dir, console, extra) if ctx.is_main else []
            return train_seq2seq(cfg, run_dir, resume is not None, console, callbacks, ctx)
        if cfg.task == "forecast":
            from longshort.forecast_run import train_forecast

            return train_forecast(cfg, run_dir, resume is not None, console,
                                  lambda c: _callbacks(c, run_dir, console, extra))
        return _train_classifier(cfg, run_dir, resume is not None, console, ctx, extra)
    finally:
        lock.release()
        shutdown(ctx)


def _agree_on_run_dir(run_dir: Path, resume: bool, ctx: DistContext, named: bool) -> tuple[Path, RunLock]:
    """Rank 0's run directory for every rank (a default name has the time in it), its checks for all, and the
    directory's lock (rank 0 takes it for the job, before anything is written). A default name another run
    started in the same second holds gets a random suffix instead; a name the user gave is refused."""
    error, lock = None, RunLock(run_dir)
    if ctx.is_main:
        for attempt in range(3):
            lock = RunLock(run_dir)
            try:
                check_out_dir(run_dir, resume)
                lock.acquire()
                check_out_dir(run_dir, resume)  # again, holding the lock: a run that finished meanwhile
                error = None
                break
            except RunDirError as exc:
                lock.release()
                error = str(exc)
                if named or attempt == 2:
                    break
                run_dir = run_dir.with_name(f"{run_dir.name}-{secrets.token_hex(2)}")
    if ctx.enabled:
        import torch.distributed as dist

        shared: list[Any] = [str(run_dir), error]
        dist.broadcast_object_list(shared, src=0)
        run_dir, error = Path(shared[0]), shared[1]
    if error:
        raise RunDirError(error)
    return run_dir, lock


@dataclass
class Recipe:
    """What :func:`setup` builds for one classifier run: the config with every automatic choice made, the data's
    splits, the model and the one trainer ready to ``fit()``, and the automatic choices in words."""

    cfg: Config
    splits: Splits
    model: SequenceClassifier
    trainer: Trainer
    notes: list[str]

    def load_best(self, model: SequenceClassifier | None = None) -> SequenceClassifier:
        """After ``trainer.fit()``: the weights model selection chose (the best checkpoint when a validation
        split chose one, else the final weights) loaded into ``model`` (default: the recipe's own)."""
        model = self.model if model is None else model
        best = checkpoint_path(self.trainer.ckpt_dir, "best")
        if best is not None:
            load_weights(model, best / "model.safetensors")
        return model


def build_trainer(cfg: Config, model: SequenceClassifier, train: SequenceData, val: SequenceData | None,
                  num_classes: int, run_dir: Path, *, callbacks: list[Callback] | None = None,
                  ctx: DistContext | None = None, target_std: list[float] | None = None) -> Trainer:
    """The classifier's trainer from the whole config (its train, distributed and diagnostics sections): what
    train, cv and tune build, so none of them trains with settings of its own. Task regress: the regressor's,
    with ``num_classes`` targets per sequence (``target_std``: their training std, so errors read in the
    target's units)."""
    if cfg.task == "regress":
        task = RegressTask(cfg.train, to_tensors(train), None if val is None else to_tensors(val),
                           regression_outputs(cfg.regress, num_classes), target_std)
        return Trainer(cfg.train, model, task, seed=cfg.seed, run_dir=run_dir, callbacks=callbacks,
                       distributed=cfg.distributed, ctx=ctx, diagnostics=cfg.diagnostics)
    return classifier_trainer(cfg.train, model, to_tensors(train), None if val is None else to_tensors(val),
                              num_classes=num_classes, seed=cfg.seed, run_dir=run_dir, callbacks=callbacks,
                              distributed=cfg.distributed, ctx=ctx, diagnostics=cfg.diagnostics)


def setup(cfg: Config, run_dir: Path, *, callbacks: Callable[[Config], list[Callback]] | None = None,
          ctx: DistContext | None = None, need_validation: bool = False, splits: Splits | None = None) -> Recipe:
    """One classifier recipe for ``longshort train``, every ``tune`` trial and every ``cv`` fold: read the data,
    make the automatic choices for its size (``sizing.resolve``; ``need_validation``: the caller picks by a
    validation metric), split and scale it, build the model and the trainer. ``splits``: the data already split
    and scaled (a cv fold; ``cfg`` is then resolved already). Writes nothing; ``callbacks`` makes the trainer's
    callbacks from the resolved config. A resumed config is resolved already, so it comes back unchanged."""
    ctx = ctx or DistContext()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    notes: list[str] = []
    if splits is None:
        raw = read_source(cfg.data.source, cfg.data, cfg.seed, target=target_kind(cfg.task))
        cfg, notes = resolve(cfg, DataShape(*data_shape(raw, cfg.data)), need_validation=need_validation)
        share = cfg.data.series.cache == "on" or (cfg.data.series.cache == "auto" and ctx.world > 1)
        splits = prepare(cfg.data, cfg.seed, raw, target=target_kind(cfg.task),
                         scale_target=cfg.regress.scale_target,
                         cache_dir=run_dir.parent / ".cache" if share and isinstance(raw, SeriesData) else None)
        if ctx.world == 1:  # mapped: the mappings outlive the files (several processes: after their barrier)
            for path in splits.cached:
                path.unlink(missing_ok=True)
    check_fits(cfg, splits, resolve_device(cfg.train.device))
    model = SequenceClassifier(splits.train.n_features, head_size(cfg, splits.prep), cfg.model)
    outputs = len(splits.prep.target_names) if splits.prep.regression else len(splits.prep.class_names)
    trainer = build_trainer(cfg, model, splits.train, splits.val, outputs, run_dir,
                            callbacks=callbacks(cfg) if callbacks is not None else None, ctx=ctx,
                            target_std=splits.prep.target_std or None)
    return Recipe(cfg, splits, model, trainer, notes)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for a run on ``device`` (CUDA: the device's; CPU: the OS's MemAvailable); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(cfg: Config, splits: Splits, device: torch.device) -> None:
    """Refuse, before anything is allocated, a model and batch whose lower memory estimate exceeds what is free."""
    free = free_memory(device)
    if free is None:
        return
    n_classes = head_size(cfg, splits.prep)
    need, what = training_memory(cfg.model, splits.train.n_features, n_classes,
                                 min(cfg.train.batch_size, len(splits.train)), splits.train.steps,
                                 min(cfg.train.eval_batch_size, max(len(splits.train), 1)))
    if need > free:
        steps = splits.train.steps
        stem = f", raise model.stem_stride for sequences of {steps:,} steps" if steps > LONG_SERIES else ""
        raise ConfigError(
            f"this model and batch need at least {_gb(need)} on {device.type} (mostly {what}), more than the "
            f"{_gb(free)} free: lower train.batch_size or model.hidden_dim{stem}, or use a machine with more "
            "memory")


def _gb(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _train_classifier(cfg: Config, run_dir: Path, resume: bool, console: Console, ctx: DistContext,
                      extra: list[Callback] | None = None) -> Run | None:
    recipe = setup(cfg, run_dir, ctx=ctx,
                   callbacks=(lambda c: _callbacks(c, run_dir, console, extra)) if ctx.is_main else None)
    cfg, splits, model, trainer = recipe.cfg, recipe.splits, recipe.model, recipe.trainer
    if not resume and ctx.is_main:  # only once the data is read: a bad file leaves no half-made run behind
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(absolute_sources(cfg), run_dir / "config.yaml")
    if ctx.is_main:
        splits.prep.save(run_dir / "preprocess.json")
    barrier(ctx)
    if ctx.world > 1 and ctx.is_main:  # every process has mapped the cached rows (one process: in setup)
        for path in splits.cached:
            path.unlink(missing_ok=True)
    resumed = resume and trainer.restore("last")  # before any output: a damaged checkpoint is one line
    for note in recipe.notes:
        console.print(f"auto: {note}")
    _describe(splits, model, cfg.train.batch_size, console)
    if ctx.enabled:
        console.print(f"distributed: {cfg.distributed.strategy} over {ctx.world} processes, global batch "
                      f"{cfg.train.batch_size}")
    _say_resumed(console, run_dir, resume, resumed, trainer)
    trainer.fit()

    if ctx.enabled:  # the full weights rank 0 wrote into the checkpoints: final metrics on a plain model there
        barrier(ctx)
        if not ctx.is_main:
            return None
        model = SequenceClassifier(splits.train.n_features, head_size(cfg, splits.prep), cfg.model)
        last = checkpoint_path(trainer.ckpt_dir, "last")
        assert last is not None
        load_weights(model, last / "model.safetensors")
    recipe.load_best(model)
    save_weights(model, run_dir / "model.safetensors", metadata={"format": "longshort.SequenceClassifier"})
    metrics = _final_metrics(cfg, splits, model, trainer, run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _plots(run_dir, metrics, trainer.history, splits.prep.class_names)
    if splits.prep.regression:
        _regression_plot(run_dir, metrics, cfg, splits, model)
    after_training(cfg, run_dir, console)
    _summary(run_dir, metrics, console)
    return (RegressRun if cfg.task == "regress" else Run)(run_dir, cfg, model, splits.prep)


def regression_predictions(cfg: Config, splits: Splits, model: SequenceClassifier,
                           data: SequenceData) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(point predictions [N, k], quantiles [N, k, L], their levels) for prepared ``data``, in the target's units."""
    outputs = regression_outputs(cfg.regress, len(splits.prep.target_names))
    z = batched_head(model, to_tensors(data), cfg.train.eval_batch_size)
    point = splits.prep.unscale_targets(outputs.point(z).numpy())
    quant = splits.prep.unscale_targets(outputs.quantile_values(z).numpy())
    return point, quant, outputs.levels


def _final_metrics(cfg: Config, splits: Splits, model: SequenceClassifier, trainer: Trainer,
                   run_dir: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, data in (("val", splits.val), ("test", splits.test)):
        if data is not None and data.y is not None and len(data) and splits.prep.regression:
            point, quant, levels = regression_predictions(cfg, splits, model, data)
            truth = splits.prep.unscale_targets(data.y)
            out[name] = regression_metrics(truth, point, splits.prep.target_names, levels, quant)
            if run_dir is not None and cfg.diagnostics.enabled:
                (run_dir / "diagnostics").mkdir(parents=True, exist_ok=True)
                np.savez(run_dir / "diagnostics" / f"predictions_{name}.npz", pred=point, y=truth,
                         quantiles=quant, levels=np.asarray(levels))
        elif data is not None and data.y is not None and len(data):
            proba = batched_proba(model, to_tensors(data), cfg.train.eval_batch_size).numpy()
            out[name] = classification_metrics(data.y, proba, splits.prep.class_names)
            if run_dir is not None and cfg.diagnostics.enabled:  # for the report's reliability diagram
                (run_dir / "diagnostics").mkdir(parents=True, exist_ok=True)
                np.savez(run_dir / "diagnostics" / f"predictions_{name}.npz", proba=proba, y=data.y,
                         class_names=np.asarray(splits.prep.class_names))
    out["best_epoch"] = trainer.early.best_epoch
    out["epochs_run"] = trainer.epoch
    src = cfg.data.source
    builtin = BUILTINS.get(src.removeprefix("builtin:")) if src.startswith("builtin:") else None
    if builtin is not None and builtin.noise_floor is not None:
        out["best_possible"] = {"rmse": builtin.noise_floor,
                                "how": "the true conditional mean: its RMSE is the noise's standard deviation"}
    if builtin is not None and builtin.best_accuracy is not None:
        acc, se = builtin.best_accuracy(cfg.data.builtin.length)
        out["best_possible"] = {"accuracy": acc, "stderr": se,
                                "how": "Bayes-optimal classifier with the true generating parameters"}
    return out


def _plots(run_dir: Path, metrics: dict[str, Any], history: list[dict[str, float]], names: list[str]) -> None:
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    split = "test" if "test" in metrics else "val" if "val" in metrics else None
    if split and "confusion_matrix" in metrics[split]:
        confusion_matrix_png(metrics[split]["confusion_matrix"], names, plots / "confusion_matrix.png",
                             f"confusion matrix ({split})")
    if history:
        learning_curve_png(history, plots / "learning_curve.png")


def _regression_plot(run_dir: Path, metrics: dict[str, Any], cfg: Config, splits: Splits,
                     model: SequenceClassifier) -> None:
    name = "test" if splits.test is not None and len(splits.test) else "val"
    data = splits.test if name == "test" else splits.val
    if data is None or data.y is None or not len(data):
        return
    point, _, _ = regression_predictions(cfg, splits, model, data)
    predicted_vs_true_png(splits.prep.unscale_targets(data.y), point, run_dir / "plots" / "predicted_vs_true.png",
                          f"predicted vs true ({name}, rmse {metrics[name]['rmse']:.4g})")


def _summary(run_dir: Path, metrics: dict[str, Any], console: Console) -> None:
    for split in ("val", "test"):
        if split in metrics and "rmse" in metrics[split]:
            m = metrics[split]
            extra = f"  coverage {m['coverage']:.3f} (nominal {m['coverage_nominal']:.2f})" if "coverage" in m else ""
            console.print(f"{split}: rmse {m['rmse']:.4f}  mae {m['mae']:.4f}  r2 {m['r2']:.4f}{extra}  (n={m['n']})")
        elif split in metrics:
            m = metrics[split]
            console.print(f"{split}: accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  "
                          f"f1_weighted {m['f1_weighted']:.4f}  log_loss {m['log_loss']:.4f}  (n={m['n']})")
    if "best_possible" in metrics and "rmse" in metrics["best_possible"]:
        console.print(f"best possible rmse on this dataset: {metrics['best_possible']['rmse']:.4f} (the true "
                      "conditional mean)")
    elif "best_possible" in metrics:
        b = metrics["best_possible"]
        console.print(f"best possible accuracy on this dataset: {b['accuracy']:.4f} ± {b['stderr']:.4f} "
                      "(Bayes-optimal classifier)")
    print(f"run directory: {run_dir}", file=sys.stdout, flush=True)
