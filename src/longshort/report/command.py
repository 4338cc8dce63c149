"""``longshort report RUN_DIR [RUN_DIR ...] [--out PATH]``: the glue the CLI wires in.

Kept apart from :mod:`longshort.report.html` so that building the CLI's parser imports nothing heavy:
matplotlib is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_COMPARISON = "report-compare.html"


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``longshort report``."""
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="one run (writes its report.html), or several "
                   "(one comparison page)")
    p.add_argument("--out", metavar="PATH", help="where to write the page (default: RUN_DIR/report.html for one "
                   f"run, {DEFAULT_COMPARISON} in the current directory for several)")
    p.add_argument("--analyse", action="store_true", help="first run the after-training analysis (loss landscape, "
                   "Hessian, information flow, attention) on each classifier run, e.g. one trained with "
                   "diagnostics.analysis=false")


def report_command(args: argparse.Namespace) -> None:
    """Build the report (one run) or the comparison (several) and print the path written.

    A directory that is not a run raises :class:`longshort.errors.RunDirError`, which the CLI prints as
    ``error: ...`` with its usage exit status."""
    from longshort.report import html

    if args.analyse:
        from longshort.config import load_config
        from longshort.diagnostics.analyse import analyse_run
        from longshort.errors import RunDirError

        for d in args.run_dirs:
            if not (Path(d) / "config.yaml").is_file():
                raise RunDirError(f"{d} is not a run directory: config.yaml is missing")
            cfg = load_config(Path(d) / "config.yaml")
            analyse_run(d, n_batches=cfg.diagnostics.analysis_batches, seed=cfg.seed)
    path: Path
    if len(args.run_dirs) == 1:
        path = html.build_report(args.run_dirs[0], args.out)
    else:
        path = html.build_comparison(args.run_dirs, args.out or DEFAULT_COMPARISON)
    print(path, flush=True)
