"""Models: plain ``nn.Module``s that know nothing of training, distribution or files."""

from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import LSTM, CellConfig, StackConfig

__all__ = ["LSTM", "CellConfig", "ClassifierConfig", "SequenceClassifier", "StackConfig"]
