"""Seq2seq pairs: reading and tokenising, vocabularies, padding, built-in tasks, and errors naming the place."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from longshort.data.pairs import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    PAIR_BUILTINS,
    UNK_ID,
    PairFormat,
    Vocab,
    encode_batch,
    read_pairs,
)
from longshort.errors import DataError


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parquet(tmp_path: Path, df: pd.DataFrame) -> Path:
    path = tmp_path / "pairs.parquet"
    df.to_parquet(path, index=False)
    return path


def raises(path: Path, *parts: str):
    """pytest.raises for a DataError on ``path`` whose message contains each of ``parts`` literally."""
    return pytest.raises(DataError, match="".join(f"(?=.*{re.escape(p)})" for p in (str(path), *parts)))


# ---------------------------------------------------------------------------------------------- reading


def test_tsv_space_tokens_rows_and_na_kept(tmp_path):
    path = write(tmp_path, "p.tsv", 'source\ttarget\nHello  World\tbonjour NA\nNA\t"x" y\n')
    data = read_pairs(path, PairFormat())
    assert data.source == [["Hello", "World"], ["NA"]]
    assert data.target == [["bonjour", "NA"], ['"x"', "y"]]  # TSV is unquoted: '"' is a character
    assert data.rows.tolist() == [2, 3]
    assert data.source_file == str(path)


def test_csv_char_tokens_lowercase_custom_columns(tmp_path):
    path = write(tmp_path, "p.csv", 'id,src,tgt\n1,"Ab c",XY\n2,NA,null\n')
    data = read_pairs(path, PairFormat(source="src", target="tgt", tokenize="char", lowercase=True))
    assert data.source == [["a", "b", " ", "c"], ["n", "a"]]
    assert data.target == [["x", "y"], ["n", "u", "l", "l"]]
    assert data.rows.tolist() == [2, 3]


def test_parquet_round_trip_and_no_target_column(tmp_path):
    path = parquet(tmp_path, pd.DataFrame({"source": ["A b", "NA c"], "target": ["B A", "c NA"]}))
    data = read_pairs(path, PairFormat(lowercase=True))
    assert data.source == [["a", "b"], ["na", "c"]]
    assert data.target == [["b", "a"], ["c", "na"]]
    assert data.rows.tolist() == [0, 1]  # Parquet rows are 0-based positions
    pred = read_pairs(parquet(tmp_path, pd.DataFrame({"source": ["x y"]})))
    assert pred.target is None and pred.source == [["x", "y"]]


def test_take_selects_pairs_and_rows(tmp_path):
    data = read_pairs(write(tmp_path, "p.tsv", "source\ttarget\na\tA\nb\tB\nc\tC\n"))
    part = data.take([2, 0])
    assert part.source == [["c"], ["a"]] and part.target == [["C"], ["A"]]
    assert part.rows.tolist() == [4, 2]


def test_format_config_is_strict():
    with pytest.raises(ValidationError):
        PairFormat(sourc="x")
    with pytest.raises(ValidationError):
        PairFormat(tokenize="word")


# ---------------------------------------------------------------------------------------------- errors


def test_missing_source_column_lists_columns(tmp_path):
    path = write(tmp_path, "p.tsv", "input\ttarget\na\tb\n")
    with raises(path, "missing source column 'source'", "columns are: input, target"):
        read_pairs(path)


def test_empty_file_and_header_only(tmp_path):
    empty = write(tmp_path, "empty.csv", "")
    with raises(empty, "file is empty"):
        read_pairs(empty)
    header = write(tmp_path, "header.tsv", "source\ttarget\n")
    with raises(header, "has no rows"):
        read_pairs(header)


def test_empty_source_after_tokenisation_names_row_and_column(tmp_path):
    path = write(tmp_path, "p.tsv", "source\ttarget\na\tb\n   \tc\n")
    with raises(path, "row 3, column 'source'", "empty source"):
        read_pairs(path)


def test_blank_line_keeps_row_numbers_true(tmp_path):
    path = write(tmp_path, "p.csv", "source,target\na,b\n\nc,d\n")
    with raises(path, "row 3, column 'source'"):
        read_pairs(path)


def test_empty_target_names_row_and_column(tmp_path):
    path = write(tmp_path, "p.csv", "source,answer\na b,c\nd,\n")
    with raises(path, "row 3, column 'answer'", "empty target"):
        read_pairs(path, PairFormat(target="answer"))


def test_non_string_parquet_cell_names_row_and_column(tmp_path):
    path = parquet(tmp_path, pd.DataFrame({"source": ["a", "b", "c"], "target": [1, 2, 3]}))
    with raises(path, "row 0, column 'target'", "1 of type int", "not a string"):
        read_pairs(path)
    path = parquet(tmp_path, pd.DataFrame({"source": ["a", None], "target": ["x", "y"]}))
    with raises(path, "row 1, column 'source'", "missing value"):
        read_pairs(path)


def test_extra_field_and_bad_suffix(tmp_path):
    path = write(tmp_path, "p.csv", "source,target\na,b,c\n")
    with raises(path, "more fields than the header"):
        read_pairs(path)
    txt = write(tmp_path, "p.json", "{}")
    with raises(txt, "'.json'", ".tsv"):
        read_pairs(txt)


# ---------------------------------------------------------------------------------------------- vocab


def test_vocab_specials_order_and_cuts():
    seqs = [["b", "a", "c"], ["a", "b"], ["a", "d"], ["<eos>"]]
    vocab = Vocab.build(seqs)
    assert vocab.itos == ["<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c", "d"]  # freq desc, then string
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert Vocab.build(seqs, min_freq=2).itos[4:] == ["a", "b"]
    capped = Vocab.build(seqs, max_vocab=6)
    assert len(capped) == 6 and capped.itos[4:] == ["a", "b"]
    with pytest.raises(ValueError):
        Vocab.build(seqs, max_vocab=3)


def test_encode_unknown_and_bos_eos_decode_stops_at_eos():
    vocab = Vocab.build([["x", "y", "y"]])
    assert vocab.encode(["y", "x", "zzz"]) == [4, 5, UNK_ID]
    assert vocab.encode(["y"], add_bos=True, add_eos=True) == [BOS_ID, 4, EOS_ID]
    assert vocab.decode([BOS_ID, 4, UNK_ID, 5, EOS_ID, 4, PAD_ID]) == ["y", "<unk>", "x"]
    assert vocab.decode([BOS_ID, 4, PAD_ID, EOS_ID, 5], strip_special=False) == ["<bos>", "y", "<pad>"]


def test_vocab_json_and_file_round_trip(tmp_path):
    vocab = Vocab.build([["é", "b", "b"], ["NA"]], max_vocab=10)
    assert Vocab.from_json(vocab.to_json()) == vocab
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.itos == vocab.itos and len(loaded) == len(vocab)
    assert loaded.encode(["b", "NA", "é"]) == vocab.encode(["b", "NA", "é"])
    bad = write(tmp_path, "bad.json", '{"tokens": ["a", "b"]}')
    with raises(bad, "not a vocabulary file"):
        Vocab.load(bad)


def test_encode_batch_pads_and_reports_lengths():
    x, lengths = encode_batch([[5, 6, 7], [8], [9, 10]])
    assert x.dtype == torch.long and lengths.dtype == torch.long
    assert x.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2]
    x, _ = encode_batch([[1], [2, 3]], pad=-1)
    assert x.tolist() == [[1, -1], [2, 3]]


# ---------------------------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize("name", sorted(PAIR_BUILTINS))
def test_builtins_deterministic_per_seed_and_differ_across_seeds(name):
    make = PAIR_BUILTINS[name].make
    a, b, c = make(n=50, seed=3), make(n=50, seed=3), make(n=50, seed=4)
    assert a.source == b.source and a.target == b.target
    assert a.source != c.source
    assert a.source_file == f"builtin:{name}" and a.rows.tolist() == list(range(50))
    assert PAIR_BUILTINS[name].summary


def test_reverse_and_sort_targets():
    rev = PAIR_BUILTINS["reverse"].make(n=200, seed=0)
    assert all(t == s[::-1] for s, t in zip(rev.source, rev.target, strict=True))
    lengths = [len(s) for s in rev.source]
    assert min(lengths) >= 5 and max(lengths) <= 20
    assert len({tok for s in rev.source for tok in s}) == 20
    long = PAIR_BUILTINS["reverse"].make(n=200, seed=0, max_len=40)
    assert max(len(s) for s in long.source) > 20 and max(len(s) for s in long.source) <= 40
    srt = PAIR_BUILTINS["sort"].make(n=200, seed=0)
    assert all(t == sorted(s) and t != s for s, t in zip(srt.source, srt.target, strict=True) if s != sorted(s))
    assert any(s != sorted(s) for s in srt.source)


def test_addition_targets_are_right():
    data = PAIR_BUILTINS["addition"].make(n=300, seed=1)
    for s, t in zip(data.source, data.target, strict=True):
        a, b = "".join(s).split("+")
        assert int("".join(t)) == int(a) + int(b)
        assert all(len(tok) == 1 for tok in s + t)
    assert max(int(x) for s in data.source for x in "".join(s).split("+")) >= 100  # up to 3 digits

