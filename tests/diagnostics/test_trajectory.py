"""Parameter-space exploration: the per-epoch distance from init, step and path length and the trajectory's
spread equal a hand computation over stored weights; a resumed record continues; the report shows it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

import longshort
from longshort.diagnostics.trajectory import FILE, ParamTrajectory, flat_weights


def test_trajectory_figures_equal_a_hand_computation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    trainer = SimpleNamespace(model=model, epoch=0)
    cb = ParamTrajectory(tmp_path)
    cb.on_fit_start(trainer)
    thetas = [flat_weights(model)]
    for e in range(1, 4):  # three "epochs" that move the weights by known amounts
        with torch.no_grad():
            model.weight.add_(0.1 * e)
        thetas.append(flat_weights(model))
        cb.on_epoch_end(trainer, {"epoch": float(e)})
    rows = json.loads((tmp_path / "diagnostics" / FILE).read_text())["epochs"]
    t0 = thetas[0]
    for i, r in enumerate(rows, start=1):
        assert math.isclose(r["distance_from_init"], float((thetas[i] - t0).norm()), rel_tol=1e-9)
        assert math.isclose(r["step_length"], float((thetas[i] - thetas[i - 1]).norm()), rel_tol=1e-9)
        path = sum(float((thetas[j] - thetas[j - 1]).norm()) for j in range(1, i + 1))
        assert math.isclose(r["path_length"], path, rel_tol=1e-9)
        traj = torch.stack(thetas[1 : i + 1])
        gyration = math.sqrt(float((traj - traj.mean(0)).pow(2).sum(1).mean()))
        assert math.isclose(r["spread"], gyration, rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(rows[-1]["straightness"], 1.0, rel_tol=1e-9)  # every step in one direction
    # resumed after epoch 3: the record continues from the same start
    again = ParamTrajectory(tmp_path)
    again.on_fit_start(SimpleNamespace(model=model, epoch=3))
    with torch.no_grad():
        model.weight.add_(-0.2)
    again.on_epoch_end(SimpleNamespace(model=model, epoch=4), {"epoch": 4.0})
    rows = json.loads((tmp_path / "diagnostics" / FILE).read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert math.isclose(rows[-1]["distance_from_init"], float((flat_weights(model) - t0).norm()), rel_tol=1e-9)
    assert rows[-1]["straightness"] < 1.0  # it turned back


def test_a_run_records_it_and_the_report_shows_it(tmp_path: Path) -> None:
    cfg = {"data": {"builtin": {"n": 120}},
           "model": {"hidden_dim": 8, "num_heads": 2, "num_lstm_layers": 1, "conv_dilations": [1]},
           "train": {"epochs": 2, "batch_size": 32, "threads": 1, "progress": "off", "tensorboard": False},
           "diagnostics": {"report": True, "analysis": False}}
    longshort.train(cfg, out=tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "diagnostics" / FILE).read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["distance_from_init"] > 0
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'id="parameter-space"' in html and "straightness" in html


def test_a_seq2seq_run_opts_into_the_loss_landscape_and_information_flow(tmp_path: Path) -> None:
    import torch.nn.functional as F

    from longshort.data.pair_pipeline import encode_pairs, prepare_pairs
    from longshort.data.pairs import PAD_ID
    from longshort.runs import Seq2SeqRun

    cfg = {"task": "seq2seq", "data": {"builtin": {"n": 120}},
           "seq2seq": {"model": {"emb_dim": 8, "hidden_dim": 16}},
           "train": {"epochs": 2, "batch_size": 16, "threads": 1, "progress": "off", "tensorboard": False},
           "diagnostics": {"report": True, "analysis": True}}
    longshort.train(cfg, out=tmp_path / "run")
    ls = json.loads((tmp_path / "run" / "diagnostics" / "landscape.json").read_text())
    assert ls["split"] == "val" and len(ls["2d"]["loss"]) == len(ls["2d"]["alpha"])
    run = Seq2SeqRun.load(tmp_path / "run")
    splits = prepare_pairs(run.config.data, run.config.seed)
    assert splits.val is not None
    data = encode_pairs(splits.val, run.src_vocabs, run.tgt_vocab)
    b = data.take(torch.arange(min(16, len(data))))
    with torch.no_grad():
        logits = run.model.eval()(b.src, b.src_lengths, b.decoder_input()).logits
    hand = float(F.cross_entropy(logits.flatten(0, 1), b.tgt.flatten(), ignore_index=PAD_ID))
    at_zero = ls["1d"]["loss"][ls["1d"]["alpha"].index(0.0)]
    assert math.isclose(at_zero, hand, rel_tol=1e-4)  # the slice passes through the trained weights' loss
    page = (tmp_path / "run" / "report.html").read_text()
    for sid in ("loss-landscape", "information-flow"):
        section = page[page.index(f'<section id="{sid}">'):]
        assert "<img" in section[: section.index("</section>")], sid  # the report draws both
    info = json.loads((tmp_path / "run" / "diagnostics" / "information.json").read_text())
    future = info["future"]
    assert future["k"] == [0, 1, 2, 3] and future["target"] == "target token y_(t+k)"
    n_val = len(splits.val)
    steps = int(data.tgt_lengths.sum())  # every teacher-forced decoder step of the validation pairs
    assert info["n_sequences"] == n_val and future["n"][0] == min(steps, 2000)
    assert future["n"] == sorted(future["n"], reverse=True)  # fewer pairs (t, t + k) inside a target as k grows
    without = {**cfg, "diagnostics": {"report": False}}
    longshort.train(without, out=tmp_path / "plain")  # not asked for: no landscape (it is opt-in for seq2seq)
    assert not (tmp_path / "plain" / "diagnostics" / "landscape.json").exists()
