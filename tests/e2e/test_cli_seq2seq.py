"""``longshort train --task seq2seq`` on a TSV file, then ``predict`` and ``evaluate`` from the run directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from longshort.data.pairs import Vocab

TINY_S2S = ["seq2seq.model.emb_dim=8", "seq2seq.model.hidden_dim=16", "train.epochs=2", "train.batch_size=16",
            "train.tensorboard=false", "train.progress=off", "train.threads=1", "diagnostics.report=false"]


def _pairs(path: Path, n: int = 80, seed: int = 0) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdef"), rng.integers(2, 6))) for _ in range(n)]
    pd.DataFrame({"source": words, "target": [w[::-1] for w in words]}).to_csv(path, sep="\t", index=False)
    return path


def test_train_predict_evaluate_seq2seq(tmp_path: Path, cli: Callable) -> None:
    data = _pairs(tmp_path / "train.tsv")
    test = _pairs(tmp_path / "test.tsv", n=20, seed=1)
    run = tmp_path / "run"
    r = cli("train", "--task", "seq2seq", "--data", data, "--test-data", test, "--out", run,
            "data.pairs.tokenize=char", "seq2seq.decode.beam_size=2", *TINY_S2S)
    assert r.code == 0, r.err
    assert f"run directory: {run}" in r.out
    for name in ("config.yaml", "vocab_source.json", "vocab_target.json", "model.safetensors", "metrics.json",
                 "history.csv", "test_predictions.tsv", "plots/learning_curve.png", "plots/attention.png"):
        assert (run / name).is_file(), name
    assert set(Vocab.load(run / "vocab_source.json").itos[4:]) == set("abcdef")  # from the training file only
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"exact_match", "edit_error_rate", "bleu", "token_accuracy", "exposure_gap"} <= set(metrics["test"])
    assert "beam" in metrics["test"]
    hist = pd.read_csv(run / "history.csv")
    assert {"sampling_prob", "val_exposure_gap", "val_exact_match"} <= set(hist.columns)

    # predict: a file without targets, with a character the vocabulary has never seen
    inp = tmp_path / "in.tsv"
    pd.DataFrame({"source": ["abc", "fz"]}).to_csv(inp, sep="\t", index=False)
    out = tmp_path / "out.tsv"
    r = cli("predict", run, "--data", inp, "--output", out, "--beam", "3")
    assert r.code == 0, r.err
    assert "2 predictions (beam 3)" in r.out
    pred = pd.read_csv(out, sep="\t", keep_default_na=False, quoting=3)
    assert list(pred.columns) == ["row", "source", "prediction"] and list(pred["source"]) == ["abc", "fz"]

    r = cli("evaluate", run, "--data", test)
    assert r.code == 0, r.err
    assert "exact_match" in r.out and (run / "evaluate-test.json").is_file()


def test_seq2seq_input_errors_name_the_problem(tmp_path: Path, cli: Callable) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("src\ttarget\nab\tba\n")
    r = cli("train", "--task", "seq2seq", "--data", bad, "--out", tmp_path / "r", *TINY_S2S)
    assert r.code == 2 and "missing source column 'source'" in r.err and str(bad) in r.err
    assert not (tmp_path / "r").exists()
    r = cli("train", "--task", "seq2seq", "--data", "builtin:regimes", "--out", tmp_path / "r2", *TINY_S2S)
    assert r.code == 2 and "builtin:reverse" in r.err
