"""For the export, quantization and runtime tests: a tiny trained run (once per session) and raw input data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def raw_sequences(n: int, seed: int, max_len: int = 24, min_len: int = 1, channels: int = 3, offset: float = 3.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unscaled variable-length sequences (zero padding): class 'up' has channel 0 around +1 above ``offset``,
    'down' around -1 below it; channel 1 has a large scale, so scaling matters. X [n, max_len, C], lengths, labels.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n)
    lengths[:2] = max_len  # always some full rows next to padded ones
    cls = np.arange(n) % 2
    X = np.zeros((n, max_len, channels), dtype=np.float32)
    for i in range(n):
        x = rng.normal(0.0, 1.0, (lengths[i], channels))
        x[:, 0] += offset + (1.0 if cls[i] else -1.0)
        x[:, 1] *= 25.0
        X[i, : lengths[i]] = x
    return X, lengths.astype(np.int64), np.array(["down", "up"])[cls]


TINY = {
    "model": {"hidden_dim": 16, "num_heads": 2, "num_lstm_layers": 2, "conv_dilations": [1, 2], "dropout": 0.1},
    "train": {"threads": 1, "progress": "off", "tensorboard": False},
}


@pytest.fixture(scope="session")
def deploy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory (config.yaml, preprocess.json, model.safetensors, as ``longshort train`` writes them) of
    2 BiLSTM blocks of width 16 with attention after the second and 2 convolutions, fitted by 40 Adam steps on
    96 npz sequences of lengths 4..24 (val and test splits of ~15 each). Not ``longshort.train``: its optimizer
    set-up and plots cost ~10 s here, and the exports need only a run directory with learnt weights."""
    from longshort.config import save_config, validate
    from longshort.data.batching import to_tensors
    from longshort.data.pipeline import prepare
    from longshort.nn.classifier import SequenceClassifier
    from longshort.training.checkpoint import save_weights

    root = tmp_path_factory.mktemp("deploy_run")
    X, lengths, y = raw_sequences(96, seed=0, min_len=4)
    np.savez(root / "train.npz", X=X, lengths=lengths, y=y)
    cfg = validate({**TINY, "data": {"source": str(root / "train.npz")}})
    splits = prepare(cfg.data, cfg.seed)
    run = root / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    splits.prep.save(run / "preprocess.json")
    torch.manual_seed(0)
    model = SequenceClassifier(splits.train.n_features, len(splits.prep.class_names), cfg.model)
    train = to_tensors(splits.train)
    assert train.y is not None
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randint(len(train), (16,), generator=g)
        x = train.rows(idx)  # padded to the batch's longest (variable-length sets are kept back to back)
        loss = F.cross_entropy(model(x, train.lengths[idx]).logits, train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_weights(model.eval(), run / "model.safetensors", metadata={"format": "longshort.SequenceClassifier"})
    return run


@pytest.fixture(scope="session")
def raw() -> object:
    """:func:`raw_sequences` (conftest modules are not imported by the tests)."""
    return raw_sequences
