"""The seq2seq training loop, and the ``seq2seq:`` config section (model, sampling, loss, objective, decoding).

Per epoch: length curriculum (which pairs, by target length) -> batches in a (seed, epoch) order. Per batch:
teacher-forcing probability from the scheduled-sampling schedule -> forward (each step of each sequence fed the
gold previous token with that probability, else the model's own previous prediction) -> token loss (cross-entropy
or sequence focal) + coverage loss -> mixed with the sequence-level objective when active -> backward -> clip ->
gradient noise -> optimizer (Lookahead when on) -> schedule. After the epoch: validation (teacher-forced loss and
token accuracy; free-running loss on the same gold targets and the exposure-bias gap; greedy decoding's exact
match, token accuracy, edit-distance error rate and BLEU) -> history row -> callbacks -> checkpoints -> early stop.

It reuses the classifier trainer's parts (optimizer, schedules, clipping, gradient noise, early stopping,
checkpoints, callbacks) and its config section ``train``; the loop itself is its own because every step differs
(token targets, decoding, sampling). Every random draw (scheduled sampling, sequence sampling, gradient noise) comes
from a generator seeded by (seed, purpose, epoch, batch), so a resumed run replays the same batches exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from longshort.data.pair_pipeline import EncodedPairs, PairBatch
from longshort.data.pairs import PAD_ID
from longshort.diagnostics.monitor import DiagnosticsConfig, Rollback, TrainingMonitor
from longshort.evaluate.seq_metrics import sequence_metrics
from longshort.nn.seq2seq import SCHEDULES, Seq2Seq, Seq2SeqConfig
from longshort.training import curriculum as cur
from longshort.training.callbacks import Callback, EarlyStopping
from longshort.training.checkpoint import checkpoint_path, loop_state, restore_loop_state, save_checkpoint
from longshort.training.losses import TimeWeighting, sequence_focal_loss
from longshort.training.optim import GradClipper, GradNoise, Lookahead, build_optimizer, build_schedule
from longshort.training.sequence_level import ObjectiveConfig, SequenceObjective, ids_before_eos
from longshort.training.trainer import (
    TrainConfig,
    _seed_for,
    guarded_update,
    resolve_device,
    resolve_precision,
    rollback,
    start_monitor,
    step_schedule,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplingConfig(_Strict):
    """``seq2seq.sampling``: scheduled sampling (Bengio et al. 2015). The schedule gives the teacher-forcing
    probability ``eps_i`` at step (or epoch) ``i``; each position of each sequence is fed the gold token with
    probability ``eps_i``, else the model's previous prediction."""

    schedule: Literal["none", "inverse_sigmoid", "linear_with_floor", "exponential"] = Field(
        "none",
        description="none: always teacher forcing; inverse_sigmoid eps = k / (k + exp((i - c) / k)); "
        "linear_with_floor eps = max(floor, start - slope * i); exponential eps = gamma ** i",
    )
    unit: Literal["step", "epoch"] = Field("step", description="i counts optimizer steps or epochs")
    k: float = Field(500.0, gt=0, description="inverse_sigmoid: decay scale (larger decays later)")
    c: float = Field(0.0, description="inverse_sigmoid: centre (eps = k / (k + 1) at i = c)")
    start: float = Field(1.0, ge=0, le=1, description="linear_with_floor: eps at i = 0")
    slope: float = Field(1e-3, ge=0, description="linear_with_floor: eps lost per unit of i")
    floor: float = Field(0.5, ge=0, le=1, description="linear_with_floor: the lowest eps")
    gamma: float = Field(0.999, gt=0, le=1, description="exponential: eps = gamma ** i")

    def teacher_forcing(self, step: int, epoch: int) -> float:
        """``eps`` for the batch at global optimizer ``step`` in ``epoch`` (0-based)."""
        i = float(step if self.unit == "step" else epoch)
        if self.schedule == "none":
            return 1.0
        if self.schedule == "inverse_sigmoid":
            return SCHEDULES["inverse_sigmoid"](i, self.k, self.c)
        if self.schedule == "linear_with_floor":
            return SCHEDULES["linear_with_floor"](i, self.slope, self.floor, self.start)
        return SCHEDULES["exponential"](i, self.gamma)


class TokenLossConfig(_Strict):
    """``seq2seq.loss``: the per-token loss (padding ignored)."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    focal_gamma: float = Field(
        0.0, ge=0, description="> 0: sequence focal loss -sum_t alpha_t (1 - p_t)^gamma log p_t instead of CE"
    )
    focal_alpha: float = Field(1.0, ge=0, description="sequence focal: alpha_0 of the time weights")
    time_weighting: TimeWeighting = Field(
        "constant", description="sequence focal: alpha_t over the target (constant | linear | reverse | exp)"
    )
    time_rate: float = Field(1.0, description="sequence focal, exp weighting: the rate")
    coverage_weight: float = Field(1.0, ge=0, description="weight of the coverage loss (attention.coverage=true)")

    @model_validator(mode="after")
    def _one(self) -> TokenLossConfig:
        if self.focal_gamma > 0 and self.label_smoothing > 0:
            raise ValueError("set seq2seq.loss.focal_gamma or label_smoothing, not both")
        return self


class DecodeConfig(_Strict):
    """``seq2seq.decode``: how validation, evaluation and ``predict`` decode."""

    beam_size: int = Field(1, ge=1, description="1 = greedy; > 1 = beam search")
    length_penalty: float = Field(0.6, ge=0, description="beam search: GNMT alpha, score / ((5 + len) / 6)^alpha")
    max_len_ratio: float = Field(2.0, gt=0, description="max output length = ratio * longest source + extra")
    max_len_extra: int = Field(10, ge=0, description="see max_len_ratio")
    validate_beam: bool = Field(False, description="use the beam for the per-epoch validation too (slower)")

    def max_len(self, src_lengths: Tensor) -> int:
        return max(1, int(self.max_len_ratio * int(src_lengths.max())) + self.max_len_extra)


class Seq2SeqSection(_Strict):
    """``seq2seq:`` everything specific to ``task: seq2seq`` (``train:`` keeps epochs, optimizer, schedule, ...)."""

    model: Seq2SeqConfig = Seq2SeqConfig()
    sampling: SamplingConfig = SamplingConfig()
    loss: TokenLossConfig = TokenLossConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    decode: DecodeConfig = DecodeConfig()
    exposure_gap: bool = Field(
        True, description="each epoch, also the free-running validation loss (fed own predictions) and its gap"
    )


_PURPOSE = {"sampling": 11, "objective": 12, "noise": 13}


def decode_batch(model: Seq2Seq, batch: PairBatch, cfg: DecodeConfig, beam: bool = True) -> tuple[Tensor, Tensor]:
    """Greedy (``beam_size == 1`` or ``beam=False``) or beam-search output tokens and lengths of a batch."""
    max_len = cfg.max_len(batch.src_lengths[0])
    if cfg.beam_size > 1 and beam:
        from longshort.nn.decoding import beam_search

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


class Seq2SeqTrainer:
    def __init__(
        self,
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
    ) -> None:
        self.cfg, self.s2s, self.seed, self.run_dir = cfg, s2s, seed, run_dir
        self.device = resolve_device(cfg.device)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.model = model.to(self.device)
        self.train_data, self.val_data = train, val
        assert train.tgt is not None and train.tgt_lengths is not None
        self.callbacks = callbacks or []
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.clipper = GradClipper(cfg.optim)
        self.noise = GradNoise(cfg.optim.grad_noise)
        self.objective = SequenceObjective(s2s.objective)
        self.steps_per_epoch = self.steps_in_epoch(0)
        total = sum(self.steps_in_epoch(e) for e in range(cfg.epochs)) if cfg.schedule.interval == "batch" \
            else cfg.epochs
        self.schedule = build_schedule(self.optimizer, cfg.schedule, max(total, 1), cfg.optim.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.early = EarlyStopping(cfg.early_stopping, default_metric="val_exact_match")
        self.ckpt_dir = run_dir / "checkpoints"
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.finished = False
        # Running sums of the epoch in progress, checkpointed so a resumed epoch reports what an uninterrupted one
        # would: (loss * tokens, correct tokens, tokens, pairs, sampling prob * pairs, reward * pairs, seq pairs).
        self.epoch_sums: list[float] = [0.0] * 7
        self.last_grad_norm = 0.0
        diag = diagnostics or DiagnosticsConfig()
        # gradient norms, spike/NaN actions and gate samples as in the classifier's loop; the gates are the
        # encoders' (the decoder steps nn.LSTMCell, which reports none), on the source side of fixed pairs
        self.monitor = TrainingMonitor(diag, self.model, run_dir, tensorboard=cfg.tensorboard,
                                       probe=self._gate_probe(diag.gate_sequences)) if diag.enabled else None
        self._has_checkpoint = False

    def _gate_probe(self, n: int) -> Callable[[], object]:
        """A forward of the encoders over the first ``n`` validation pairs (training pairs without a validation
        split): what :meth:`TrainingMonitor.maybe_sample_gates` runs with the gate statistics on."""
        data = self.val_data if self.val_data is not None and len(self.val_data) else self.train_data
        batch = data.take(torch.arange(min(n, len(data))), self.device)
        return lambda: self.model.encode(batch.src, batch.src_lengths)

    # -- what an epoch looks like -------------------------------------------------------------------------

    def plan(self, epoch: int) -> Tensor:
        """The training pairs of ``epoch`` in order: all of them shuffled by (seed, epoch), or, with the length
        curriculum, those whose target (``<eos>`` included) fits the epoch's limit (always filtered, never cropped:
        a cropped target would teach the model to stop early)."""
        c = self.cfg.curriculum
        if c.kind == "length":
            c = c.model_copy(update={"mode": "filter"})
        assert self.train_data.tgt_lengths is not None
        return cur.plan_epoch(c, epoch, self.cfg.epochs, self.seed, self.train_data.tgt_lengths, None, 0.0).order

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-len(self.plan(epoch)) // self.cfg.batch_size)

    def _generator(self, purpose: str, epoch: int, batch: int) -> torch.Generator:
        return torch.Generator().manual_seed(_seed_for(self.seed, _PURPOSE[purpose], epoch, batch))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- one step -------------------------------------------------------------------------------------

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
        with self.autocast():
            out = self.model(batch.src, batch.src_lengths, batch.decoder_input(), sampling_prob, generator)
        loss = self.token_loss(out.logits, batch.tgt, batch.tgt_lengths)
        valid = batch.tgt != PAD_ID
        n_tok = int(valid.sum())
        if self.s2s.model.attention.coverage and self.s2s.loss.coverage_weight > 0:
            # coverage_loss sums over steps (batch mean); per token, like the cross-entropy it is added to
            loss = loss + self.s2s.loss.coverage_weight * out.coverage_loss * len(batch) / max(n_tok, 1)
        correct = ((out.logits.detach().argmax(-1) == batch.tgt) & valid).sum().double()
        return loss, correct, n_tok

    def train_step(self, batch: PairBatch) -> dict[str, Any]:
        epoch, i = self.epoch, self.batch
        tf = self.s2s.sampling.teacher_forcing(self.step, epoch)
        sampling_prob = 1.0 - tf
        self.optimizer.zero_grad(set_to_none=True)
        gen = self._generator("sampling", epoch, i) if sampling_prob > 0 else None
        token, correct, n_tok = self.compute_loss(batch, sampling_prob, gen)
        loss, reward = token, float("nan")
        if self.objective.active(epoch):
            assert batch.tgt is not None and batch.tgt_lengths is not None
            refs = ids_before_eos(batch.tgt.cpu(), batch.tgt_lengths.cpu())
            w = self.s2s.objective.weight
            stats = self.objective(self.model, batch.src, batch.src_lengths, refs,
                                   self.s2s.decode.max_len(batch.src_lengths[0]),
                                   self._generator("objective", epoch, i))
            loss = (1 - w) * token + w * stats.loss
            reward = stats.reward
        self.scaler.scale(loss).backward()
        verdict = guarded_update(self, loss, self._generator("noise", epoch, i))
        if self.cfg.schedule.interval == "batch":
            step_schedule(self.schedule, verdict)
        return {"token_loss": token.detach(), "correct": correct, "tokens": n_tok, "sampling_prob": sampling_prob,
                "reward": reward}

    # -- the loop --------------------------------------------------------------------------------------

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, PairBatch]]:
        idx = list(self.plan(epoch).split(self.cfg.batch_size))
        for i in range(start, len(idx)):
            yield i, self.train_data.take(idx[i], self.device)

    def fit(self) -> list[dict[str, float]]:
        for cb in self.callbacks:
            cb.on_fit_start(self)  # type: ignore[arg-type]
        start_monitor(self)
        try:
            while self.epoch < self.cfg.epochs and not self.finished:
                try:
                    self._run_epoch()
                except Rollback:
                    rollback(self)
            self.finished = True
        finally:
            if self.monitor is not None:
                self.monitor.close()
            for cb in self.callbacks:
                cb.on_fit_end(self)  # type: ignore[arg-type]
        return self.history

    def _run_epoch(self) -> None:
        cfg, epoch = self.cfg, self.epoch
        self.model.train()
        self.steps_per_epoch = self.steps_in_epoch(epoch)
        for cb in self.callbacks:
            cb.on_epoch_start(self, epoch, self.steps_per_epoch, self.batch)  # type: ignore[arg-type]
        sums = list(self.epoch_sums) if self.batch else [0.0] * 7
        loss_sum = torch.full((), sums[0], dtype=torch.float64, device=self.device)
        correct = torch.full((), sums[1], dtype=torch.float64, device=self.device)
        new, new_tok, t0 = 0, 0, time.perf_counter()
        for i, batch in self._batches(epoch, self.batch):
            r = self.train_step(batch)
            loss_sum += r["token_loss"].double() * r["tokens"]
            correct += r["correct"]
            sums[2] += r["tokens"]
            sums[3] += len(batch)
            sums[4] += r["sampling_prob"] * len(batch)
            if not math.isnan(r["reward"]):
                sums[5] += r["reward"] * len(batch)
                sums[6] += len(batch)
            new, new_tok = new + len(batch), new_tok + r["tokens"]
            self.batch, self.step = i + 1, self.step + 1
            if self.monitor is not None:
                self.monitor.maybe_sample_gates(self.step)
            if self.batch % cfg.log_every == 0 or self.batch == self.steps_per_epoch:
                stats = {"batch": self.batch, "loss": loss_sum.item() / max(sums[2], 1),
                         "accuracy": correct.item() / max(sums[2], 1),
                         "samples_per_s": new / (time.perf_counter() - t0)}
                for cb in self.callbacks:
                    cb.on_step(self, stats)  # type: ignore[arg-type]
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.batch < self.steps_per_epoch:
                self.epoch_sums = [loss_sum.item(), correct.item(), *sums[2:]]
                self.save(["last"])
        elapsed = time.perf_counter() - t0
        if isinstance(self.optimizer, Lookahead) and cfg.optim.lookahead.sync_each_epoch:
            self.optimizer.sync()
        lr = self.optimizer.param_groups[0]["lr"]
        if cfg.schedule.interval == "epoch":
            self.schedule.step()
        row: dict[str, float] = {
            "epoch": epoch + 1, "step": self.step,
            "train_loss": loss_sum.item() / max(sums[2], 1), "train_accuracy": correct.item() / max(sums[2], 1),
            "samples_per_s": new / elapsed if new else 0.0, "tokens_per_s": new_tok / elapsed if new else 0.0,
            "lr": lr, "sampling_prob": sums[4] / max(sums[3], 1),
        }
        if self.s2s.objective.kind != "none":
            row["train_reward"] = sums[5] / sums[6] if sums[6] else float("nan")
        if self.val_data is not None:
            m = self.evaluate(self.val_data, beam=self.s2s.decode.validate_beam)
            row |= {f"val_{k}": v for k, v in m.items() if k != "n"}
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        self.epoch_sums = [0.0] * 7
        improved = self.val_data is None or self.early.update(row)
        if self.val_data is not None and self.early.should_stop:
            self.finished = True
        for cb in self.callbacks:
            cb.on_epoch_end(self, row)  # type: ignore[arg-type]
        self.save(["last", "best"] if improved else ["last"])

    # -- evaluation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_forced(self, data: EncodedPairs, sampling_prob: float = 0.0) -> tuple[float, float]:
        """(token cross-entropy, token accuracy) on ``data`` in eval mode; ``sampling_prob = 1`` feeds every step
        the model's own previous prediction (free running) while scoring the gold targets."""
        was = self.model.training
        self.model.eval()
        loss_sum, correct, tokens = 0.0, 0.0, 0
        try:
            for idx in torch.arange(len(data)).split(self.cfg.eval_batch_size):
                b = data.take(idx, self.device)
                assert b.tgt is not None
                with self.autocast():
                    out = self.model(b.src, b.src_lengths, b.decoder_input(), sampling_prob,
                                     torch.Generator().manual_seed(0))
                n = int((b.tgt != PAD_ID).sum())
                loss_sum += float(F.cross_entropy(out.logits.float().flatten(0, 1), b.tgt.flatten(),
                                                  ignore_index=PAD_ID, reduction="sum"))
                correct += float(((out.logits.argmax(-1) == b.tgt) & (b.tgt != PAD_ID)).sum())
                tokens += n
        finally:
            self.model.train(was)
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
        return decode_all(self.model, data, self.s2s.decode, self.cfg.eval_batch_size, self.device, beam)

    # -- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        diag = {} if self.monitor is None else {"diagnostics": self.monitor.state_dict()}
        return loop_state(self) | {"epoch_sums": list(self.epoch_sums), "objective": self.objective.state_dict()} \
            | diag

    def save(self, tags: list[str]) -> None:
        if self.monitor is not None:
            self.monitor.flush()
        save_checkpoint(self.ckpt_dir, tags, self.model, self.state_dict(), self.step)
        self._has_checkpoint = True

    def restore(self, tag: str = "last") -> bool:
        path = checkpoint_path(self.ckpt_dir, tag)
        if path is None:
            return False
        s = restore_loop_state(self, path)
        self.epoch_sums = [float(v) for v in s["epoch_sums"]]
        self.objective.load_state_dict(s["objective"])
        if self.monitor is not None and "diagnostics" in s:
            self.monitor.load_state_dict(s["diagnostics"])
        self._has_checkpoint = True
        return True
