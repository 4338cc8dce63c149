"""Attention of a decoder step over encoder outputs, every variant behind one interface.

One decoder step calls ``Attention(query [B, Hq], keys [B, S, Hk], mask [B, S], step, coverage)`` and gets an
:class:`AttentionOutput`: the context ``c = sum_s a_s k_s`` [B, Hk], the weights ``a`` [B, S], the updated coverage
and, for local attention, the window centre ``p_t``. The variant is :attr:`AttentionConfig.kind`, looked up by name
in :data:`SCORES` (content scores) and :data:`POSITIONS` (window centres of local attention).

Content scores ``e_s`` (q the query, k_s a key, c_s the coverage):

- ``bahdanau`` (additive): ``e_s = v^T tanh(W_q q + W_k k_s + w_c c_s)``
- ``concat`` (Luong): ``e_s = v^T tanh(W [q; k_s] + w_c c_s)``
- ``dot`` (Luong): ``e_s = q . k_s`` (needs ``query_dim == key_dim``), ``- w_cov c_s`` with coverage
- ``general`` (Luong): ``e_s = q^T W k_s``, ``- w_cov c_s`` with coverage
- ``local_monotonic`` / ``local_predictive`` (Luong 2015): the ``general`` score inside a window, see below
- ``none``: ``e_s = 0``, so the weights are uniform over the valid positions and the context is the masked mean of
  the keys (the coverage, if on, is accumulated but does not enter the score)

Coverage (Tu et al. 2016, See et al. 2017): ``c_t = sum_{t' < t} a_{t'}``, passed in by the caller (``None`` at the
first step means zeros) and returned as ``c_t + a_t``. In the additive scores it enters inside the tanh through the
learned vector ``w_c``; in the multiplicative ones as ``- w_cov c_s`` with a learned scalar ``w_cov`` (initialised 0,
so ``w_cov > 0`` steers attention away from positions already attended). :func:`coverage_loss` is See et al.'s
penalty ``sum_s min(a_s, c_s)``.

Weights: ``a = softmax(e)`` over the valid positions (``mask`` True), computed in float32 whatever the input dtype;
padded positions get exactly 0, and a row with no valid position gets all-zero weights and a zero context (no NaN).

Local attention, with ``D = window``, ``sigma = D / 2`` unless set and ``L_b`` the valid length of sequence b:

- monotonic: ``p_t = min(step, L_b - 1)``
- predictive: ``p_t = (L_b - 1) * sigmoid(v_p^T tanh(W_p q))`` (Luong scale by the source length S; scaling by
  ``L_b - 1`` keeps the centre on a valid position of each sequence)
- ``a_s ∝ softmax(e)_s * exp(-(s - p_t)^2 / (2 sigma^2))`` for ``|s - p_t| <= D``, exactly 0 outside the window.
  Unlike Luong, the weights are renormalised over the window, so they sum to 1 like every other kind (computed as
  one softmax of ``e_s - (s - p_t)^2 / (2 sigma^2)`` over the valid positions inside the window).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from longshort.nn.config import AttentionConfig as AttentionConfig
from longshort.nn.config import Kind as Kind

__all__ = [
    "POSITIONS",
    "SCORES",
    "Attention",
    "AttentionConfig",
    "AttentionOutput",
    "coverage_loss",
    "masked_softmax",
]


class AttentionOutput(NamedTuple):
    """One attention step: ``context`` [B, Hk], ``weights`` [B, S] (float32), ``coverage`` [B, S] (``c_t + a_t``,
    None without coverage) and ``position`` [B] (float32 window centre ``p_t``, None unless local)."""

    context: Tensor
    weights: Tensor
    coverage: Tensor | None
    position: Tensor | None


# ------------------------------------------------------------------------------------------------------ scores


class _Score(nn.Module):
    """``forward(query [B, Hq], keys [B, S, Hk], coverage [B, S] | None, prepared) -> scores [B, S]``.

    ``prepare(keys)`` is the part of the score that depends on the keys only (a projection ``[B, S, A]``, or None):
    a decoder computes it once per source and passes it to every step instead of re-projecting the keys."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        super().__init__()
        self.query_dim, self.key_dim, self.attn_dim, self.coverage = query_dim, key_dim, attn_dim, coverage

    def prepare(self, keys: Tensor) -> Tensor | None:
        return None


class NoScore(_Score):
    """``e_s = 0``: uniform weights over the valid positions."""

    def forward(self, query: Tensor, keys: Tensor, coverage: Tensor | None, prepared: Tensor | None = None) -> Tensor:
        return keys.new_zeros(keys.shape[:2])


class _Multiplicative(_Score):
    """Base of the multiplicative scores: the coverage enters as ``- w_cov c_s`` (``w_cov`` a scalar, init 0)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        super().__init__(query_dim, key_dim, attn_dim, coverage, kind)
        if coverage:
            self.cov_weight = nn.Parameter(torch.zeros(()))

    def content(self, query: Tensor, keys: Tensor, prepared: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, coverage: Tensor | None, prepared: Tensor | None = None) -> Tensor:
        e = self.content(query, keys, prepared)
        if self.coverage and coverage is not None:
            e = e - self.cov_weight * coverage.to(e.dtype)
        return e


class DotScore(_Multiplicative):
    """Luong dot: ``e_s = q . k_s``; needs ``query_dim == key_dim``."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        if query_dim != key_dim:
            raise ValueError(
                f"attention.kind={kind!r} needs query_dim == key_dim, got {query_dim} and {key_dim}; "
                "use attention.kind='general' (q^T W k) for different widths"
            )
        super().__init__(query_dim, key_dim, attn_dim, coverage, kind)

    def content(self, query: Tensor, keys: Tensor, prepared: Tensor | None) -> Tensor:
        return torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)


class GeneralScore(_Multiplicative):
    """Luong general: ``e_s = q^T W k_s`` with ``W`` [Hq, Hk] (``self.W.weight``)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        super().__init__(query_dim, key_dim, attn_dim, coverage, kind)
        self.W = nn.Linear(key_dim, query_dim, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.W(keys)

    def content(self, query: Tensor, keys: Tensor, prepared: Tensor | None) -> Tensor:
        wk = self.W(keys) if prepared is None else prepared
        return torch.bmm(wk, query.unsqueeze(-1)).squeeze(-1)


class _Additive(_Score):
    """Base of the additive scores: ``e_s = v^T tanh(h_s + w_c c_s)``, ``h_s`` the subclass's pre-activation [B,S,A]."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        super().__init__(query_dim, key_dim, attn_dim, coverage, kind)
        self.v = nn.Linear(attn_dim, 1, bias=False)
        if coverage:
            self.w_c = nn.Linear(1, attn_dim, bias=False)

    def pre(self, query: Tensor, keys: Tensor, prepared: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, coverage: Tensor | None, prepared: Tensor | None = None) -> Tensor:
        h = self.pre(query, keys, prepared)
        if self.coverage and coverage is not None:
            h = h + self.w_c(coverage.to(h.dtype).unsqueeze(-1))
        return self.v(torch.tanh(h)).squeeze(-1)


class BahdanauScore(_Additive):
    """Bahdanau: ``e_s = v^T tanh(W_q q + W_k k_s (+ w_c c_s))`` (``W_k`` carries the bias)."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        super().__init__(query_dim, key_dim, attn_dim, coverage, kind)
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim)

    def prepare(self, keys: Tensor) -> Tensor:
        return self.W_k(keys)

    def pre(self, query: Tensor, keys: Tensor, prepared: Tensor | None) -> Tensor:
        return self.W_q(query).unsqueeze(1) + (self.W_k(keys) if prepared is None else prepared)


class ConcatScore(_Additive):
    """Luong concat: ``e_s = v^T tanh(W [q; k_s] (+ w_c c_s))``."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool, kind: str) -> None:
        super().__init__(query_dim, key_dim, attn_dim, coverage, kind)
        self.W = nn.Linear(query_dim + key_dim, attn_dim)

    def prepare(self, keys: Tensor) -> Tensor:
        # W [q; k] + b = W[:, :Hq] q + (W[:, Hq:] k + b): the key half once per source
        return nn.functional.linear(keys, self.W.weight[:, self.query_dim:], self.W.bias)

    def pre(self, query: Tensor, keys: Tensor, prepared: Tensor | None) -> Tensor:
        wk = self.prepare(keys) if prepared is None else prepared
        return nn.functional.linear(query, self.W.weight[:, : self.query_dim]).unsqueeze(1) + wk


SCORES: dict[str, type[_Score]] = {
    "none": NoScore,
    "bahdanau": BahdanauScore,
    "dot": DotScore,
    "general": GeneralScore,
    "concat": ConcatScore,
    "local_monotonic": GeneralScore,
    "local_predictive": GeneralScore,
}
"""Content score of each :attr:`AttentionConfig.kind` (local attention scores with Luong's ``general``)."""


# ---------------------------------------------------------------------------------------- local window centres


class MonotonicPosition(nn.Module):
    """``p_t = min(step, L_b - 1)`` [B] float32."""

    def __init__(self, query_dim: int, attn_dim: int) -> None:
        super().__init__()

    def forward(self, query: Tensor, lengths: Tensor, step: int) -> Tensor:
        last = (lengths - 1).clamp_min(0).float()
        return torch.full_like(last, float(step)).clamp_min(0).minimum(last)


class PredictivePosition(nn.Module):
    """``p_t = (L_b - 1) * sigmoid(v_p^T tanh(W_p q))`` [B] float32."""

    def __init__(self, query_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.W_p = nn.Linear(query_dim, attn_dim, bias=False)
        self.v_p = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, query: Tensor, lengths: Tensor, step: int) -> Tensor:
        gate = torch.sigmoid(self.v_p(torch.tanh(self.W_p(query))).squeeze(-1).float())
        return (lengths - 1).clamp_min(0).float() * gate


POSITIONS: dict[str, type[nn.Module]] = {"local_monotonic": MonotonicPosition, "local_predictive": PredictivePosition}
"""Window centre ``p_t`` of the local kinds; kinds not listed attend over the whole source."""


# -------------------------------------------------------------------------------------------------- functions


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """``softmax(scores)`` over the positions where ``mask`` is True, in float32; exactly 0 elsewhere, and an
    all-zero row where no position is valid (instead of NaN)."""
    s = scores.float().masked_fill(~mask, float("-inf"))
    top = s.amax(dim=-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(s - top)  # exactly 0 where masked
    return e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


def coverage_loss(weights: Tensor, coverage_before: Tensor) -> Tensor:
    """See et al. (2017): ``mean_b sum_s min(a_{b,s}, c_{b,s})`` with ``c`` the coverage before this step."""
    return torch.minimum(weights.float(), coverage_before.float()).sum(dim=-1).mean()


# --------------------------------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """Attention of one decoder step over the encoder outputs; see the module docstring for the formulas.

    ``attn_dim`` is the width of the additive scores' hidden layer and of the predictive position's ``W_p``
    (default ``key_dim``). The score is ``self.score`` (from :data:`SCORES`), the window centre of local attention
    ``self.position`` (from :data:`POSITIONS`, else None).
    """

    def __init__(self, query_dim: int, key_dim: int, cfg: AttentionConfig | None = None, attn_dim: int | None = None):
        super().__init__()
        self.cfg = (cfg or AttentionConfig()).model_copy()
        self.query_dim, self.key_dim = query_dim, key_dim
        self.attn_dim = key_dim if attn_dim is None else attn_dim
        kind = self.cfg.kind
        self.score = SCORES[kind](query_dim, key_dim, self.attn_dim, self.cfg.coverage, kind)
        self.position = POSITIONS[kind](query_dim, self.attn_dim) if kind in POSITIONS else None

    def prepare(self, keys: Tensor) -> Tensor | None:
        """The keys' projection for this attention's score (None when it has none), to pass as ``prepared`` to every
        decoder step over the same ``keys``: identical results, one projection per source instead of per step."""
        return self.score.prepare(keys)

    def extra_repr(self) -> str:
        return f"{self.query_dim}, {self.key_dim}, attn_dim={self.attn_dim}, cfg={self.cfg.model_dump()}"

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        step: int = 0,
        coverage: Tensor | None = None,
        prepared: Tensor | None = None,
    ) -> AttentionOutput:
        """One step: ``query`` [B, Hq], ``keys`` [B, S, Hk], ``mask`` [B, S] bool (True = valid; None = all valid),
        ``step`` the decoder step (monotonic local attention), ``coverage`` [B, S] the sum of past weights (None =
        zeros; ignored without ``cfg.coverage``)."""
        b, s, _ = keys.shape
        if query.shape != (b, self.query_dim) or keys.shape[-1] != self.key_dim:
            raise ValueError(
                f"expected query [B, {self.query_dim}] and keys [B, S, {self.key_dim}], "
                f"got {tuple(query.shape)} and {tuple(keys.shape)}"
            )
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=keys.device)
        mask = mask.bool()
        if self.cfg.coverage and coverage is None:
            coverage = keys.new_zeros(b, s, dtype=torch.float32)
        cov_in = coverage if self.cfg.coverage else None

        logits = self.score(query, keys, cov_in, prepared).float()
        position = None
        if self.position is not None:
            position = self.position(query, mask.sum(dim=-1), step)
            dist = torch.arange(s, device=keys.device, dtype=torch.float32).unsqueeze(0) - position.unsqueeze(1)
            logits = logits - dist.square() / (2 * self.cfg.sigma_value**2)  # log of the Gaussian
            mask = mask & (dist.abs() <= self.cfg.window)
        weights = masked_softmax(logits, mask)
        context = torch.bmm(weights.unsqueeze(1).to(keys.dtype), keys).squeeze(1)
        new_cov = cov_in.float() + weights if cov_in is not None else None
        return AttentionOutput(context, weights, new_cov, position)
