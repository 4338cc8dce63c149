"""The torch-free runtime gives what Run.predict_proba gives on raw mixed-length data, needs no torch, refuses bad
input with a message naming it; fastest_predictor picks an up-to-date export and falls back to torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from longshort.data.pipeline import Preprocessor
from longshort.data.types import SequenceData
from longshort.deploy.export import export_onnx
from longshort.deploy.predictor import fastest_predictor, usable_export
from longshort.deploy.runtime import InputError, OnnxPredictor, scale
from longshort.errors import LongshortError
from longshort.run import Run

Raw = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def export_dir(deploy_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("runtime") / "onnx"
    export_onnx(deploy_run, d)
    return d


def test_scaling_is_the_preprocessors_to_the_bit(deploy_run: Path, raw: Raw) -> None:
    prep = Preprocessor.load(deploy_run / "preprocess.json")
    assert prep.mean and prep.std
    x, lengths, _ = raw(30, seed=5)
    x[np.arange(24)[None, :] >= lengths[:, None]] = 7.0  # non-zero padding must come out zero
    ref = prep.transform(SequenceData(X=x, lengths=lengths, y=None, feature_names=[], source="t"), labelled=False).X
    got = scale(x, lengths, prep.mean, prep.std)
    assert got.dtype == np.float32 and np.array_equal(got, ref)
    assert not got[np.arange(24)[None, :] >= lengths[:, None]].any()
    assert np.array_equal(scale(x, lengths, [], []), x)  # data.scale=none


def test_runtime_equals_run_predict_proba_on_raw_mixed_lengths(deploy_run: Path, export_dir: Path, raw: Raw
                                                                ) -> None:
    run = Run.load(deploy_run)
    x, lengths, _ = raw(37, seed=11, max_len=30)
    assert len(set(lengths.tolist())) > 10 and lengths.min() < 5 and lengths.max() == 30
    ref = run.predict_proba(x, lengths)
    for batch_size in (256, 5):  # one batch, and batches trimmed to their own longest sequence
        got = OnnxPredictor(export_dir, batch_size=batch_size).predict_proba(x, lengths)
        assert got.shape == ref.shape == (37, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    predictor = OnnxPredictor(export_dir / "model.onnx", threads=0)  # the model file works as well as its dir
    assert np.array_equal(predictor.predict(x, lengths), run.predict(x, lengths))
    assert set(predictor.predict(x, lengths)) <= {"down", "up"}
    # no lengths: every sequence is full length
    np.testing.assert_allclose(predictor.predict_proba(x[:4]), run.predict_proba(x[:4], "full"), rtol=0, atol=1e-4)
    assert predictor.predict_proba(x[:0]).shape == (0, 2)


def test_runtime_runs_where_torch_cannot_be_imported(deploy_run: Path, export_dir: Path, raw: Raw,
                                                     tmp_path: Path) -> None:
    x, lengths, _ = raw(9, seed=2)
    np.savez(tmp_path / "in.npz", x=x, lengths=lengths)
    script = f"""
import sys
for name in ("torch", "pandas", "pydantic", "sklearn", "yaml"):
    sys.modules[name] = None  # any import of these now raises ImportError
import numpy as np
from longshort.deploy.runtime import OnnxPredictor
data = np.load({str(tmp_path / "in.npz")!r})
p = OnnxPredictor({str(export_dir)!r})
np.save({str(tmp_path / "out.npy")!r}, p.predict_proba(data["x"], data["lengths"]))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pandas", "pydantic") and sys.modules[m])
print("loaded:", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "loaded: []"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), Run.load(deploy_run).predict_proba(x, lengths),
                               rtol=0, atol=1e-4)


def test_bad_inputs_are_refused_with_the_reason(export_dir: Path, tmp_path: Path, raw: Raw) -> None:
    p = OnnxPredictor(export_dir)
    x, lengths, _ = raw(4, seed=1)
    cases = [
        ((x[..., :2], None), r"x has 2 features but the model was trained on 3 \(x0, x1, x2\)"),
        ((x[0], None), r"x must be \[N, T, C\], got shape \(24, 3\)"),
        ((x, lengths[:3]), r"lengths must have shape \(4,\), got \(3,\)"),
        ((x, np.array([24, 0, 3, 3])), r"lengths must be in \[1, 24\] .*min 0"),
        ((x, np.array([25, 1, 3, 3])), r"lengths must be in \[1, 24\] .*max 25"),
        ((x, np.array([2.5, 1, 3, 3])), r"lengths must be whole numbers"),
        ((x.astype(str), None), r"x must hold numbers"),
    ]
    for (xi, li), message in cases:
        with pytest.raises(InputError, match=message):
            p.predict_proba(xi, li)
    with pytest.raises(InputError, match=r"model\.json is missing: not an export directory"):
        OnnxPredictor(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(export_dir, bad)
    manifest = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**manifest, "format": "torch-export"}))
    with pytest.raises(InputError, match="format 'torch-export' is not an ONNX export"):
        OnnxPredictor(bad)
    (bad / "model.json").write_text(json.dumps(manifest))
    (bad / "model.onnx").unlink()
    with pytest.raises(InputError, match=r"model\.onnx is missing \(named by"):
        OnnxPredictor(bad)
    assert issubclass(InputError, LongshortError) and issubclass(InputError, ValueError)


def test_fastest_predictor_prefers_an_up_to_date_export(deploy_run: Path, export_dir: Path, raw: Raw,
                                                        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(deploy_run, run_dir, ignore=shutil.ignore_patterns("export", "checkpoints", "tb", "plots"))
    x, lengths, _ = raw(6, seed=4)
    ref = Run.load(deploy_run).predict_proba(x, lengths)
    name, fn = fastest_predictor(run_dir)
    assert name == "torch"
    np.testing.assert_allclose(fn(x, lengths), ref, rtol=0, atol=0)
    shutil.copytree(export_dir, run_dir / "export" / "onnx")
    name, fn = fastest_predictor(run_dir, allow_quantized=True)  # no quantized export: the float32 one
    assert name == "onnx" and usable_export(run_dir, run_dir / "export" / "onnx") == (True, "up to date")
    np.testing.assert_allclose(fn(x, lengths), ref, rtol=0, atol=1e-4)
    # an export of other weights (the run was resumed or retrained since) is stale and skipped
    manifest_path = run_dir / "export" / "onnx" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["weights_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    ok, why = usable_export(run_dir, run_dir / "export" / "onnx")
    assert not ok and "(stale)" in why
    assert fastest_predictor(run_dir)[0] == "torch"
