"""The Python API, mirroring the CLI: ``train(config) -> Run``, ``load(run_dir) -> Run``, ``Run.predict``.

A run directory is the unit users share, compare, resume and deploy::

    RUN_DIR/config.yaml         the resolved config (reloads into the same run)
    RUN_DIR/preprocess.json     classes, features and scaling fitted on the training split
    RUN_DIR/model.safetensors   the best weights (by train.early_stopping.metric)
    RUN_DIR/checkpoints/        best and last: weights + optimizer, schedule, RNG, data position
    RUN_DIR/history.csv, tb/    per-epoch metrics (CSV and TensorBoard)
    RUN_DIR/metrics.json        val and test metrics
    RUN_DIR/plots/              confusion_matrix.png, learning_curve.png
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from longshort.config import Config, load_config, save_config, validate
from longshort.data.batching import TensorData, to_tensors
from longshort.data.builtin import BUILTINS
from longshort.data.pipeline import Preprocessor, Splits, data_shape, load_for_model, prepare, read_source
from longshort.data.types import SequenceData
from longshort.errors import LongshortError, RunDirError
from longshort.evaluate.metrics import classification_metrics
from longshort.evaluate.predict import batched_proba
from longshort.nn.classifier import SequenceClassifier
from longshort.report.plots import confusion_matrix_png, learning_curve_png
from longshort.sizing import DataShape, resolve
from longshort.training.callbacks import Callback, HistoryCSV, PlainProgress, ProgressBar, TensorBoard
from longshort.training.checkpoint import checkpoint_path, load_weights, save_weights
from longshort.training.classify import classifier_trainer
from longshort.training.distributed import DistContext, barrier, setup, shutdown
from longshort.training.trainer import Trainer, resolve_device


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


class Run:
    """A trained model with its preprocessing, loaded from (or just written to) a run directory."""

    def __init__(self, run_dir: Path, config: Config, model: SequenceClassifier, prep: Preprocessor) -> None:
        self.dir, self.config, self.model, self.prep = Path(run_dir), config, model, prep
        self.model.eval()

    task = "classify"

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> Run:
        d = Path(run_dir)
        for name in ("config.yaml", "preprocess.json", "model.safetensors"):
            if not (d / name).is_file():
                raise RunDirError(f"{d} is not a finished run directory: {name} is missing")
        cfg = load_config(d / "config.yaml")
        prep = Preprocessor.load(d / "preprocess.json")
        model = SequenceClassifier(len(prep.feature_names), len(prep.class_names), cfg.model).to(device)
        load_weights(model, d / "model.safetensors")
        return cls(d, cfg, model, prep)

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.dir / "metrics.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray | SequenceData, lengths: np.ndarray | None = None,
                      batch_size: int = 256, prepared: bool = False) -> np.ndarray:
        """Class probabilities [N, K] for raw (unscaled) sequences ``x`` [N, T, C] or a SequenceData.

        ``prepared=True`` says ``x`` already went through this run's preprocessing (``load_for_model``).
        """
        data = x if isinstance(x, SequenceData) else _raw_sequences(np.asarray(x, dtype=np.float32), lengths)
        if not prepared:
            data = self.prep.transform(data, labelled=False)
        return _proba(self.model, to_tensors(data), batch_size)

    def predict(self, x: np.ndarray | SequenceData, lengths: np.ndarray | None = None) -> np.ndarray:
        """Predicted class names for each sequence."""
        return np.asarray(self.prep.class_names)[self.predict_proba(x, lengths).argmax(1)]

    def streamer(self, batch_size: int = 1) -> Any:
        """A :class:`~longshort.deploy.streaming.RunStreamer`: feed raw steps of ``batch_size`` streams one at a
        time and get each prefix's class probabilities (needs a model trained with model.bidirectional=false)."""
        from longshort.deploy.streaming import RunStreamer

        return RunStreamer(self, batch_size)

    def evaluate(self, data: str | None = None) -> dict[str, Any]:
        """Metrics on a file (all of it), or on the run's own test split when ``data`` is None."""
        if data is None:
            splits = prepare(self.config.data, self.config.seed)
            test = splits.test
            if test is None:
                raise LongshortError("this run has no test split (split.test=0): pass --data FILE")
        else:
            test = load_for_model(data, self.config.data, self.prep, self.config.seed)
            if test.y is None:
                raise LongshortError(f"{data} has no labels to evaluate against")
        assert test.y is not None
        proba = _proba(self.model, to_tensors(test), self.config.train.eval_batch_size)
        return classification_metrics(test.y, proba, self.prep.class_names)


def _raw_sequences(x: np.ndarray, lengths: np.ndarray | None) -> SequenceData:
    if x.ndim != 3:
        raise LongshortError(f"x must be [N, T, C], got shape {x.shape}")
    n, t, _ = x.shape
    lens = np.full(n, t, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    return SequenceData(X=x, lengths=lens, y=None, feature_names=[], source="array")


def _proba(model: torch.nn.Module, data: TensorData, batch_size: int) -> np.ndarray:
    return batched_proba(model, data, batch_size).numpy()


def load(run_dir: str | Path) -> Any:
    """The run in ``run_dir``: a :class:`Run` (classifier) or a :class:`~longshort.seq2seq_run.Seq2SeqRun`."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise RunDirError(f"{d} is not a finished run directory: config.yaml is missing")
    cfg = load_config(d / "config.yaml")
    if cfg.task == "seq2seq":
        from longshort.seq2seq_run import Seq2SeqRun

        return Seq2SeqRun.load(d, config=cfg)
    return Run.load(d)


# -- training ----------------------------------------------------------------------------------------


def default_run_dir(cfg: Config) -> Path:
    src = cfg.data.source.removeprefix("builtin:")
    stem = Path(src).stem or "data"
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{stem}"


def _callbacks(cfg: Config, run_dir: Path, console: Console) -> list[Callback]:
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
    return cbs


def _describe(splits: Splits, model: SequenceClassifier, batch_size: int, console: Console) -> None:
    for note in splits.notes:
        console.print(f"data: {note}")
    sizes = {k: len(v) for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v}
    counts = np.bincount(np.asarray(splits.train.y), minlength=len(splits.prep.class_names))
    console.print("data: " + ", ".join(f"{k} {n}" for k, n in sizes.items()) + " sequences; "
                  f"{splits.train.n_features} features; classes " +
                  ", ".join(f"{c} {n}" for c, n in zip(splits.prep.class_names, counts, strict=True)))
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
          resume: str | Path | None = None, console: Console | None = None) -> Any:
    """Train a model and write a run directory; with ``resume`` continue that run from its last checkpoint.

    Under torchrun (``distributed.strategy`` ddp or fsdp) every process calls this; rank 0 alone prints, writes
    the run directory's files and returns the :class:`Run` (the other ranks return None)."""
    console = console or _console()
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(f"cannot resume {run_dir}: no config.yaml there")
        cfg = load_config(run_dir / "config.yaml")
    else:
        cfg = config if isinstance(config, Config) else (
            validate(config) if isinstance(config, dict) else load_config(config))
        run_dir = Path(out) if out else default_run_dir(cfg)
    ctx = setup(cfg.distributed, resolve_device(cfg.train.device))
    try:
        if cfg.task == "seq2seq":
            from longshort.seq2seq_run import train_seq2seq

            run_dir = _agree_on_run_dir(run_dir, resume is not None, ctx)
            if not ctx.is_main:
                console = Console(quiet=True)
            callbacks = _callbacks(cfg, run_dir, console) if ctx.is_main else []
            return train_seq2seq(cfg, run_dir, resume is not None, console, callbacks, ctx)
        return _train_classifier(cfg, run_dir, resume is not None, console, ctx)
    finally:
        shutdown(ctx)


def _agree_on_run_dir(run_dir: Path, resume: bool, ctx: DistContext) -> Path:
    """Rank 0's run directory for every rank (a default name has the time in it), and its checks for all."""
    error = None
    if ctx.is_main and not resume and (run_dir / "config.yaml").exists():
        error = (f"run directory {run_dir} already holds a run: resume it with --resume {run_dir} or choose "
                 "another --out")
    if ctx.enabled:
        import torch.distributed as dist

        shared: list[Any] = [str(run_dir), error]
        dist.broadcast_object_list(shared, src=0)
        run_dir, error = Path(shared[0]), shared[1]
    if error:
        raise RunDirError(error)
    return run_dir


def _train_classifier(cfg: Config, run_dir: Path, resume: bool, console: Console, ctx: DistContext) -> Run | None:
    run_dir = _agree_on_run_dir(run_dir, resume, ctx)
    if not ctx.is_main:
        console = Console(quiet=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    raw = read_source(cfg.data.source, cfg.data, cfg.seed)
    cfg, choices = resolve(cfg, DataShape(*data_shape(raw, cfg.data)))  # a resumed config is resolved already
    splits = prepare(cfg.data, cfg.seed, raw)
    if not resume and ctx.is_main:  # only once the data is read: a bad file leaves no half-made run behind
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if ctx.is_main:
        splits.prep.save(run_dir / "preprocess.json")
    barrier(ctx)
    model = SequenceClassifier(splits.train.n_features, len(splits.prep.class_names), cfg.model)
    for note in choices:
        console.print(f"auto: {note}")
    _describe(splits, model, cfg.train.batch_size, console)
    if ctx.enabled:
        console.print(f"distributed: {cfg.distributed.strategy} over {ctx.world} processes, global batch "
                      f"{cfg.train.batch_size}")

    trainer = classifier_trainer(
        cfg.train, model, to_tensors(splits.train), None if splits.val is None else to_tensors(splits.val),
        num_classes=len(splits.prep.class_names), seed=cfg.seed, run_dir=run_dir,
        callbacks=_callbacks(cfg, run_dir, console) if ctx.is_main else [],
        distributed=cfg.distributed, ctx=ctx, diagnostics=cfg.diagnostics,
    )
    if resume and trainer.restore("last"):
        console.print(f"resumed {run_dir} at epoch {trainer.epoch + 1}, batch {trainer.batch}, step {trainer.step}")
    trainer.fit()

    if ctx.enabled:  # the full weights rank 0 wrote into the checkpoints: final metrics on a plain model there
        barrier(ctx)
        if not ctx.is_main:
            return None
        model = SequenceClassifier(splits.train.n_features, len(splits.prep.class_names), cfg.model)
        last = checkpoint_path(trainer.ckpt_dir, "last")
        assert last is not None
        load_weights(model, last / "model.safetensors")
    best = checkpoint_path(trainer.ckpt_dir, "best")
    if best is not None:
        load_weights(model, best / "model.safetensors")
    save_weights(model, run_dir / "model.safetensors", metadata={"format": "longshort.SequenceClassifier"})
    metrics = _final_metrics(cfg, splits, model, trainer, run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _plots(run_dir, metrics, trainer.history, splits.prep.class_names)
    after_training(cfg, run_dir, console)
    _summary(run_dir, metrics, console)
    return Run(run_dir, cfg, model, splits.prep)


def after_training(cfg: Config, run_dir: Path, console: Console) -> None:
    """``diagnostics.analysis``: landscape, Hessian, information flow, attention maps (classifier runs); then
    ``diagnostics.report``: RUN_DIR/report.html. A failure here is reported, not raised: the run is complete."""
    d = cfg.diagnostics
    if d.analysis and cfg.task == "classify":
        from longshort.diagnostics.analyse import analyse_run

        t0 = time.perf_counter()
        with console.status("diagnostics: loss landscape, Hessian, information flow, attention ..."):
            try:
                analyse_run(run_dir, n_batches=d.analysis_batches, seed=cfg.seed)
                console.print(f"diagnostics: {run_dir / 'diagnostics'} ({time.perf_counter() - t0:.0f} s; "
                              "diagnostics.analysis=false skips it)")
            except Exception as exc:  # the trained model is saved: say what failed, go on
                console.print(f"[yellow]diagnostics: analysis failed: {type(exc).__name__}: {exc}[/yellow]")
    if d.report:
        from longshort.report.html import build_report

        try:
            console.print(f"report: {build_report(run_dir)}")
        except Exception as exc:  # as above
            console.print(f"[yellow]report: failed: {type(exc).__name__}: {exc}[/yellow]")


def _final_metrics(cfg: Config, splits: Splits, model: SequenceClassifier, trainer: Trainer,
                   run_dir: Path | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, data in (("val", splits.val), ("test", splits.test)):
        if data is not None and data.y is not None and len(data):
            proba = _proba(model, to_tensors(data), cfg.train.eval_batch_size)
            out[name] = classification_metrics(data.y, proba, splits.prep.class_names)
            if run_dir is not None and cfg.diagnostics.enabled:  # for the report's reliability diagram
                (run_dir / "diagnostics").mkdir(parents=True, exist_ok=True)
                np.savez(run_dir / "diagnostics" / f"predictions_{name}.npz", proba=proba, y=data.y,
                         class_names=np.asarray(splits.prep.class_names))
    out["best_epoch"] = trainer.early.best_epoch
    out["epochs_run"] = trainer.epoch
    src = cfg.data.source
    builtin = BUILTINS.get(src.removeprefix("builtin:")) if src.startswith("builtin:") else None
    if builtin is not None and builtin.best_accuracy is not None:
        acc, se = builtin.best_accuracy(cfg.data.builtin.length)
        out["best_possible"] = {"accuracy": acc, "stderr": se,
                                "how": "Bayes-optimal classifier with the true generating parameters"}
    return out


def _plots(run_dir: Path, metrics: dict[str, Any], history: list[dict[str, float]], names: list[str]) -> None:
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    split = "test" if "test" in metrics else "val" if "val" in metrics else None
    if split:
        confusion_matrix_png(metrics[split]["confusion_matrix"], names, plots / "confusion_matrix.png",
                             f"confusion matrix ({split})")
    if history:
        learning_curve_png(history, plots / "learning_curve.png")


def _summary(run_dir: Path, metrics: dict[str, Any], console: Console) -> None:
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            console.print(f"{split}: accuracy {m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  "
                          f"f1_weighted {m['f1_weighted']:.4f}  log_loss {m['log_loss']:.4f}  (n={m['n']})")
    if "best_possible" in metrics:
        b = metrics["best_possible"]
        console.print(f"best possible accuracy on this dataset: {b['accuracy']:.4f} ± {b['stderr']:.4f} "
                      "(Bayes-optimal classifier)")
    print(f"run directory: {run_dir}", file=sys.stdout, flush=True)
