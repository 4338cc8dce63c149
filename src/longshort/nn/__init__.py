"""Models: plain ``nn.Module``s that know nothing of training, distribution or files.

The names below load on first use (PEP 562), so ``import longshort.nn.config`` (the model sections of the
config) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "LSTM",
    "Attention",
    "AttentionConfig",
    "CellConfig",
    "ClassifierConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SequenceClassifier",
    "StackConfig",
    "coverage_loss",
]

_WHERE = {
    "LSTM": "lstm", "Attention": "attention", "coverage_loss": "attention", "SequenceClassifier": "classifier",
    "Seq2Seq": "seq2seq", "AttentionConfig": "config", "CellConfig": "config", "ClassifierConfig": "config",
    "Seq2SeqConfig": "config", "StackConfig": "config",
}

if TYPE_CHECKING:
    from longshort.nn.attention import Attention, coverage_loss
    from longshort.nn.classifier import SequenceClassifier
    from longshort.nn.config import AttentionConfig, CellConfig, ClassifierConfig, Seq2SeqConfig, StackConfig
    from longshort.nn.lstm import LSTM
    from longshort.nn.seq2seq import Seq2Seq


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"longshort.nn.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'longshort.nn' has no attribute {name!r}")
