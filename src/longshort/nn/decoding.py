"""Batched beam search for :class:`~longshort.nn.seq2seq.Seq2Seq`, its length penalty, and teacher-forced scoring.

Length penalty (GNMT, Wu et al. 2016): ``lp(L) = ((5 + L) / 6) ** alpha``; ``alpha = 0`` gives ``lp = 1`` (no
normalisation), and ``lp(1) = 1`` for every ``alpha``.

A hypothesis ``y_1 .. y_L`` (its length ``L`` counts the ``EOS_ID`` it ends with, as in ``greedy_decode``) has the
raw score ``s(y) = sum_{t=1..L} log p(y_t | y_<t, x)`` and the normalised score ``s(y) / lp(L)``.

Beam search with ``K = beam_size``, for all ``B`` sentences at once (``B * K`` rows, one ``model.step`` per step):

- step 0 starts every slot from ``BOS_ID`` with raw score ``0`` for slot 0 and ``-inf`` for the others, so the
  first expansion yields ``K`` distinct hypotheses instead of ``K`` copies;
- at step ``t`` a live slot ``k`` proposes ``s_k + log_softmax(logits_k)_v`` for every token ``v`` (float32); a
  finished slot proposes only itself, extended by ``PAD_ID`` at log-prob 0 (raw score unchanged); the ``K`` best
  proposals of the sentence, ranked by raw score, become its new slots;
- a proposal ending in ``EOS_ID`` is finished: it is recorded among the sentence's finished candidates with its
  normalised score ``s / lp(t + 1)`` and never expands again;
- at ``max_len`` the hypotheses still live become candidates of length ``max_len`` (``s / lp(max_len)``).

The answer per sentence is the finished candidate with the best normalised score. Log-probs are ``<= 0``, so a
live hypothesis with raw score ``s`` after ``t + 1`` tokens can finish at best with ``s / max(lp(t + 2),
lp(max_len))`` (``lp`` is monotone in ``L``); decoding stops as soon as, for every sentence, no live hypothesis can
beat the best candidate (in particular once every slot is finished), which gives exactly the result of running to
``max_len``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.nn import functional as F

from longshort.data.pairs import BOS_ID, EOS_ID, PAD_ID
from longshort.nn.seq2seq import Seq2Seq, Sources

if TYPE_CHECKING:
    from longshort.data.pair_pipeline import EncodedPairs, PairBatch


class DecodeConfig(Protocol):
    """What decoding reads of ``seq2seq.decode`` (:class:`longshort.training.config.DecodeConfig`)."""

    beam_size: int
    length_penalty: float

    def max_len(self, src_lengths: Tensor) -> int: ...

__all__ = ["BeamResult", "beam_search", "length_penalty", "sequence_log_prob"]


class BeamResult(NamedTuple):
    """``tokens`` [B, L] long (``PAD_ID`` after each sequence's end, ``L = lengths.max()``), ``lengths`` [B]
    (counting the ``EOS_ID``; ``max_len`` when none was emitted), ``scores`` [B] float32 (raw score of the
    returned tokens divided by ``length_penalty(lengths, alpha)``)."""

    tokens: Tensor
    lengths: Tensor
    scores: Tensor


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (float; all ones when ``alpha == 0``)."""
    length = torch.as_tensor(length)
    if not length.is_floating_point():
        length = length.to(torch.float32)
    return ((5.0 + length) / 6.0) ** alpha


def _map_tensors(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in nested lists / tuples (named tuples keep their type); other leaves, ``None``
    included, are returned unchanged."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_tensors(fn, x) for x in obj]
    if isinstance(obj, tuple):
        items = [_map_tensors(fn, x) for x in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


def beam_search(
    model: Seq2Seq,
    src: Sources,
    src_lengths: Sources,
    beam_size: int,
    max_len: int,
    alpha: float = 0.6,
) -> BeamResult:
    """Batched beam search of ``beam_size`` hypotheses per sentence, at most ``max_len`` tokens; see the module
    docstring. Runs without gradients in eval mode (no dropout), and restores the module's mode."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _beam_search(model, src, src_lengths, beam_size, max_len, alpha)
    finally:
        model.train(was_training)


def _beam_search(model: Seq2Seq, src: Sources, src_lengths: Sources, k: int, max_len: int, alpha: float) -> BeamResult:
    encoded = model.encode(src, src_lengths)
    b, device = encoded[0].shape[0], encoded[0].device  # from enc [B, S, H]: src itself is only passed through
    neg_inf = float("-inf")
    enc, mask, state = _map_tensors(lambda x: x.repeat_interleave(k, dim=0), encoded)
    prepared = model.attention.prepare(enc)  # the keys' projection, once per source
    h_tilde = enc.new_zeros(b * k, model.cfg.hidden_dim)
    coverage: Tensor | None = None

    def lp(n: int) -> float:
        return float(length_penalty(torch.tensor(n), alpha))

    scores = torch.full((b, k), neg_inf, device=device)  # raw sums of log-probs, float32
    scores[:, 0] = 0.0
    hyps = torch.full((b, k, max_len), PAD_ID, dtype=torch.long, device=device)
    finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    best_score = torch.full((b,), neg_inf, device=device)  # normalised
    best_tokens = torch.full((b, max_len), PAD_ID, dtype=torch.long, device=device)
    best_len = torch.full((b,), max_len, dtype=torch.long, device=device)
    tokens = torch.full((b * k,), BOS_ID, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    # A finished slot proposes only itself extended by PAD at log-prob 0: row template of -inf with 0 at PAD.
    frozen_row: Tensor | None = None

    for t in range(max_len):
        logits, state, h_tilde, _, coverage = model.step(tokens, state, h_tilde, enc, mask, t, coverage, prepared)
        logp = F.log_softmax(logits.float(), dim=-1).view(b, k, -1)
        v = logp.shape[-1]
        if frozen_row is None:
            frozen_row = torch.full((v,), neg_inf, device=device)
            frozen_row[PAD_ID] = 0.0
        # Finished slots stay in the beam, frozen (they can only be carried on by PAD at no cost) until K better
        # proposals push them out; they are already recorded as candidates, so losing the slot loses nothing.
        logp = torch.where(finished.unsqueeze(-1), frozen_row, logp)
        top, idx = (scores.unsqueeze(-1) + logp).view(b, k * v).topk(k, dim=1)
        parent, tok = idx // v, idx % v
        parent_done = finished.gather(1, parent)
        tok = torch.where(parent_done, torch.full_like(tok, PAD_ID), tok)  # dead (-inf) frozen slots too
        hyps = hyps.gather(1, parent.unsqueeze(-1).expand(-1, -1, max_len))
        hyps[:, :, t] = tok
        newly = ~parent_done & (tok == EOS_ID)
        finished = parent_done | newly
        scores = top

        last = t + 1 == max_len
        candidate = newly | (~finished & last)  # at max_len the live hypotheses are candidates too
        norm = torch.where(candidate, scores / lp(t + 1), torch.full_like(scores, neg_inf))
        cand_score, cand_k = norm.max(dim=1)
        better = cand_score > best_score
        best_score = torch.where(better, cand_score, best_score)
        best_tokens = torch.where(better.unsqueeze(1), hyps[rows, cand_k], best_tokens)
        best_len = torch.where(better, torch.full_like(best_len, t + 1), best_len)
        if last:
            break

        live = ~finished & (scores > neg_inf)
        bound = torch.where(live, scores / max(lp(t + 2), lp(max_len)), torch.full_like(scores, neg_inf))
        if bool((best_score >= bound.amax(dim=1)).all()):
            break

        flat = (rows.unsqueeze(1) * k + parent).view(-1)
        state, h_tilde, coverage = _map_tensors(
            partial(torch.index_select, dim=0, index=flat), (state, h_tilde, coverage)
        )
        tokens = tok.view(-1)

    width = int(best_len.max())
    return BeamResult(best_tokens[:, :width], best_len, best_score)


def sequence_log_prob(model: Seq2Seq, src: Sources, src_lengths: Sources, tokens: Tensor, lengths: Tensor) -> Tensor:
    """The model's ``sum_{t < lengths[b]} log p(tokens[b, t] | tokens[b, :t], src[b])`` [B] (float32), teacher-forced
    from ``BOS_ID`` through ``model(src, src_lengths, [BOS, tokens[:, :-1]])``; tokens past ``lengths[b]`` (at most
    ``tokens.shape[1]``) are ignored. Uses the model's current mode (call ``.eval()`` for deterministic scores) and
    keeps gradients when they are enabled."""
    b, steps = tokens.shape
    bos = torch.full((b, 1), BOS_ID, dtype=tokens.dtype, device=tokens.device)
    tgt_in = torch.cat([bos, tokens[:, :-1]], dim=1)
    logp = F.log_softmax(model(src, src_lengths, tgt_in).logits.float(), dim=-1)
    picked = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    valid = torch.arange(steps, device=tokens.device).unsqueeze(0) < torch.as_tensor(lengths).to(tokens.device)[:, None]
    return torch.where(valid, picked, torch.zeros_like(picked)).sum(dim=1)


# -- decoding whole data sets ---------------------------------------------------------------------------------


def ids_before_eos(tokens: Tensor, lengths: Tensor) -> list[list[int]]:
    """Each row's ids before its ``<eos>`` (the specials ``<pad>``/``<bos>``/``<eos>`` dropped)."""
    out = []
    for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True):
        ids = row[:n]
        if ids and ids[-1] == EOS_ID:
            ids = ids[:-1]
        out.append([i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])
    return out


def decode_batch(model: Seq2Seq, batch: PairBatch, cfg: DecodeConfig, beam: bool = True) -> tuple[Tensor, Tensor]:
    """Greedy (``beam_size == 1`` or ``beam=False``) or beam-search output tokens and lengths of a batch."""
    max_len = cfg.max_len(batch.src_lengths[0])
    if cfg.beam_size > 1 and beam:
        res = beam_search(model, batch.src, batch.src_lengths, cfg.beam_size, max_len, cfg.length_penalty)
        return res.tokens, res.lengths
    return model.greedy_decode(batch.src, batch.src_lengths, max_len)


def decode_all(model: Seq2Seq, data: EncodedPairs, cfg: DecodeConfig, batch_size: int, device: torch.device,
               beam: bool = True) -> list[list[int]]:
    """Output ids (before ``<eos>``) for every pair of ``data``, in order."""
    out: list[list[int]] = []
    for idx in torch.arange(len(data)).split(batch_size):
        tok, ln = decode_batch(model, data.take(idx, device), cfg, beam)
        out += ids_before_eos(tok.cpu(), ln.cpu())
    return out


def reference_ids(data: EncodedPairs) -> list[list[int]]:
    assert data.tgt is not None and data.tgt_lengths is not None
    return ids_before_eos(data.tgt, data.tgt_lengths)
