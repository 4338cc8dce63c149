"""The tiny model and data shared by test_distributed.py and its torchrun worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longshort.data.batching import TensorData
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.training.classify import classifier_trainer
from longshort.training.distributed import DistContext, DistributedConfig
from longshort.training.trainer import TrainConfig, Trainer

STEPS, BATCH, N_TRAIN = 5, 12, 58  # 5 steps, the last with 10 examples (ranks split 5/5, or 6/6 otherwise)
# AdamW's eps is 1e-6, not 1e-8: some parameters have an exactly zero true gradient (attention's key bias: softmax
# ignores a constant), so their gradient is float rounding noise of ~1e-10 that Adam would scale up to lr-sized
# steps whose sign differs between any two summation orders (one process vs two ranks, or accumulation).


def data() -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, 9, 3, generator=g)
    lengths = torch.randint(4, 10, (N_TRAIN,), generator=g)
    y = (x[:, 0, 0] > 0).long() + (x[:, 1, 1] > 0.5).long()
    return TensorData(X=x, lengths=lengths, y=y, aux=None)


def make_trainer(run_dir: Path, dcfg: DistributedConfig | None = None, ctx: DistContext | None = None,
                 **train: Any) -> Trainer:
    torch.manual_seed(0)
    model = SequenceClassifier(3, 3, ClassifierConfig(hidden_dim=16, num_heads=2, num_lstm_layers=2,
                                                      conv_dilations=[1], dropout=0.0))
    cfg = TrainConfig.model_validate({"recipe": "plain", "epochs": 1, "batch_size": BATCH, "progress": "off",
                                      "tensorboard": False, "optim": {"lr": 3e-3, "grad_clip": 1.0, "eps": 1e-6},
                                      "early_stopping": {"patience": None}, **train})
    return classifier_trainer(cfg, model, data(), None, num_classes=3, seed=0, run_dir=run_dir, distributed=dcfg,
                              ctx=ctx)
