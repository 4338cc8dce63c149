"""Inference on one CPU thread: batch-1 latency (p50/p99) and batched throughput of every way to run a classifier.

The default model (hidden 256, 4 BiLSTM layers, 8 heads; 9 features, 3 classes; seeded weights, or ``--run``'s)
on length-50 sequences, with ``torch.set_num_threads(1)`` and onnxruntime's ``intra_op_num_threads=1``:

- ``plain_pytorch`` (the reference): what a user writes by hand, ``softmax(model(x, lengths).logits)`` under
  ``torch.inference_mode()`` on an already scaled tensor;
- ``torch_eager``: ``Run.predict_proba`` on raw input (scaling, batching and the same eager model);
- ``onnx_fp32``: :class:`longshort.deploy.runtime.OnnxPredictor` on the float32 export (raw input, scaling in
  numpy), what ``fastest_predictor`` picks;
- ``onnx_int8``: the same predictor on the dynamic 8-bit export (``longshort export --format quantized``);
- ``torch_export``: the ``torch.export`` program (``.pt2``, LSTM as a ``scan``) on a scaled tensor;
- ``streaming_step``, ``streaming_step_onnx``, ``streaming_step_onnx_int8``: one new step fed to a stream
  already ``LENGTH - 1`` steps in, in torch eager and in onnxruntime (float32, 8-bit) (:func:`streaming_rows`; a
  causal model: the run's own with ``--causal``, else the default architecture with ``bidirectional=false``).

Latency: single sequences, calls of all paths interleaved round by round (so drift in machine load hits all
alike), each call timed on its own; p50/p99 over all calls. Throughput: batches of ``--batch`` sequences, the
median over rounds, in sequences per second. ``ratio_*`` = the reference's figure over the path's (> 1: the path is
faster than plain PyTorch) for latency, path over reference for throughput.

    python benchmarks/inference.py [--calls 300] [--rounds 5] [--batch 64] [--run RUN_DIR] [--causal] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

LENGTH, FEATURES = 50, 9


def make_run(root: Path, causal: bool, overrides: list[str] | None = None) -> Path:
    """A run directory of the default model with seeded weights (timing does not need trained ones);
    ``overrides`` (``model.hidden_dim=128``, ...) change the architecture."""
    from longshort.config import apply_overrides, save_config, validate
    from longshort.data.pipeline import prepare
    from longshort.nn.classifier import SequenceClassifier
    from longshort.training.checkpoint import save_weights

    raw = {"data": {"source": "builtin:regimes", "builtin": {"n": 200, "length": LENGTH}},
           "model": {"bidirectional": not causal}}
    cfg = validate(apply_overrides(raw, list(overrides or [])))
    splits = prepare(cfg.data, cfg.seed)
    run = root / "run"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    splits.prep.save(run / "preprocess.json")
    torch.manual_seed(0)
    model = SequenceClassifier(splits.train.n_features, len(splits.prep.class_names), cfg.model)
    save_weights(model.eval(), run / "model.safetensors")
    return run


def streaming_rows(run_dir: Path, x: np.ndarray, calls: int, root: Path, overrides: list[str] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """p50/p99 milliseconds of feeding one new raw step to a stream that has already seen ``LENGTH - 1`` steps
    (scaling, conv buffers, LSTM state, attention cache, running pooling), each call timed on its own after
    restoring the saved state, calls of the three ways interleaved: ``streaming_step``
    (:class:`longshort.deploy.streaming.RunStreamer`, torch eager), ``streaming_step_onnx`` and
    ``streaming_step_onnx_int8`` (:class:`longshort.deploy.runtime.OnnxStreamer` on ``--format stream`` and
    ``stream-quantized``). Streaming needs a causal model: for a bidirectional ``run_dir`` the default
    architecture with ``bidirectional=false`` (seeded) is measured."""
    from longshort.deploy.runtime import OnnxStreamer
    from longshort.deploy.stream_export import export_stream
    from longshort.deploy.streaming import RunStreamer
    from longshort.run import Run

    run = Run.load(run_dir)
    what = str(run_dir)
    if not run.model.causal:
        run_dir = make_run(root / "causal", causal=True, overrides=overrides)
        run = Run.load(run_dir)
        what = ("default model" + "".join(f" {o}" for o in overrides or []) + " with bidirectional=false "
                "(seeded weights)")
    eager = RunStreamer(run)
    onnx = {name: OnnxStreamer(export_stream(run_dir, root / "stream" / name, quantized=q)["path"])
            for name, q in (("streaming_step_onnx", False), ("streaming_step_onnx_int8", True))}
    times: dict[str, list[float]] = {"streaming_step": [], **{name: [] for name in onnx}}
    with torch.inference_mode():
        eager.step(x[:1, :-1])  # a stream 49 steps in
        saved = eager.stream.get_state()
        onnx_saved = {}
        for name, streamer in onnx.items():
            streamer.step(x[:1, :-1])
            onnx_saved[name] = streamer.get_state()
        for _ in range(max(calls, 1)):
            eager.stream.set_state(saved)
            t = time.perf_counter()
            eager.step(x[:1, -1])
            times["streaming_step"].append(time.perf_counter() - t)
            for name, streamer in onnx.items():
                streamer.set_state(onnx_saved[name])
                t = time.perf_counter()
                streamer.step(x[:1, -1])
                times[name].append(time.perf_counter() - t)
    eager.stream.set_state(saved)
    ref = eager.step(x[:1, -1])  # the same step as the timed ones, for the agreement figures
    rows = {}
    for name, values in times.items():
        how = {"streaming_step": "RunStreamer (torch eager)", "streaming_step_onnx": "OnnxStreamer, float32",
               "streaming_step_onnx_int8": "OnnxStreamer, 8-bit"}[name]
        rows[name] = {"p50_ms": 1e3 * statistics.median(values), "p99_ms": 1e3 * percentile(values, 99),
                      "calls": len(values), "what": f"{how}: one new step of a stream {LENGTH - 1} steps in, {what}"}
        if name in onnx:
            onnx[name].set_state(onnx_saved[name])
            rows[name]["max_abs_diff_proba_vs_eager_step"] = float(np.abs(onnx[name].step(x[:1, -1]) - ref).max())
    return rows


def multiply_adds(model: torch.nn.Module, steps: int) -> dict[str, float]:
    """Multiply-adds of one batch-1 sequence of ``steps`` steps: torch's ``FlopCounterMode`` over the exported forward
    (every matrix product, attention and the convolutions written as products), plus the LSTMs counted from their
    weight shapes (``FlopCounterMode`` has no formula for ``aten.lstm``): each step multiplies every ``W_ih`` and
    ``W_hh`` once, per direction."""
    from torch.utils.flop_counter import FlopCounterMode

    from longshort.deploy.exportable import ExportClassifier
    from longshort.nn.lstm import LSTM

    counter = FlopCounterMode(display=False)
    x = torch.zeros(1, steps, model.input_dim)  # type: ignore[arg-type]
    with torch.inference_mode(), counter:
        ExportClassifier(model)(x, torch.tensor([steps]))
    ops = {str(k): v / 2 for k, v in counter.get_flop_counts()["Global"].items()}
    assert not any("lstm" in k for k in ops), ops  # counted below
    lstm = sum(p.numel() for m in model.modules() if isinstance(m, LSTM)
               for n, p in m.named_parameters() if n.startswith(("weight_ih", "weight_hh"))) * steps
    return {"total": sum(ops.values()) + lstm, "lstm": float(lstm), **ops}


def machine_peaks(size: int = 1024, repeats: int = 8) -> dict[str, float]:
    """Single-thread throughput of large square products on this machine, the best its libraries do on any shape:
    float32 ``torch.mm`` (GFLOP/s) and onnxruntime's 8-bit ``MatMulInteger`` (u8 x s8, what its quantized
    operators run on; GMAC/s). Best of ``repeats``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    fp32_gflops = 2 * size**3 / best / 1e9
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "peak",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])], [weight])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"A": rng.integers(0, 256, (size, size), dtype=np.uint8)}
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return {"fp32_gflops": fp32_gflops, "int8_gmacs": size**3 / best / 1e9}


def lstm_kernel_ms(model: torch.nn.Module, steps: int, calls: int = 60) -> dict[str, float]:
    """Median milliseconds of the model's LSTM blocks alone at batch 1 in onnxruntime, float32 and 8-bit: each
    block as one bare ONNX ``LSTM`` node of its shapes (random weights; the quantized one through
    ``quantize_dynamic``, as ``--format quantized`` does), summed over the blocks. What the fastest runtime
    here needs for the recurrences, however small the rest of the graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from longshort.nn.lstm import LSTM

    rng = np.random.default_rng(0)
    total = {"fp32": 0.0, "int8": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for i, lstm in enumerate(m for m in model.modules() if isinstance(m, LSTM)):
            d, h, f = lstm.num_directions, lstm.hidden_size, lstm.input_size
            inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)
                     for name, shape in (("W", (d, 4 * h, f)), ("R", (d, 4 * h, h)), ("B", (d, 8 * h)))]
            node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=h,
                                    direction="bidirectional" if d == 2 else "forward")
            graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                                     ["T", 1, f])],
                                      [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
            fp32, int8 = Path(tmp) / f"{i}.onnx", Path(tmp) / f"{i}-q.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QUInt8)
            x = {"X": rng.standard_normal((steps, 1, f)).astype(np.float32)}
            for kind, path in (("fp32", fp32), ("int8", int8)):
                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for _ in range(5):
                    session.run(None, x)
                times = []
                for _ in range(calls):
                    t = time.perf_counter()
                    session.run(None, x)
                    times.append(time.perf_counter() - t)
                total[kind] += 1e3 * statistics.median(times)
    return total


def floor_row(model: torch.nn.Module, goal_ms: float = 2.0) -> dict[str, Any]:
    """How fast one sequence could go on this core, two ways:

    - ``bound_*_ms``: its multiply-adds at the machine's peak product rate, nothing else counted (no runtime
      can beat it; a batch-1 LSTM runs far below peak, a matrix-vector product per step);
    - ``kernel_floor_*_ms``: the LSTM blocks alone in onnxruntime (:func:`lstm_kernel_ms`) plus the other
      multiply-adds at peak: what the fastest runtime here needs even with a perfectly lean rest of the graph.
    """
    macs = multiply_adds(model, LENGTH)
    peaks = machine_peaks()
    fp32_rate, int8_rate = peaks["fp32_gflops"] * 1e9 / 2, peaks["int8_gmacs"] * 1e9
    lstm = lstm_kernel_ms(model, LENGTH)
    rest = macs["total"] - macs["lstm"]
    row = {"multiply_adds": macs, "peaks": peaks,
           "bound_fp32_ms": 1e3 * macs["total"] / fp32_rate, "bound_int8_ms": 1e3 * macs["total"] / int8_rate,
           "lstm_kernels_ms": lstm,
           "kernel_floor_fp32_ms": lstm["fp32"] + 1e3 * rest / fp32_rate,
           "kernel_floor_int8_ms": lstm["int8"] + 1e3 * rest / int8_rate, "goal_ms": goal_ms}
    row["goal_within_kernel_floor"] = min(row["kernel_floor_fp32_ms"], row["kernel_floor_int8_ms"]) <= goal_ms
    return row


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="batch-1 calls per path (spread over the rounds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="sequences per call of the throughput rows")
    ap.add_argument("--run", default=None, help="a trained classifier run (default: the default model, seeded)")
    ap.add_argument("--causal", action="store_true", help="build the default model with bidirectional=false")
    ap.add_argument("--no-torch-export", action="store_true", help="skip the torch.export row (slow to export)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the seeded model's config, e.g. --set model.hidden_dim=128 (repeatable)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from longshort.deploy.export import export_onnx, export_torch
    from longshort.deploy.quantize import quantize
    from longshort.deploy.runtime import OnnxPredictor
    from longshort.run import Run

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else make_run(Path(tmp), args.causal, args.set)
        exports = Path(tmp) / "exports"
        t0 = time.perf_counter()
        onnx = export_onnx(run_dir, exports / "onnx")
        q = quantize(run_dir, exports / "quantized", evaluate=False)
        program = None if args.no_torch_export else export_torch(run_dir, exports / "torch-export")
        print(f"exports written in {time.perf_counter() - t0:.1f} s")
        run = Run.load(run_dir)
        model = run.model.eval()
        fp32, int8 = OnnxPredictor(exports / "onnx", threads=1), OnnxPredictor(exports / "quantized", threads=1)
        module = None if program is None else torch.export.load(program["path"]).module()

        rng = np.random.default_rng(0)
        raw = (rng.standard_normal((args.batch, LENGTH, len(run.prep.feature_names))) * 2 + 1).astype(np.float32)
        lengths = np.full(args.batch, LENGTH, dtype=np.int64)
        from longshort.deploy.runtime import scale

        scaled = torch.from_numpy(scale(raw, lengths, run.prep.mean, run.prep.std))
        t_lengths = torch.from_numpy(lengths)

        def plain(n: int) -> Any:
            with torch.inference_mode():
                return torch.softmax(model(scaled[:n], t_lengths[:n]).logits, -1)

        def program_call(n: int) -> Any:
            assert module is not None
            with torch.inference_mode():
                return module(scaled[:n], t_lengths[:n])[0]

        paths: dict[str, Callable[[int], Any]] = {
            "plain_pytorch": plain,
            "torch_eager": lambda n: run.predict_proba(raw[:n], lengths[:n]),
            "onnx_fp32": lambda n: fp32.predict_proba(raw[:n], lengths[:n]),
            "onnx_int8": lambda n: int8.predict_proba(raw[:n], lengths[:n]),
        }
        if module is not None:
            paths["torch_export"] = program_call
        ref = plain(args.batch).numpy()
        agree = {name: float(np.abs(np.asarray(fn(args.batch)) - ref).max()) for name, fn in paths.items()}
        for fn in paths.values():  # warm-up
            for _ in range(5):
                fn(1)

        per_round = max(1, args.calls // args.rounds)
        latency: dict[str, list[float]] = {name: [] for name in paths}
        throughput: dict[str, list[float]] = {name: [] for name in paths}
        for r in range(args.rounds):
            names = list(paths) if r % 2 == 0 else list(reversed(paths))
            for name in names:
                fn = paths[name]
                for _ in range(per_round):
                    t = time.perf_counter()
                    fn(1)
                    latency[name].append(time.perf_counter() - t)
                t = time.perf_counter()
                fn(args.batch)
                throughput[name].append(args.batch / (time.perf_counter() - t))
            print(f"round {r + 1}: " + "  ".join(f"{n} {1e3 * statistics.median(latency[n]):.2f}" for n in paths)
                  + " ms (p50 so far)")

        rows: dict[str, Any] = {}
        ref_p50 = statistics.median(latency["plain_pytorch"])
        ref_tp = statistics.median(throughput["plain_pytorch"])
        for name in paths:
            p50 = statistics.median(latency[name])
            tp = statistics.median(throughput[name])
            rows[name] = {
                "p50_ms": 1e3 * p50, "p99_ms": 1e3 * percentile(latency[name], 99),
                "throughput_seq_per_s": tp, "ratio_p50_plain_over_path": ref_p50 / p50,
                "ratio_throughput_path_over_plain": tp / ref_tp, "max_abs_diff_proba_vs_plain": agree[name],
            }
        rows.update(streaming_rows(run_dir, raw, per_round * args.rounds, Path(tmp), args.set))
        floor = floor_row(model)
        result = {
            "benchmark": "inference",
            "model": f"SequenceClassifier {'(' + str(run_dir) + ')' if args.run else 'default'} "
                     f"(hidden {run.config.model.hidden_dim}, {run.config.model.num_lstm_layers} LSTM blocks, "
                     f"{run.config.model.num_heads} heads, bidirectional {run.config.model.bidirectional})",
            "parameters": sum(p.numel() for p in model.parameters()),
            "length": LENGTH, "features": len(run.prep.feature_names), "latency_batch": 1,
            "throughput_batch": args.batch, "calls_per_path": per_round * args.rounds, "rounds": args.rounds,
            "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": 1},
            "torch": torch.__version__, "onnxruntime": onnx["versions"].get("onnxruntime"),
            "machine": platform.machine(), "processor": platform.processor(),
            "file_bytes": {"onnx_fp32": onnx["size_bytes"], "onnx_int8": q["size_bytes"],
                           **({"torch_export": program["size_bytes"]} if program else {})},
            "rows": rows,
            "floor": floor,
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'path':25} {'p50 ms':>8} {'p99 ms':>8} {'seq/s':>9} {'p50 x':>6} {'seq/s x':>8}")
    for name, row in rows.items():
        if "throughput_seq_per_s" not in row and "p50_ms" in row:  # streaming: latency of one step only
            print(f"{name:25} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}  ({row['what']})")
        elif "p50_ms" in row:
            print(f"{name:25} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['throughput_seq_per_s']:9.1f} "
                  f"{row['ratio_p50_plain_over_path']:6.2f} {row['ratio_throughput_path_over_plain']:8.2f}")
        else:
            print(f"{name:25} not measured: {row['why']}")
    macs, peaks = floor["multiply_adds"]["total"], floor["peaks"]
    fastest = min(r["p50_ms"] for r in rows.values() if "p50_ms" in r and "throughput_seq_per_s" in r)
    print(f"floor: {macs / 1e6:.1f} M multiply-adds per sequence; this core's peak {peaks['fp32_gflops']:.1f} "
          f"GFLOP/s float32, {peaks['int8_gmacs']:.1f} GMAC/s 8-bit -> at least {floor['bound_fp32_ms']:.2f} ms "
          f"float32, {floor['bound_int8_ms']:.2f} ms 8-bit at peak; the LSTM kernels alone take "
          f"{floor['lstm_kernels_ms']['fp32']:.2f} / {floor['lstm_kernels_ms']['int8']:.2f} ms, so with the rest at "
          f"peak {floor['kernel_floor_fp32_ms']:.2f} / {floor['kernel_floor_int8_ms']:.2f} ms (fastest measured "
          f"{fastest:.2f} ms; goal {floor['goal_ms']:g} ms)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
