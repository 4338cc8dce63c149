"""Sequence-level training objectives for seq2seq, on top of token cross-entropy (seed 003, "Sequence-Level Training").

All three sample output sequences from the model itself and score them with a sequence reward ``R(y, y*)`` in
[0, 1] (:data:`longshort.evaluate.seq_metrics.REWARDS`: ``exact`` match, ``edit`` = 1 - normalised edit distance,
sentence ``bleu``), computed on target ids before ``<eos>``. ``log p(y|x) = sum_t log p(y_t | y_<t, x)`` (the
``<eos>`` included) comes from one teacher-forced pass over the sampled tokens, so it carries gradients.

- ``reinforce`` (Williams 1992): ``L = -mean_{x, y~p} (R(y) - b) log p(y|x)`` with a moving-average baseline
  ``b <- d b + (1 - d) mean R`` (decay ``d``; the baseline used is the one from before this batch, and it starts at
  the first batch's mean reward).
- ``self_critical`` (Rennie et al. 2017): the same with ``b(x) = R(greedy(x))``, the reward of the model's own
  greedy decode of that source, so only samples better than what the model would output at test time are
  reinforced.
- ``mrt``, minimum risk training (Shen et al. 2016): for each source a candidate set ``S(x)`` of distinct samples,
  ``Q(y|x) = p(y|x)^alpha / sum_{y' in S(x)} p(y'|x)^alpha`` (a softmax of ``alpha log p``), and
  ``L = mean_x sum_{y in S(x)} Q(y|x) (1 - R(y, y*))``: the expected risk under the sharpened distribution.
  Duplicate samples are dropped from ``S(x)`` (their ``Q`` would count twice).

Sampling and scoring run with dropout off (the module in eval mode for these passes; its mode is restored), so
the sampled sequences come from the same distribution whose log-probabilities are differentiated. Sampling draws
on the CPU from an explicit ``torch.Generator``, so a run's samples are a function of (seed, epoch, batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from longshort.data.pairs import BOS_ID, PAD_ID
from longshort.evaluate.seq_metrics import batch_rewards
from longshort.nn.decoding import ids_before_eos as ids_before_eos
from longshort.training.config import ObjectiveConfig as ObjectiveConfig
from longshort.training.config import ObjectiveKind as ObjectiveKind


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _repeat(x: Tensor | Sequence[Tensor], k: int) -> Tensor | list[Tensor]:
    if isinstance(x, Tensor):
        return x.repeat_interleave(k, dim=0)
    return [t.repeat_interleave(k, dim=0) for t in x]


@torch.no_grad()
def sample_sequences(
    model: nn.Module, src: Tensor | Sequence[Tensor], src_lengths: Tensor | Sequence[Tensor], max_len: int,
    generator: torch.Generator, temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Ancestral sampling from ``<bos>``: ``(tokens [B, L], lengths [B])`` in :meth:`Seq2Seq.greedy_decode`'s
    convention (length counts ``<eos>``; ``PAD_ID`` after; ``max_len`` when no ``<eos>``). Eval mode, no grad."""
    def draw(logits: Tensor) -> Tensor:
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return model.decode(src, src_lengths, max_len, draw)


def sequence_log_probs(
    model: nn.Module, src: Tensor | Sequence[Tensor], src_lengths: Tensor | Sequence[Tensor], tokens: Tensor,
    lengths: Tensor,
) -> Tensor:
    """``log p(tokens[b, :lengths[b]] | src_b)`` [B] by one teacher-forced pass (with gradients when enabled)."""
    steps = torch.arange(tokens.shape[1], device=tokens.device)
    valid = steps[None, :] < lengths[:, None]
    tgt_in = torch.cat([torch.full_like(tokens[:, :1], BOS_ID), tokens[:, :-1]], 1).masked_fill(~valid, PAD_ID)
    logits = model(src, src_lengths, tgt_in).logits.float()
    logp = logits.log_softmax(-1).gather(-1, tokens.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logp * valid).sum(1)


def reinforce_loss(logp: Tensor, rewards: Tensor, baseline: Tensor | float) -> Tensor:
    """``-mean((R - b) * log p)``; ``baseline`` a scalar or one value per sample."""
    return -((rewards - baseline) * logp).mean()


def mrt_loss(logp: Tensor, risk: Tensor, alpha: float, keep: Tensor | None = None) -> Tensor:
    """``mean_x sum_k Q_k risk_k`` with ``Q = softmax(alpha * logp)`` over each row's kept candidates.

    ``logp``, ``risk``, ``keep`` are [B, K]; ``keep`` (bool) drops candidates (duplicates) from the softmax."""
    scores = alpha * logp
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    q = torch.softmax(scores, dim=1)
    return (q * risk).sum(1).mean()


def distinct(samples: list[list[int]], k: int) -> Tensor:
    """[B, K] bool: True at the first occurrence of each sample among its source's ``k`` samples."""
    keep = []
    for i in range(0, len(samples), k):
        seen: set[tuple[int, ...]] = set()
        for s in samples[i:i + k]:
            key = tuple(s)
            keep.append(key not in seen)
            seen.add(key)
    return torch.tensor(keep, dtype=torch.bool).view(-1, k)


class ObjectiveStats(NamedTuple):
    loss: Tensor
    reward: float  # mean reward of the sampled sequences
    baseline: float  # the baseline used (reinforce: the moving average; self-critical: mean greedy reward)


class SequenceObjective:
    """The configured objective, with its state (the REINFORCE moving-average baseline, checkpointed)."""

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        self.baseline: float | None = None

    def active(self, epoch: int) -> bool:
        return self.cfg.kind != "none" and epoch >= self.cfg.start_epoch

    def __call__(
        self, model: nn.Module, src: list[Tensor], src_lengths: list[Tensor], refs: list[list[int]], max_len: int,
        generator: torch.Generator,
    ) -> ObjectiveStats:
        c, k = self.cfg, self.cfg.samples
        rs, rl = _repeat(src, k), _repeat(src_lengths, k)
        tokens, lengths = sample_sequences(model, rs, rl, max_len, generator, c.temperature)
        hyps = ids_before_eos(tokens, lengths)
        rep_refs = [r for r in refs for _ in range(k)]
        device = tokens.device
        rewards = torch.as_tensor(batch_rewards(c.reward, hyps, rep_refs), dtype=torch.float32, device=device)
        with _eval_mode(model):
            logp = sequence_log_probs(model, rs, rl, tokens, lengths)
        if c.kind == "reinforce":
            mean_r = float(rewards.mean())
            base = mean_r if self.baseline is None else self.baseline
            self.baseline = c.baseline_decay * base + (1 - c.baseline_decay) * mean_r
            return ObjectiveStats(reinforce_loss(logp, rewards, base), mean_r, base)
        if c.kind == "self_critical":
            with _eval_mode(model):
                g_tok, g_len = model.greedy_decode(src, src_lengths, max_len)
            greedy = torch.as_tensor(batch_rewards(c.reward, ids_before_eos(g_tok, g_len), refs),
                                     dtype=torch.float32, device=device)
            base_per = greedy.repeat_interleave(k)
            return ObjectiveStats(reinforce_loss(logp, rewards, base_per), float(rewards.mean()),
                                  float(greedy.mean()))
        if c.kind == "mrt":
            keep = distinct(hyps, k).to(device)
            loss = mrt_loss(logp.view(-1, k), (1 - rewards).view(-1, k), c.alpha, keep)
            return ObjectiveStats(loss, float(rewards.mean()), float("nan"))
        raise ValueError(f"objective kind {c.kind!r} has no loss")

    def state_dict(self) -> dict[str, float | None]:
        return {"baseline": self.baseline}

    def load_state_dict(self, s: dict[str, float | None]) -> None:
        b = s.get("baseline")
        self.baseline = None if b is None else float(b)


def expected_risk(
    model: nn.Module, src: list[Tensor], src_lengths: list[Tensor], refs: list[list[int]], max_len: int,
    reward: str, samples: int, alpha: float, seed: int = 0,
) -> float:
    """The MRT objective's value (no gradient) with a fixed sampling seed: for tests and reports."""
    obj = SequenceObjective(ObjectiveConfig(kind="mrt", reward=reward, samples=samples, alpha=alpha))  # type: ignore[arg-type]
    with torch.no_grad():
        return float(obj(model, src, src_lengths, refs, max_len, torch.Generator().manual_seed(seed)).loss)


def mean_greedy_reward(model: nn.Module, src: list[Tensor], src_lengths: list[Tensor], refs: list[list[int]],
                       max_len: int, reward: str) -> float:
    """Mean reward of the model's greedy decodes against ``refs``."""
    tok, ln = model.greedy_decode(src, src_lengths, max_len)
    return float(np.mean(batch_rewards(reward, ids_before_eos(tok, ln), refs)))
