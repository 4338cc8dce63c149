"""The streaming step as an ONNX graph (``longshort export --format stream``) and its torch-free runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longshort.config import Config, save_config
from longshort.data.pipeline import Preprocessor
from longshort.deploy.command import export_command
from longshort.deploy.export import ExportError
from longshort.deploy.runtime import InputError, OnnxStreamer
from longshort.deploy.stream_export import export_stream
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import CellConfig, StackConfig
from longshort.run import Run
from longshort.training.checkpoint import save_weights

pytest.importorskip("onnxruntime")

# two convolutions (one dilated), three LSTM blocks with attention after the 2nd: every kind of carried state
CAUSAL = ClassifierConfig(hidden_dim=12, num_heads=3, num_lstm_layers=3, conv_dilations=[1, 2], attention_every=2,
                          bidirectional=False)
DENSE = CAUSAL.model_copy(update={"stack": StackConfig(skip="dense"), "attention_every": 1, "conv_kernel": 2})
HIGHWAY = CAUSAL.model_copy(update={"stack": StackConfig(skip="highway"), "spectral_norm": True,
                                    "conv_dilations": []})
MEAN, STD = [10.0, -2.0, 0.5, 100.0], [2.0, 0.5, 1.0, 30.0]


def _run_dir(root: Path, cfg: ClassifierConfig, seed: int = 0) -> Path:
    """A run directory of a seeded (untrained) classifier with per-feature scaling and an aux target scale."""
    run = root / "run"
    run.mkdir(parents=True)
    save_config(Config(model=cfg), run / "config.yaml")
    Preprocessor(layout="sequences", class_names=["a", "b", "c"], feature_names=["f0", "f1", "f2", "f3"],
                 mean=MEAN, std=STD, aux_mean=3.0, aux_std=2.0).save(run / "preprocess.json")
    torch.manual_seed(seed)
    save_weights(SequenceClassifier(4, 3, cfg).eval(), run / "model.safetensors")
    return run


def _raw(b: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(MEAN, STD, (b, t, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def causal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _run_dir(tmp_path_factory.mktemp("stream"), CAUSAL)
    export_stream(run)
    return run


@pytest.mark.parametrize("cfg", [CAUSAL, DENSE, HIGHWAY], ids=["residual", "dense-kernel2", "highway-spectral-noconv"])
def test_every_onnx_step_equals_the_full_model_on_that_prefix(cfg: ClassifierConfig, tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, cfg, seed=1)
    manifest = export_stream(run_dir)
    assert manifest["format"] == "onnx-stream" and manifest["parity"]["max_abs_diff_logits"] < 1e-5
    names = [s["name"] for s in manifest["state"]]
    assert names[:2] == ["position", "slots"] and names[-3:] == ["total", "count", "maximum"]
    assert sum(n.startswith("conv") for n in names) == len(cfg.conv_dilations)
    run = Run.load(run_dir)
    raw = _raw(3, 11)
    streamer = OnnxStreamer(run_dir / "export" / "stream", batch_size=3)
    for t in range(11):  # a new stream count and length against the traced example's 3 streams 5 steps in
        proba, aux = streamer.step_outputs(raw[:, t])
        np.testing.assert_allclose(proba, run.predict_proba(raw[:, : t + 1]), rtol=0, atol=1e-5)
    scaled = torch.from_numpy((raw - np.float32(MEAN)) / np.float32(STD))
    with torch.no_grad():
        np.testing.assert_allclose(aux, run.model(scaled).aux.numpy() * 2.0 + 3.0, rtol=0, atol=1e-5)
    assert streamer.state["keys1"].shape[2] == 11  # one attention cache slot per step


# every cell option in its evaluation form, and the other skips between blocks (attention after every block)
CELLS = {
    "layer-norm-dense": CAUSAL.model_copy(update={"cell": CellConfig(layer_norm=True), "attention_every": 1,
                                                  "stack": StackConfig(skip="dense")}),
    "zoneout-highway": CAUSAL.model_copy(update={"cell": CellConfig(zoneout_c=0.3, zoneout_h=0.1),
                                                 "stack": StackConfig(skip="highway")}),
    "time-highway-none": CAUSAL.model_copy(update={"cell": CellConfig(time_skip="highway"),
                                                   "stack": StackConfig(skip="none")}),
    "time-residual-layer-norm": CAUSAL.model_copy(update={"cell": CellConfig(time_skip="residual",
                                                                             layer_norm=True)}),
    "self-attention-cell": CAUSAL.model_copy(update={"cell": CellConfig(self_attention=True, layer_norm=True)}),
}


@pytest.mark.parametrize("cfg", list(CELLS.values()), ids=list(CELLS))
def test_every_cell_option_streams_in_onnx_and_eager(cfg: ClassifierConfig, tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, cfg, seed=2)
    manifest = export_stream(run_dir)  # raises when a step misses the full model by more than 1e-4
    assert manifest["parity"]["max_abs_diff_logits"] < 1e-5
    names = [item["name"] for item in manifest["state"]]
    assert ("mem0" in names) == cfg.cell.self_attention
    run = Run.load(run_dir)
    raw = _raw(2, 7, seed=7)
    onnx, eager = OnnxStreamer(run_dir / "export" / "stream", batch_size=2), run.streamer(batch_size=2)
    for t in range(7):
        want = run.predict_proba(raw[:, : t + 1])
        np.testing.assert_allclose(onnx.step(raw[:, t]), want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(eager.step(raw[:, t]), want, rtol=0, atol=1e-5)
    # an idle stream and a chunk: both runtimes still give each stream's own prefix
    onnx.reset(batch_size=2)
    eager.reset(batch_size=2)
    for streamer in (onnx, eager):
        streamer.step(raw[:, :3], lengths=[3, 0])
        got = streamer.step(raw[:, 3:])
        np.testing.assert_allclose(got, run.predict_proba(np.stack([raw[0], np.pad(raw[1, 3:], ((0, 3), (0, 0)))]),
                                                          np.array([7, 4])), rtol=0, atol=1e-5)


def test_idle_streams_chunks_branches_and_resets_follow_the_eager_streamer(causal_run: Path) -> None:
    run = Run.load(causal_run)
    onnx, eager = OnnxStreamer(causal_run / "export" / "stream", batch_size=3), run.streamer(batch_size=3)
    raw = _raw(3, 5, seed=3)
    first = onnx.step(raw[:, :2], lengths=[2, 0, 1])  # stream 1 idle: no step yet, no outputs
    np.testing.assert_allclose(first[[0, 2]], eager.step(raw[:, :2], lengths=[2, 0, 1])[[0, 2]], atol=1e-5)
    assert np.isnan(first[1]).all() and onnx.state["position"].tolist() == [2, 0, 1]
    saved = onnx.get_state()
    for streamer in (onnx, eager):
        streamer.reset([0])
    for t in range(2, 5):
        np.testing.assert_allclose(onnx.step(raw[:, t]), eager.step(raw[:, t]), rtol=0, atol=1e-5)
    # stream 0 restarted at step 2: its outputs are the model's on raw[0, 2:5] alone
    np.testing.assert_allclose(onnx.step(raw[:, :0], lengths=[0, 0, 0])[0], run.predict_proba(raw[:1, 2:5])[0],
                               atol=1e-5)
    onnx.set_state(saved)  # back to the branch point: the same step gives the same outputs as before the reset
    again = onnx.step(raw[:, 2], lengths=[1, 1, 1])
    np.testing.assert_allclose(again[1], run.predict_proba(raw[1:2, 2:3])[0], atol=1e-5)
    with pytest.raises(InputError, match=r"x must be \[3, C\]"):
        onnx.step(raw[:2, 0])
    with pytest.raises(InputError, match="lengths must be"):
        onnx.step(raw[:, :2], lengths=[3, 0, 0])
    with pytest.raises(InputError, match="state\\['h0'\\] has shape"):
        onnx.set_state({**saved, "h0": saved["h0"][:, :5]})


def test_bidirectional_runs_and_non_stream_exports_are_refused(tmp_path: Path, causal_run: Path) -> None:
    bidi = _run_dir(tmp_path / "bidi", CAUSAL.model_copy(update={"bidirectional": True}))
    with pytest.raises(ExportError, match="bidirectional=false"):
        export_stream(bidi)
    from longshort.deploy.export import export_onnx

    export_onnx(causal_run, tmp_path / "whole")
    with pytest.raises(InputError, match="not a streaming export"):
        OnnxStreamer(tmp_path / "whole")


def test_both_stream_formats_from_the_cli_and_the_8bit_one_is_smaller_and_close(
        causal_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    export_command(argparse.Namespace(run_dir=str(causal_run), format="stream", out=None, opset=17))
    out = capsys.readouterr().out
    assert "(streaming step, float32," in out and "parity with torch eager on every prefix (2 streams x 9" in out
    export_command(argparse.Namespace(run_dir=str(causal_run), format="stream-quantized", out=None, opset=17))
    out = capsys.readouterr().out
    assert "streaming step, uint8 weights" in out and "8-bit deviation from torch eager on every prefix" in out
    d = causal_run / "export" / "stream-quantized"
    manifest = json.loads((d / "model.json").read_text())
    assert manifest["format"] == "onnx-stream-quantized" and manifest["deviation"]["max_abs_diff_proba"] < 0.05
    assert (d / "model.onnx").stat().st_size < (causal_run / "export" / "stream" / "model.onnx").stat().st_size
    raw = _raw(2, 6, seed=4)
    q, f = OnnxStreamer(d, batch_size=2), OnnxStreamer(causal_run / "export" / "stream", batch_size=2)
    np.testing.assert_allclose(q.step(raw), f.step(raw), atol=0.05)


def test_stream_runtime_runs_where_torch_cannot_be_imported(causal_run: Path, tmp_path: Path) -> None:
    raw = _raw(2, 7, seed=5)
    np.save(tmp_path / "in.npy", raw)
    script = f"""
import sys
for name in ("torch", "pandas", "pydantic", "sklearn", "yaml"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
from longshort.deploy.runtime import OnnxStreamer
s = OnnxStreamer({str(causal_run / "export" / "stream")!r}, batch_size=2)
x = np.load({str(tmp_path / "in.npy")!r})
np.save({str(tmp_path / "out.npy")!r}, np.stack([s.step(x[:, t]) for t in range(x.shape[1])]))
heavy = ("torch", "pandas", "pydantic")
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in heavy and sys.modules[m]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "loaded: []"
    run = Run.load(causal_run)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy")[-1], run.predict_proba(raw), rtol=0, atol=1e-5)


def test_fastest_streamer_takes_an_up_to_date_stream_export(causal_run: Path, tmp_path: Path) -> None:
    import shutil

    from longshort.deploy.predictor import fastest_streamer
    from longshort.deploy.streaming import RunStreamer

    name, streamer = fastest_streamer(causal_run, batch_size=2)
    assert name == "onnx-stream" and isinstance(streamer, OnnxStreamer) and streamer.batch_size == 2
    export_stream(causal_run, quantized=True)
    assert fastest_streamer(causal_run)[0] == "onnx-stream"  # 8 bits only when allowed
    assert fastest_streamer(causal_run, allow_quantized=True)[0] == "onnx-stream-quantized"
    raw = _raw(2, 4, seed=6)
    np.testing.assert_allclose(streamer.step(raw), Run.load(causal_run).predict_proba(raw), atol=1e-5)
    # a run whose weights changed since its exports streams in torch
    stale = tmp_path / "stale"
    shutil.copytree(causal_run, stale)
    torch.manual_seed(9)
    save_weights(SequenceClassifier(4, 3, CAUSAL).eval(), stale / "model.safetensors")
    name, streamer = fastest_streamer(stale, allow_quantized=True)
    assert name == "torch" and isinstance(streamer, RunStreamer)
