"""The run report and the comparison page as HTML text: which sections get plots, which get notes, escaping,
self-containment, and the numbers behind the plots (ECE, the 2-D landscape orientation, one line per run)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from report_fakes import (
    ANOMALY_STEPS,
    write_all_diagnostics,
    write_basic_run,
    write_information,
    write_landscape,
    write_predictions,
    write_steps,
)

from longshort.errors import RunDirError
from longshort.report.command import add_report_arguments, report_command
from longshort.report.html import (
    SECTIONS,
    _loss_grid,
    build_comparison,
    build_report,
    comparison_curves_figure,
    comparison_grad_figure,
    load_run,
    reliability_bins,
)

DIAGNOSTIC_SECTIONS = ("gradient-norms", "gate-statistics", "memory-utilisation", "reliability", "attention",
                       "loss-landscape", "parameter-space", "information-flow")


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def plots(fragment: str) -> list[str]:
    return re.findall(r'<img class="plot" alt="[^"]+" src="data:image/png;base64,[A-Za-z0-9+/=]+">', fragment)


def test_full_run_has_a_plot_in_every_section(full_report: Path) -> None:
    path = full_report
    page = path.read_text()
    for sid, _ in SECTIONS:
        body = section(page, sid)
        assert "could not be drawn" not in body, sid
        if sid not in ("summary", "inputs"):
            assert "not recorded" not in body, sid
            assert plots(body), f"{sid} has no plot"
    assert len(plots(section(page, "gradient-norms"))) == 2  # total norm and per module
    assert "3 anomalous step(s) of 60" in section(page, "gradient-norms")
    landscape = section(page, "loss-landscape")
    assert len(plots(landscape)) == 2  # the slices, and actual/predicted decrease per step size
    assert "<b>12.5</b>" in landscape  # Hessian top eigenvalue
    assert "<th>step_size</th>" in landscape and "<td>0.6892</td>" in landscape  # gradient predictiveness
    reliability = section(page, "reliability")
    assert "predictions_test.npz" in reliability and "predictions_val.npz" in reliability
    assert "mean over 2 head(s)" in section(page, "attention")
    assert "7,972" not in page  # no model.safetensors in a fixture run
    assert "not recorded (no model.safetensors)" in section(page, "summary")
    assert "0.9212" in section(page, "summary")
    gates = section(page, "gate-statistics")
    assert "0.5 – 0.95" in gates and "3 / 6" in gates  # layer 1 forget leaves its band for 3 of 6 steps
    final = gates[gates.index("After training"):]  # gates_final.json: flagged in lstms.1 only
    assert final.count(">flagged<") == 2 and "lstms.1.lstm" in final and "on the val split, 60 sequences" in final
    assert path.stat().st_size < 1_500_000


def test_bare_run_notes_every_missing_diagnostic(bare_run: Path) -> None:
    page = build_report(bare_run).read_text()
    for sid in DIAGNOSTIC_SECTIONS:
        body = section(page, sid)
        assert "not recorded:" in body, sid
        assert not plots(body), sid
    assert "diagnostics/steps.csv is missing" in section(page, "gradient-norms")
    assert "diagnostics.gates_every" in section(page, "gate-statistics")
    assert "diagnostics/predictions_test.npz is missing" in section(page, "reliability")
    assert plots(section(page, "learning-curves"))
    assert plots(section(page, "learning-rate"))  # per epoch from history.csv
    assert "history.csv" in section(page, "learning-rate")
    assert len(plots(section(page, "confusion-matrix"))) == 1
    assert "<td>range</td>" in section(page, "confusion-matrix").replace(' class="l"', "")


def test_partial_diagnostics_show_what_exists(bare_run: Path) -> None:
    write_steps(bare_run)
    write_information(bare_run, future=False)
    page = build_report(bare_run).read_text()
    assert len(plots(section(page, "information-flow"))) == 1
    assert "no future curve: no continuous target series" in section(page, "information-flow")
    assert "per step (diagnostics/steps.csv)" in section(page, "learning-rate")
    assert plots(section(page, "gradient-norms"))
    assert "not recorded" in section(page, "gate-statistics")


def test_damaged_files_cost_only_their_section(bare_run: Path) -> None:
    write_landscape(bare_run)
    write_information(bare_run)
    (bare_run / "diagnostics" / "attention.npz").write_bytes(b"not an npz")
    ls = json.loads((bare_run / "diagnostics" / "landscape.json").read_text())
    ls["2d"]["loss"] = [[1.0, 2.0]]  # matches neither [alpha, beta] nor [beta, alpha]
    (bare_run / "diagnostics" / "landscape.json").write_text(json.dumps(ls))
    page = build_report(bare_run).read_text()
    assert "not recorded" in section(page, "attention")
    assert "unreadable" in section(page, "inputs")
    body = section(page, "loss-landscape")
    assert "could not be drawn: ValueError" in body and "2d loss has shape (1, 2)" in body
    assert plots(section(page, "information-flow"))


def test_text_from_config_and_data_is_escaped(tmp_path: Path) -> None:
    run = write_basic_run(tmp_path / "run", source="<script>alert(1)</script>", classes=["<b>up</b>", "a&b", "$x$"])
    page = build_report(run).read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>up</b>" not in page and "&lt;b&gt;up&lt;/b&gt;" in page
    assert "a&amp;b" in page
    assert len(plots(section(page, "confusion-matrix"))) == 1  # '$x$' did not break matplotlib's mathtext


def test_report_is_self_contained(full_report: Path) -> None:
    page = full_report.read_text()
    srcs = re.findall(r'\ssrc="([^"]*)"', page)
    hrefs = re.findall(r'\shref="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    assert "http" not in "".join(srcs + hrefs)


def test_reliability_bins_and_ece_by_hand() -> None:
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    r = reliability_bins(proba, y)
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.55 (right), each alone in its bin
    assert r["ece"] == pytest.approx((0.1 + 0.6 + 0.3 + 0.45) / 4)
    assert r["count"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
    assert r["accuracy"][6] == 0.0 and r["confidence"][5] == pytest.approx(0.55)
    assert r["accuracy_overall"] == 0.75


def test_reliability_table_matches_the_predictions(full_report: Path) -> None:
    body = section(full_report.read_text(), "reliability")
    for split in ("test", "val"):
        with np.load(full_report.parent / "diagnostics" / f"predictions_{split}.npz") as z:
            ece = reliability_bins(z["proba"], z["y"])["ece"]
            n = len(z["y"])
        row = f'<td class="l">{split}</td><td class="l">diagnostics/predictions_{split}.npz</td><td>{n}</td>'
        assert row in body and f"<td>{ece:.4f}</td>" in body
    assert len(plots(body)) == 1


def test_single_predictions_file(bare_run: Path) -> None:
    """A predictions.npz without a split in its name is read when there is no predictions_test/val.npz."""
    write_predictions(bare_run, "predictions.npz")
    body = section(build_report(bare_run).read_text(), "reliability")
    assert plots(body) and "diagnostics/predictions.npz" in body and "not recorded" not in body


def test_too_few_sequences_for_information(bare_run: Path) -> None:
    (bare_run / "diagnostics").mkdir()
    (bare_run / "diagnostics" / "information.json").write_text(json.dumps(
        {"estimator": "k-NN", "n_sequences": 9, "label": {"t": [], "mi": [], "baseline": [], "n": []}}))
    body = section(build_report(bare_run).read_text(), "information-flow")
    assert "too few sequences per step for the estimator (9 in the split)" in body and not plots(body)


def test_model_without_attention(bare_run: Path) -> None:
    (bare_run / "diagnostics").mkdir()
    np.savez(bare_run / "diagnostics" / "attention.npz", lengths=np.array([5]), index=np.array([0]))
    assert "the model has no attention blocks" in section(build_report(bare_run).read_text(), "attention")


def test_landscape_grid_orientation() -> None:
    a, b = np.arange(3.0), np.arange(5.0)
    loss = a[:, None] * 10 + b[None, :]  # loss[i][j] at (alpha[i], beta[j])
    z = _loss_grid(a, b, loss)
    assert z.shape == (5, 3) and z[4, 2] == 24  # contour(alpha, beta, Z) wants Z[beta, alpha]
    assert _loss_grid(a, b, loss.T) is not None and _loss_grid(a, b, loss.T)[4, 2] == 24


def test_seq2seq_run(tmp_path: Path) -> None:
    d = tmp_path / "s2s"
    (d / "plots").mkdir(parents=True)
    (d / "config.yaml").write_text("task: seq2seq\ndata:\n  source: builtin:reverse\nseq2seq:\n  model:\n"
                                   "    hidden_dim: 16\n    enc_layers: 1\n")
    m = {"n": 45, "exact_match": 0.5, "token_accuracy": 0.7, "edit_error_rate": 0.2, "bleu": 0.4, "loss": 1.0}
    (d / "metrics.json").write_text(json.dumps({"val": m, "test": m, "best_epoch": 1, "epochs_run": 2}))
    (d / "history.csv").write_text("epoch,step,train_loss,val_loss,val_exact_match\n1,4,3.0,3.1,0.1\n2,8,2.5,2.7,0.3\n")
    (d / "test_predictions.tsv").write_text("source\ttarget\tprediction\na b\tb a\tb <a>\n")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2, 2))
    fig.savefig(d / "plots" / "attention.png")
    plt.close(fig)
    page = build_report(d).read_text()
    assert "Not applicable" in section(page, "confusion-matrix")
    assert "exact_match" in section(page, "summary") and ">accuracy</td>" not in section(page, "summary")
    assert "b &lt;a&gt;" in section(page, "summary")  # test outputs, escaped
    assert "plots/attention.png" in section(page, "attention") and plots(section(page, "attention"))
    assert plots(section(page, "learning-curves"))
    assert "train with diagnostics.gates_every=N" in section(page, "gate-statistics")  # sampled for seq2seq too
    assert "train with diagnostics.analysis=true" in section(page, "loss-landscape")  # opt-in for seq2seq
    assert "no class probabilities" in section(page, "reliability")


def _comparison_runs(tmp_path: Path) -> list[Path]:
    a = write_all_diagnostics(write_basic_run(tmp_path / "a" / "run", seed=0))
    b = write_basic_run(tmp_path / "b" / "run", seed=1, epochs=6)
    write_steps(b, seed=1)
    c = write_basic_run(tmp_path / "c", seed=2)  # no diagnostics
    return [a, b, c]


def test_comparison_has_one_line_per_run(tmp_path: Path) -> None:
    dirs = _comparison_runs(tmp_path)
    runs = [load_run(d, n) for d, n in zip(dirs, ["a/run", "b/run", "c"], strict=True)]
    fig = comparison_curves_figure(runs)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["train loss", "validation loss", "validation accuracy",
                                                  "validation F1 (macro)"]
    for ax in visible:
        assert [ln.get_label() for ln in ax.get_lines()] == ["a/run", "b/run", "c"]
    assert len(visible[0].get_lines()[1].get_xdata()) == 6
    grad = comparison_grad_figure(runs)
    assert [ln.get_label() for ln in grad.axes[0].get_lines()] == ["a/run (grad_norm_ema)", "b/run (grad_norm_ema)"]


def test_comparison_page(tmp_path: Path) -> None:
    dirs = _comparison_runs(tmp_path)
    page = build_comparison(dirs, tmp_path / "out" / "cmp.html").read_text()
    assert 'alt="learning curves of every run on shared axes: a/run, b/run, c"' in page
    assert 'alt="gradient norm per step of every run: a/run, b/run"' in page
    assert "no diagnostics/steps.csv for c" in page
    metrics = section(page, "metrics")
    assert "<th>a/run</th><th>b/run</th><th>c</th>" in metrics
    row = re.search(r"<tr><td class=\"l\">test log_loss</td>(.*?)</tr>", metrics).group(1)
    assert row.count("<td") == 3 and '<td class="best">0.7</td>' in row  # lowest loss is best: seed 2
    row = re.search(r"<tr><td class=\"l\">test accuracy</td>(.*?)</tr>", metrics).group(1)
    assert '<td class="best">0.7</td>' in row  # highest accuracy is best: seed 2 again
    runs = section(page, "runs")
    assert "train.optim.lr" in runs and "seed" in runs and "train.epochs" in runs
    assert "model.hidden_dim" not in runs  # the same in every run
    assert "<script" not in page and all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', page))


def test_comparison_needs_two_runs(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="at least two"):
        build_comparison([write_basic_run(tmp_path / "a")], tmp_path / "x.html")


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a run directory"):
        build_report(tmp_path)
    with pytest.raises(RunDirError, match="not a directory"):
        build_report(tmp_path / "missing")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_report_arguments(p)
    return p.parse_args(argv)


def test_report_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """One run: its report.html; several: a comparison at --out or ./report-compare.html; the path is printed.
    (Building the pages is tested above: here the builders are stand-ins, which keeps this test instant.)"""
    calls: list[tuple[str, object, object]] = []

    def fake_report(run_dir: str, out: str | None = None) -> Path:
        calls.append(("report", run_dir, out))
        return Path(run_dir) / "report.html"

    def fake_comparison(run_dirs: list[str], out: str) -> Path:
        calls.append(("compare", run_dirs, out))
        return Path(out)

    monkeypatch.setattr("longshort.report.html.build_report", fake_report)
    monkeypatch.setattr("longshort.report.html.build_comparison", fake_comparison)
    report_command(_parse(["runs/a"]))
    assert capsys.readouterr().out == str(Path("runs/a/report.html")) + "\n"
    report_command(_parse(["runs/a", "runs/b"]))
    assert capsys.readouterr().out == "report-compare.html\n"
    report_command(_parse(["runs/a", "runs/b", "--out", "x/c.html"]))
    assert capsys.readouterr().out == "x/c.html\n"
    assert calls == [("report", "runs/a", None), ("compare", ["runs/a", "runs/b"], "report-compare.html"),
                     ("compare", ["runs/a", "runs/b"], "x/c.html")]


def test_anomaly_fixture_matches_the_contract(full_run: Path) -> None:
    """The fixture's steps.csv has the columns the diagnostics write (guards the tests against drifting)."""
    steps = load_run(full_run).steps
    assert steps is not None
    assert {"step", "epoch", "loss", "lr", "grad_norm", "grad_norm_ema", "threshold", "anomaly", "action",
            "grad_norm/lstms.0"} <= set(steps.columns)
    assert {a for a in steps.text("action") if a != "none"} == set(ANOMALY_STEPS.values())


@pytest.mark.slow
def test_report_of_a_real_run(tmp_path: Path) -> None:
    """The files a real training run and its diagnostics write, not the fakes: every section gets its plot."""
    import torch

    from longshort.cli import main

    rng = np.random.default_rng(0)
    y = np.arange(160) % 2  # 24 validation sequences: the information estimator wants 20 at least
    x = rng.normal(size=(160, 12, 3)).astype(np.float32) + y[:, None, None] * 1.5
    np.savez(tmp_path / "seqs.npz", X=x, y=np.array(["dn", "up"])[y])  # an npz, not builtin:regimes: that one
    out = tmp_path / "real"  # spends seconds computing its Bayes accuracy on every run
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--data", str(tmp_path / "seqs.npz"), "model.hidden_dim=8", "model.num_heads=2",
                     "model.num_lstm_layers=2", "model.conv_dilations=[1]", "train.epochs=2", "train.batch_size=32",
                     "train.tensorboard=false", "train.progress=off", "train.threads=1",
                     "diagnostics.gates_every=1", "diagnostics.report=false", "diagnostics.analysis=false",
                     "--out", str(out)]) == 0
        from longshort.diagnostics.analyse import analyse_run

        # the after-training analysis itself, on coarse grids: its files' formats are the point, not its precision
        analyse_run(out, n_batches=1, alphas=[-1.0, -0.5, 0.0, 0.5, 1.0], grid=[-1.0, 0.0, 1.0], hessian_iters=3,
                    step_sizes=[0.1, 1.0], info_sequences=64)
    finally:
        torch.set_num_threads(threads)  # train.threads=1 is process-wide
    assert not (out / "report.html").exists()
    page = build_report(out).read_text()
    for sid, _ in SECTIONS:
        body = section(page, sid)
        assert "could not be drawn" not in body, sid
        if sid not in ("summary", "inputs"):
            assert plots(body), f"{sid}: {body[:300]}"
    assert "unreadable" not in section(page, "inputs")
    assert "no future curve" in section(page, "information-flow")  # independent sequences
    params = re.search(r"<td class=\"l\">parameters</td><td class=\"l\">([\d,]+)</td>", page)
    assert params and int(params.group(1).replace(",", "")) > 1000
    assert "dn, up" in section(page, "summary")


def test_comparison_marks_the_lowest_forecast_errors_best() -> None:
    from types import SimpleNamespace

    from longshort.report.html import _metric_rows

    runs = [SimpleNamespace(metrics={"test": {"mase": m, "smape": s, "exposure_gap": g}}, history=[], params=1)
            for m, s, g in ((0.9, 30.0, 0.1), (1.1, 35.0, 0.2))]
    rows, best = _metric_rows(runs)  # type: ignore[arg-type]
    for i, row in enumerate(rows[:3]):
        assert row[0] in ("test mase", "test smape", "test exposure_gap") and best[i] == {1}  # the first run
