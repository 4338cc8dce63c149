"""Source/target token pairs for sequence-to-sequence tasks: reading, vocabularies, padding, built-in tasks.

Files. :func:`read_pairs` reads a ``.tsv`` (tab-separated), ``.csv`` or ``.parquet`` table with a source
column and, optionally, a target column (:class:`PairFormat` names them). Without the target column the
file is prediction input and ``PairData.target`` is None. Cells are read as text: the string "NA" (or
"null", "nan") stays a token. TSV cells are not quoted, so a ``"`` is an ordinary character there. Row
numbers in messages follow :mod:`longshort.data.sources`: for TSV/CSV the line number in the file with the
header as line 1 (the first pair is "row 2"; blank lines are kept as rows, so the numbers stay true), for
Parquet the 0-based row position.

Tokenisation. ``space`` splits on runs of whitespace; ``char`` makes every character a token, inner spaces
included, after trimming whitespace at both ends. ``lowercase`` applies first.

Vocabularies. :class:`Vocab` holds the specials ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3, then the
tokens by descending frequency, ties by token string. Build the source and the target vocabulary
separately, from the TRAINING split only, after splitting: :func:`read_pairs` returns all the pairs of a
file and never builds a vocabulary, so that validation and test tokens cannot leak into it. Tokens of
other splits that the vocabulary lacks (or that were rarer than ``min_freq`` in training) encode as
``<unk>``. Vocabularies are saved as JSON, never pickled.

Built-in tasks (:data:`PAIR_BUILTINS`), generated deterministically from a seed:

- ``reverse``: random strings of 5-20 tokens over a 20-symbol alphabet (``a``..``t``); the target is the
  string reversed. With long strings (``max_len`` up to 40) this is the task where exposure bias shows: a
  decoder trained with teacher forcing always sees the true previous token, but at inference it conditions
  on its own outputs, so one early mistake shifts every later position, and the error compounds over the
  long output. Compare teacher-forced accuracy with free-running (greedy) accuracy on it.
- ``sort``: the same kind of strings; the target is the tokens sorted.
- ``addition``: source ``"12+345"`` as characters, target the decimal sum as characters (char-level).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from longshort.data.config import PairFormat
from longshort.data.sources import CSV_FIRST_ROW, check_file, read_table
from longshort.errors import DataError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

PAIR_SUFFIXES = {".tsv": "tsv", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class PairData:
    """Token sequences: ``source[i]`` and (when the file has targets) ``target[i]`` come from file row
    ``rows[i]``."""

    source: list[list[str]]
    target: list[list[str]] | None
    source_file: str
    rows: np.ndarray
    extra: list[list[list[str]]] = field(default_factory=list)  # per extra source column, its token lists

    def __len__(self) -> int:
        return len(self.source)

    @property
    def fields(self) -> list[list[list[str]]]:
        """Every source field: the main one first, then the extra ones."""
        return [self.source, *self.extra]

    def take(self, indices: Sequence[int] | np.ndarray) -> PairData:
        """The pairs at ``indices`` (for splits), in that order."""
        idx = [int(i) for i in indices]
        target = None if self.target is None else [self.target[i] for i in idx]
        return PairData(source=[self.source[i] for i in idx], target=target, source_file=self.source_file,
                        rows=self.rows[idx] if idx else self.rows[:0],
                        extra=[[f[i] for i in idx] for f in self.extra])


# ---------------------------------------------------------------------------------------------- reading


def tokenize(text: str, cfg: PairFormat) -> list[str]:
    """``text`` as tokens, as ``cfg`` says (lowercase first, then split by whitespace or into characters)."""
    if cfg.lowercase:
        text = text.lower()
    return text.split() if cfg.tokenize == "space" else list(text.strip())


def read_pairs(path: Path | str, cfg: PairFormat | None = None) -> PairData:
    """All the pairs of a ``.tsv``, ``.csv`` or ``.parquet`` file, tokenised (no vocabulary is built here)."""
    cfg = cfg or PairFormat()
    path = Path(path)
    df = _read_frame(path)
    if cfg.source not in df.columns:
        raise DataError(path, f"missing source column '{cfg.source}' (columns are: {', '.join(df.columns)})")
    for col in cfg.extra_sources:
        if col not in df.columns:
            raise DataError(path, f"missing extra source column '{col}' (data.pairs.extra_sources; columns are: "
                                  f"{', '.join(df.columns)})")
    source = _token_column(df, cfg.source, "source", cfg, path)
    target = _token_column(df, cfg.target, "target", cfg, path) if cfg.target in df.columns else None
    extra = [_token_column(df, col, "source", cfg, path) for col in cfg.extra_sources]
    return PairData(source=source, target=target, source_file=str(path), rows=df.index.to_numpy(np.int64),
                    extra=extra)


def _read_frame(path: Path) -> pd.DataFrame:
    check_file(path)
    fmt = PAIR_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        shown = f"'{path.suffix}'" if path.suffix else "no suffix"
        raise DataError(path, f"cannot tell the format of a pairs file from {shown}; accepted suffixes are "
                              f"{', '.join(PAIR_SUFFIXES)}")
    if fmt == "parquet":
        return read_table(path, "parquet")  # index: 0-based row position
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields would be dropped silently
            df = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                             skip_blank_lines=False, index_col=False,
                             quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    except pd.errors.EmptyDataError as exc:
        raise DataError(path, "file is empty") from exc
    except pd.errors.ParserWarning as exc:
        raise DataError(path, f"cannot parse {fmt.upper()}: {exc} (a row has more fields than the header)") \
            from exc
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot parse {fmt.upper()}: {str(exc).strip()}") from exc
    if len(df) == 0:
        raise DataError(path, "has no rows (only a header)")
    df.columns = [str(c) for c in df.columns]
    df.index = pd.RangeIndex(CSV_FIRST_ROW, CSV_FIRST_ROW + len(df))
    return df


def _token_column(df: pd.DataFrame, col: str, role: str, cfg: PairFormat, path: Path) -> list[list[str]]:
    out: list[list[str]] = []
    for row, cell in zip(df.index, df[col].tolist(), strict=True):
        if not isinstance(cell, str):
            what = "a missing value" if cell is None or (isinstance(cell, float) and np.isnan(cell)) \
                else f"{cell!r} of type {type(cell).__name__}"
            raise DataError(path, f"row {row}, column '{col}': {what}, not a string")
        tokens = tokenize(cell, cfg)
        if not tokens:
            raise DataError(path, f"row {row}, column '{col}': empty {role} (no tokens after "
                                  f"{cfg.tokenize} tokenisation)")
        out.append(tokens)
    return out


# ---------------------------------------------------------------------------------------------- vocabulary


class Vocab:
    """Token <-> id. Ids 0..3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``; the rest follow."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.itos: list[str] = list(tokens)
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {', '.join(SPECIALS)}; got {self.itos[:4]}")
        self.stoi: dict[str, int] = {}
        for i, tok in enumerate(self.itos):
            if tok in self.stoi:
                raise ValueError(f"token {tok!r} appears twice in the vocabulary (ids {self.stoi[tok]} and {i})")
            self.stoi[tok] = i

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], min_freq: int = 1, max_vocab: int | None = None) -> Vocab:
        """From the training split only. Tokens seen ``min_freq`` times or more, most frequent first (ties by
        token string), at most ``max_vocab`` ids in all (specials included). Special strings in the data are
        not counted: they keep their fixed ids."""
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1, got {min_freq}")
        if max_vocab is not None and max_vocab < len(SPECIALS):
            raise ValueError(f"max_vocab must be at least {len(SPECIALS)} (the special tokens), got {max_vocab}")
        counts = Counter(tok for seq in sequences for tok in seq)
        ranked = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                        key=lambda t: (-counts[t], t))
        if max_vocab is not None:
            ranked = ranked[: max_vocab - len(SPECIALS)]
        return cls([*SPECIALS, *ranked])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``tokens``, unknown ones as ``<unk>``, optionally wrapped in ``<bos>`` ... ``<eos>``."""
        ids = [self.stoi.get(t, UNK_ID) for t in tokens]
        return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> list[str]:
        """Tokens of ``ids`` up to (not including) the first ``<eos>``; ``strip_special`` also drops
        ``<pad>`` and ``<bos>`` (``<unk>`` stays, it stands for a real token)."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if strip_special and i in (PAD_ID, BOS_ID):
                continue
            out.append(self.itos[i])
        return out

    def to_json(self) -> str:
        return json.dumps({"tokens": self.itos}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list) \
                or not all(isinstance(t, str) for t in data["tokens"]):
            raise ValueError("a vocabulary JSON must be an object with a 'tokens' list of strings")
        return cls(data["tokens"])

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> Vocab:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            raise DataError(path, f"not a vocabulary file ({exc})") from exc


def encode_batch(seqs: Sequence[Sequence[int]], pad: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Id sequences padded with ``pad`` to the longest: (LongTensor [B, T], lengths LongTensor [B])."""
    if not seqs:
        raise ValueError("encode_batch needs at least one sequence")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


# ---------------------------------------------------------------------------------------------- built-ins

ALPHABET = [chr(ord("a") + i) for i in range(20)]


def _strings(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> list[list[str]]:
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    lengths = rng.integers(min_len, max_len + 1, size=n)
    return [[ALPHABET[k] for k in rng.integers(0, len(ALPHABET), size=int(m))] for m in lengths]


def _builtin(name: str, source: list[list[str]], target: list[list[str]]) -> PairData:
    return PairData(source=source, target=target, source_file=f"builtin:{name}",
                    rows=np.arange(len(source), dtype=np.int64))


def make_reverse(n: int = 1000, seed: int = 0, min_len: int = 5, max_len: int = 20) -> PairData:
    """Random strings over ``a``..``t``; target = the string reversed. ``max_len=40`` for the long-output
    setting where exposure bias matters (see the module notes)."""
    source = _strings(np.random.default_rng(seed), n, min_len, max_len)
    return _builtin("reverse", source, [s[::-1] for s in source])


def make_sort(n: int = 1000, seed: int = 0, min_len: int = 5, max_len: int = 20) -> PairData:
    """Random strings over ``a``..``t``; target = the tokens sorted."""
    source = _strings(np.random.default_rng(seed), n, min_len, max_len)
    return _builtin("sort", source, [sorted(s) for s in source])


def make_addition(n: int = 1000, seed: int = 0, max_digits: int = 3) -> PairData:
    """``"a+b"`` with a, b uniform in [0, 10**max_digits) as characters; target = a + b as characters."""
    if max_digits < 1:
        raise ValueError(f"max_digits must be at least 1, got {max_digits}")
    ab = np.random.default_rng(seed).integers(0, 10**max_digits, size=(n, 2))
    source = [list(f"{a}+{b}") for a, b in ab.tolist()]
    return _builtin("addition", source, [list(str(a + b)) for a, b in ab.tolist()])


class PairBuiltin(NamedTuple):
    make: Callable[..., PairData]
    summary: str


PAIR_BUILTINS: dict[str, PairBuiltin] = {
    "reverse": PairBuiltin(make_reverse, "reverse a string of 5-20 tokens over 20 symbols (max_len up to 40: "
                                         "long outputs, where exposure bias shows)"),
    "sort": PairBuiltin(make_sort, "sort a string of 5-20 tokens over 20 symbols"),
    "addition": PairBuiltin(make_addition, "char-level addition: '12+345' -> '357' (operands up to 3 digits)"),
}
