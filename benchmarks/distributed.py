"""Data-parallel training on CPU: samples/s for 1 and 2 processes (DDP, FSDP2), memory per rank, plan vs measured.

All sides train the same classifier (hidden 64, 2 BiLSTM blocks, batch 64 of length 50, 9 features) with the real
``Trainer`` for the same steps of the same global batches, in one run:

- 1 process with 1 thread and with 2 threads (the reference: what the machine does without distribution);
- 2 processes x 1 thread under torchrun (gloo), strategy ddp and fsdp.

Scaling efficiency = samples/s of 2 processes / (2 x samples/s of 1 process with 1 thread). Memory per rank is the
bytes of parameters + gradients + optimizer state each rank holds after the steps (local shards for FSDP), next to
``longshort plan``'s estimate; and plan's total for one process against ``measured_peak`` (tensors kept by one real
step, activations included).

    python benchmarks/distributed.py [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from longshort.config import validate
from longshort.data.batching import TensorData
from longshort.nn.classifier import SequenceClassifier
from longshort.plan import RSSPeak, activation_profile, measured_peak, memory_rows, rss_profile
from longshort.training.classify import classifier_trainer
from longshort.training.distributed import DistributedConfig, setup, sharded_bytes, shutdown

BATCH, LENGTH, FEATURES, CLASSES = 64, 50, 9, 3
MODEL = {"hidden_dim": 64, "num_heads": 4, "num_lstm_layers": 2, "conv_dilations": [1, 2]}


def config(steps: int) -> Any:
    return validate({"model": MODEL, "train": {"batch_size": BATCH, "epochs": 1, "progress": "off",
                                               "tensorboard": False, "recipe": "plain"}})


def data(steps: int) -> TensorData:
    g = torch.Generator().manual_seed(0)
    n = BATCH * steps
    return TensorData(X=torch.randn(n, LENGTH, FEATURES, generator=g), lengths=torch.full((n,), LENGTH),
                      y=torch.randint(0, CLASSES, (n,), generator=g), aux=None)


def run_trainer(steps: int, strategy: str, tmp: Path) -> dict[str, Any]:
    cfg = config(steps)
    dcfg = DistributedConfig(strategy=strategy)  # type: ignore[arg-type]
    ctx = setup(dcfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = SequenceClassifier(FEATURES, CLASSES, cfg.model)
    tr = classifier_trainer(cfg.train, model, data(steps), None, num_classes=CLASSES, seed=0, run_dir=tmp,
                            distributed=dcfg, ctx=ctx)
    tr.save = lambda tags: None  # type: ignore[method-assign]  # timing the steps, not checkpoint I/O
    # the process's resident memory during the steps after the first (which allocates the optimizer state and
    # the libraries' caches, as plan's probes do in their warm-up), above where it stood before them
    watch, inner = RSSPeak(), tr.train_step

    def step(batch: Any) -> Any:
        if tr.step == 1:
            watch.__enter__()
        return inner(batch)

    tr.train_step = step  # type: ignore[method-assign]
    t0 = time.perf_counter()
    tr.fit()
    elapsed = time.perf_counter() - t0
    watch.__exit__(None, None, None)
    rss_peak = watch.peak
    mem = sharded_bytes(tr.model, tr.optimizer)
    shutdown(ctx)
    return {"samples_per_s": BATCH * steps / elapsed, "seconds": elapsed, "memory": mem, "rank": ctx.rank,
            "rss_peak_over_start": rss_peak}



def worker(args: argparse.Namespace) -> None:
    res = run_trainer(args.steps, args.strategy, Path(args.tmp))
    if res["rank"] == 0:
        Path(args.out).write_text(json.dumps(res))


def launch(nproc: int, strategy: str, steps: int, tmp: Path, threads: int) -> dict[str, Any]:
    out = tmp / f"{strategy}-{nproc}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
           str(nproc), __file__, "--worker", "--strategy", strategy, "--steps", str(steps), "--out", str(out),
           "--tmp", str(tmp / f"run-{strategy}-{nproc}")]
    if nproc == 1 and strategy == "none":
        cmd = [sys.executable, __file__, "--worker", "--strategy", "none", "--steps", str(steps), "--out", str(out),
               "--tmp", str(tmp / f"run-none-{threads}")]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", default="benchmarks/results/distributed.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        one_1 = launch(1, "none", args.steps, tmp, threads=1)
        one_2 = launch(1, "none", args.steps, tmp, threads=2)
        ddp = launch(2, "ddp", args.steps, tmp, threads=1)
        fsdp = launch(2, "fsdp", args.steps, tmp, threads=1)
    cfg = config(args.steps)
    torch.manual_seed(0)
    model = SequenceClassifier(FEATURES, CLASSES, cfg.model)
    per_seq, fixed = activation_profile(model, LENGTH, FEATURES)
    rows = {(r.strategy, r.nproc): r for r in memory_rows(model, cfg, [1, 2], per_seq, fixed)}
    torch.set_num_threads(1)  # the RSS probes like the 1-thread run they are compared with
    fit = rss_profile(cfg, LENGTH, FEATURES, CLASSES)
    full = rss_profile(cfg, LENGTH, FEATURES, CLASSES, batches=(BATCH, 2 * BATCH))  # measured at batch 64 itself
    assert fit is not None and full is not None
    rss_plan, rss_measured = fit[1] + fit[0] * BATCH, full[1] + full[0] * BATCH
    peak = measured_peak(model, cfg, BATCH, LENGTH, FEATURES, CLASSES)
    state = {k: rows[k].params + rows[k].grads + rows[k].optimizer for k in rows}
    result = {
        "what": "classifier hidden 64, 2 BiLSTM blocks, batch 64 x length 50 x 9 features; real Trainer steps; "
                "CPU, gloo; 2 processes x 1 thread vs 1 process",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "steps": args.steps,
        "samples_per_s": {"1 process, 1 thread": one_1["samples_per_s"], "1 process, 2 threads": one_2["samples_per_s"],
                          "2 processes ddp": ddp["samples_per_s"], "2 processes fsdp": fsdp["samples_per_s"]},
        "scaling_efficiency_vs_1_thread": {"ddp": ddp["samples_per_s"] / (2 * one_1["samples_per_s"]),
                                           "fsdp": fsdp["samples_per_s"] / (2 * one_1["samples_per_s"])},
        "memory_per_rank_bytes": {
            "measured": {"none": one_1["memory"], "ddp x2": ddp["memory"], "fsdp x2": fsdp["memory"]},
            "plan_params_grads_optimizer": {"none": state[("none", 1)], "ddp x2": state[("ddp", 2)],
                                            "fsdp x2": state[("fsdp", 2)]},
            "fsdp_over_ddp_measured": fsdp["memory"]["total"] / ddp["memory"]["total"],
        },
        "plan_vs_measured_peak": {"plan_total_none": rows[("none", 1)].total, "measured_peak": peak,
                                  "ratio": rows[("none", 1)].total / peak["total"],
                                  "plan_rss_estimate": rss_plan,
                                  "rss_measured_fresh_process_batch_64": rss_measured,
                                  "ratio_plan_rss_to_measured": rss_plan / rss_measured,
                                  "rss_trainer_run_after_first_step": one_1["rss_peak_over_start"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    s = result["samples_per_s"]
    for k, v in s.items():
        print(f"{k:<24} {v:8.1f} samples/s")
    e = result["scaling_efficiency_vs_1_thread"]
    print(f"scaling efficiency (2 processes vs 2 x 1 process, 1 thread each): ddp {e['ddp']:.2f}, fsdp {e['fsdp']:.2f}")
    m = result["memory_per_rank_bytes"]
    for k in ("none", "ddp x2", "fsdp x2"):
        print(f"params+grads+optimizer per rank, {k:<8} measured {m['measured'][k]['total'] / 2**20:7.3f} MiB, "
              f"plan {m['plan_params_grads_optimizer'][k] / 2**20:7.3f} MiB")
    print(f"fsdp / ddp per rank: {m['fsdp_over_ddp_measured']:.3f}")
    p = result["plan_vs_measured_peak"]
    print(f"plan total (none) {p['plan_total_none'] / 2**20:.2f} MiB vs measured peak "
          f"{p['measured_peak']['total'] / 2**20:.2f} MiB: ratio {p['ratio']:.3f}")
    print(f"process memory (RSS) of training steps at batch 64 in a fresh process "
          f"{p['rss_measured_fresh_process_batch_64'] / 2**20:.2f} MiB; plan's RSS estimate (fitted at batch 8 and "
          f"16) {p['plan_rss_estimate'] / 2**20:.2f} MiB: ratio {p['ratio_plan_rss_to_measured']:.3f}")
    print(f"(the Trainer run's RSS growth after its first step: {p['rss_trainer_run_after_first_step'] / 2**20:.2f} "
          "MiB: memory freed by step 1 is reused, so it grows less)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
