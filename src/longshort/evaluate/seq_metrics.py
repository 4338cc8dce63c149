"""Sequence-to-sequence metrics and sequence-level rewards.

A *sequence* is a list (any ``Sequence``) of hashable tokens: strings, ints, ... Predictions ``pred`` and
references ``ref`` are lists of ``N`` sequences, paired by position; the corpus metrics raise ``ValueError``
(naming both lengths) when ``len(pred) != len(ref)``. No special tokens are handled here: the caller strips
BOS/EOS/PAD first. Tokens are compared with ``==`` (so ``1 == 1.0`` counts as a match, as in Python).

Notation: ``p_i`` and ``r_i`` are the i-th prediction and reference, ``|s|`` a length, ``lev(a, b)`` the
Levenshtein distance over tokens (unit-cost insertion, deletion, substitution; rapidfuzz), ``[x]`` is 1 if
``x`` holds else 0.

Corpus metrics
--------------
* ``token_accuracy = sum_i sum_{t < |r_i|} [t < |p_i| and p_i[t] == r_i[t]] / sum_i |r_i|``.
  Position-wise: a prediction shorter than its reference counts the missing positions wrong; extra
  predicted tokens past ``|r_i|`` are ignored (``edit_error_rate`` penalises them). 0.0 when there are
  no reference tokens (including empty input).
* ``exact_match = (1 / N) sum_i [p_i == r_i]``; 0.0 for empty input.
* ``edit_error_rate = sum_i lev(p_i, r_i) / max(sum_i |r_i|, 1)``: corpus-level, like WER (word tokens) or
  CER (character tokens); it can exceed 1 when predictions are longer than references. The ``max(., 1)``
  only matters when every reference is empty. 0.0 for empty input.
* ``bleu``: corpus BLEU-4 in [0, 100] from ``sacrebleu.corpus_bleu`` (``tokenize="none"``, default ``exp``
  smoothing, no effective order): ``BLEU = 100 * BP * exp((1/4) sum_{n=1..4} log prec_n)`` where ``prec_n``
  is the clipped n-gram precision pooled over the corpus (``exp`` smoothing: the k-th order with zero
  matches uses ``1 / (2^k * total_n)``), ``BP = min(1, exp(1 - R / H))``, ``H`` and ``R`` the total
  hypothesis and reference lengths. Tokens may contain spaces (character tokenisation keeps
  inner spaces as tokens) or be non-strings, so every distinct token is first mapped to a whitespace-free
  surrogate (``"t0"``, ``"t1"``, ... in first-seen order, shared by predictions and references) and the
  surrogates are joined with single spaces. 0.0 for empty input. Caveat: on very short sequences
  (fewer than 4 tokens) there are few or no 3- and 4-grams, so the score is dominated by smoothing and
  the brevity penalty; if *no* prediction has 4 tokens, ``prec_4`` is undefined and standard corpus BLEU
  is 0 even for a perfect match. Prefer ``exact_match`` / ``edit_error_rate`` for such data.

``sequence_metrics`` returns all four plus ``n = N``.

Rewards (per pair, in [0, 1], higher is better)
-----------------------------------------------
For REINFORCE, self-critical sequence training and minimum-risk training:

* ``exact_reward(p, r) = [p == r]``.
* ``edit_reward(p, r) = 1 - lev(p, r) / max(|p|, |r|, 1)`` (``lev(p, r) <= max(|p|, |r|)``, so it is in
  [0, 1]; two empty sequences give 1).
* ``bleu_reward(p, r) = sentence_bleu(p, [r]) / 100`` with ``sacrebleu.sentence_bleu`` (``tokenize="none"``,
  same surrogate mapping), ``smooth_method="exp"`` and effective order (the default for sentence BLEU):
  n-gram orders longer than the shorter sequence are dropped, and the k-th order with zero matches uses
  ``prec_n = 1 / (2^k * total_n)`` instead of 0. So a short, partially correct prediction (at least one
  matching unigram) gets a non-zero reward, one with no matching token gets 0, and ``p == r`` gives 1
  (also when both are empty). The value is clipped to [0, 1] against floating-point overshoot.

``REWARDS`` maps ``"exact"``, ``"edit"``, ``"bleu"`` to these functions; ``batch_rewards(name, preds, refs)``
returns a float64 array of shape ``[N]``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import sacrebleu
from rapidfuzz.distance import Levenshtein

__all__ = [
    "REWARDS",
    "batch_rewards",
    "bleu",
    "bleu_reward",
    "edit_error_rate",
    "edit_reward",
    "exact_match",
    "exact_reward",
    "sequence_metrics",
    "token_accuracy",
]

Seq = Sequence[Hashable]
Corpus = Sequence[Sequence[Hashable]]


def _check_lengths(pred: Corpus, ref: Corpus) -> None:
    if len(pred) != len(ref):
        raise ValueError(f"predictions and references differ in length: {len(pred)} predictions, {len(ref)} references")


def _levenshtein(a: Seq, b: Seq) -> int:
    """Token-level Levenshtein distance; tokens are first mapped to dense ints so equality is exactly ``==``."""
    ids: dict[Hashable, int] = {}
    a_ids = [ids.setdefault(tok, len(ids)) for tok in a]
    b_ids = [ids.setdefault(tok, len(ids)) for tok in b]
    return int(Levenshtein.distance(a_ids, b_ids))


def _surrogate_strings(seqs: Sequence[Seq], vocab: dict[Hashable, str]) -> list[str]:
    """Join each sequence's surrogate tokens (``"t<k>"``, allocated in ``vocab`` on first sight) with spaces."""
    out = []
    for seq in seqs:
        words = []
        for tok in seq:
            word = vocab.get(tok)
            if word is None:
                word = vocab[tok] = f"t{len(vocab)}"
            words.append(word)
        out.append(" ".join(words))
    return out


def token_accuracy(pred: Corpus, ref: Corpus) -> float:
    """Fraction of reference positions whose predicted token at the same position matches."""
    _check_lengths(pred, ref)
    total = sum(len(r) for r in ref)
    if total == 0:
        return 0.0
    correct = sum(sum(1 for pt, rt in zip(p, r, strict=False) if pt == rt) for p, r in zip(pred, ref, strict=True))
    return correct / total


def exact_match(pred: Corpus, ref: Corpus) -> float:
    """Fraction of pairs whose prediction equals its reference token for token."""
    _check_lengths(pred, ref)
    if not ref:
        return 0.0
    return sum(1 for p, r in zip(pred, ref, strict=True) if list(p) == list(r)) / len(ref)


def edit_error_rate(pred: Corpus, ref: Corpus) -> float:
    """Corpus edit error rate: total Levenshtein distance over total reference tokens (WER/CER-like)."""
    _check_lengths(pred, ref)
    if not ref:
        return 0.0
    dist = sum(_levenshtein(p, r) for p, r in zip(pred, ref, strict=True))
    return dist / max(sum(len(r) for r in ref), 1)


def bleu(pred: Corpus, ref: Corpus) -> float:
    """Corpus BLEU-4 in [0, 100] (sacrebleu, no tokenisation, tokens mapped to whitespace-free surrogates)."""
    _check_lengths(pred, ref)
    if not ref:
        return 0.0
    vocab: dict[Hashable, str] = {}
    hyps = _surrogate_strings(pred, vocab)
    refs = _surrogate_strings(ref, vocab)
    score = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score
    return float(min(max(score, 0.0), 100.0))


def sequence_metrics(pred: Corpus, ref: Corpus) -> dict[str, float]:
    """All corpus metrics: ``token_accuracy``, ``exact_match``, ``edit_error_rate``, ``bleu`` and ``n``."""
    _check_lengths(pred, ref)
    return {
        "token_accuracy": token_accuracy(pred, ref),
        "exact_match": exact_match(pred, ref),
        "edit_error_rate": edit_error_rate(pred, ref),
        "bleu": bleu(pred, ref),
        "n": len(ref),
    }


def exact_reward(p: Seq, r: Seq) -> float:
    """1.0 if the prediction equals the reference, else 0.0."""
    return 1.0 if list(p) == list(r) else 0.0


def edit_reward(p: Seq, r: Seq) -> float:
    """``1 - lev(p, r) / max(|p|, |r|, 1)``, in [0, 1]."""
    return 1.0 - _levenshtein(p, r) / max(len(p), len(r), 1)


def bleu_reward(p: Seq, r: Seq) -> float:
    """Sentence BLEU / 100 (sacrebleu, ``exp`` smoothing, effective order), in [0, 1]."""
    if list(p) == list(r):
        return 1.0
    if len(p) == 0 or len(r) == 0:
        return 0.0
    vocab: dict[Hashable, str] = {}
    (hyp,) = _surrogate_strings([p], vocab)
    (ref,) = _surrogate_strings([r], vocab)
    score = sacrebleu.sentence_bleu(hyp, [ref], smooth_method="exp", tokenize="none", use_effective_order=True).score
    return float(min(max(score / 100.0, 0.0), 1.0))


REWARDS: dict[str, Callable[[Sequence[Hashable], Sequence[Hashable]], float]] = {
    "exact": exact_reward,
    "edit": edit_reward,
    "bleu": bleu_reward,
}


def batch_rewards(name: str, preds: Corpus, refs: Corpus) -> np.ndarray:
    """Per-pair rewards from ``REWARDS[name]`` as a float64 array of shape ``[N]``."""
    fn = REWARDS.get(name)
    if fn is None:
        raise ValueError(f"unknown reward {name!r}; expected one of {sorted(REWARDS)}")
    _check_lengths(preds, refs)
    return np.fromiter((fn(p, r) for p, r in zip(preds, refs, strict=True)), dtype=np.float64, count=len(refs))
