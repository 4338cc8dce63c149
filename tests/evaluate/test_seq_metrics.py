"""Sequence metrics and sequence-level rewards: hand-computed values, sacrebleu cross-checks, bounds."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import numpy as np
import pytest
import sacrebleu

from longshort.evaluate.seq_metrics import (
    REWARDS,
    batch_rewards,
    bleu,
    bleu_reward,
    edit_error_rate,
    edit_reward,
    exact_match,
    exact_reward,
    sequence_metrics,
    token_accuracy,
)

# One substitution, one shorter prediction (missing last token), one longer prediction (two extra tokens).
PRED = [list("abc"), list("ab"), list("xyzw")]
REF = [list("abd"), list("abc"), list("xy")]


def test_token_accuracy_hand_computed() -> None:
    # correct positions: 2 (a,b) + 2 (a,b; missing c is wrong) + 2 (x,y; extras ignored) = 6 of 3+3+2 = 8
    assert token_accuracy(PRED, REF) == pytest.approx(6 / 8)


def test_token_accuracy_is_positional_under_insertion_and_deletion() -> None:
    # deletion of the first token shifts everything: no position matches
    assert token_accuracy([list("bcd")], [list("abcd")]) == 0.0
    # insertion at the front: same
    assert token_accuracy([list("xabc")], [list("abc")]) == 0.0
    # insertion at the end does not hurt token accuracy
    assert token_accuracy([list("abcx")], [list("abc")]) == 1.0


def test_token_accuracy_empty() -> None:
    assert token_accuracy([], []) == 0.0


def test_exact_match_hand_computed() -> None:
    assert exact_match(PRED, REF) == 0.0
    assert exact_match([*PRED, list("ok")], [*REF, list("ok")]) == pytest.approx(1 / 4)
    # a prefix or an extension is not an exact match; container type does not matter
    assert exact_match([list("ab"), list("abcd"), ("a", "b")], [list("abc"), list("abc"), ["a", "b"]]) == 1 / 3
    assert exact_match([], []) == 0.0


def test_edit_error_rate_hand_computed() -> None:
    # lev: 1 (substitution) + 1 (deletion) + 2 (two insertions) = 4 over 8 reference tokens
    assert edit_error_rate(PRED, REF) == pytest.approx(4 / 8)


def test_edit_error_rate_insertion_deletion_and_above_one() -> None:
    assert edit_error_rate([list("bcd")], [list("abcd")]) == pytest.approx(1 / 4)  # one deletion
    assert edit_error_rate([list("xabc")], [list("abc")]) == pytest.approx(1 / 3)  # one insertion
    # corpus level: (1 + 1) / (4 + 3), not the mean of per-pair rates
    assert edit_error_rate([list("bcd"), list("xabc")], [list("abcd"), list("abc")]) == pytest.approx(2 / 7)
    # much longer prediction: rate exceeds 1
    assert edit_error_rate([list("abcdefg")], [list("ab")]) == pytest.approx(5 / 2)
    assert edit_error_rate([], []) == 0.0


def test_edit_error_rate_on_multichar_and_int_tokens() -> None:
    assert edit_error_rate([["the", "cat", "sat"]], [["the", "dog", "sat", "down"]]) == pytest.approx(2 / 4)
    # -1 and -2 have the same hash in CPython; they must still count as different tokens
    assert edit_error_rate([[-1, 5]], [[-2, 5]]) == pytest.approx(1 / 2)


def test_bleu_identical_corpus_is_100() -> None:
    corpus = [list("hello world"), ["the", "cat", "sat", "on", "the", "mat"], [1, 2, 3, 4, 5]]
    assert bleu(corpus, corpus) == pytest.approx(100.0)


def test_bleu_perfect_but_all_shorter_than_four_tokens_is_zero() -> None:
    # documented caveat: no 4-grams anywhere -> standard corpus BLEU is 0
    corpus = [list("ab"), list("abc")]
    assert bleu(corpus, corpus) == 0.0


def test_bleu_matches_sacrebleu_on_space_joined_corpus() -> None:
    hyps = ["the cat sat on the mat", "a dog ran in the park today", "it is raining cats and dogs"]
    refs = ["the cat sat on a mat", "the dog ran in the park", "it is raining cats and dogs outside"]
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score
    got = bleu([h.split() for h in hyps], [r.split() for r in refs])
    assert 0.0 < got < 100.0
    assert got == pytest.approx(expected)


def test_bleu_tokens_with_spaces_equal_underscore_corpus() -> None:
    # character tokens with inner spaces: must behave like the same corpus with " " replaced by "_"
    hyps = ["a cat sat on a mat", "the dog ran off"]
    refs = ["a cat sat on the mat", "the dog ran away"]
    with_spaces = bleu([list(h) for h in hyps], [list(r) for r in refs])
    underscored = bleu([list(h.replace(" ", "_")) for h in hyps], [list(r.replace(" ", "_")) for r in refs])
    assert 0.0 < with_spaces < 100.0
    assert with_spaces == pytest.approx(underscored)
    # and it is not what a naive " ".join would give (spaces would vanish as tokens)
    naive = sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]], tokenize="none").score
    assert with_spaces != pytest.approx(naive)


def test_bleu_int_tokens_equal_string_tokens() -> None:
    hyps = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    refs = [[1, 2, 3, 4, 0, 6], [7, 8, 9, 10, 11, 12]]
    as_str = bleu([[str(t) for t in h] for h in hyps], [[str(t) for t in r] for r in refs])
    assert 0.0 < as_str < 100.0
    assert bleu(hyps, refs) == pytest.approx(as_str)


def test_sequence_metrics_keys_and_values() -> None:
    out = sequence_metrics(PRED, REF)
    assert set(out) == {"token_accuracy", "exact_match", "edit_error_rate", "bleu", "n"}
    assert out["n"] == 3 and isinstance(out["n"], int)
    assert out["token_accuracy"] == pytest.approx(6 / 8)
    assert out["exact_match"] == 0.0
    assert out["edit_error_rate"] == pytest.approx(4 / 8)
    assert out["bleu"] == pytest.approx(bleu(PRED, REF))


@pytest.mark.parametrize("fn", [token_accuracy, exact_match, edit_error_rate, bleu, sequence_metrics])
def test_mismatched_lengths_raise(fn: Callable[..., object]) -> None:
    with pytest.raises(ValueError, match=r"2 predictions, 3 references"):
        fn([["a"], ["b"]], [["a"], ["b"], ["c"]])


def test_batch_rewards_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match=r"3 predictions, 1 references"):
        batch_rewards("edit", [["a"], ["b"], ["c"]], [["a"]])


def test_exact_reward() -> None:
    assert exact_reward(list("abc"), list("abc")) == 1.0
    assert exact_reward(("a", "b"), ["a", "b"]) == 1.0
    assert exact_reward(list("abc"), list("ab")) == 0.0
    assert exact_reward([], []) == 1.0


def test_edit_reward_hand_values() -> None:
    assert edit_reward(list("abc"), list("abd")) == pytest.approx(2 / 3)
    assert edit_reward(list("abc"), list("abc")) == 1.0
    assert edit_reward(list("ab"), list("abcd")) == pytest.approx(1 - 2 / 4)
    assert edit_reward(list("abcd"), list("ab")) == pytest.approx(1 - 2 / 4)
    assert edit_reward(list("abc"), list("xyz")) == 0.0
    assert edit_reward(list("abc"), []) == 0.0
    assert edit_reward([], []) == 1.0
    assert edit_reward([-1], [-2]) == 0.0


def test_bleu_reward_values() -> None:
    assert bleu_reward(list("abcdef"), list("abcdef")) == pytest.approx(1.0)
    assert bleu_reward(list("ab"), list("ab")) == 1.0  # short exact match still gets full reward
    assert bleu_reward([], []) == 1.0
    assert bleu_reward([], list("ab")) == 0.0
    assert bleu_reward(list("ab"), []) == 0.0
    assert bleu_reward(list("abc"), list("xyz")) == 0.0  # nothing in common
    # short, partially correct: non-zero (exp smoothing with effective order) and equal to sacrebleu's value
    r = bleu_reward(list("abc"), list("abd"))
    assert 0.0 < r < 1.0
    expected = sacrebleu.sentence_bleu("a b c", ["a b d"], tokenize="none", smooth_method="exp").score / 100
    assert r == pytest.approx(expected)


def test_bleu_reward_tokens_with_spaces_and_ints() -> None:
    r = bleu_reward(list("a cat"), list("a bat"))
    assert r == pytest.approx(bleu_reward(list("a_cat"), list("a_bat")))
    assert bleu_reward([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(bleu_reward(list("1234"), list("1235")))


def test_bleu_reward_monotone_in_correct_ngrams() -> None:
    ref = [f"r{i}" for i in range(8)]
    rewards = [bleu_reward(ref[:k] + [f"w{i}" for i in range(8 - k)], ref) for k in range(9)]
    assert rewards[0] == 0.0
    assert rewards[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(rewards)), rewards


def test_rewards_bounds_random() -> None:
    rng = random.Random(0)
    alphabet = ["a", "b", "c", " ", 0, 1]

    def draw() -> list[object]:
        return [rng.choice(alphabet) for _ in range(rng.randint(0, 7))]

    pairs = [(draw(), draw()) for _ in range(300)]
    for name, fn in REWARDS.items():
        values = [fn(p, r) for p, r in pairs]
        assert all(0.0 <= v <= 1.0 for v in values), name
        # identical sequences always get the maximum reward
        assert all(fn(p, list(p)) == pytest.approx(1.0) for p, _ in pairs), name


def test_rewards_registry() -> None:
    assert {"exact": exact_reward, "edit": edit_reward, "bleu": bleu_reward} == REWARDS


def test_batch_rewards_values_and_dtype() -> None:
    preds = [list("abc"), list("abc"), list("ab")]
    refs = [list("abc"), list("abd"), list("abcd")]
    out = batch_rewards("edit", preds, refs)
    assert out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_allclose(out, [1.0, 2 / 3, 0.5])
    np.testing.assert_array_equal(batch_rewards("exact", preds, refs), [1.0, 0.0, 0.0])
    expected = [bleu_reward(p, r) for p, r in zip(preds, refs, strict=True)]
    np.testing.assert_allclose(batch_rewards("bleu", preds, refs), expected)
    empty = batch_rewards("bleu", [], [])
    assert empty.dtype == np.float64 and empty.shape == (0,)


def test_batch_rewards_unknown_name_lists_names() -> None:
    with pytest.raises(ValueError, match=r"'bleu', 'edit', 'exact'"):
        batch_rewards("rouge", [["a"]], [["a"]])
