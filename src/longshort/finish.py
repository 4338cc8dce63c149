"""What a run does once its model is chosen: the after-training analysis, the HTML report and the MLflow
artifacts (every task)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from longshort.config import Config


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
    elif d.analysis and cfg.task == "seq2seq" and "analysis" in d.model_fields_set:
        # opt-in for seq2seq (diagnostics.analysis=true): the loss landscape and the information flow
        from longshort.diagnostics.analyse import analyse_seq2seq_run

        t0 = time.perf_counter()
        try:
            analyse_seq2seq_run(run_dir, n_batches=d.analysis_batches, seed=cfg.seed)
            console.print(f"diagnostics: {run_dir / 'diagnostics'} (landscape.json, information.json; "
                          f"{time.perf_counter() - t0:.0f} s)")
        except Exception as exc:  # as above
            console.print(f"[yellow]diagnostics: analysis failed: {type(exc).__name__}: {exc}[/yellow]")
    if d.report:
        from longshort.report.html import build_report

        try:
            console.print(f"report: {build_report(run_dir)}")
        except Exception as exc:  # as above
            console.print(f"[yellow]report: failed: {type(exc).__name__}: {exc}[/yellow]")
    if cfg.train.mlflow.uri:
        from longshort.training.tracking import finish_mlflow

        try:
            run_id = finish_mlflow(cfg, run_dir)
            if run_id:
                console.print(f"mlflow: run {run_id} in {cfg.train.mlflow.uri} (experiment "
                              f"{cfg.train.mlflow.experiment})")
        except Exception as exc:  # as above: the run directory is complete either way
            console.print(f"[yellow]mlflow: logging the artifacts failed: {type(exc).__name__}: {exc}[/yellow]")
