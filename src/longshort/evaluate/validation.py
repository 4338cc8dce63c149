"""Cross-validation that cannot leak: walk-forward folds for a continuous series, stratified k-fold for independent
sequences. Every fold builds a fresh model and optimizer and fits its own scaling on its own training part.

Continuous series (``data.layout`` series). The series is cut into windows once (``data.series``); window ``i``
ends at row ``e_i``, reads rows ``e_i - window + 1 .. e_i`` and its label reads rows ``e_i + 1 .. e_i + horizon``.
The windows' end rows are divided into ``cv.folds + 1`` consecutive blocks; fold ``k`` tests on block ``k + 1``
(starting at row ``T_k``) and trains on the windows that end before ``T_k - gap``: all of them (``expanding``) or
the last ``cv.train_windows`` (``sliding``). Two windows share no row (features or label) when their end rows
differ by at least ``window + horizon``, so a train window ending at ``T_k - gap - 1`` and the first test window
are disjoint exactly when ``gap >= window + horizon - 1``; a smaller ``cv.gap`` is refused. The default is
``window + horizon``. The last ``cv.val_fraction`` of each fold's training windows is its validation part (early
stopping), with the same purge between them (``cv.embargo``, default ``window + horizon``), so neither early
stopping nor scaling sees a row that a later part labels.

Independent sequences: ``StratifiedKFold`` (scikit-learn, shuffled by the seed); a stratified validation part is
cut from each fold's training part. Task regress: ``KFold`` (shuffled by the seed) and a random validation part,
scored by RMSE, MAE and R² beside the RMSE of predicting the fold's training mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from longshort.errors import ConfigError, DataError
from longshort.evaluate.config import CVConfig as CVConfig


@dataclass
class Fold:
    train: np.ndarray  # indices into the windowed (or independent) sequences
    val: np.ndarray
    test: np.ndarray
    describe: str


def _min_gap(window: int, horizon: int) -> int:
    return window + horizon - 1


def walk_forward(ends: np.ndarray, cfg: CVConfig, window: int, horizon: int) -> list[Fold]:
    """Folds over windows whose last rows are ``ends`` (sorted), as the module docstring says."""
    scheme = "expanding" if cfg.scheme == "auto" else cfg.scheme
    if scheme == "kfold":
        raise ConfigError("cv.scheme=kfold shuffles windows of one series across folds, so train and test would "
                          "share rows: use expanding or sliding for a continuous series")
    gap = window + horizon if cfg.gap is None else cfg.gap
    embargo = window + horizon if cfg.embargo is None else cfg.embargo
    need = _min_gap(window, horizon)
    for name, value in (("cv.gap", gap), ("cv.embargo", embargo)):
        if value < need:
            raise ConfigError(f"{name}={value} would let training and test windows share rows: a window reads "
                              f"{window} rows and its label {horizon} more, so {name} must be >= window + horizon "
                              f"- 1 = {need}")
    n = len(ends)
    blocks = np.array_split(np.arange(n), cfg.folds + 1)
    if min(len(b) for b in blocks) < 2:
        raise DataError("cv", f"{n} windows are too few for {cfg.folds} folds")
    folds = []
    for k in range(cfg.folds):
        test = blocks[k + 1]
        t0 = ends[test[0]]
        train = np.flatnonzero(ends < t0 - gap)
        if scheme == "sliding":
            size = cfg.train_windows or len(blocks[0])
            train = train[-size:]
        if len(train) < 4:
            raise DataError("cv", f"fold {k + 1}: {len(train)} training windows before row {t0} with gap {gap} "
                                  "(fewer folds, a smaller window, or more data)")
        n_val = round(len(train) * cfg.val_fraction)
        val = np.array([], dtype=np.int64)
        if n_val:
            val = train[-n_val:]
            train = train[ends[train] < ends[val[0]] - embargo]
        folds.append(Fold(train, val, test, f"train rows <= {ends[train[-1]]}, "
                          + (f"val rows {ends[val[0]]}-{ends[val[-1]]}, " if len(val) else "")
                          + f"test rows {ends[test[0]]}-{ends[test[-1]]} (window end rows)"))
    return folds


def stratified_folds(y: np.ndarray, cfg: CVConfig, seed: int) -> list[Fold]:
    from sklearn.model_selection import StratifiedKFold, train_test_split

    if cfg.scheme in ("expanding", "sliding"):
        raise ConfigError(f"cv.scheme={cfg.scheme} is for one continuous series; independent sequences use kfold")
    labels = np.asarray([str(v) for v in y])
    folds = []
    for k, (tr, te) in enumerate(StratifiedKFold(cfg.folds, shuffle=True, random_state=seed).split(labels, labels)):
        val = np.array([], dtype=np.int64)
        if cfg.val_fraction > 0:
            _, counts = np.unique(labels[tr], return_counts=True)
            tr, val = train_test_split(tr, test_size=cfg.val_fraction, random_state=seed + k,
                                       stratify=labels[tr] if counts.min() >= 2 else None)
        folds.append(Fold(np.sort(tr), np.sort(val), np.sort(te), f"stratified fold {k + 1} of {cfg.folds}"))
    return folds


def random_folds(n: int, cfg: CVConfig, seed: int) -> list[Fold]:
    """K shuffled folds of ``n`` independent sequences with a numeric target (task regress)."""
    from sklearn.model_selection import KFold, train_test_split

    if cfg.scheme in ("expanding", "sliding"):
        raise ConfigError(f"cv.scheme={cfg.scheme} is for one continuous series; independent sequences use kfold")
    if n < 2 * cfg.folds:
        raise DataError("cv", f"{n} sequences are too few for {cfg.folds} folds")
    folds = []
    for k, (tr, te) in enumerate(KFold(cfg.folds, shuffle=True, random_state=seed).split(np.arange(n))):
        val = np.array([], dtype=np.int64)
        if cfg.val_fraction > 0:
            tr, val = train_test_split(tr, test_size=cfg.val_fraction, random_state=seed + k)
        folds.append(Fold(np.sort(tr), np.sort(val), np.sort(te), f"fold {k + 1} of {cfg.folds}"))
    return folds


# the per-fold columns of each task: (metric, baseline, what the baseline is)
_COLUMNS = {"classify": (("accuracy", "f1_macro", "log_loss"), "majority_share", "majority class share"),
            "regress": (("rmse", "mae", "r2"), "mean_rmse", "rmse of the training mean"),
            "forecast": (("mase", "smape", "mae"), "seasonal_naive_mase", "seasonal-naive MASE")}


def run_cv(cfg: Any, out: str | Path, console: Console | None = None, data: Any = None) -> dict[str, Any]:
    """Train and test one fresh model per fold; write ``out/cv.json``, ``out/folds.csv``, ``out/cv.png``.
    ``cfg``: a Config, a config dict or a YAML path (``longshort.cv({"data": {...}}, "runs/cv")``); ``data``:
    in-memory data instead of ``data.source`` (as for ``longshort.train``), kept in ``out/data/``."""
    from longshort.config import Config, load_config, validate

    if not isinstance(cfg, Config):
        cfg = validate(cfg) if isinstance(cfg, dict) else load_config(cfg)
    out = Path(out)
    if data is not None:
        from longshort.data.memory import write_source

        raw = cfg.model_dump(mode="json", exclude_unset=True)
        raw.setdefault("data", {})["source"] = str(write_source(data, out / "data", "train").resolve())
        cfg = validate(raw)

    from longshort.config import save_config
    from longshort.data.batching import to_tensors
    from longshort.data.pipeline import Preprocessor, Splits, layout_of, read_source, target_kind
    from longshort.data.types import SeriesData
    from longshort.data.windows import make_windows
    from longshort.evaluate.metrics import classification_metrics, regression_metrics
    from longshort.evaluate.predict import batched_proba
    from longshort.run import regression_predictions, setup

    console = console or Console(stderr=True)
    if cfg.task not in _COLUMNS:
        raise ConfigError(f"longshort cv covers tasks classify, regress and forecast, not {cfg.task}")
    if cfg.task == "forecast":  # a walk-forward backtest over every series (forecast_run.fold_splits)
        from longshort.forecast_run import forecast_cv

        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        return _finish(forecast_cv(cfg, out, console), cfg, out, console, "expanding")
    target = target_kind(cfg.task)
    raw = read_source(cfg.data.source, cfg.data, cfg.seed, target=target)
    from longshort.data.pipeline import data_shape
    from longshort.sizing import DataShape, resolve

    cfg, choices = resolve(cfg, DataShape(*data_shape(raw, cfg.data)), need_validation=True)  # folds keep a val
    for note in choices:
        console.print(f"auto: {note}")
    layout = layout_of(raw)
    if isinstance(raw, SeriesData):
        s = cfg.data.series
        seqs = make_windows(raw, s)
        assert seqs.order is not None
        folds = walk_forward(np.asarray(seqs.order), cfg.cv, s.window, s.horizon)
    elif target == "value":
        seqs = raw
        folds = random_folds(len(seqs), cfg.cv, cfg.seed)
    else:
        seqs = raw
        assert seqs.y is not None
        folds = stratified_folds(seqs.y, cfg.cv, cfg.seed)
    metrics, baseline, _ = _COLUMNS[cfg.task]
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    rows: list[dict[str, Any]] = []
    for k, fold in enumerate(folds):
        # this fold's training part only
        prep = Preprocessor.fit(seqs.subset(fold.train), layout, cfg.data.scale, target,
                                scale_target=cfg.regress.scale_target, missing=cfg.data.missing)
        val = prep.transform(seqs.subset(fold.val)) if len(fold.val) else None
        test = prep.transform(seqs.subset(fold.test))
        fold_splits = Splits(train=prep.transform(seqs.subset(fold.train)), val=val, test=test, prep=prep)
        # the recipe train and tune use: a fresh model (seeded) and trainer per fold, the fold's best weights
        recipe = setup(cfg, out / f"fold-{k + 1}", splits=fold_splits)
        trainer = recipe.trainer
        trainer.fit()
        model = recipe.load_best()
        assert test.y is not None
        if target == "value":
            truth = prep.unscale_targets(test.y)
            point, quant, levels = regression_predictions(cfg, fold_splits, model, test)
            m = regression_metrics(truth, point, prep.target_names, levels, quant)
            train_mean = prep.unscale_targets(np.zeros((1, len(prep.target_names))))
            base = float(np.sqrt(np.mean((truth - train_mean) ** 2)))
        else:
            proba = batched_proba(model, to_tensors(test), cfg.train.eval_batch_size).numpy()
            m = classification_metrics(test.y, proba, prep.class_names)
            counts = np.bincount(test.y, minlength=len(prep.class_names))
            base = float(counts.max() / counts.sum())
        row = {"fold": k + 1, "train": len(fold.train), "val": len(fold.val), "test": len(fold.test),
               **{key: m[key] for key in metrics}, baseline: base, "best_epoch": trainer.early.best_epoch,
               "split": fold.describe}
        rows.append(row)
        console.print(f"fold {k + 1}/{len(folds)}: " + "  ".join(f"{key} {m[key]:.4f}" for key in metrics[:2])
                      + f"  (train {row['train']}, val {row['val']}, test {row['test']}; {fold.describe})")
    scheme = cfg.cv.scheme if cfg.cv.scheme != "auto" else ("expanding" if layout == "series" else "kfold")
    return _finish(rows, cfg, out, console, scheme)


def _finish(rows: list[dict[str, Any]], cfg: Any, out: Path, console: Console, scheme: str) -> dict[str, Any]:
    """The summary of the folds' ``rows``: cv.json, the table, cv.png and folds.csv."""
    metrics, baseline, _ = _COLUMNS[cfg.task]
    summary = {key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
               for key in (*metrics, baseline)}
    result = {"scheme": scheme, "folds": rows, "summary": summary}
    (out / "cv.json").write_text(json.dumps(result, indent=1))
    _fold_table(rows, summary, console, cfg.task)
    _fold_plot(rows, out / "cv.png", cfg.task)
    import csv

    with open(out / "folds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"cv directory: {out}", flush=True)
    return result


def _fold_table(rows: list[dict[str, Any]], summary: dict[str, Any], console: Console,
                task: str = "classify") -> None:
    metrics, baseline, _ = _COLUMNS[task]
    t = Table(title="cross-validation", show_edge=False)
    for col in ("fold", "train", "val", "test", *metrics, baseline.replace("_share", "")):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["fold"]), str(r["train"]), str(r["val"]), str(r["test"]),
                  *[f"{r[k]:.4f}" for k in (*metrics, baseline)])
    s = summary
    t.add_row("mean ± sd", "", "", "", *[f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in metrics],
              f"{s[baseline]['mean']:.4f}", style="bold")
    console.print(t)


def _fold_plot(rows: list[dict[str, Any]], path: Path, task: str = "classify") -> None:
    from longshort.report.plots import plt

    metrics, baseline, what = _COLUMNS[task]
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(rows), 3.5))
    x = [r["fold"] for r in rows]
    ax.bar(x, [r[metrics[0]] for r in rows], color="#4c72b0", label=metrics[0])
    ax.plot(x, [r[baseline] for r in rows], "k_", markersize=22, mew=2, label=what)
    ax.set_xticks(x)
    ax.set_xlabel("fold")
    if task == "classify":
        ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title(f"cross-validation: test {metrics[0]} per fold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chance_gap(result: dict[str, Any]) -> float:
    """Mean accuracy minus mean majority-class share, in points."""
    s = result["summary"]
    return 100 * (s["accuracy"]["mean"] - s["majority_share"]["mean"])


__all__ = ["CVConfig", "Fold", "chance_gap", "random_folds", "run_cv", "stratified_folds", "walk_forward"]
