"""Data at scale: windows of one long series as views, memory linear in rows (issue 22).

Three measurements, one run:

1. ``prepare`` (split, window, fit and apply the scaling) of one continuous series of 9 float32 columns
   (window 50, horizon 5, stride 1), at each ``--rows`` (default 1M and 10M), each in a fresh process: wall
   time of ``prepare`` and the process's peak RSS (``ru_maxrss``), with the RSS of the process with the series
   built but not prepared beside it. Memory per row shows whether it grows with rows or with rows x window.
2. Training throughput of the first ``--steps`` optimizer steps (AdamW, batch 64, the default classifier at
   ``--hidden``) on windows drawn from the lazy view against the same windows materialised as one contiguous
   tensor (the in-memory path), interleaved in 10 rounds (load from other work on the machine falls on
   both), same process, same model initialisation.
3. Batches gathered from the view equal the materialised windows (checked, not timed).
4. A variable-length set of ``--sequences`` (default 100k) sequences of 3 float32 channels, lengths
   log-normal around 100 steps between 10 and 1,344 (PLAID's longest; padding to it would be about 10x the
   real steps), built as the readers build it (the steps back to back): ``prepare``'s time and peak RSS in a
   fresh process against the bytes of the real steps and of the padded array; and training throughput of
   ``--steps`` steps with batches gathered from the back-to-back steps against the same sequences as one padded
   tensor (20,000 of them, interleaved as in 2), with the batches checked equal.
5. Two processes on one machine (as two ranks would be), each preparing the same ``--rank-rows`` series and
   holding its splits, with ``data.series.cache`` off (each its own scaled rows) and on (both map the one file
   the first wrote): each process's RSS and PSS (``/proc/self/smaps_rollup``; PSS splits a shared page between
   the processes that map it) once both hold their data, the raw series freed as training's set-up frees it.

    python benchmarks/data_scale.py [--rows 1000000 10000000] [--steps 200] [--rank-rows 10000000]
                                    [--sequences 100000] [--out PATH]

Writes ``benchmarks/results/data_scale.json``. Prints the CPU, torch and thread count first.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WINDOW, HORIZON, COLUMNS = 50, 5, 9


def _series(rows: int, seed: int = 0):  # -> SeriesData
    from longshort.data.types import SeriesData

    rng = np.random.default_rng(seed)
    values = np.empty((rows, COLUMNS), dtype=np.float32)
    for c in range(COLUMNS):  # a float32 random walk per column (no float64 copy of the series)
        values[:, c] = np.cumsum(rng.standard_normal(rows, dtype=np.float32))
    target = values[:, 0].astype(np.float64) + 1000.0  # the labels' column: up/flat/down of its change
    names = [f"x{c}" for c in range(COLUMNS)]
    return SeriesData(values=values, target=target, feature_names=names, target_name="x0", source="(bench)")


def _config():  # -> DataConfig
    from longshort.data.config import DataConfig

    return DataConfig.model_validate({"layout": "series", "series": {"window": WINDOW, "horizon": HORIZON,
                                                                      "stride": 1, "change": "diff"}})


VAR_CHANNELS, VAR_LONGEST = 3, 1344


def _variable(n: int, seed: int = 0):  # -> SequenceData, kept as the readers keep a variable-length set
    from longshort.data.types import Ragged, SequenceData, offsets_of

    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(100), 0.8, n)), 10, VAR_LONGEST).astype(np.int64)
    lengths[0] = VAR_LONGEST
    values = rng.standard_normal((int(lengths.sum()), VAR_CHANNELS), dtype=np.float32)
    y = (rng.random(n) < 0.5).astype(np.int64)
    return SequenceData(X=None, lengths=lengths, y=y, feature_names=[f"x{c}" for c in range(VAR_CHANNELS)],
                        source="(bench)", ragged=Ragged(values, offsets_of(lengths)))


def variable_child(n: int) -> None:
    """``prepare`` of the variable-length set, printed as JSON (a fresh process: its own peak RSS)."""
    import torch  # noqa: F401

    from longshort.data.config import DataConfig
    from longshort.data.pipeline import prepare

    raw = _variable(n)
    before = _rss_mb()
    t0 = time.perf_counter()
    splits = prepare(DataConfig(source="(bench)", scale="standard"), 0, raw=raw)
    seconds = time.perf_counter() - t0
    steps = int(raw.lengths.sum())
    print(json.dumps({"sequences": n, "prepare_s": seconds, "peak_rss_mb": _rss_mb(), "rss_before_prepare_mb": before,
                      "real_steps_mb": steps * VAR_CHANNELS * 4 / 2**20,
                      "padded_mb": n * VAR_LONGEST * VAR_CHANNELS * 4 / 2**20,
                      "mean_length": steps / n, "ragged": splits.train.ragged is not None}))


def variable_throughput(steps: int, hidden: int, n: int = 20_000, rounds: int = 10) -> dict:
    import torch
    import torch.nn.functional as F

    from longshort.data.batching import TensorData, epoch_order, take, to_tensors
    from longshort.data.config import DataConfig
    from longshort.data.pipeline import prepare
    from longshort.nn.classifier import ClassifierConfig, SequenceClassifier

    splits = prepare(DataConfig(source="(bench)", scale="standard"), 0, raw=_variable(n, seed=1))
    ragged = to_tensors(splits.train)
    padded = TensorData(torch.from_numpy(splits.train.X), ragged.lengths, ragged.y, ragged.aux)
    order = epoch_order(len(ragged), 0, 0)
    cpu = torch.device("cpu")
    same = all(bool(torch.equal(take(ragged, order[i : i + 64], cpu).x, take(padded, order[i : i + 64], cpu).x))
               for i in range(0, 64 * 20, 64))
    torch.manual_seed(0)
    cfg = ClassifierConfig(hidden_dim=hidden, stem_stride=8)  # what model.size=auto picks for 1,344 steps
    models = {name: SequenceClassifier(VAR_CHANNELS, 2, cfg) for name in ("ragged", "padded")}
    models["padded"].load_state_dict(models["ragged"].state_dict())
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    data = {"ragged": ragged, "padded": padded}
    seconds, gather, step = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0), dict.fromkeys(models, 0)
    for r in range(rounds):
        for name in (("ragged", "padded") if r % 2 == 0 else ("padded", "ragged")):
            m, opt = models[name], opts[name]
            t0 = time.perf_counter()
            for _ in range(steps // rounds):
                i = step[name]
                g0 = time.perf_counter()
                start = (i * 64) % max(len(order) - 64, 1)  # wraps around on a small set
                b = take(data[name], order[start : start + 64], cpu)
                gather[name] += time.perf_counter() - g0
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(b.x, b.lengths).logits, b.y).backward()
                opt.step()
                step[name] += 1
            seconds[name] += time.perf_counter() - t0
    sps = {k: step[k] * 64 / seconds[k] for k in models}
    return {"sequences": len(ragged), "steps": step["ragged"], "batch": 64, "hidden": hidden, "samples_per_s": sps,
            "ratio_ragged_vs_padded": sps["ragged"] / sps["padded"],
            "gather_ms_per_batch": {k: gather[k] / step[k] * 1e3 for k in models}, "batches_equal": same,
            "storage_mb": {"ragged": ragged.X.untyped_storage().nbytes() / 2**20,
                           "padded": padded.X.untyped_storage().nbytes() / 2**20}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare_child(rows: int) -> None:
    """One measurement, printed as JSON (run in a fresh process so peak RSS is this measurement's own)."""
    import torch  # noqa: F401  (the trainer's process has torch loaded: count it in the baseline)

    from longshort.data.pipeline import prepare

    raw = _series(rows)
    before = _rss_mb()
    t0 = time.perf_counter()
    splits = prepare(_config(), 0, raw=raw)
    seconds = time.perf_counter() - t0
    out = {"rows": rows, "prepare_s": seconds, "peak_rss_mb": _rss_mb(), "rss_before_prepare_mb": before,
           "series_mb": raw.values.nbytes / 2**20, "train_windows": len(splits.train),
           "materialised_windows_mb": len(splits.train) * WINDOW * COLUMNS * 4 / 2**20,
           "lazy": splits.train.windows is not None}
    print(json.dumps(out))


def _smaps() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) / 1024  # MB
    return out


def _wait_for(directory: Path, prefix: str, n: int) -> None:
    while len(list(directory.glob(prefix + "*"))) < n:
        time.sleep(0.05)


def rank_child(rows: int, cache: str, rank: int, sync: str) -> None:
    """One of two processes: prepare, free the raw series, touch every row, then report RSS and PSS while the
    other process holds its data too (a file barrier in ``sync``)."""
    import gc

    import torch  # noqa: F401

    from longshort.data.pipeline import prepare

    d = Path(sync)
    raw = _series(rows)
    splits = prepare(_config(), 0, raw=raw, cache_dir=d / "cache" if cache == "on" else None)
    del raw
    gc.collect()
    (d / f"mapped-{rank}").touch()
    _wait_for(d, "mapped-", 2)
    if rank == 0:
        for path in splits.cached:  # as training does once every rank has mapped them
            path.unlink(missing_ok=True)
    total = sum(float(p.windows.values.sum(dtype=np.float64)) for p in (splits.train, splits.val, splits.test)
                if p is not None and p.windows is not None)  # every page in, as an epoch would
    (d / f"touched-{rank}").touch()
    _wait_for(d, "touched-", 2)
    m = _smaps()
    print(json.dumps({"rank": rank, "cache": cache, "rss_mb": m["Rss"], "pss_mb": m["Pss"],
                      "shared_mb": m.get("Shared_Clean", 0.0) + m.get("Shared_Dirty", 0.0), "checksum": total}))
    (d / f"measured-{rank}").touch()
    _wait_for(d, "measured-", 2)


def two_ranks(rows: int) -> dict:
    import tempfile

    out: dict = {"rows": rows, "series_mb": rows * COLUMNS * 4 / 2**20}
    for cache in ("off", "on"):
        with tempfile.TemporaryDirectory(prefix="ls-ranks-") as sync:
            procs = [subprocess.Popen([sys.executable, __file__, "--rank-child", str(rows), cache, str(r), sync],
                                      stdout=subprocess.PIPE, text=True) for r in range(2)]
            res = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        out[cache] = res
    return out


def throughput(steps: int, hidden: int, rows: int, rounds: int = 10) -> dict:
    import torch
    import torch.nn.functional as F

    from longshort.data.batching import TensorData, epoch_order, take, to_tensors
    from longshort.data.pipeline import prepare
    from longshort.nn.classifier import ClassifierConfig, SequenceClassifier

    splits = prepare(_config(), 0, raw=_series(rows, seed=1))
    lazy = to_tensors(splits.train)
    dense = TensorData(lazy.X.contiguous(), lazy.lengths, lazy.y, lazy.aux)  # the same windows, materialised
    assert not lazy.X.is_contiguous() and lazy.X.untyped_storage().nbytes() < dense.X.untyped_storage().nbytes()
    order = epoch_order(len(lazy), 0, 0)
    probe = order[:256]
    same = bool(torch.equal(take(lazy, probe, torch.device("cpu")).x, take(dense, probe, torch.device("cpu")).x))
    cfg = ClassifierConfig(hidden_dim=hidden)
    torch.manual_seed(0)
    models = {name: SequenceClassifier(COLUMNS, 3, cfg) for name in ("lazy", "in_memory")}
    models["in_memory"].load_state_dict(models["lazy"].state_dict())
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    data = {"lazy": lazy, "in_memory": dense}
    per_round = steps // rounds
    seconds = {k: 0.0 for k in models}
    gather = {k: 0.0 for k in models}
    step = {k: 0 for k in models}
    for r in range(rounds):
        for name in (("lazy", "in_memory") if r % 2 == 0 else ("in_memory", "lazy")):
            m, opt = models[name], opts[name]
            t0 = time.perf_counter()
            for _ in range(per_round):
                i = step[name]
                g0 = time.perf_counter()
                b = take(data[name], order[i * 64 : (i + 1) * 64], torch.device("cpu"))
                gather[name] += time.perf_counter() - g0
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(m(b.x, b.lengths).logits, b.y).backward()
                opt.step()
                step[name] += 1
            seconds[name] += time.perf_counter() - t0
    sps = {k: step[k] * 64 / seconds[k] for k in models}
    return {"rows": rows, "train_windows": len(lazy), "steps": step["lazy"], "batch": 64, "hidden": hidden,
            "samples_per_s": sps, "ratio_lazy_vs_in_memory": sps["lazy"] / sps["in_memory"],
            "gather_ms_per_batch": {k: gather[k] / step[k] * 1e3 for k in models},
            "view_batches_equal_materialised": same,
            "storage_mb": {"lazy": lazy.X.untyped_storage().nbytes() / 2**20,
                           "in_memory": dense.X.untyped_storage().nbytes() / 2**20}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=64, help="classifier hidden_dim of the throughput run")
    ap.add_argument("--train-rows", type=int, default=200_000, help="series rows of the throughput run")
    ap.add_argument("--rank-rows", type=int, default=10_000_000, help="series rows of the two-process run")
    ap.add_argument("--sequences", type=int, default=100_000, help="sequences of the variable-length set")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--variable-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank-child", nargs=4, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_scale.json"))
    args = ap.parse_args()
    if args.child is not None:
        prepare_child(args.child)
        return
    if args.variable_child is not None:
        variable_child(args.variable_child)
        return
    if args.rank_child is not None:
        rows, cache, rank, sync = args.rank_child
        rank_child(int(rows), cache, int(rank), sync)
        return
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"{cpu}; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    rows_out = []
    for rows in args.rows:
        res = subprocess.run([sys.executable, __file__, "--child", str(rows)], capture_output=True, text=True,
                             check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows_out.append(row)
        print(f"prepare {rows:>11,} rows: {row['prepare_s']:6.2f} s, peak RSS {row['peak_rss_mb']:7.0f} MB "
              f"(before prepare {row['rss_before_prepare_mb']:.0f} MB; series {row['series_mb']:.0f} MB; "
              f"materialised windows would be {row['materialised_windows_mb']:,.0f} MB)")
    if len(rows_out) >= 2:
        a, b = rows_out[0], rows_out[-1]
        growth = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (b["rows"] - a["rows"]) * 2**20
        print(f"peak RSS grows {growth:.0f} bytes a row between {a['rows']:,} and {b['rows']:,} rows "
              f"(the series is {COLUMNS * 4} bytes a row; materialised windows {COLUMNS * 4 * WINDOW})")
    tp = throughput(args.steps, args.hidden, args.train_rows)
    print(f"training, {tp['steps']} steps each, batch 64, hidden {tp['hidden']}: lazy "
          f"{tp['samples_per_s']['lazy']:.0f} samples/s, in memory {tp['samples_per_s']['in_memory']:.0f} "
          f"(ratio {tp['ratio_lazy_vs_in_memory']:.3f}); gather {tp['gather_ms_per_batch']['lazy']:.2f} vs "
          f"{tp['gather_ms_per_batch']['in_memory']:.2f} ms a batch; batches equal: "
          f"{tp['view_batches_equal_materialised']}")
    res = subprocess.run([sys.executable, __file__, "--variable-child", str(args.sequences)], capture_output=True,
                         text=True, check=True)
    var = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"prepare {var['sequences']:,} variable-length sequences (mean {var['mean_length']:.0f} steps, longest "
          f"{VAR_LONGEST:,}): {var['prepare_s']:.2f} s, peak RSS {var['peak_rss_mb']:.0f} MB (before prepare "
          f"{var['rss_before_prepare_mb']:.0f} MB; real steps {var['real_steps_mb']:.0f} MB, padded would be "
          f"{var['padded_mb']:,.0f} MB)")
    vtp = variable_throughput(args.steps, args.hidden)
    print(f"training on variable-length batches, {vtp['steps']} steps each: back to back "
          f"{vtp['samples_per_s']['ragged']:.0f} samples/s, padded {vtp['samples_per_s']['padded']:.0f} (ratio "
          f"{vtp['ratio_ragged_vs_padded']:.3f}); gather {vtp['gather_ms_per_batch']['ragged']:.2f} vs "
          f"{vtp['gather_ms_per_batch']['padded']:.2f} ms a batch; batches equal: {vtp['batches_equal']}")
    ranks = two_ranks(args.rank_rows)
    for cache in ("off", "on"):
        per = ", ".join(f"rank {r['rank']} RSS {r['rss_mb']:.0f} MB / PSS {r['pss_mb']:.0f} MB" for r in ranks[cache])
        print(f"two processes, {args.rank_rows:,} rows (series {ranks['series_mb']:.0f} MB), cache {cache}: {per}")
    doc = {"benchmark": "data_scale", "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "window": WINDOW, "horizon": HORIZON, "columns": COLUMNS, "prepare": rows_out, "throughput": tp,
           "variable_length": {"prepare": var, "throughput": vtp},
           "two_ranks": ranks}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
