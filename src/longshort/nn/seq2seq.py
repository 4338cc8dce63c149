"""Attentional encoder-decoder (Luong et al. 2015) with input feeding, coverage and scheduled sampling.

Encoder: embedding -> dropout -> bidirectional :class:`~longshort.nn.lstm.LSTM` (``hidden_dim // 2`` per direction,
``enc_layers`` layers, :class:`CellConfig` options, variable lengths via ``lengths=``) -> outputs ``[B, S, H]``
(zero at padded steps) with ``H = hidden_dim``.

Bridge (``cfg.bridge``): the top encoder layer's final states of both directions, concatenated (``[B, H]``), map to
the decoder's initial ``(h, c)`` of every layer: ``h_0 = tanh(W_h [h_fwd; h_bwd])``, ``c_0 = tanh(W_c0 [c_fwd;
c_bwd])`` (``linear``), or zeros (``zero``). Hierarchical encoding (``cfg.hierarchical``, seed 003's
``c = combine(h^(1)_T, ..., h^(L)_T)``): the bridge reads the final states of *every* encoder layer,
``[h^(1)_fwd; h^(1)_bwd; ...; h^(L)_fwd; h^(L)_bwd]`` (``[B, L*H]``), so the decoder starts from the low-level
(closer to the tokens) as well as the high-level summary.

Multi-modal encoding (several source fields, ``Seq2Seq([vocab_1, ..., vocab_M], tgt_vocab)``): field ``m`` has its
own embedding and BiLSTM encoder. Fusion: the bridge reads the concatenation of every field's final states
(``[B, M*H]``, or ``[B, M*L*H]`` hierarchical) -- a learned linear fusion; attention reads the fields' outputs
concatenated along the source axis (``[B, S_1 + ... + S_M, H]``, each field's padding masked), so each decoder step
weighs the positions of all fields in one softmax. ``src`` and ``src_lengths`` are then lists (one tensor per
field); a single tensor means one field.

Decoder, one step ``t`` (a stack of ``torch.nn.LSTMCell``, width ``H``; ``CellConfig`` applies to the encoder only):

- input ``x_t = [emb(y_t); h~_{t-1}]`` with input feeding (``cfg.attention.input_feeding``, ``h~_0 = 0``), else
  ``emb(y_t)``; dropout on the embedding and between decoder layers
- attention of the top state ``h_t`` over the encoder outputs (source padding masked; with
  ``cfg.attention_query=previous`` of ``h_(t-1)`` before the step, Bahdanau's order, its context also in the
  step's input), coverage carried across
  steps when ``cfg.attention.coverage``
- attentional vector ``h~_t = tanh(W_c [h_t; context_t])``, logits ``= W_o dropout(h~_t)``

Scheduled sampling (Bengio et al. 2015): at each step ``t >= 1`` each sequence independently feeds the model's own
previous argmax prediction (detached) instead of the gold ``tgt_in[:, t]`` with probability ``sampling_prob``; the
draws are uniform numbers from ``generator`` on the CPU (the global CPU generator when None), moved to the
model's device. With ``sampling_prob == 0`` nothing is drawn and the forward is exactly teacher forcing. The
schedules below return the *teacher-forcing* probability ``eps``; pass ``sampling_prob = 1 - eps``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from longshort.data.pairs import BOS_ID, EOS_ID, PAD_ID, Vocab
from longshort.nn.attention import Attention
from longshort.nn.config import SCHEDULES as SCHEDULES
from longshort.nn.config import Seq2SeqConfig as Seq2SeqConfig
from longshort.nn.config import exponential as exponential
from longshort.nn.config import inverse_sigmoid as inverse_sigmoid
from longshort.nn.config import linear_with_floor as linear_with_floor
from longshort.nn.lstm import LSTM

__all__ = [
    "SCHEDULES",
    "Seq2Seq",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
    "exponential",
    "inverse_sigmoid",
    "linear_with_floor",
]


class Seq2SeqOutput(NamedTuple):
    """``logits`` [B, T, V], ``attention`` [B, T, S] (float32), ``coverage_loss`` scalar (0 without coverage),
    ``fed_predictions`` [B, T] bool (True where step t was fed the model's own previous prediction)."""

    logits: Tensor
    attention: Tensor
    coverage_loss: Tensor
    fed_predictions: Tensor


_State = tuple[list[Tensor], list[Tensor]]


def _vocab_size(v: Vocab | int) -> int:
    return v if isinstance(v, int) else len(v)


Sources = Tensor | Sequence[Tensor]


def _as_list(x: Sources) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


class Seq2Seq(nn.Module):
    """``Seq2Seq(src_vocab, tgt_vocab, cfg)``; the vocabularies are :class:`Vocab`s or their sizes.

    See the module docstring for the architecture. Target ids follow :mod:`longshort.data.pairs` (``PAD_ID`` 0,
    ``BOS_ID`` 2, ``EOS_ID`` 3); the caller's loss should ignore ``PAD_ID`` targets.
    """

    def __init__(
        self, src_vocab: Vocab | int | Sequence[Vocab | int], tgt_vocab: Vocab | int, cfg: Seq2SeqConfig | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg = (cfg or Seq2SeqConfig()).model_copy(deep=True)
        fields = list(src_vocab) if isinstance(src_vocab, (list, tuple)) else [src_vocab]
        if not fields:
            raise ValueError("Seq2Seq needs at least one source vocabulary")
        self.src_vocab_sizes = [_vocab_size(v) for v in fields]
        self.src_vocab_size, self.tgt_vocab_size = self.src_vocab_sizes[0], _vocab_size(tgt_vocab)
        h = cfg.hidden_dim
        self.src_embs = nn.ModuleList(nn.Embedding(n, cfg.emb_dim, padding_idx=PAD_ID) for n in self.src_vocab_sizes)
        self.tgt_emb = nn.Embedding(self.tgt_vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoders = nn.ModuleList(
            LSTM(
                cfg.emb_dim,
                h // 2,
                num_layers=cfg.enc_layers,
                batch_first=True,
                dropout=cfg.dropout if cfg.enc_layers > 1 else 0.0,
                bidirectional=True,
                cell=cfg.cell,
            )
            for _ in fields
        )
        if cfg.bridge == "linear":
            width = len(fields) * h * (cfg.enc_layers if cfg.hierarchical else 1)
            self.bridge_h = nn.Linear(width, cfg.dec_layers * h)
            self.bridge_c = nn.Linear(width, cfg.dec_layers * h)
        self.input_feeding = cfg.attention.input_feeding
        self.query_previous = cfg.attention_query == "previous"  # Bahdanau's order: attend from h_(t-1)
        in0 = cfg.emb_dim + (h if self.input_feeding else 0) + (h if self.query_previous else 0)
        self.cells = nn.ModuleList([nn.LSTMCell(in0 if k == 0 else h, h) for k in range(cfg.dec_layers)])
        self.attention = Attention(h, h, cfg.attention)
        self.W_c = nn.Linear(2 * h, h, bias=False)
        self.out = nn.Linear(h, self.tgt_vocab_size)

    # ------------------------------------------------------------------------------------------------- pieces

    def encode(self, src: Sources, src_lengths: Sources) -> tuple[Tensor, Tensor, _State]:
        """``(outputs [B, S, H], mask [B, S] bool, initial decoder state ([h]*dec_layers, [c]*dec_layers))``; with
        several source fields ``S`` is the sum of their lengths (outputs concatenated along the source axis)."""
        srcs, lens = _as_list(src), _as_list(src_lengths)
        if len(srcs) != len(self.encoders) or len(lens) != len(srcs):
            raise ValueError(f"this model has {len(self.encoders)} source field(s), got {len(srcs)} source "
                             f"tensor(s) and {len(lens)} length tensor(s)")
        outs, masks, finals_h, finals_c = [], [], [], []
        for x, ln, emb, encoder in zip(srcs, lens, self.src_embs, self.encoders, strict=True):
            s = x.shape[1]
            lengths = torch.as_tensor(ln).to(torch.int64)
            enc, (h_n, c_n) = encoder(self.drop(emb(x)), lengths=lengths.cpu())
            if enc.shape[1] < s:  # keep S whatever the encoder trimmed
                enc = nn.functional.pad(enc, (0, 0, 0, s - enc.shape[1]))
            outs.append(enc)
            masks.append(torch.arange(s, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1))
            # h_n: [layers * 2, B, H/2], layer-major (layer k's forward at 2k, backward at 2k + 1).
            levels = range(self.cfg.enc_layers) if self.cfg.hierarchical else [self.cfg.enc_layers - 1]
            for k in levels:
                finals_h += [h_n[2 * k], h_n[2 * k + 1]]
                finals_c += [c_n[2 * k], c_n[2 * k + 1]]
        enc, mask = torch.cat(outs, 1), torch.cat(masks, 1)
        b, layers, h = enc.shape[0], self.cfg.dec_layers, self.cfg.hidden_dim
        if self.cfg.bridge == "linear":
            hs = list(torch.tanh(self.bridge_h(torch.cat(finals_h, -1))).view(b, layers, h).unbind(1))
            cs = list(torch.tanh(self.bridge_c(torch.cat(finals_c, -1))).view(b, layers, h).unbind(1))
        else:
            hs = [enc.new_zeros(b, h) for _ in range(layers)]
            cs = [enc.new_zeros(b, h) for _ in range(layers)]
        return enc, mask, (hs, cs)

    def step(
        self,
        tokens: Tensor,
        state: _State,
        h_tilde: Tensor,
        enc: Tensor,
        mask: Tensor,
        t: int,
        coverage: Tensor | None,
        prepared: Tensor | None = None,
    ) -> tuple[Tensor, _State, Tensor, Tensor, Tensor | None]:
        """One decoder step: ``tokens`` [B] -> ``(logits [B, V], state, h~ [B, H], weights [B, S], coverage)``.

        ``prepared``: ``self.attention.prepare(enc)``, computed once per source (else the keys are projected here)."""
        x = self.drop(self.tgt_emb(tokens))
        if self.input_feeding:
            x = torch.cat([x, h_tilde], dim=-1)
        hs, cs = state
        att = None
        if self.query_previous:  # score with the state before this step; its context enters the step's input
            att = self.attention(hs[-1], enc, mask, step=t, coverage=coverage, prepared=prepared)
            x = torch.cat([x, att.context.to(x.dtype)], dim=-1)
        new_h, new_c = [], []
        for k, cell in enumerate(self.cells):
            hk, ck = cell(x if k == 0 else self.drop(new_h[-1]), (hs[k], cs[k]))
            new_h.append(hk)
            new_c.append(ck)
        if att is None:  # Luong's order: score with the state after it
            att = self.attention(new_h[-1], enc, mask, step=t, coverage=coverage, prepared=prepared)
        h_tilde = torch.tanh(self.W_c(torch.cat([new_h[-1], att.context.to(new_h[-1].dtype)], dim=-1)))
        logits = self.out(self.drop(h_tilde))
        return logits, (new_h, new_c), h_tilde, att.weights, att.coverage

    # ----------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        src: Sources,
        src_lengths: Sources,
        tgt_in: Tensor,
        sampling_prob: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Seq2SeqOutput:
        """Teacher forcing (``tgt_in`` [B, T] starts with ``BOS_ID``), with scheduled sampling when
        ``sampling_prob > 0`` (see the module docstring).

        ``coverage_loss``: See et al.'s ``sum_s min(a_{t,s}, c_{t,s})`` summed over the steps whose input is not
        ``PAD_ID`` and averaged over the batch (0 without coverage).
        """
        if not 0.0 <= sampling_prob <= 1.0:
            raise ValueError(f"sampling_prob must be in [0, 1], got {sampling_prob}")
        b, steps = tgt_in.shape
        enc, mask, state = self.encode(src, src_lengths)
        prepared = self.attention.prepare(enc)  # the keys' projection, once per source
        h_tilde = enc.new_zeros(b, self.cfg.hidden_dim)
        coverage: Tensor | None = None
        cov_loss = enc.new_zeros((), dtype=torch.float32)
        fed = torch.zeros(b, steps, dtype=torch.bool, device=tgt_in.device)
        logits_all, weights_all = [], []
        for t in range(steps):
            tokens = tgt_in[:, t]
            if t > 0 and sampling_prob > 0:
                draw = torch.rand(b, generator=generator).to(tgt_in.device) < sampling_prob
                fed[:, t] = draw
                tokens = torch.where(draw, logits_all[-1].argmax(-1).detach(), tokens)
            before = coverage
            logits, state, h_tilde, weights, coverage = self.step(
                tokens, state, h_tilde, enc, mask, t, coverage, prepared)
            if self.cfg.attention.coverage and before is not None:
                valid = (tgt_in[:, t] != PAD_ID).float()
                cov_loss = cov_loss + (torch.minimum(weights, before).sum(-1) * valid).sum() / b
            logits_all.append(logits)
            weights_all.append(weights)
        return Seq2SeqOutput(torch.stack(logits_all, 1), torch.stack(weights_all, 1), cov_loss, fed)

    @torch.no_grad()
    def greedy_decode(self, src: Sources, src_lengths: Sources, max_len: int) -> tuple[Tensor, Tensor]:
        """Batched greedy decoding from ``BOS_ID``; returns ``(tokens [B, L] long, lengths [B])`` with
        ``L <= max_len`` (decoding stops once every sequence has emitted ``EOS_ID``).

        A sequence's length counts its ``EOS_ID`` (the last token it emitted); one that never emits it has length
        ``max_len``. Positions past a sequence's length are ``PAD_ID``. Runs in eval mode (no dropout) whatever the
        module's mode, which it restores.
        """
        return self.decode(src, src_lengths, max_len, lambda logits: logits.argmax(-1))

    @torch.no_grad()
    def decode(self, src: Sources, src_lengths: Sources, max_len: int, pick: Callable[[Tensor], Tensor]
               ) -> tuple[Tensor, Tensor]:
        """Batched left-to-right decoding where ``pick(logits [B, V]) -> tokens [B]`` chooses each next token
        (argmax: :meth:`greedy_decode`; a draw: sampling). Same conventions and eval mode as :meth:`greedy_decode`."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        was_training = self.training
        self.eval()
        try:
            enc, mask, state = self.encode(src, src_lengths)
            prepared = self.attention.prepare(enc)  # the keys' projection, once per source
            b = enc.shape[0]
            h_tilde = enc.new_zeros(b, self.cfg.hidden_dim)
            coverage: Tensor | None = None
            tokens = torch.full((b,), BOS_ID, dtype=torch.long, device=enc.device)
            done = torch.zeros(b, dtype=torch.bool, device=enc.device)
            lengths = torch.full((b,), max_len, dtype=torch.long, device=enc.device)
            out = []
            for t in range(max_len):
                logits, state, h_tilde, _, coverage = self.step(
                    tokens, state, h_tilde, enc, mask, t, coverage, prepared)
                tokens = pick(logits).to(enc.device)
                out.append(torch.where(done, torch.full_like(tokens, PAD_ID), tokens))
                ended = ~done & (tokens == EOS_ID)
                lengths = torch.where(ended, torch.full_like(lengths, t + 1), lengths)
                done = done | ended
                if bool(done.all()):
                    break
            return torch.stack(out, 1), lengths
        finally:
            self.train(was_training)



