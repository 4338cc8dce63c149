"""Seq2seq training: ``train(config)`` with ``task: seq2seq`` lands here (``load(run_dir)`` of such a run is
:class:`longshort.runs.Seq2SeqRun`, re-exported here).

A seq2seq run directory::

    RUN_DIR/config.yaml              the resolved config
    RUN_DIR/vocab_source.json        the source vocabulary (training split only); vocab_source_1.json, ... for
                                     the extra source fields of a multi-modal model
    RUN_DIR/vocab_target.json        the target vocabulary
    RUN_DIR/model.safetensors        the best weights (by train.early_stopping.metric, default val_exact_match)
    RUN_DIR/checkpoints/             best and last, for --resume
    RUN_DIR/history.csv, tb/         per-epoch metrics, incl. sampling_prob and the exposure-bias gap
    RUN_DIR/metrics.json             val and test metrics (greedy, and beam when decode.beam_size > 1)
    RUN_DIR/test_predictions.tsv     source, target, prediction for the test split
    RUN_DIR/plots/                   learning_curve.png, attention.png (one test pair's attention weights)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from longshort.config import Config, save_config
from longshort.data.pair_pipeline import (
    EncodedPairs,
    PairSplits,
    encode_pairs,
    prepare_pairs,
    token_separators,
)
from longshort.data.pairs import PairData
from longshort.evaluate.seq_metrics import sequence_metrics
from longshort.finish import after_training
from longshort.nn.decoding import reference_ids
from longshort.nn.seq2seq import Seq2Seq
from longshort.report.plots import attention_png, learning_curve_png
from longshort.rundir import absolute_sources
from longshort.rundir import say_resumed as _say_resumed
from longshort.runs import Seq2SeqRun as Seq2SeqRun
from longshort.runs import vocab_names
from longshort.training.checkpoint import checkpoint_path, load_weights, save_weights
from longshort.training.distributed import DistContext, barrier
from longshort.training.seq2seq_task import seq2seq_trainer
from longshort.training.trainer import Trainer

# -- training ----------------------------------------------------------------------------------------


def _describe(splits: PairSplits, model: Seq2Seq, cfg: Config, console: Console) -> None:
    for note in splits.notes:
        console.print(f"data: {note}")
    sizes = {k: len(v) for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if v}
    assert splits.train.target is not None
    tl = [len(t) for t in splits.train.target]
    console.print("data: " + ", ".join(f"{k} {n}" for k, n in sizes.items()) + " pairs; vocab source "
                  + " + ".join(str(len(v)) for v in splits.src_vocabs) + f", target {len(splits.tgt_vocab)}; "
                  f"target length {min(tl)}-{max(tl)} (mean {sum(tl) / len(tl):.1f})")
    table = Table(title="parameters", show_edge=False)
    table.add_column("component")
    table.add_column("parameters", justify="right")
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".")[0]
        groups[key] = groups.get(key, 0) + p.numel()
    for name, n in groups.items():
        table.add_row(name, f"{n:,}")
    table.add_row("total", f"{sum(groups.values()):,}", style="bold")
    console.print(table)


def train_seq2seq(cfg: Config, run_dir: Path, resume: bool, console: Console, callbacks: list[Any],
                  ctx: DistContext | None = None) -> Seq2SeqRun | None:
    """Train a seq2seq model into ``run_dir``. Under torchrun (``ctx`` enabled) every rank trains its part of each
    batch; rank 0 alone writes files and returns the run (the others return None)."""
    ctx = ctx or DistContext()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    splits = prepare_pairs(cfg.data, cfg.seed)  # the same split and vocabularies on every rank (from the seed)
    if ctx.is_main:
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(absolute_sources(cfg), run_dir / "config.yaml")
        for v, name in zip(splits.src_vocabs, vocab_names(len(splits.src_vocabs)), strict=True):
            v.save(run_dir / name)
        splits.tgt_vocab.save(run_dir / "vocab_target.json")
    barrier(ctx)
    model = Seq2Seq(splits.src_vocabs, splits.tgt_vocab, cfg.seq2seq.model)
    enc = {k: encode_pairs(v, splits.src_vocabs, splits.tgt_vocab) if v is not None else None
           for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    assert enc["train"] is not None
    trainer = seq2seq_trainer(cfg.train, cfg.seq2seq, model, enc["train"], enc["val"], seed=cfg.seed,
                              run_dir=run_dir, callbacks=callbacks, diagnostics=cfg.diagnostics,
                              distributed=cfg.distributed, ctx=ctx)
    resumed = resume and trainer.restore("last")  # before any output: a damaged checkpoint is one line
    _describe(splits, model, cfg, console)  # DTensor parameters (fsdp) count their global size
    if ctx.enabled:
        console.print(f"distributed: {cfg.distributed.strategy} over {ctx.world} processes, global batch "
                      f"{cfg.train.batch_size}")
    _say_resumed(console, run_dir, resume, resumed, trainer)
    trainer.fit()
    if ctx.enabled:  # the full weights rank 0 wrote into the checkpoints: final metrics on a plain model there
        barrier(ctx)
        if not ctx.is_main:
            return None
        model = Seq2Seq(splits.src_vocabs, splits.tgt_vocab, cfg.seq2seq.model).to(trainer.device)
        last = checkpoint_path(trainer.ckpt_dir, "last")
        assert last is not None
        load_weights(model, last / "model.safetensors")
        trainer.task.plain = model  # type: ignore[attr-defined]  # decode with it, not the (now idle) ranks
    best = checkpoint_path(trainer.ckpt_dir, "best")
    if best is not None:
        load_weights(model, best / "model.safetensors")
    save_weights(model, run_dir / "model.safetensors", metadata={"format": "longshort.Seq2Seq"})
    metrics: dict[str, Any] = {}
    outputs: dict[str, list[list[int]]] = {}  # each split decoded once: greedy, then beam when configured
    for name in ("val", "test"):
        data = enc[name]
        if data is not None and len(data):
            outputs[name] = trainer.task.decode(data, beam=False)
            metrics[name] = trainer.evaluate(data, hyps=outputs[name])
            if cfg.seq2seq.decode.beam_size > 1:
                outputs[name] = trainer.task.decode(data, beam=True)
                metrics[name]["beam"] = sequence_metrics(outputs[name], reference_ids(data))
    metrics["best_epoch"] = trainer.early.best_epoch
    metrics["epochs_run"] = trainer.epoch
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    run = Seq2SeqRun(run_dir, cfg, model, splits.src_vocabs, splits.tgt_vocab)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    if trainer.history:
        learning_curve_png(trainer.history, plots / "learning_curve.png")
    if splits.test is not None and enc["test"] is not None:
        _test_outputs(run, splits.test, enc["test"], outputs["test"], trainer, run_dir)
    after_training(cfg, run_dir, console)
    _summary(run_dir, metrics, console)
    return run


def _test_outputs(run: Seq2SeqRun, test: PairData, enc: EncodedPairs, ids: list[list[int]], trainer: Trainer,
                  run_dir: Path) -> None:
    pred = [run.tgt_vocab.decode(i) for i in ids]  # the decoded test outputs the metrics were computed on
    write_predictions(run_dir / "test_predictions.tsv", test, pred, token_separators(run.config.data, test))
    # attention of the first test pair over its reference target (teacher forced): which source positions each
    # output step read
    model = run.model
    one = enc.take(torch.tensor([0]), trainer.device)
    out_ids = reference_ids(enc)[0]
    tgt_in = one.decoder_input()
    with torch.no_grad():
        weights = model(one.src, one.src_lengths, tgt_in).attention[0].cpu().numpy()
    src_tokens = [t for f in test.fields for t in f[0]]
    tgt_tokens = [*run.tgt_vocab.decode(out_ids), "<eos>"]
    attention_png(weights[: len(tgt_tokens), : len(src_tokens)], src_tokens, tgt_tokens,
                  run_dir / "plots" / "attention.png", f"attention ({run.config.seq2seq.model.attention.kind})")


def write_predictions(path: Path, data: PairData, pred: list[list[str]], seps: tuple[str, str] = (" ", " ")) -> None:
    """A TSV with the row, the source field(s), the prediction and (when known) the target; tokens joined by
    ``seps`` (source, target): "" for character tokens, so the text reads as it was written."""
    src_sep, tgt_sep = seps
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        n_extra = len(data.extra)
        w.writerow(["row", "source", *[f"source_{i}" for i in range(1, n_extra + 1)], "prediction",
                    *(["target", "correct"] if data.target is not None else [])])
        for i in range(len(data)):
            fields = [src_sep.join(f[i]) for f in data.fields]
            extra = [] if data.target is None else [tgt_sep.join(data.target[i]), int(pred[i] == data.target[i])]
            w.writerow([int(data.rows[i]), *fields, tgt_sep.join(pred[i]), *extra])


def _summary(run_dir: Path, metrics: dict[str, Any], console: Console) -> None:
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            line = (f"{split}: exact match {m['exact_match']:.4f}  token accuracy {m['token_accuracy']:.4f}  "
                    f"edit error rate {m['edit_error_rate']:.4f}  BLEU {m['bleu']:.2f}")
            if "exposure_gap" in m:
                line += f"  exposure gap {m['exposure_gap']:.3f}"
            console.print(line + f"  (n={m['n']}, greedy)")
            if "beam" in m:
                b = m["beam"]
                console.print(f"{split}: exact match {b['exact_match']:.4f}  edit error rate "
                              f"{b['edit_error_rate']:.4f}  BLEU {b['bleu']:.2f}  (beam)")
    print(f"run directory: {run_dir}", file=sys.stdout, flush=True)
