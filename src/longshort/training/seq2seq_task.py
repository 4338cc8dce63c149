"""The seq2seq task of the one :class:`~longshort.training.trainer.Trainer`, and the ``seq2seq:`` config section
(model, sampling, loss, objective, decoding).

Per epoch: length curriculum (which pairs, by target length) in a (seed, epoch) order. Per batch: teacher-forcing
probability from the scheduled-sampling schedule -> forward (each step of each sequence fed the gold previous
token with that probability, else the model's own previous prediction) -> token loss (cross-entropy or sequence
focal) + coverage loss -> mixed with the sequence-level objective when active. Validation: teacher-forced loss and
token accuracy; free-running loss on the same gold targets and the exposure-bias gap; greedy decoding's exact
match, token accuracy, edit-distance error rate and BLEU.

The trainer does the rest as for every task (optimizer, schedules, phases, clipping, gradient noise,
accumulation, DDP/FSDP2, monitor, callbacks, checkpoints, early stopping, the modules' ``on_epoch`` hooks). Every
random draw (scheduled sampling, sequence sampling) comes from a generator seeded by (seed, purpose, epoch,
batch), so a resumed run replays the same batches exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from longshort.data.pair_pipeline import EncodedPairs, PairBatch
from longshort.data.pairs import PAD_ID
from longshort.diagnostics.monitor import DiagnosticsConfig
from longshort.evaluate.seq_metrics import sequence_metrics
from longshort.nn.decoding import decode_all as decode_all
from longshort.nn.decoding import ids_before_eos
from longshort.nn.decoding import reference_ids as reference_ids
from longshort.nn.seq2seq import Seq2Seq
from longshort.training import curriculum as cur
from longshort.training.callbacks import Callback
from longshort.training.config import DecodeConfig as DecodeConfig
from longshort.training.config import SamplingConfig as SamplingConfig
from longshort.training.config import Seq2SeqSection as Seq2SeqSection
from longshort.training.config import TokenLossConfig as TokenLossConfig
from longshort.training.config import _Strict as _Strict
from longshort.training.distributed import DistContext, DistributedConfig
from longshort.training.losses import sequence_focal_loss
from longshort.training.sequence_level import SequenceObjective
from longshort.training.trainer import TrainConfig, Trainer

_PURPOSE = {"sampling": 11, "objective": 12}


def _rows(batch: PairBatch, rows: Tensor) -> PairBatch:
    return PairBatch([s[rows] for s in batch.src], [ln[rows] for ln in batch.src_lengths],
                     None if batch.tgt is None else batch.tgt[rows],
                     None if batch.tgt_lengths is None else batch.tgt_lengths[rows])


class Seq2SeqTask:
    """Token sequence -> token sequence with attention (see the module's docstring)."""

    default_metric = "val_exact_match"
    # (loss * tokens, correct tokens, tokens, pairs, sampling prob * pairs, reward * pairs, pairs with a reward):
    # the order checkpoints before the one loop kept them in
    sums = ("loss", "correct", "tokens", "n", "sampling", "reward", "reward_n")

    def __init__(self, cfg: TrainConfig, s2s: Seq2SeqSection, train: EncodedPairs, val: EncodedPairs | None) -> None:
        assert train.tgt is not None and train.tgt_lengths is not None
        self.cfg, self.s2s, self.train_data, self.val_data = cfg, s2s, train, val
        self.objective = SequenceObjective(s2s.objective)
        # the difficulty curriculum's per-pair scores (token perplexity's log), computed once when it needs them
        self.scores: Tensor | None = None
        self.tr: Trainer
        #: a plain model that decoding and evaluation use instead of the trainer's (after a distributed run: rank
        #: 0's final model, once the other ranks are gone)
        self.plain: Seq2Seq | None = None
        self._unsharded: Seq2Seq | None = None  # under FSDP2: a copy of the model made before it was sharded ...
        self._gathered_at = -1  # ... and the optimizer step whose full weights it holds

    def bind(self, trainer: Trainer) -> None:
        self.tr = trainer

    def _fsdp(self) -> bool:
        return self.tr.dist.enabled and self.tr.dist_cfg.strategy == "fsdp"

    @property
    def model(self) -> Seq2Seq:
        """The model that decoding, evaluation and the sequence-level objective call methods of (``encode``,
        ``step``, ``greedy_decode``): the model itself, never its data-parallel wrapper. FSDP2 runs only a
        sharded module's ``forward`` with its parameters gathered, so there it is a plain copy of the full weights
        (gathered by every rank together: every rank validates)."""
        m = self.tr.model
        if self.plain is not None:
            return self.plain
        if self._unsharded is not None:
            if self._gathered_at != self.tr.step:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

                full = get_model_state_dict(m, options=StateDictOptions(full_state_dict=True))
                self._unsharded.load_state_dict(full)
                self._unsharded.to(self.tr.device)
                self._gathered_at = self.tr.step
            return self._unsharded
        return m.module if isinstance(m, torch.nn.parallel.DistributedDataParallel) else m  # type: ignore[return-value]

    # -- what an epoch looks like -------------------------------------------------------------------------

    def plan(self, epoch: int) -> cur.EpochPlan:
        """The training pairs of ``epoch`` in order: all of them shuffled by (seed, epoch), or, with the length
        curriculum, those whose target (``<eos>`` included) fits the epoch's limit (always filtered, never cropped:
        a cropped target would teach the model to stop early)."""
        c = self.cfg.curriculum
        if c.kind == "length":
            c = c.model_copy(update={"mode": "filter"})
        assert self.train_data.tgt_lengths is not None
        order = cur.plan_epoch(c, epoch, self.cfg.epochs, self.tr.seed, self.train_data.tgt_lengths, self.scores,
                               0.0).order
        return cur.EpochPlan(order, None)

    def epoch_size(self, epoch: int) -> int:
        c, n = self.cfg.curriculum, len(self.train_data)
        if c.kind == "difficulty" and cur.needs_scores(c, epoch):  # its size never depends on the scores
            stage = cur.difficulty_stage(c, epoch, self.cfg.epochs)
            if stage is not None:
                return len(cur.difficulty_subset(torch.zeros(n), stage, c.stages, c.final_stage))
        return len(self.plan(epoch).order)

    def begin_epoch(self, epoch: int) -> None:
        # the sampling schedule is a function of (epoch, step); the difficulty curriculum scores the pairs once
        c = self.cfg.curriculum
        if c.kind == "difficulty" and self.scores is None and cur.needs_scores(c, epoch):
            self.scores = self.pair_log_perplexity(self.train_data)

    @torch.no_grad()
    def pair_log_perplexity(self, data: EncodedPairs) -> Tensor:
        """[N] float32 CPU: each pair's mean token cross-entropy (the log of its perplexity) under the model,
        teacher-forced in eval mode: the difficulty curriculum's score (seed 003's perplexity curriculum)."""
        out: list[Tensor] = []
        for b, logits in self._scored_batches(data):
            nll = F.cross_entropy(logits.float().transpose(1, 2), b.tgt, ignore_index=PAD_ID, reduction="none")
            tokens = (b.tgt != PAD_ID).sum(1).clamp(min=1)
            out.append((nll.sum(1) / tokens).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _scored_batches(self, data: EncodedPairs, sampling_prob: float = 0.0) -> Iterator[tuple[PairBatch, Tensor]]:
        """(batch, logits [B, T, V]) over ``data`` in eval mode (the model's mode restored after), each decoded
        against the gold targets with ``sampling_prob`` (0: teacher forcing; 1: fed its own predictions). The
        caller holds ``torch.no_grad``."""
        model = self.model
        was = model.training
        model.eval()
        try:
            for idx in torch.arange(len(data)).split(self.cfg.eval_batch_size):
                b = data.take(idx, self.tr.device)
                assert b.tgt is not None
                with self.tr.autocast():
                    out = model(b.src, b.src_lengths, b.decoder_input(), sampling_prob,
                                torch.Generator().manual_seed(0))
                yield b, out.logits
        finally:
            model.train(was)

    # -- one step -------------------------------------------------------------------------------------

    def take(self, idx: Tensor, plan: cur.EpochPlan) -> PairBatch:
        return self.train_data.take(idx, self.tr.device)

    def micro_batches(self, batch: PairBatch, k: int) -> list[tuple[Any, float]]:
        if k == 1:
            return [(batch, 1.0)]
        parts = torch.tensor_split(torch.arange(len(batch), device=batch.src[0].device), k)
        return [(_rows(batch, p), len(p) / len(batch)) for p in parts]

    def token_loss(self, logits: Tensor, tgt: Tensor, tgt_lengths: Tensor) -> Tensor:
        c = self.s2s.loss
        if c.focal_gamma > 0:
            return sequence_focal_loss(logits.float(), tgt, tgt_lengths, alpha0=c.focal_alpha, gamma=c.focal_gamma,
                                       weighting=c.time_weighting, rate=c.time_rate, ignore_index=PAD_ID)
        return F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=PAD_ID,
                               label_smoothing=c.label_smoothing)

    def compute_loss(self, batch: PairBatch, sampling_prob: float, generator: torch.Generator | None
                     ) -> tuple[Tensor, Tensor, int]:
        """(token loss + coverage, correct tokens, tokens) of the batch, with scheduled sampling."""
        assert batch.tgt is not None and batch.tgt_lengths is not None
        with self.tr.autocast():
            out = self.tr.model(batch.src, batch.src_lengths, batch.decoder_input(), sampling_prob, generator)
        loss = self.token_loss(out.logits, batch.tgt, batch.tgt_lengths)
        valid = batch.tgt != PAD_ID
        n_tok = int(valid.sum())
        if self.s2s.model.attention.coverage and self.s2s.loss.coverage_weight > 0:
            # coverage_loss sums over steps (batch mean); per token, like the cross-entropy it is added to
            loss = loss + self.s2s.loss.coverage_weight * out.coverage_loss * len(batch) / max(n_tok, 1)
        correct = ((out.logits.detach().argmax(-1) == batch.tgt) & valid).sum().double()
        return loss, correct, n_tok

    def loss(self, batch: PairBatch, part: int) -> tuple[Tensor, dict[str, Tensor | float]]:
        tr = self.tr
        epoch, i = tr.epoch, tr.batch
        sampling_prob = 1.0 - self.s2s.sampling.teacher_forcing(tr.step, epoch)
        more = (part,) if part else ()  # part 0 draws what the whole batch drew before accumulation existed
        gen = tr.generator(_PURPOSE["sampling"], epoch, i, *more) if sampling_prob > 0 else None
        token, correct, n_tok = self.compute_loss(batch, sampling_prob, gen)
        loss, n = token, len(batch)
        stats: dict[str, Tensor | float] = {"loss": token.detach().double() * n_tok, "correct": correct,
                                            "tokens": n_tok, "n": n, "sampling": sampling_prob * n}
        if self.objective.active(epoch):
            assert batch.tgt is not None and batch.tgt_lengths is not None
            refs = ids_before_eos(batch.tgt.cpu(), batch.tgt_lengths.cpu())
            w = self.s2s.objective.weight
            seq = self.objective(self.model, batch.src, batch.src_lengths, refs,
                                 self.s2s.decode.max_len(batch.src_lengths[0]),
                                 tr.generator(_PURPOSE["objective"], epoch, i, *more))
            loss = (1 - w) * token + w * seq.loss
            if not math.isnan(seq.reward):
                stats |= {"reward": seq.reward * n, "reward_n": n}
        return loss, stats

    def summary(self, sums: dict[str, float], fresh: dict[str, float], elapsed: float) -> dict[str, float]:
        tokens = max(sums["tokens"], 1)
        row = {"train_loss": sums["loss"] / tokens, "train_accuracy": sums["correct"] / tokens,
               "tokens_per_s": fresh["tokens"] / elapsed if fresh["n"] and elapsed > 0 else 0.0,
               "sampling_prob": sums["sampling"] / max(sums["n"], 1)}
        if self.s2s.objective.kind != "none":
            row["train_reward"] = sums["reward"] / sums["reward_n"] if sums["reward_n"] else float("nan")
        return row

    # -- evaluation ------------------------------------------------------------------------------------

    def validate(self) -> dict[str, float]:
        assert self.val_data is not None
        m = self.evaluate(self.val_data, beam=self.s2s.decode.validate_beam)
        return {f"val_{k}": v for k, v in m.items() if k != "n"}

    @torch.no_grad()
    def teacher_forced(self, data: EncodedPairs, sampling_prob: float = 0.0) -> tuple[float, float]:
        """(token cross-entropy, token accuracy) on ``data`` in eval mode; ``sampling_prob = 1`` feeds every step
        the model's own previous prediction (free running) while scoring the gold targets."""
        loss_sum, correct, tokens = 0.0, 0.0, 0
        for b, logits in self._scored_batches(data, sampling_prob):
            loss_sum += float(F.cross_entropy(logits.float().flatten(0, 1), b.tgt.flatten(), ignore_index=PAD_ID,
                                              reduction="sum"))
            correct += float(((logits.argmax(-1) == b.tgt) & (b.tgt != PAD_ID)).sum())
            tokens += int((b.tgt != PAD_ID).sum())
        return loss_sum / max(tokens, 1), correct / max(tokens, 1)

    def evaluate(self, data: EncodedPairs, beam: bool = True, hyps: list[list[int]] | None = None
                 ) -> dict[str, float]:
        """Teacher-forced loss/accuracy, the exposure-bias gap, and the sequence metrics of the decoded outputs
        (``hyps``, output ids before ``<eos>``, when the caller already decoded ``data``)."""
        loss, acc = self.teacher_forced(data)
        m: dict[str, float] = {"loss": loss, "accuracy": acc}
        if self.s2s.exposure_gap:
            free, _ = self.teacher_forced(data, sampling_prob=1.0)
            m |= {"free_loss": free, "exposure_gap": free - loss}
        if hyps is None:
            hyps = self.decode(data, beam)
        return m | sequence_metrics(hyps, reference_ids(data))

    def decode(self, data: EncodedPairs, beam: bool = True) -> list[list[int]]:
        """Output ids (before ``<eos>``) of every pair, greedy or (``beam`` and decode.beam_size > 1) beam search."""
        return decode_all(self.model, data, self.s2s.decode, self.cfg.eval_batch_size, self.tr.device, beam)

    def gate_probe(self, n: int) -> Any:
        """A forward of the encoders over the first ``diagnostics.gate_sequences`` validation pairs (training pairs
        without a validation split): what the monitor runs with the gate statistics on. The gates are the
        encoders' (the decoder steps ``nn.LSTMCell``, which reports none)."""
        if self._fsdp():
            return None  # the gates hooks sit on the sharded model, which only its forward can run
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        batch = data.take(torch.arange(min(n, len(data))), self.tr.device)
        return lambda: self.model.encode(batch.src, batch.src_lengths)

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective.state_dict(), "scores": self.scores}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["objective"])
        self.scores = state.get("scores")


def seq2seq_trainer(
    cfg: TrainConfig,
    s2s: Seq2SeqSection,
    model: Seq2Seq,
    train: EncodedPairs,
    val: EncodedPairs | None,
    *,
    seed: int,
    run_dir: Path,
    callbacks: list[Callback] | None = None,
    diagnostics: DiagnosticsConfig | None = None,
    distributed: DistributedConfig | None = None,
    ctx: DistContext | None = None,
) -> Trainer:
    """The one trainer with the seq2seq task on ``train`` (and ``val``)."""
    task = Seq2SeqTask(cfg, s2s, train, val)
    if ctx is not None and ctx.enabled and distributed is not None and distributed.strategy == "fsdp":
        task._unsharded = copy.deepcopy(model)  # what evaluation gathers the full weights into
    return Trainer(cfg, model, task, seed=seed, run_dir=run_dir, callbacks=callbacks, distributed=distributed,
                   ctx=ctx, diagnostics=diagnostics)
