from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import longshort
from longshort.cli import main
from longshort.deploy.prune import prunable_weights, prune_run
from longshort.errors import RunDirError
from longshort.run import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier trained for 2 epochs on 120 sequences whose class is the sign of channel 0."""
    root = tmp_path_factory.mktemp("prune")
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    x = rng.normal(0, 1, (120, 12, 3)).astype(np.float32)
    x[:, :, 0] += np.where(y, 1.5, -1.5)[:, None]
    np.savez(root / "data.npz", X=x, lengths=np.full(120, 12), y=np.array(["a", "b"])[y])
    threads = torch.get_num_threads()
    try:
        train({"data": {"source": str(root / "data.npz")},
               "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 2, "conv_dilations": [1]},
               "train": {"epochs": 2, "batch_size": 16, "tensorboard": False, "progress": "off", "threads": 1,
                         "schedule": {"max_lr": 0.03}}}, out=root / "run")
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def test_unstructured_prune_writes_a_loadable_run_with_its_figures(run_dir: Path, tmp_path: Path) -> None:
    report = prune_run(run_dir, amount=0.2, out=tmp_path / "p")
    pruned = longshort.load(tmp_path / "p")
    sp = report["sparsity"]
    for module, name in prunable_weights(pruned.model):  # l1_unstructured per tensor: round(0.2 * numel) each
        w = getattr(module, name)
        assert int((w == 0).sum()) == round(0.2 * w.numel()), name
    assert 0.15 < sp["all_parameters"] < sp["pruned_matrices"]  # biases and norms are not pruned
    assert json.loads((tmp_path / "p" / "prune.json").read_text())["after"] == report["after"]
    assert pruned.evaluate()["accuracy"] == report["after"]["accuracy"]  # same split as the report's
    assert report["before"]["accuracy"] == longshort.load(run_dir).evaluate()["accuracy"]
    assert any(k.endswith("lstms.0.lstm.weight_hh_l0") for k in sp["per_matrix"])
    assert not any(k.endswith(("_orig", "_mask")) for k in pruned.model.state_dict())  # made permanent


def test_finetuning_keeps_pruned_weights_at_zero(run_dir: Path, tmp_path: Path) -> None:
    prune_run(run_dir, amount=0.3, out=tmp_path / "plain")
    report = prune_run(run_dir, amount=0.3, finetune_epochs=1, out=tmp_path / "tuned")
    plain, tuned = longshort.load(tmp_path / "plain").model, longshort.load(tmp_path / "tuned").model
    changed = 0
    for (mp, name), (mt, _) in zip(prunable_weights(plain), prunable_weights(tuned), strict=True):
        wp, wt = getattr(mp, name), getattr(mt, name)
        assert torch.equal(wt == 0, wp == 0), name  # exactly the entries pruning chose, still zero
        changed += int(not torch.equal(wp, wt))
    assert changed > 0  # fine-tuning did move the kept weights
    # attention reads out_proj.weight without calling out_proj: its mask must still be applied at every step
    assert not torch.equal(plain.attns["1"].attn.out_proj.weight, tuned.attns["1"].attn.out_proj.weight)
    assert report["finetune_epochs"] == 1 and report["pruned"] != report["after"]
    assert not (tmp_path / "tuned" / "checkpoints").exists()


def test_structured_prune_zeroes_whole_output_rows(run_dir: Path, tmp_path: Path) -> None:
    prune_run(run_dir, amount=0.25, structured=True, out=tmp_path / "s")
    m = longshort.load(tmp_path / "s").model
    for module, name in prunable_weights(m, structured=True):
        w = getattr(module, name)
        dead = (w.reshape(w.shape[0], -1) == 0).all(1).sum().item()
        assert dead == round(0.25 * w.shape[0]), name
    assert (m.head[-1].weight != 0).all()  # the class rows are never pruned away


def test_cli_prints_the_figures_and_refuses_an_existing_out(run_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", str(run_dir), "--amount", "0.5", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "accuracy before" in out and "accuracy after" in out
    assert "50.0% of the pruned weight matrices" in out and str(tmp_path / "c") in out
    with pytest.raises(RunDirError, match="already holds a run"):
        prune_run(run_dir, out=tmp_path / "c")
    assert main(["prune", str(run_dir), "--out", str(tmp_path / "c")]) == 2  # the CLI: one error line, exit 2
    assert "already holds a run" in capsys.readouterr().err
