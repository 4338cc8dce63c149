"""Models: plain ``nn.Module``s that know nothing of training, distribution or files."""

from longshort.nn.attention import Attention, AttentionConfig, coverage_loss
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import LSTM, CellConfig, StackConfig
from longshort.nn.seq2seq import Seq2Seq, Seq2SeqConfig

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
