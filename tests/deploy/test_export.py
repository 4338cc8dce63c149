"""Exports reproduce the eager model on mixed lengths and other shapes than the traced one; the twin they trace
equals the eager model; quantization shrinks the file and mostly keeps predictions; errors name what is wrong."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from longshort.cli import main
from longshort.deploy import export as export_mod
from longshort.deploy.export import (
    PARITY_TOL,
    ExportError,
    check_parity,
    eager_outputs,
    export_torch,
    weights_sha256,
)
from longshort.deploy.exportable import ExportClassifier, check_exportable
from longshort.errors import LongshortError, RunDirError
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import CellConfig, StackConfig
from longshort.run import Run


def _scaled_batch(batch: int, steps: int, lengths: list[int], channels: int, seed: int = 0,
                  garbage: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal inputs; padded steps hold ``garbage`` (0 = zero padding)."""
    rng = np.random.default_rng(seed)
    lens = np.asarray(lengths, dtype=np.int64)
    x = rng.standard_normal((batch, steps, channels)).astype(np.float32)
    pad = np.arange(steps)[None, :] >= lens[:, None]
    x[pad] = garbage
    return x, lens


def _cli(*argv: str) -> tuple[dict[str, Any], str]:
    """``longshort export ARGV`` through the real CLI: (model.json, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", *argv]) == 0
    manifest_line = [line for line in out.getvalue().splitlines() if line.startswith("manifest: ")][-1]
    return json.loads(Path(manifest_line.removeprefix("manifest: ")).read_text()), out.getvalue()


@pytest.fixture(scope="module")
def onnx_export(deploy_run: Path) -> tuple[dict[str, Any], str]:
    """``longshort export RUN`` (default format onnx, default directory RUN/export/onnx)."""
    return _cli(str(deploy_run))


@pytest.fixture(scope="module")
def quantized_export(deploy_run: Path) -> tuple[dict[str, Any], str]:
    return _cli(str(deploy_run), "--format", "quantized")


# -- the exportable twin ----------------------------------------------------------------------------------------


DEFAULT = ClassifierConfig(hidden_dim=12, num_heads=3, num_lstm_layers=2, conv_dilations=[1, 2])
DENSE = ClassifierConfig(hidden_dim=12, num_heads=2, num_lstm_layers=3, attention_every=1,
                         stack=StackConfig(skip="dense"), spectral_norm=True)
CAUSAL = ClassifierConfig(hidden_dim=12, num_heads=3, num_lstm_layers=2, attention_every=1, bidirectional=False,
                          stack=StackConfig(skip="highway"))
STEM = ClassifierConfig(hidden_dim=12, num_heads=3, num_lstm_layers=2, conv_dilations=[1], stem_stride=4)


# "scan" with two directions is what export_torch traces, held to the eager model there; here its one-direction
# form (the causal model). Each scan configuration costs seconds of torch.compile on first use.
@pytest.mark.parametrize(("cfg", "recurrence"), [(DEFAULT, "op"), (DENSE, "op"), (CAUSAL, "op"), (CAUSAL, "scan"),
                                                  (STEM, "op")],
                         ids=["default-op", "dense-spectral-op", "causal-highway-op", "causal-highway-scan", "stem-op"])
def test_twin_equals_eager_and_ignores_padding(cfg: ClassifierConfig, recurrence: str) -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(4, 3, cfg).eval()
    x, lengths = _scaled_batch(5, 17, [17, 1, 6, 11, 17], 4)
    xg, _ = _scaled_batch(5, 17, [17, 1, 6, 11, 17], 4, garbage=50.0)  # same valid steps, junk in the padding
    twin = ExportClassifier(model, recurrence).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(lengths)).logits
        for inp in (x, xg):
            proba, logits = twin(torch.from_numpy(inp), torch.from_numpy(lengths))
            torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
            torch.testing.assert_close(proba, torch.softmax(ref, -1), rtol=0, atol=1e-6)
        # the full-length batch is the eager model's unpadded path (no masking at all)
        full = torch.from_numpy(x[:, :9])
        torch.testing.assert_close(twin(full, torch.full((5,), 9))[1], model(full).logits, rtol=0, atol=1e-5)
    assert any(p.requires_grad for p in model.parameters())  # the twin works on a copy


def test_a_strided_stem_exports_to_onnx_within_tolerance(deploy_run: Path, tmp_path: Path) -> None:
    import shutil

    from longshort.config import load_config, save_config
    from longshort.training.checkpoint import save_weights

    run = tmp_path / "run"
    shutil.copytree(deploy_run, run)
    cfg = load_config(run / "config.yaml")
    cfg.model.stem_stride = 4
    save_config(cfg, run / "config.yaml")
    prep = json.loads((run / "preprocess.json").read_text())
    torch.manual_seed(1)
    model = SequenceClassifier(len(prep["feature_names"]), len(prep["class_names"]), cfg.model).eval()
    save_weights(model, run / "model.safetensors", metadata={"format": "longshort.SequenceClassifier"})
    manifest = export_mod.export_onnx(run, tmp_path / "onnx")  # raises if the parity check fails
    assert manifest["parity"]["max_abs_diff_logits"] < 1e-4


def test_cell_options_without_an_exported_form_are_refused() -> None:
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1, cell=CellConfig(layer_norm=True, zoneout=0.1))
    with pytest.raises(ExportError, match=r"layer_norm, zoneout \(model.cell"):
        check_exportable(SequenceClassifier(3, 2, cfg))


# -- ONNX -------------------------------------------------------------------------------------------------------


def test_onnx_export_matches_eager_within_tolerance(deploy_run: Path, onnx_export: tuple[dict[str, Any], str]
                                                    ) -> None:
    manifest, out = onnx_export
    d = deploy_run / "export" / "onnx"
    assert sorted(p.name for p in d.iterdir()) == ["model.json", "model.onnx", "preprocess.json"]
    assert f"exported {d / 'model.onnx'} (onnx, opset 17" in out and "parity with torch eager" in out
    parity = manifest["parity"]
    assert parity["max_abs_diff_proba"] < 1e-5 and parity["max_abs_diff_logits"] < 1e-5
    assert parity["tolerance"] == PARITY_TOL
    assert [b["lengths"] for b in parity["batches"]] == [[23, 1, 7, 16, 23], [31, 31]]
    assert [(i["name"], i["dtype"]) for i in manifest["inputs"]] == [("x", "float32"), ("lengths", "int64")]
    assert [o["name"] for o in manifest["outputs"]] == ["proba", "logits"]
    assert manifest["format"] == "onnx" and manifest["opset"] == 17
    assert manifest["source"]["weights_sha256"] == weights_sha256(deploy_run)
    assert (d / "preprocess.json").read_text() == (deploy_run / "preprocess.json").read_text()


def test_onnx_graph_has_one_bidirectional_lstm_per_block_and_no_shape_bookkeeping(
        deploy_run: Path, onnx_export: tuple[dict[str, Any], str]) -> None:
    # What makes batch-1 latency: each block is one LSTM node fed the lengths (no reverse gathers), convolutions
    # are 8-bit-friendly matrix products, positions and attention reshape without run-time shape arithmetic.
    import onnx

    graph = onnx.load(str(deploy_run / "export" / "onnx" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    lstms = [n for n in graph.node if n.op_type == "LSTM"]
    assert len(lstms) == 2  # the run's two BiLSTM blocks
    for node in lstms:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["direction"] == b"bidirectional" and attrs["hidden_size"] == 8
        assert node.input[4]  # sequence_lens
    assert not {"GatherElements", "ScatterND", "Conv"} & set(ops)
    assert ops.count("Shape") == 1  # the number of steps, for the positions and the mask


@pytest.mark.parametrize(("batch", "steps", "lengths"), [(1, 1, [1]), (4, 37, [37, 2, 19, 30]), (7, 5, [5] * 7)])
def test_onnx_dynamic_batch_and_length(deploy_run: Path, onnx_export: tuple[dict[str, Any], str], batch: int,
                                       steps: int, lengths: list[int]) -> None:
    session = export_mod.ort_session(deploy_run / "export" / "onnx" / "model.onnx")
    run = Run.load(deploy_run)
    x, lens = _scaled_batch(batch, steps, lengths, 3, seed=steps)
    ref_p, ref_l = eager_outputs(run, x, lens)
    xg, _ = _scaled_batch(batch, steps, lengths, 3, seed=steps, garbage=-40.0)
    for inp in (x, xg):  # junk in the padded steps changes nothing
        proba, logits = session.run(["proba", "logits"], {"x": inp, "lengths": lens})
        np.testing.assert_allclose(logits, ref_l, rtol=0, atol=PARITY_TOL)
        np.testing.assert_allclose(proba, ref_p, rtol=0, atol=PARITY_TOL)


def test_a_failed_parity_check_deletes_the_file(tmp_path: Path) -> None:
    f = tmp_path / "model.onnx"
    f.write_bytes(b"graph")
    check_parity({"max_abs_diff_proba": 1e-6, "max_abs_diff_logits": 9e-5}, f)
    assert f.exists()
    with pytest.raises(ExportError, match=r"0.002 in probabilities, 0.003 in logits .*deleted"):
        check_parity({"max_abs_diff_proba": 2e-3, "max_abs_diff_logits": 3e-3}, f)
    assert not f.exists()
    f.write_bytes(b"graph")
    with pytest.raises(ExportError):
        check_parity({"max_abs_diff_proba": float("nan"), "max_abs_diff_logits": 0.0}, f)


# -- torch.export -----------------------------------------------------------------------------------------------


def test_torch_export_matches_eager_on_other_shapes(deploy_run: Path, tmp_path: Path) -> None:
    res = export_torch(deploy_run, tmp_path / "pt2")
    assert res["format"] == "torch-export" and Path(res["path"]).name == "model.pt2"
    assert res["parity"]["max_abs_diff_logits"] < 1e-5
    assert json.loads((tmp_path / "pt2" / "model.json").read_text())["parity"] == res["parity"]
    module = torch.export.load(res["path"]).module()
    run = Run.load(deploy_run)
    for batch, steps, lengths in ((1, 1, [1]), (6, 29, [29, 3, 14, 29, 1, 20])):
        x, lens = _scaled_batch(batch, steps, lengths, 3, seed=batch)
        with torch.no_grad():
            proba, logits = module(torch.from_numpy(x), torch.from_numpy(lens))
        ref_p, ref_l = eager_outputs(run, x, lens)
        np.testing.assert_allclose(logits.numpy(), ref_l, rtol=0, atol=PARITY_TOL)
        np.testing.assert_allclose(proba.numpy(), ref_p, rtol=0, atol=PARITY_TOL)


# -- quantization -----------------------------------------------------------------------------------------------


def test_quantized_is_smaller_and_mostly_agrees(deploy_run: Path, quantized_export: tuple[dict[str, Any], str]
                                               ) -> None:
    from longshort.deploy.runtime import OnnxPredictor

    manifest, out = quantized_export
    size = manifest["size"]
    assert size["quantized_bytes"] < size["float32_bytes"]
    assert size["ratio"] == pytest.approx(size["quantized_bytes"] / size["float32_bytes"])
    assert size["quantized_bytes"] == (deploy_run / "export" / "quantized" / "model.onnx").stat().st_size
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= set(manifest["quantization"]["quantized_ops"])
    assert manifest["quantization"]["quantized_ops"]["DynamicQuantizeLSTM"] == 2  # 2 blocks, both directions each
    acc = manifest["accuracy"]
    assert acc["measured"] and acc["split"] == "test" and acc["n"] == 15
    assert acc["drop_points"] == pytest.approx(100 * (acc["float32"] - acc["quantized"]))
    assert acc["same_prediction"] >= 0.9
    assert "accuracy (15 sequences): float32" in out and "smaller" in out
    # on fresh inputs the 8-bit graph gives nearly the float32 probabilities
    fp32 = OnnxPredictor(deploy_run / "export" / "onnx")
    q8 = OnnxPredictor(deploy_run / "export" / "quantized")
    assert q8.format == "onnx-quantized"
    x, lens = _scaled_batch(40, 20, list(range(1, 21)) * 2, 3, seed=3)
    p32, p8 = fp32.predict_proba(x, lens, prepared=True), q8.predict_proba(x, lens, prepared=True)
    assert np.abs(p32 - p8).max() < 0.1
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= 0.9
    assert not np.array_equal(p32, p8)  # it really is another graph


# -- errors -----------------------------------------------------------------------------------------------------


def test_export_errors_name_the_problem(deploy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExportError, match=r"--out names a directory .*got .*model.onnx"):
        export_mod.export_onnx(deploy_run, tmp_path / "model.onnx")
    with pytest.raises(RunDirError, match=r"config\.yaml is missing"):
        export_mod.export_onnx(tmp_path)
    with pytest.raises(ExportError, match=r"--opset must be in 14\.\.20, got 5"):
        export_mod.export_onnx(deploy_run, tmp_path / "o", opset=5)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name))
    with pytest.raises(ExportError, match=r"ONNX export needs onnxruntime, which is not installed: "
                                          r"pip install 'longshort\[deploy\]'"):
        export_mod.export_onnx(deploy_run, tmp_path / "o")
    assert issubclass(ExportError, LongshortError)


def test_predict_takes_the_exported_path_when_there_is_one(deploy_run: Path, tmp_path: Path, raw: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import shutil

    run = tmp_path / "run"
    shutil.copytree(deploy_run, run, ignore=shutil.ignore_patterns("export"))
    X, lengths, y = raw(12, seed=5, min_len=3)
    np.savez(tmp_path / "new.npz", X=X, lengths=lengths, y=y)

    def predict(out: str) -> list[list[str]]:
        assert main(["predict", str(run), "--data", str(tmp_path / "new.npz"), "--output", str(tmp_path / out)]) == 0
        with (tmp_path / out).open() as f:
            return list(csv.reader(f))

    eager = predict("eager.csv")
    assert "predict: torch path" in capsys.readouterr().err
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    onnx = predict("onnx.csv")
    assert "predict: onnx path" in capsys.readouterr().err
    assert [r[:2] for r in onnx] == [r[:2] for r in eager]  # same ids and classes
    diff = max(abs(float(a) - float(b)) for ra, rb in zip(onnx[1:], eager[1:], strict=True)
               for a, b in zip(ra[2:4], rb[2:4], strict=True))
    assert diff <= 2e-6  # the CSV's 6 decimals
