"""The run report: one self-contained ``report.html`` per run directory, and a comparison page for several runs.

Why one file with everything inlined: a report is mailed, attached to tickets and opened from artifact stores
where relative links to ``plots/`` break and external scripts are blocked. So every figure is drawn here with
matplotlib (Agg) and embedded as a base64 PNG, the CSS is inline, and the page needs no JavaScript.

The report reads only files of the run directory and draws what is there; anything absent gets a short
"not recorded" note naming the file that would have held it, so an interrupted run, a seq2seq run or a run
trained without diagnostics still gets a report. Inputs (all optional)::

    config.yaml, metrics.json, history.csv, preprocess.json, model.safetensors (header only: parameter count)
    plots/attention.png                 seq2seq attention, shown when diagnostics/attention.npz is absent
    test_predictions.tsv                seq2seq: the first test outputs
    diagnostics/steps.csv               per-step loss, lr, gradient norms, anomaly threshold and action
    diagnostics/gates.csv               gate means/variances against their healthy bands, memory utilisation
    diagnostics/gates_final.json        gate statistics of the final weights (the after-training analysis)
    diagnostics/landscape.json          loss-landscape slices, Hessian top eigenvalue, gradient predictiveness
    diagnostics/information.json        mutual information with the label over t, with the future over k
    diagnostics/attention.npz           self-attention weights attn_<i> [B, heads, T, T], lengths [B], y [B]
    diagnostics/predictions_test.npz    proba [N, K] and y [N] for the reliability diagram (and _val;
                                        a single predictions.npz is read too)

The formats are those of docs/diagnostics.md (``diagnostics/monitor.py`` and ``diagnostics/analyse.py``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import yaml
from matplotlib.figure import Figure

from longshort.errors import RunDirError

DPI = 85  # small PNGs: a full report stays well under a megabyte
ATTENTION_SEQUENCES = 3  # sequences shown in the attention heatmaps
MAX_MODULES = 12  # per-module gradient-norm lines drawn (the largest by median)
RELIABILITY_BINS = 10

# (element id, heading) of every section of a run report, in page order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("learning-curves", "Learning curves"),
    ("learning-rate", "Learning rate"),
    ("gradient-norms", "Gradient norms"),
    ("gate-statistics", "Gate statistics"),
    ("memory-utilisation", "Memory utilisation"),
    ("confusion-matrix", "Confusion matrix and per-class metrics"),
    ("reliability", "Reliability"),
    ("attention", "Attention"),
    ("loss-landscape", "Loss landscape"),
    ("parameter-space", "Parameter space"),
    ("information-flow", "Information flow"),
    ("inputs", "Input files"),
)

# What to do to get a missing section: shown after "not recorded:". One place to keep in step with the config.
HINTS: dict[str, str] = {
    "history": "history.csv is missing (written by training after every epoch)",
    "steps": "diagnostics/steps.csv is missing; train with diagnostics.enabled=true (the default)",
    "gates": "diagnostics/gates.csv has no gate rows; train with diagnostics.gates_every=N (gates are sampled "
             "every N steps, default 50: a shorter run has none)",
    "memory": "diagnostics/gates.csv has no 'memory' rows; train with diagnostics.gates_every=N (sampled every N "
              "steps, default 50)",
    "metrics": "metrics.json is missing (written when training finishes)",
    "predictions": "diagnostics/predictions_test.npz is missing; train with diagnostics.enabled=true (the "
                   "default) to save the test predictions",
    "attention": "diagnostics/attention.npz is missing; train with diagnostics.analysis=true (the default; "
                 "the model needs attention blocks, model.num_heads > 0)",
    "landscape": "diagnostics/landscape.json is missing; train with diagnostics.analysis=true (the default), "
                 "or run longshort.diagnostics.analyse.analyse_run(RUN_DIR)",
    "trajectory": "diagnostics/trajectory.json is missing; train with diagnostics.enabled=true (the default; "
                  "not recorded under FSDP)",
    "information": "diagnostics/information.json is missing; train with diagnostics.analysis=true (the "
                   "default), or run longshort.diagnostics.analyse.analyse_run(RUN_DIR)",
}
SEQ2SEQ_NOTES: dict[str, str] = {  # what a seq2seq run never records, said as such rather than as a hint
    "landscape": "not recorded: train with diagnostics.analysis=true (for a seq2seq run the loss landscape is "
                 "opt-in)",
    "information": "not recorded: train with diagnostics.analysis=true (for a seq2seq run the information flow "
                   "is opt-in, beside the loss landscape)",
    "predictions": "not recorded: a seq2seq run has no class probabilities to calibrate",
}

REGRESS_NOTES: dict[str, str] = {  # the same for a regress run
    "landscape": "not recorded: the after-training analysis runs for classifier runs only",
    "information": "not recorded: the after-training analysis runs for classifier runs only",
}

FORECAST_NOTES: dict[str, str] = REGRESS_NOTES | {  # and for a forecast run
    "predictions": "not recorded as class probabilities: the forecasts are in test_forecasts.csv",
    "attention": "not recorded: the after-training analysis runs for classifier runs only",
}

_TASK_NOTES = {"seq2seq": SEQ2SEQ_NOTES, "regress": REGRESS_NOTES, "forecast": FORECAST_NOTES}

GATES = ("input", "forget", "output")
LOWER_IS_BETTER = ("loss", "log_loss", "free_loss", "edit_error_rate", "ece", "aux_mse", "rmse", "mae", "mape",
                   "pinball", "mse", "mase", "smape", "wql", "tf_loss", "exposure_gap")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:14px 28px}header h1{margin:0;font-size:1.4em}
header p{margin:4px 0 0;opacity:.85}
nav{padding:8px 28px;background:#e8ecf1;font-size:.9em}nav a{margin-right:14px;color:#1d3557}
main{padding:8px 28px 40px;max-width:1180px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:16px 0;padding:6px 18px 14px}
h2{font-size:1.15em;border-bottom:1px solid #eef0f3;padding-bottom:4px}h3{font-size:1em;margin:14px 0 6px}
img.plot{display:block;max-width:100%;height:auto;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:.88em}
th,td{border:1px solid #dde2e8;padding:3px 8px;text-align:right}th{background:#f0f3f6}
td.l,th.l{text-align:left}td.best{font-weight:bold;background:#e6f4ea}
p.absent{color:#7a5b00;background:#fff8e1;border-left:3px solid #f0b400;padding:6px 10px}
p.error{color:#8b1a1a;background:#fdecea;border-left:3px solid #d93025;padding:6px 10px}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.82em;max-height:420px}
.flagged{color:#b3261e;font-weight:bold}
"""


# -- reading a run directory ------------------------------------------------------------------------------


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class Table:
    """A CSV file as columns of strings, with numeric access (blank or non-numeric cells are NaN)."""

    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def has(self, name: str) -> bool:
        return name in self.columns and any(v.strip() for v in self.columns[name])

    def num(self, name: str) -> np.ndarray:
        return np.array([_number(v) for v in self.columns.get(name, [""] * len(self))], dtype=float)

    def text(self, name: str) -> list[str]:
        return [v.strip() for v in self.columns.get(name, [""] * len(self))]

    def where(self, mask: np.ndarray) -> Table:
        return Table({k: [v for v, m in zip(col, mask, strict=True) if m] for k, col in self.columns.items()})


def _read_csv(path: Path) -> Table:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    names = list(rows[0].keys()) if rows else []
    return Table({n: [r.get(n) or "" for r in rows] for n in names})


def _param_count(path: Path) -> int:
    """Parameters in a safetensors file from its JSON header alone (no tensors are read, no torch import)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


@dataclass
class RunData:
    """Everything the report can show of one run directory; None where the file is absent or unreadable."""

    dir: Path
    name: str
    config: dict[str, Any] | None = None
    config_text: str | None = None
    metrics: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    preprocess: dict[str, Any] | None = None
    params: int | None = None
    steps: Table | None = None
    gates: Table | None = None
    landscape: dict[str, Any] | None = None
    trajectory: dict[str, Any] | None = None
    information: dict[str, Any] | None = None
    attention: dict[str, np.ndarray] | None = None
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # split -> {proba, y}
    gates_final: dict[str, Any] | None = None
    test_predictions: list[list[str]] | None = None
    files: dict[str, str] = field(default_factory=dict)  # relative path -> "read" | "absent" | "unreadable: ..."

    @property
    def task(self) -> str:
        return str((self.config or {}).get("task") or ("seq2seq" if self.is_seq2seq_metrics() else "classify"))

    def is_seq2seq_metrics(self) -> bool:
        m = self.metrics or {}
        return any("exact_match" in (m.get(s) or {}) for s in ("val", "test"))


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _tsv(path: Path, limit: int = 8) -> list[list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[: limit + 1]


def load_run(run_dir: str | Path, name: str | None = None) -> RunData:
    """Read every report input of a run directory; a file that fails to parse is recorded, not raised."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunDirError(f"{d} is not a directory")
    if not any((d / n).is_file() for n in ("config.yaml", "metrics.json", "history.csv")):
        raise RunDirError(f"{d} is not a run directory: none of config.yaml, metrics.json, history.csv is there")
    run = RunData(dir=d, name=name or d.resolve().name)

    def read(rel: str, parse: Callable[[Path], Any]) -> Any:
        p = d / rel
        if not p.is_file():
            run.files[rel] = "absent"
            return None
        try:
            value = parse(p)
        except Exception as exc:  # a damaged file costs its section, not the whole report
            run.files[rel] = f"unreadable: {type(exc).__name__}: {exc}"
            return None
        run.files[rel] = "read"
        return value

    run.config_text = read("config.yaml", lambda p: p.read_text())
    if run.config_text is not None:
        try:
            loaded = yaml.safe_load(run.config_text)
            run.config = loaded if isinstance(loaded, dict) else None
        except yaml.YAMLError as exc:
            run.files["config.yaml"] = f"unreadable: {exc}"
    run.metrics = read("metrics.json", lambda p: json.loads(p.read_text()))
    hist = read("history.csv", _read_csv)
    if hist is not None:
        run.history = [{k: _number(v[i]) for k, v in hist.columns.items()} for i in range(len(hist))]
    run.preprocess = read("preprocess.json", lambda p: json.loads(p.read_text()))
    run.params = read("model.safetensors", _param_count)
    run.test_predictions = read("test_predictions.tsv", _tsv)
    run.steps = read("diagnostics/steps.csv", _read_csv)
    run.gates = read("diagnostics/gates.csv", _read_csv)
    run.landscape = read("diagnostics/landscape.json", lambda p: json.loads(p.read_text()))
    run.trajectory = read("diagnostics/trajectory.json", lambda p: json.loads(p.read_text()))
    run.information = read("diagnostics/information.json", lambda p: json.loads(p.read_text()))
    run.gates_final = read("diagnostics/gates_final.json", lambda p: json.loads(p.read_text()))
    run.attention = read("diagnostics/attention.npz", _npz)
    for split, rel in (("test", "diagnostics/predictions_test.npz"), ("val", "diagnostics/predictions_val.npz")):
        if (pred := read(rel, _npz)) is not None:
            run.predictions[split] = pred
    if not run.predictions and (pred := read("diagnostics/predictions.npz", _npz)) is not None:
        run.predictions["predictions"] = pred  # one file without a split in its name
    if run.steps is not None and len(run.steps) == 0:
        run.steps = None
    if run.gates is not None and len(run.gates) == 0:
        run.gates = None
    return run


# -- HTML helpers -----------------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _mpl(text: object) -> str:
    """Text for a matplotlib label: a '$' in a class or run name would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG ``<img class="plot">`` (and closed, so long reports don't pile up figures)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def _png_file(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def absent(hint: str) -> str:
    return f'<p class="absent">not recorded: {esc(hint)}</p>'


def missing(run: RunData, key: str) -> str:
    """The note for a section whose input is absent: what a seq2seq run never has, or how to record it."""
    notes = _TASK_NOTES.get(run.task, {})
    if key in notes:
        return f'<p class="absent">{esc(notes[key])}</p>'
    return absent(HINTS[key])


def fmt(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return esc(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return esc(v)


def html_table(header: list[str] | None, rows: Iterable[list[object]], left: int = 1,
               best: dict[int, set[int]] | None = None) -> str:
    """A table whose first ``left`` columns are text (left-aligned); ``best`` marks cells {row: {col}}; no
    header row when ``header`` is None (key/value tables)."""
    out = ["<table>"]
    if header is not None:
        out.append("<tr>" + "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>"
                                    for i, h in enumerate(header)) + "</tr>")
    for r, row in enumerate(rows):
        cells = []
        for i, v in enumerate(row):
            cls = ["l"] if i < left else []
            if best and i in best.get(r, set()):
                cls.append("best")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{esc(v) if i < left else fmt(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def _page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(_section(*s) for s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main></body></html>\n")


def _get(d: dict[str, Any] | None, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _finite(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a)


def _plain(v: float, _pos: object = None) -> str:
    return f"{v:g}"


def _log_y(ax: Any) -> None:
    """Log y axis labelled 0.5, 2, 1e-05 rather than 5x10^-1: the values are read off, not admired. Minor ticks
    get labels where the majors are too few: all of them under one decade, the 2s and 5s under two."""
    def minor(v: float, _pos: object = None) -> str:
        lo, hi = ax.get_ylim()
        if v <= 0 or lo <= 0 or math.log10(hi / lo) >= 2:
            return ""
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
        return f"{v:g}" if math.log10(hi / lo) < 1 or mantissa in (2.0, 5.0) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _epoch_x(ax: Any) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _step_x(ax: Any) -> None:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


# -- sections of a run report ---------------------------------------------------------------------------------

_CLASSIFY_HEADLINE = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "log_loss", "n")
_SEQ2SEQ_HEADLINE = ("exact_match", "token_accuracy", "edit_error_rate", "bleu", "exposure_gap", "loss", "n")
_REGRESS_HEADLINE = ("rmse", "mae", "r2", "mape", "coverage", "coverage_nominal", "pinball", "n")


_FORECAST_HEADLINE = ("mase", "smape", "mae", "rmse", "wql", "coverage", "exposure_gap", "skill_seasonal_naive", "n")


def _headline_keys(run: RunData) -> tuple[str, ...]:
    if run.task == "regress":
        return _REGRESS_HEADLINE
    if run.task == "forecast":
        return _FORECAST_HEADLINE
    return _SEQ2SEQ_HEADLINE if run.is_seq2seq_metrics() or run.task == "seq2seq" else _CLASSIFY_HEADLINE


def summary_section(run: RunData) -> str:
    cfg = run.config or {}
    rows: list[list[object]] = [["task", run.task], ["data", _get(cfg, "data.source", "not recorded")]]
    if _get(cfg, "data.test_source"):
        rows.append(["test data", cfg["data"]["test_source"]])
    prep = run.preprocess or {}
    if prep.get("class_names"):
        rows.append(["classes", ", ".join(map(str, prep["class_names"]))])
    if prep.get("feature_names"):
        rows.append(["features", f"{len(prep['feature_names'])}"])
    if run.task == "seq2seq":
        m = _get(cfg, "seq2seq.model", {}) or {}
        shape = ", ".join(f"{k} {m[k]}" for k in ("hidden_dim", "enc_layers", "dec_layers", "embed_dim") if k in m)
        if isinstance(m.get("attention"), dict) and "kind" in m["attention"]:
            shape += f", attention {m['attention']['kind']}"
    elif run.task == "forecast":
        f = _get(cfg, "forecast", {}) or {}
        m = f.get("model", {}) or {}
        shape = ", ".join(f"{k} {m[k]}" for k in ("decoder", "hidden_dim", "layers", "dropout") if k in m)
        shape += ", " + ", ".join(f"{k} {f[k]}" for k in ("horizon", "lookback", "season", "loss") if k in f)
    else:
        m = cfg.get("model", {}) or {}
        shape = ", ".join(f"{k} {m[k]}" for k in ("hidden_dim", "num_lstm_layers", "num_heads", "dropout") if k in m)
    if shape:
        rows.append(["model", shape])
    rows.append(["parameters", f"{run.params:,}" if run.params is not None else "not recorded (no model.safetensors)"])
    met = run.metrics or {}
    if "epochs_run" in met or run.history:
        rows.append(["epochs run", met.get("epochs_run", len(run.history))])
    if met.get("best_epoch") is not None:
        rows.append(["best epoch", met["best_epoch"]])
    oracle = met.get("oracle")
    if isinstance(oracle, dict) and "mse" in oracle:
        rows.append(["oracle (test)", f"MSE {oracle['mse']:.4g}, MASE {oracle['mase']:.4f}, 80% coverage "
                                      f"{oracle.get('coverage', float('nan')):.3f} (the built-in's conditional mean)"])
    bp = met.get("best_possible")
    if isinstance(bp, dict) and "accuracy" in bp:
        rows.append(["best possible accuracy", f"{bp['accuracy']:.4f} ± {bp.get('stderr', 0):.4f} "
                                               f"({bp.get('how', '')})"])
    body = html_table(None, [[k, str(v)] for k, v in rows], left=2)
    splits = [s for s in ("val", "test") if isinstance(met.get(s), dict)]
    if splits:
        keys = [k for k in _headline_keys(run) if any(k in met[s] for s in splits)]
        body += "<h3>Headline metrics</h3>" + html_table(
            ["metric", *splits], [[k, *[met[s].get(k, "") for s in splits]] for k in keys])
    else:
        body += absent(HINTS["metrics"])
    if run.test_predictions and len(run.test_predictions) > 1:
        head, *rows_tp = run.test_predictions
        body += "<h3>First test outputs</h3>" + html_table(head, rows_tp, left=len(head))
    if run.config_text is not None:
        body += f"<details><summary>config.yaml</summary><pre>{esc(run.config_text)}</pre></details>"
    return body


def _history_col(run: RunData, key: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([r.get("epoch", i + 1) for i, r in enumerate(run.history)], dtype=float)
    y = np.array([r.get(key, math.nan) for r in run.history], dtype=float)
    ok = np.isfinite(y) & np.isfinite(x)
    return x[ok], y[ok]


def learning_curves_figure(run: RunData) -> Figure:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = ((a1, "loss", ("train_loss", "val_loss", "val_free_loss")),
              (a2, "accuracy", ("train_accuracy", "val_accuracy", "val_f1_macro", "val_token_accuracy",
                                "val_exact_match")))
    for ax, ylabel, keys in panels:
        for key in keys:
            x, y = _history_col(run, key)
            if len(y):
                ax.plot(x, y, marker="o", ms=3, ls="-" if key.endswith(ylabel) else "--", label=key)
        best = (run.metrics or {}).get("best_epoch")
        if best:
            ax.axvline(best, color="grey", ls=":", lw=1, label=f"best epoch {best}")
        _epoch_x(ax)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves_section(run: RunData) -> str:
    if not run.history:
        return absent(HINTS["history"])
    return img(learning_curves_figure(run), "learning curves: train and validation loss and accuracy per epoch")


def learning_rate_section(run: RunData) -> str:
    steps = run.steps
    if steps is not None and steps.has("lr"):
        x, y, src = steps.num("step"), steps.num("lr"), "per step (diagnostics/steps.csv)"
    elif run.history and any("lr" in r for r in run.history):
        x = np.array([r.get("step", r.get("epoch", math.nan)) for r in run.history])
        y = np.array([r.get("lr", math.nan) for r in run.history])
        src = "at the end of each epoch (history.csv)"
    else:
        return absent(HINTS["history"] + " and " + HINTS["steps"])
    ok = np.isfinite(x) & np.isfinite(y)
    fig, ax = plt.subplots(figsize=(10, 2.8))
    ax.plot(x[ok], y[ok], marker="." if ok.sum() < 50 else None)
    pos = y[ok][y[ok] > 0]
    if len(pos) and pos.max() / pos.min() > 100:
        _log_y(ax)
    _step_x(ax)
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return f"<p>Learning rate {esc(src)}.</p>" + img(fig, "learning rate per step")


_ACTION_STYLE = {"log": ("o", "#f0b400"), "skip": ("s", "#e8710a"), "rollback": ("D", "#d93025"),
                 "nonfinite": ("X", "#7b1fa2")}


def grad_norm_figure(steps: Table) -> Figure:
    step, norm = steps.num("step"), steps.num("grad_norm")
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ok = _finite(norm) & (norm > 0)
    ax.plot(step[ok], norm[ok], lw=0.8, color="#4c72b0", label="grad norm")
    for col, style, label in (("grad_norm_ema", "-", "EMA"), ("threshold", "--", "threshold (mean + 3σ)")):
        if steps.has(col):
            v = steps.num(col)
            good = _finite(v) & (v > 0)
            ax.plot(step[good], v[good], ls=style, lw=1.2, color="black" if col == "threshold" else "#55a868",
                    label=label)
    _log_y(ax)
    top = ax.get_ylim()[1]
    anomaly = steps.num("anomaly") > 0 if steps.has("anomaly") else np.zeros(len(steps), bool)
    actions = steps.text("action")
    for action, (marker, color) in _ACTION_STYLE.items():
        sel = np.array([a == action for a in actions]) & (anomaly | (np.array(actions) == "nonfinite"))
        if sel.any():
            y = np.where(ok[sel], norm[sel], top)  # a non-finite norm is drawn at the top edge, with a line
            ax.scatter(step[sel], y, marker=marker, color=color, s=36, zorder=3, clip_on=False,
                       label=f"anomaly: {action} ({int(sel.sum())})")
            for x in step[sel][~ok[sel]]:
                ax.axvline(x, color=color, ls=":", lw=1)
    other = anomaly & np.array([a not in _ACTION_STYLE for a in actions])
    if other.any():
        ax.scatter(step[other], np.where(ok[other], norm[other], top), marker="o", color="red", s=30, zorder=3,
                   label=f"anomaly ({int(other.sum())})")
    _step_x(ax)
    ax.set_ylim(top=top)
    ax.set_ylabel("gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def module_norm_figure(steps: Table) -> tuple[Figure, int]:
    cols = [c for c in steps.columns if c.startswith("grad_norm/") and steps.has(c)]
    medians = {c: float(np.nanmedian(steps.num(c))) if np.isfinite(steps.num(c)).any() else 0.0 for c in cols}
    shown = sorted(cols, key=lambda c: -medians[c])[:MAX_MODULES]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    step = steps.num("step")
    for c in sorted(shown):
        v = steps.num(c)
        ok = _finite(v) & (v > 0)
        ax.plot(step[ok], v[ok], lw=0.9, label=_mpl(c.removeprefix("grad_norm/")))
    _log_y(ax)
    _step_x(ax)
    ax.set_ylabel("gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig, len(cols) - len(shown)


def gradient_norms_section(run: RunData) -> str:
    steps = run.steps
    if steps is None or not steps.has("grad_norm"):
        return missing(run, "steps")
    body = img(grad_norm_figure(steps), "gradient norm per step with its EMA, the anomaly threshold and the "
                                        "anomalies marked by action")
    anomaly = steps.num("anomaly") > 0 if steps.has("anomaly") else np.zeros(len(steps), bool)
    actions = steps.text("action")
    counts: dict[str, int] = {}
    for a, flag in zip(actions, anomaly, strict=True):
        if flag or a == "nonfinite":
            counts[a or "(none)"] = counts.get(a or "(none)", 0) + 1
    if counts:
        body += (f'<p class="flagged">{sum(counts.values())} anomalous step(s) of {len(steps)}.</p>'
                 + html_table(["action", "steps"], [[k, v] for k, v in sorted(counts.items())]))
    else:
        body += f"<p>No anomalous steps in {len(steps)} recorded.</p>"
    if any(c.startswith("grad_norm/") for c in steps.columns):
        fig, hidden = module_norm_figure(steps)
        body += "<h3>Per module</h3>" + img(fig, "gradient norm per module and step")
        if hidden:
            body += f"<p>{hidden} module(s) with smaller norms not drawn.</p>"
    else:
        body += absent("diagnostics/steps.csv has no per-module grad_norm/<module> columns")
    return body


def _series_label(layer: str, direction: str) -> str:
    """'lstms.0 forward' for the monitor's module paths, 'layer 0 forward' for bare indices."""
    return _mpl(f"layer {layer} {direction}" if math.isfinite(_number(layer)) else f"{layer} {direction}")


def _series(t: Table) -> list[tuple[str, str]]:
    """The (layer, direction) pairs of a gates table in a stable order."""
    return sorted(set(zip(t.text("layer"), t.text("direction"), strict=True)),
                  key=lambda p: (_number(p[0]) if math.isfinite(_number(p[0])) else math.inf, p[0], p[1]))


def gates_figure(gates: Table) -> Figure:
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6), sharex=True)
    gate_col, step = gates.text("gate"), gates.num("step")
    layer, direction = gates.text("layer"), gates.text("direction")
    flagged = gates.num("flagged") > 0 if gates.has("flagged") else np.zeros(len(gates), bool)
    mean, var, low, high = gates.num("mean"), gates.num("var"), gates.num("low"), gates.num("high")
    series = _series(gates)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, gate in enumerate(GATES):
        g = np.array([x == gate for x in gate_col])
        ax_m, ax_v = axes[0, j], axes[1, j]
        if g.any():
            us = np.unique(step[g][np.isfinite(step[g])])
            lo = np.array([np.nanmedian(low[g & (step == s)]) if np.isfinite(low[g & (step == s)]).any()
                           else np.nan for s in us])
            hi = np.array([np.nanmedian(high[g & (step == s)]) if np.isfinite(high[g & (step == s)]).any()
                           else np.nan for s in us])
            if np.isfinite(lo).any() and np.isfinite(hi).any():
                ax_m.fill_between(us, lo, hi, color="#55a868", alpha=0.18, label="healthy band", step=None)
        for k, (ly, dr) in enumerate(series):
            sel = g & np.array([a == ly and b == dr for a, b in zip(layer, direction, strict=True)])
            if not sel.any():
                continue
            order = np.argsort(step[sel])
            c = colors[k % len(colors)]
            lab = _series_label(ly, dr)
            ax_m.plot(step[sel][order], mean[sel][order], color=c, lw=1, label=lab)
            if np.isfinite(var[sel]).any():
                ax_v.plot(step[sel][order], var[sel][order], color=c, lw=1, label=lab)
            bad = sel & flagged
            if bad.any():
                ax_m.scatter(step[bad], mean[bad], marker="x", color="#d93025", s=28, zorder=3)
        ax_m.set_title(f"{gate} gate")
        ax_m.set_ylabel("mean activation")
        ax_v.set_ylabel("variance")
        _step_x(ax_v)
        for ax in (ax_m, ax_v):
            ax.grid(alpha=0.3)
    if flagged.any():
        axes[0, 0].scatter([], [], marker="x", color="#d93025", label="flagged")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, 0].legend(handles, labels, fontsize=7)
    fig.tight_layout()
    return fig


def gate_statistics_section(run: RunData) -> str:
    gates = run.gates
    final = gates_final_table(run)
    if gates is None or not any(g in GATES for g in gates.text("gate")):
        return missing(run, "gates") + final
    body = ("<p>Mean activation of each gate per layer and direction against its healthy band (shaded); "
            "red crosses are flagged measurements.</p>"
            + img(gates_figure(gates), "gate mean and variance per step against the healthy bands"))
    gate_col, step, flagged = gates.text("gate"), gates.num("step"), gates.num("flagged") > 0
    mean, low, high = gates.num("mean"), gates.num("low"), gates.num("high")
    rows: list[list[object]] = []
    for ly, dr in _series(gates):
        for gate in GATES:
            sel = np.array([g == gate and a == ly and b == dr for g, a, b in
                            zip(gate_col, gates.text("layer"), gates.text("direction"), strict=True)])
            if not sel.any():
                continue
            last = int(np.flatnonzero(sel)[np.nanargmax(np.where(np.isfinite(step[sel]), step[sel], -np.inf))])
            band = (f"{fmt(float(low[last]))} – {fmt(float(high[last]))}"
                    if np.isfinite(low[last]) and np.isfinite(high[last]) else "")
            rows.append([ly, dr, gate, band, float(mean[last]), f"{int(flagged[sel].sum())} / {int(sel.sum())}"])
    body += "<h3>Last measurement during training</h3>" + html_table(
        ["layer", "direction", "gate", "healthy band", "last mean", "flagged"], rows, left=4)
    return body + final


def gates_final_table(run: RunData) -> str:
    """The gate statistics of the final weights (diagnostics/gates_final.json), or nothing."""
    gf = run.gates_final
    if not isinstance(gf, dict) or not isinstance(gf.get("rows"), list) or not gf["rows"]:
        return ""
    rows: list[list[object]] = []
    for r in gf["rows"]:
        if not isinstance(r, dict):
            continue
        memory = r.get("gate") == "memory"
        lo, hi = r.get("healthy_low"), r.get("healthy_high")
        value = r.get("utilisation") if memory else r.get("mean")
        rows.append([f"{r.get('layer', '')}" + (f" [{r['sublayer']}]" if r.get("sublayer") else ""),
                     r.get("direction", ""), r.get("gate", ""),
                     f"{fmt(lo)} – {fmt(hi)}" if lo is not None and hi is not None else "",
                     "flagged" if r.get("flagged") else "", "" if value is None else value,
                     "" if r.get("var") is None else r["var"]])
    where = f"the {gf['split']} split" if gf.get("split") else "validation sequences"
    n = f", {gf['n_sequences']} sequences" if gf.get("n_sequences") else ""
    return (f"<h3>After training</h3><p>Gate statistics of the final weights on {esc(where)}{esc(n)} "
            "(diagnostics/gates_final.json; for gate memory the value is the utilisation).</p>"
            + html_table(["layer", "direction", "gate", "healthy band", "flag", "mean / utilisation", "var"], rows,
                         left=5))


def memory_section(run: RunData) -> str:
    gates = run.gates
    if gates is None or "memory" not in gates.text("gate"):
        return missing(run, "memory")
    mem = gates.where(np.array([g == "memory" for g in gates.text("gate")]))
    fig, ax = plt.subplots(figsize=(10, 3.2))
    step, mean = mem.num("step"), mem.num("mean")
    for ly, dr in _series(mem):
        sel = np.array([a == ly and b == dr for a, b in zip(mem.text("layer"), mem.text("direction"), strict=True)])
        order = np.argsort(step[sel])
        ax.plot(step[sel][order], mean[sel][order], marker=".", lw=1, label=_series_label(ly, dr))
    _step_x(ax)
    ax.set_ylabel("memory utilisation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return ("<p>Cell-state memory utilisation per layer and direction (diagnostics/gates.csv, gate "
            "'memory').</p>" + img(fig, "cell-state memory utilisation per step"))


def confusion_figure(panels: list[tuple[np.ndarray, list[str], str]]) -> Figure:
    """One count-annotated confusion matrix per (matrix, class names, title), side by side."""
    k = max(len(names) for _, names, _ in panels)
    side = 1.6 + 0.6 * k
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side), squeeze=False)
    for ax, (cm, names, title) in zip(axes[0], panels, strict=True):
        _confusion_axes(ax, cm, names, title)
    fig.tight_layout()
    return fig


def _confusion_axes(ax: Any, cm: np.ndarray, names: list[str], title: str) -> None:
    k = len(names)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), [_mpl(n) for n in names], rotation=45, ha="right")
    ax.set_yticks(range(k), [_mpl(n) for n in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > peak / 2 else "black")
    ax.set_title(title)


def confusion_section(run: RunData) -> str:
    met = run.metrics
    if met is None:
        return absent(HINTS["metrics"])
    splits = [s for s in ("val", "test") if isinstance(met.get(s), dict) and "confusion_matrix" in met[s]]
    if not splits:
        if run.task == "seq2seq" or run.is_seq2seq_metrics():
            return "<p>Not applicable: a seq2seq run has no classes (its metrics are in the summary).</p>"
        if run.task == "regress":
            return ("<p>Not applicable: a regress run has no classes (its metrics are in the summary; predicted "
                    "against true values under Reliability).</p>")
        if run.task == "forecast":
            return ("<p>Not applicable: a forecast run has no classes (its metrics and the baselines' are in the "
                    "summary; forecast fan charts under Reliability).</p>")
        return absent("metrics.json has no confusion_matrix")
    panels = [(np.asarray(met[s]["confusion_matrix"]),
               [str(n) for n in met[s].get("class_names") or range(len(met[s]["confusion_matrix"]))],
               f"{s} (n={met[s].get('n', '')})") for s in splits]
    body = img(confusion_figure(panels), f"confusion matrix on the {' and '.join(splits)} split")
    names = list((met[splits[-1]].get("per_class") or {}).keys())
    if names:
        header = ["class"] + [f"{s} {k}" for s in splits for k in ("precision", "recall", "f1", "support")]
        rows = [[n] + [met[s].get("per_class", {}).get(n, {}).get(k, "")
                       for s in splits for k in ("precision", "recall", "f1-score", "support")] for n in names]
        body += "<h3>Per class</h3>" + html_table(header, rows)
    return body


def reliability_bins(proba: np.ndarray, y: np.ndarray, n_bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Confidence (max probability) in equal-width bins: mean confidence, accuracy and count per bin, and the
    expected calibration error ECE = sum_b n_b / N * |acc_b - conf_b| (empty bins skipped)."""
    proba = np.asarray(proba, dtype=float)
    y = np.asarray(y).astype(int)
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(float)
    idx = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] / len(y) * np.abs(acc[filled] - mean_conf[filled]))) if len(y) else math.nan
    return {"edges": np.linspace(0, 1, n_bins + 1), "confidence": mean_conf, "accuracy": acc, "count": count,
            "ece": ece, "accuracy_overall": float(correct.mean()) if len(y) else math.nan}


def _check_predictions(name: str, pred: dict[str, np.ndarray]) -> str | None:
    if "proba" not in pred or "y" not in pred:
        return f"{name} lacks the arrays 'proba' and 'y'"
    proba, y = np.asarray(pred["proba"]), np.asarray(pred["y"])
    if proba.ndim != 2 or y.shape != (proba.shape[0],) or len(y) == 0:
        return f"{name} has proba {proba.shape} and y {y.shape}; expected [N, K] and [N]"
    return None


def regression_figure(panels: list[tuple[np.ndarray, np.ndarray, str]]) -> Figure:
    """Predicted against true values (the first target), one panel per (true, predicted, title), with y = x."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.2), squeeze=False)
    for ax, (y, pred, title) in zip(axes[0], panels, strict=True):
        ax.scatter(y, pred, s=5, alpha=0.5)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _regression_reliability(run: RunData) -> str:
    panels, rows = [], []
    for split, pred in run.predictions.items():
        if "pred" not in pred or "y" not in pred:
            continue
        y, p = np.asarray(pred["y"], float), np.asarray(pred["pred"], float)
        y, p = y.reshape(len(y), -1)[:, 0], p.reshape(len(p), -1)[:, 0]
        if not len(y):
            continue
        panels.append((y, p, f"{split} (n={len(y)})"))
        m = (run.metrics or {}).get(split, {})
        if "coverage" in m:
            rows.append([split, f"{m['interval'][0]:g}-{m['interval'][1]:g}", m["coverage_nominal"], m["coverage"]])
    if not panels:
        return absent("diagnostics/predictions_test.npz lacks the arrays 'pred' and 'y'")
    body = img(regression_figure(panels), "predicted against true values")
    if rows:
        body += "<h3>Interval coverage</h3>" + html_table(["split", "quantiles", "nominal", "observed"], rows)
    return body


def reliability_section(run: RunData) -> str:
    if run.task == "forecast":
        fan = run.dir / "plots" / "forecasts.png"
        if not fan.is_file():
            return absent("plots/forecasts.png is missing (written when the run has a test split)")
        return ("<p>A few test series: the last steps, the forecast and its 80% interval, the actual values.</p>"
                + _png_file(fan, "forecast fan charts"))
    if not run.predictions:
        return missing(run, "predictions")
    if run.task == "regress":
        return _regression_reliability(run)
    files = {s: (f"diagnostics/predictions_{s}.npz" if s in ("val", "test") else "diagnostics/predictions.npz")
             for s in run.predictions}
    problems = [p for s, pred in run.predictions.items() if (p := _check_predictions(files[s], pred))]
    good = {s: run.predictions[s] for s in run.predictions if _check_predictions(files[s], run.predictions[s]) is None}
    if not good:
        return absent("; ".join(problems))
    bins = {s: reliability_bins(p["proba"], p["y"]) for s, p in good.items()}
    fig, axes = plt.subplots(1, len(bins) + 1, figsize=(4.2 * len(bins) + 3.6, 3.7), squeeze=False)
    width = 1 / RELIABILITY_BINS
    for ax, (split, r) in zip(axes[0], bins.items(), strict=False):
        centers = (r["edges"][:-1] + r["edges"][1:]) / 2
        filled = r["count"] > 0
        ax.bar(centers[filled], r["accuracy"][filled], width=width * 0.92, color="#4c72b0", edgecolor="white",
               label="accuracy")
        lo = np.minimum(r["confidence"], r["accuracy"])[filled]
        ax.bar(centers[filled], np.abs(r["confidence"] - r["accuracy"])[filled], bottom=lo, width=width * 0.92,
               fill=False, edgecolor="#d93025", hatch="//", lw=1, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{split}: ECE {r['ece']:.3f}")
        ax.legend(fontsize=7, loc="upper left")
    hist = axes[0, -1]
    for split, r in bins.items():
        hist.step(r["edges"], np.append(r["count"], r["count"][-1]), where="post", label=split)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence")
    hist.set_ylabel("predictions")
    hist.set_title("confidence histogram")
    hist.legend(fontsize=8)
    fig.tight_layout()
    rows = [[s, files[s], len(good[s]["y"]), r["accuracy_overall"], f"{r['ece']:.4f}"] for s, r in bins.items()]
    body = (f"<p>Expected calibration error in {RELIABILITY_BINS} equal-width confidence bins (accuracy per bin, "
            "the gap to the bin's mean confidence hatched).</p>"
            + html_table(["split", "file", "predictions", "accuracy", "ECE"], rows, left=2)
            + img(fig, "reliability diagram and confidence histogram"))
    return body + (absent("; ".join(problems)) if problems else "")


def _block_keys(att: dict[str, np.ndarray]) -> list[str]:
    """The attention arrays: ``attn_<i>`` (after BiLSTM block i, as analyse writes them) or ``block_<i>``."""
    keys = [k for k in att if k.startswith(("attn_", "block_"))]

    def index(k: str) -> float:
        v = _number(k.split("_", 1)[1])
        return v if math.isfinite(v) else math.inf

    return sorted(keys, key=lambda k: (index(k), k))


def attention_figure(att: dict[str, np.ndarray], class_names: list[str] | None = None) -> tuple[Figure, int, int]:
    blocks = _block_keys(att)
    first = np.asarray(att[blocks[0]])
    n_seq = min(ATTENTION_SEQUENCES, first.shape[0])
    lengths = np.asarray(att.get("lengths", np.full(first.shape[0], first.shape[-1])))
    labels = np.asarray(att["y"]) if "y" in att else None
    index = np.asarray(att["index"]) if "index" in att else np.arange(first.shape[0])
    # one row per attention block, one column per sequence: models have one or two blocks, so the page stays wide
    fig, axes = plt.subplots(len(blocks), n_seq, figsize=(3.3 * n_seq + 0.6, 2.9 * len(blocks)), squeeze=False)
    for i in range(n_seq):
        length = int(lengths[i]) if i < len(lengths) else first.shape[-1]
        who = f"seq {int(index[i])}" if i < len(index) else f"seq {i}"
        if labels is not None and i < len(labels):
            y = int(labels[i])
            who += f" ({_mpl(class_names[y]) if class_names and 0 <= y < len(class_names) else y})"
        for j, b in enumerate(blocks):
            w = np.asarray(att[b])[i].mean(axis=0)[:length, :length]  # mean over heads, padding cut off
            ax = axes[j, i]
            im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0.0,
                           vmax=max(float(w.max()) if w.size else 0, 1e-6))
            where = f"after BiLSTM block {b.split('_', 1)[1]}" if b.startswith("attn_") else b.replace("_", " ")
            ax.set_title(f"{who}, {where}, T={length}", fontsize=8)
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_ylabel("query step", fontsize=7)
            if j == len(blocks) - 1:
                ax.set_xlabel("key step", fontsize=7)
    fig.tight_layout()
    return fig, n_seq, int(first.shape[1]) if first.ndim == 4 else 1


def attention_section(run: RunData) -> str:
    att = run.attention
    if att is not None and _block_keys(att):
        bad = [k for k in _block_keys(att) if np.asarray(att[k]).ndim != 4]
        if bad:
            return absent(f"diagnostics/attention.npz: {', '.join(bad)} not [B, heads, T, T]")
        names = (run.preprocess or {}).get("class_names")
        fig, n_seq, heads = attention_figure(att, [str(n) for n in names] if names else None)
        return (f"<p>Self-attention weights of the first {n_seq} sequence(s), mean over {heads} head(s), cut to "
                "each sequence's valid length; rows are queries, columns keys (diagnostics/attention.npz).</p>"
                + img(fig, "attention heatmaps per sequence and block, masked to valid length"))
    png = run.dir / "plots" / "attention.png"
    if png.is_file():
        return ("<p>Decoder attention over the source for one test pair (plots/attention.png).</p>"
                + _png_file(png, "seq2seq attention weights of one test pair"))
    if att is not None:
        return absent("diagnostics/attention.npz holds no attention arrays: the model has no attention blocks")
    return absent(HINTS["attention"])


def _loss_grid(alpha: np.ndarray, beta: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """The 2-D loss as [len(beta), len(alpha)] for contour(alpha, beta, Z): landscape.json holds loss[i][j] at
    (alpha[i], beta[j]); a grid already shaped [beta, alpha] (and not square) is taken as is."""
    if loss.shape == (len(alpha), len(beta)):
        return loss.T
    if loss.shape == (len(beta), len(alpha)):
        return loss
    raise ValueError(f"2d loss has shape {loss.shape}, alpha {len(alpha)} and beta {len(beta)} values")


def _is_numbers(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)


def predictiveness_html(gp: object) -> str:
    """Gradient predictiveness (Santurkar et al.): a table over step sizes and a plot of actual / predicted."""
    if not isinstance(gp, dict):
        return "" if gp is None else html_table(None, [["gradient predictiveness", fmt(gp)]], left=1)
    scalars = [[k, v] for k, v in gp.items() if not isinstance(v, list | dict)]
    x_key = "step_size" if _is_numbers(gp.get("step_size")) else None
    out = "<h3>Gradient predictiveness</h3>"
    if scalars:
        out += html_table(None, scalars, left=1)
    if x_key is None:
        lists = [[k, json.dumps(v)[:200]] for k, v in gp.items() if isinstance(v, list | dict)]
        return out + (html_table(None, lists, left=2) if lists else "")
    n = len(gp[x_key])
    cols = [k for k, v in gp.items() if _is_numbers(v) and len(v) == n]
    out += html_table(cols, [[gp[k][i] for k in cols] for i in range(n)], left=0)
    if _is_numbers(gp.get("ratio")) and len(gp["ratio"]) == n:
        fig, ax = plt.subplots(figsize=(6, 2.8))
        ax.plot(gp[x_key], gp["ratio"], marker="o", label="actual / predicted decrease")
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="linear along −g")
        ax.axhline(0.0, color="#d93025", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("step size η (plain gradient step)")
        ax.set_ylabel("ratio")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out += img(fig, "gradient predictiveness: actual over first-order predicted loss decrease per step size")
    return out


def trajectory_section(run: RunData) -> str:
    """How far and how widely training moved the weights (diagnostics/trajectory.json, per epoch)."""
    tr = run.trajectory
    rows = (tr or {}).get("epochs") or []
    if not rows:
        return missing(run, "trajectory")
    last = rows[-1]
    body = ("<p>Exploration of parameter space: the distance of the weights from their initialisation, the path "
            "travelled (sum of the epochs' steps; distance / path = 1 is a straight line) and the trajectory's "
            "spread (radius of gyration of the per-epoch weights).</p>")
    body += html_table(None, [["parameters", tr.get("parameters", "")],
                              ["distance from init", last["distance_from_init"]],
                              ["relative to the initial norm", last["relative_distance"]],
                              ["path length", last["path_length"]], ["straightness", last["straightness"]],
                              ["spread", last["spread"]]], left=2)
    e = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(e, [r["distance_from_init"] for r in rows], marker="o", ms=3, label="distance from init")
    axes[0].plot(e, [r["path_length"] for r in rows], marker="o", ms=3, label="path length")
    axes[1].plot(e, [r["step_length"] for r in rows], marker="o", ms=3, label="step per epoch")
    axes[1].plot(e, [r["spread"] for r in rows], marker="o", ms=3, label="spread")
    for ax in axes:
        _epoch_x(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return body + img(fig, "distance from initialisation, path length, step length and spread per epoch")


def landscape_section(run: RunData) -> str:
    ls = run.landscape
    if ls is None:
        return missing(run, "landscape")
    meta = [[k, ls[k]] for k in ("directions", "split", "n_sequences", "loss_fn") if ls.get(k) is not None]
    body = html_table(None, meta, left=2) if meta else ""
    one, two = ls.get("1d"), ls.get("2d")
    has_1d = isinstance(one, dict) and one.get("alpha") and one.get("loss")
    has_2d = isinstance(two, dict) and two.get("alpha") and two.get("beta") and two.get("loss")
    if has_1d or has_2d:
        fig, axes = plt.subplots(1, int(bool(has_1d)) + int(bool(has_2d)), figsize=(10, 3.8), squeeze=False)
        ax_i = 0
        if has_1d:
            ax = axes[0, ax_i]
            ax_i += 1
            ax.plot(one["alpha"], one["loss"], marker=".", color="#4c72b0")
            ax.axvline(0, color="grey", ls=":", label="trained weights (α=0)")
            ax.set_xlabel("α (along d1)")
            ax.set_ylabel("loss")
            ax.set_title("1-D slice")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if has_2d:
            ax = axes[0, ax_i]
            a, b = np.asarray(two["alpha"], float), np.asarray(two["beta"], float)
            z = _loss_grid(a, b, np.asarray(two["loss"], float))
            cs = ax.contourf(a, b, z, levels=20, cmap="viridis")
            ax.contour(a, b, z, levels=10, colors="white", linewidths=0.5, alpha=0.6)
            fig.colorbar(cs, ax=ax, label="loss")
            ax.plot([0], [0], marker="*", color="red", ms=10)
            ax.set_xlabel("α (along d1)")
            ax.set_ylabel("β (along d2)")
            ax.set_title("2-D slice (★ trained weights)")
        fig.tight_layout()
        body += img(fig, "loss landscape: 1-D line and 2-D contour around the trained weights")
    else:
        body += absent("diagnostics/landscape.json has no 1d/2d slices")
    if ls.get("hessian_top_eigenvalue") is not None:
        batches = f" (over {ls['hessian_batches']} batch(es))" if ls.get("hessian_batches") else ""
        body += (f"<p>Hessian top eigenvalue λ<sub>max</sub> = <b>{fmt(ls['hessian_top_eigenvalue'])}</b>"
                 f"{esc(batches)}.</p>")
    return body + predictiveness_html(ls.get("gradient_predictiveness"))


def _curve(ax: Any, xs: list[float], ys: list[float], base: list[float] | None, label: str, color: str) -> None:
    ax.plot(xs, ys, marker=".", color=color, label=label)
    if _is_numbers(base):
        ax.plot(xs[: len(base)], base[: len(xs)], ls="--", color="grey", label="permutation baseline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def information_section(run: RunData) -> str:
    info = run.information
    if info is None:
        return missing(run, "information")
    label, future = info.get("label"), info.get("future")
    has_label = isinstance(label, dict) and _is_numbers(label.get("t")) and _is_numbers(label.get("mi"))
    has_future = isinstance(future, dict) and _is_numbers(future.get("k")) and _is_numbers(future.get("mi"))
    meta = [[k, info[k]] for k in ("estimator", "bias", "split", "n_sequences") if info.get(k) is not None]
    if isinstance(info.get("hidden"), dict):
        meta += [[f"hidden state ({k})", v] for k, v in info["hidden"].items()]
    body = html_table(None, meta, left=2) if meta else ""
    if not (has_label or has_future):
        if isinstance(label, dict) and "t" in label and not label["t"]:  # the estimator's minimum sample count
            n = f" ({info['n_sequences']} in the split)" if info.get("n_sequences") is not None else ""
            return body + absent(f"the label curve is empty: too few sequences per step for the estimator{n}")
        return body + absent("diagnostics/information.json has neither label nor future curves")
    fig, axes = plt.subplots(1, int(bool(has_label)) + int(bool(has_future)), figsize=(10, 3.6), squeeze=False)
    i = 0
    if has_label:
        ax = axes[0, i]
        i += 1
        _curve(ax, label["t"], label["mi"], label.get("baseline"), r"$I(h_t;\, y)$", "#4c72b0")
        ax.set_xlabel("t (time step)")
        ax.set_ylabel("mutual information (nats)")
        ax.set_title("information about the label")
    if has_future:
        ax = axes[0, i]
        target = f" ({_mpl(future['target'])})" if future.get("target") else ""
        _curve(ax, future["k"], future["mi"], future.get("baseline"), r"$I(h_t;\, y_{t+k})$", "#c44e52")
        ax.set_xlabel("k (steps ahead)")
        ax.set_ylabel("mutual information (nats)")
        ax.set_title("information about the future" + target)
    fig.tight_layout()
    body += img(fig, "mutual information of the hidden state with the label over t and with the future over k")
    if not has_future:
        why = info.get("future_omitted")
        body += f'<p class="absent">no future curve: {esc(why)}</p>' if why else absent(
            "diagnostics/information.json has no 'future' curve")
    return body


def inputs_section(run: RunData) -> str:
    rows = [[rel, state] for rel, state in run.files.items()]
    return f"<p>Run directory: <code>{esc(run.dir)}</code></p>" + html_table(["file", "state"], rows, left=2)


_BUILDERS: dict[str, Callable[[RunData], str]] = {
    "summary": summary_section,
    "learning-curves": learning_curves_section,
    "learning-rate": learning_rate_section,
    "gradient-norms": gradient_norms_section,
    "gate-statistics": gate_statistics_section,
    "memory-utilisation": memory_section,
    "confusion-matrix": confusion_section,
    "reliability": reliability_section,
    "attention": attention_section,
    "loss-landscape": landscape_section,
    "parameter-space": trajectory_section,
    "information-flow": information_section,
    "inputs": inputs_section,
}


def _safe(build: Callable[[RunData], str], run: RunData) -> str:
    try:
        return build(run)
    except Exception as exc:  # malformed diagnostics: say so in place of the plot, keep the rest of the report
        plt.close("all")
        return f'<p class="error">could not be drawn: {esc(type(exc).__name__)}: {esc(exc)}</p>'


def render_report(run: RunData) -> str:
    sections = [(sid, title, _safe(_BUILDERS[sid], run)) for sid, title in SECTIONS]
    return _page(f"longshort run {run.name}", f"{run.task} · {_get(run.config, 'data.source', '')}", sections)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained report of a run directory (default ``RUN_DIR/report.html``) and return its path."""
    run = load_run(run_dir)
    path = Path(out) if out is not None else run.dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run), encoding="utf-8")
    return path


# -- comparing runs ----------------------------------------------------------------------------------------


def _labels(dirs: list[Path]) -> list[str]:
    """Short unique run names: each run's directory name, with as many parents as it takes to tell it from the
    others (a/run and b/run beside c)."""
    parts = [d.resolve().parts for d in dirs]
    labels = []
    for i, p in enumerate(parts):
        for depth in range(1, len(p) + 1):
            mine = p[-depth:]
            if all(q[-depth:] != mine for j, q in enumerate(parts) if j != i):
                break
        labels.append("/".join(mine))
    return labels


COMPARE_CURVES = (("train_loss", "train loss"), ("val_loss", "validation loss"),
                  ("val_accuracy", "validation accuracy"), ("val_f1_macro", "validation F1 (macro)"))


def comparison_curves_figure(runs: list[RunData]) -> Figure:
    """One panel per history column in COMPARE_CURVES, one line per run that recorded it (shared axes)."""
    keys = [(k, t) for k, t in COMPARE_CURVES if any(_history_col(r, k)[1].size for r in runs)]
    if not keys:
        keys = [("train_loss", "train loss")]
    ncol = min(2, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(10, 3.2 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes.flat, keys, strict=False):
        for i, r in enumerate(runs):
            x, y = _history_col(r, key)
            if len(y):
                ax.plot(x, y, marker="o", ms=3, color=colors[i % len(colors)], label=_mpl(r.name))
        ax.set_title(title)
        _epoch_x(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def comparison_grad_figure(runs: list[RunData]) -> Figure:
    """The gradient norm per step of every run with diagnostics/steps.csv (its EMA where recorded)."""
    fig, ax = plt.subplots(figsize=(10, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        if r.steps is None or not r.steps.has("grad_norm"):
            continue
        col = "grad_norm_ema" if r.steps.has("grad_norm_ema") else "grad_norm"
        x, y = r.steps.num("step"), r.steps.num(col)
        ok = _finite(y) & (y > 0)
        ax.plot(x[ok], y[ok], lw=1, color=colors[i % len(colors)], label=_mpl(f"{r.name} ({col})"))
    _log_y(ax)
    _step_x(ax)
    ax.set_ylabel("gradient norm")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _metric_rows(runs: list[RunData]) -> tuple[list[list[object]], dict[int, set[int]]]:
    keys: list[tuple[str, str]] = []
    for split in ("val", "test"):
        for r in runs:
            for k, v in ((r.metrics or {}).get(split) or {}).items():
                if isinstance(v, int | float) and not isinstance(v, bool) and (split, k) not in keys:
                    keys.append((split, k))
    rows: list[list[object]] = []
    best: dict[int, set[int]] = {}
    for split, k in keys:
        vals = [((r.metrics or {}).get(split) or {}).get(k) for r in runs]
        rows.append([f"{split} {k}", *["" if v is None else v for v in vals]])
        nums = [(i, float(v)) for i, v in enumerate(vals) if isinstance(v, int | float) and math.isfinite(v)]
        if k != "n" and len(nums) > 1 and len({v for _, v in nums}) > 1:
            target = (min if k in LOWER_IS_BETTER else max)(v for _, v in nums)
            best[len(rows) - 1] = {i + 1 for i, v in nums if v == target}
    for label, get in (("best epoch", lambda r: (r.metrics or {}).get("best_epoch")),
                       ("epochs run", lambda r: (r.metrics or {}).get("epochs_run", len(r.history) or None)),
                       ("parameters", lambda r: r.params)):
        rows.append([label, *["" if get(r) is None else get(r) for r in runs]])
    return rows, best


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(d)}


def render_comparison(runs: list[RunData]) -> str:
    names = [r.name for r in runs]
    sections: list[tuple[str, str, str]] = []
    body = html_table(["run", "task", "data", "directory"],
                      [[r.name, r.task, _get(r.config, "data.source", ""), str(r.dir)] for r in runs], left=4)
    flat = [_flatten(r.config or {}) for r in runs]
    every = set.intersection(*(set(f) for f in flat))
    differ = sorted(k for k in every if len({f[k] for f in flat}) > 1)
    partial = sorted(set().union(*flat) - every)  # a partial or older config: listed apart, not as differences
    if differ:
        body += "<h3>Config keys that differ</h3>" + html_table(
            ["key", *names], [[k, *[f[k] for f in flat]] for k in differ], left=1 + len(runs))
    elif all(r.config for r in runs):
        body += "<p>The runs' configs are the same.</p>"
    if partial:
        body += (f"<details><summary>{len(partial)} config key(s) only some runs have</summary>"
                 + html_table(["key", *names], [[k, *[f.get(k, "—") for f in flat]] for k in partial],
                              left=1 + len(runs)) + "</details>")
    sections.append(("runs", "Runs", body))
    without = [r.name for r in runs if not r.history]
    curves = img(comparison_curves_figure(runs), "learning curves of every run on shared axes: " + ", ".join(names))
    if without:
        curves += absent(f"no history.csv for {', '.join(without)}")
    sections.append(("learning-curves", "Learning curves", curves))
    rows, best = _metric_rows(runs)
    sections.append(("metrics", "Metrics", html_table(["metric", *names], rows, best=best)
                     + "<p>Bold: the best value of the row (lowest for losses and error rates).</p>"))
    with_steps = [r for r in runs if r.steps is not None and r.steps.has("grad_norm")]
    if with_steps:
        grad = img(comparison_grad_figure(runs), "gradient norm per step of every run: "
                   + ", ".join(r.name for r in with_steps))
        missing = [r.name for r in runs if r not in with_steps]
        if missing:
            grad += absent(f"no diagnostics/steps.csv for {', '.join(missing)}")
    else:
        grad = absent(HINTS["steps"] + " (in every run)")
    sections.append(("gradient-norms", "Gradient norms", grad))
    return _page(f"longshort: {len(runs)} runs compared", " · ".join(names), sections)


def build_comparison(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write one page overlaying several runs' learning curves, metrics and gradient norms; return its path."""
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise RunDirError("a comparison needs at least two run directories")
    runs = [load_run(d, name) for d, name in zip(dirs, _labels(dirs), strict=True)]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_comparison(runs), encoding="utf-8")
    return path
