"""The seq2seq trainer: scheduled sampling at its scheduled rate, teacher forcing at rate 1 = plain training,
sequence-level objectives (self-critical raises the reward, MRT lowers the risk), length curriculum, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from longshort.config import validate
from longshort.data.config import DataConfig
from longshort.data.pair_pipeline import EncodedPairs, encode_pairs, prepare_pairs
from longshort.data.pairs import PAD_ID
from longshort.errors import ConfigError
from longshort.nn.seq2seq import Seq2Seq
from longshort.training.losses import sequence_focal_loss
from longshort.training.seq2seq_task import SamplingConfig, Seq2SeqSection, reference_ids, seq2seq_trainer
from longshort.training.sequence_level import (
    ObjectiveConfig,
    SequenceObjective,
    distinct,
    expected_risk,
    mean_greedy_reward,
    mrt_loss,
    reinforce_loss,
)
from longshort.training.trainer import TrainConfig, Trainer

SMALL = {"emb_dim": 16, "hidden_dim": 32, "dropout": 0.0}


def _data(n: int = 240, min_len: int = 3, max_len: int = 6, seed: int = 0) -> tuple[EncodedPairs, EncodedPairs, Any]:
    cfg = DataConfig(source="builtin:reverse", builtin={"n": n, "min_len": min_len, "max_len": max_len},
                     split={"val": 0.2, "test": 0.0})
    s = prepare_pairs(cfg, seed)
    assert s.val is not None
    return (encode_pairs(s.train, s.src_vocabs, s.tgt_vocab), encode_pairs(s.val, s.src_vocabs, s.tgt_vocab), s)


def _trainer(tmp: Path, data: tuple[EncodedPairs, EncodedPairs, Any] | None = None, s2s: dict | None = None,
             seed: int = 0, **train: Any) -> Trainer:
    tr, va, s = data or _data()
    section = Seq2SeqSection.model_validate({"model": SMALL, **(s2s or {})})
    torch.manual_seed(seed)
    model = Seq2Seq(s.src_vocabs, s.tgt_vocab, section.model)
    cfg = TrainConfig.model_validate({"epochs": 2, "batch_size": 16, "progress": "off", "tensorboard": False,
                                      "optim": {"lr": 3e-3}, "early_stopping": {"patience": None}, **train})
    return seq2seq_trainer(cfg, section, model, tr, va, seed=seed, run_dir=tmp)


# -- scheduled sampling ------------------------------------------------------------------------------------


def test_scheduled_sampling_feeds_predictions_at_the_scheduled_rate(tmp_path: Path) -> None:
    sampling = {"schedule": "linear_with_floor", "start": 1.0, "slope": 0.02, "floor": 0.2}
    tr = _trainer(tmp_path, s2s={"sampling": sampling}, epochs=4, batch_size=16)
    fed: list[tuple[int, float, int]] = []  # (step, fraction of positions t >= 1 fed predictions, positions)
    forward = tr.model.forward

    def spy(src: Any, lengths: Any, tgt_in: torch.Tensor, sampling_prob: float = 0.0, generator: Any = None) -> Any:
        out = forward(src, lengths, tgt_in, sampling_prob, generator)
        if tr.model.training:
            positions = tgt_in[:, 1:].numel()
            fed.append((tr.step, float(out.fed_predictions[:, 1:].float().mean()), positions))
        return out

    tr.model.forward = spy  # type: ignore[method-assign]
    tr.fit()
    cfg = SamplingConfig(**sampling)
    assert len(fed) == tr.step > 40
    expected = [1 - cfg.teacher_forcing(step, 0) for step, _, _ in fed]
    got = [f for _, f, _ in fed]
    # per step: a binomial draw over ~80 positions; the schedule's rate within 4 standard errors
    for (step, f, n), p in zip(fed, expected, strict=True):
        se = max((p * (1 - p) / n) ** 0.5, 1e-9)
        assert abs(f - p) <= 4 * se + 1e-9, (step, f, p)
    # over all steps the rate matches tightly, and it follows the schedule's decay (first vs last quarter)
    total = sum(n for _, _, n in fed)
    mean_got = sum(f * n for _, f, n in fed) / total
    mean_exp = sum(p * n for (_, _, n), p in zip(fed, expected, strict=True)) / total
    assert abs(mean_got - mean_exp) < 0.02
    q = len(fed) // 4
    assert sum(got[:q]) / q < 0.3 < 0.6 < sum(got[-q:]) / q
    assert [h["sampling_prob"] for h in tr.history] == sorted(h["sampling_prob"] for h in tr.history)


def test_teacher_forcing_at_rate_one_equals_plain_training(tmp_path: Path) -> None:
    data = _data()
    plain = _trainer(tmp_path / "plain", data)
    plain.fit()
    always = {"schedule": "linear_with_floor", "start": 1.0, "slope": 0.0, "floor": 1.0}
    tf1 = _trainer(tmp_path / "tf1", data, s2s={"sampling": always})
    tf1.fit()
    for (name, a), b in zip(plain.model.state_dict().items(), tf1.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    drop = ("samples_per_s", "tokens_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in plain.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in tf1.history]
    assert all(h["sampling_prob"] == 0.0 for h in tf1.history)
    # and a schedule that does sample changes the weights
    ss = _trainer(tmp_path / "ss", data, s2s={"sampling": {"schedule": "exponential", "gamma": 0.9}})
    ss.fit()
    assert not torch.equal(ss.model.out.weight, plain.model.out.weight)


def test_exposure_gap_is_free_running_minus_teacher_forced_loss(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=1)
    tr.fit()
    row = tr.history[-1]
    assert row["val_exposure_gap"] == pytest.approx(row["val_free_loss"] - row["val_loss"])
    tf_loss, _ = tr.task.teacher_forced(tr.val_data)  # type: ignore[arg-type]
    free, _ = tr.task.teacher_forced(tr.val_data, sampling_prob=1.0)  # type: ignore[arg-type]
    assert row["val_loss"] == pytest.approx(tf_loss) and row["val_free_loss"] == pytest.approx(free)
    assert free != tf_loss


# -- sequence-level objectives ---------------------------------------------------------------------------


def test_reinforce_and_mrt_losses_by_hand() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    r = torch.tensor([1.0, 0.0, 0.5])
    loss = reinforce_loss(logp, r, 0.5)
    loss.backward()
    assert loss.item() == pytest.approx(-(0.5 * -1.0 + -0.5 * -2.0 + 0.0) / 3)
    assert logp.grad is not None and torch.allclose(logp.grad, -(r - 0.5) / 3)
    lp = torch.tensor([[-1.0, -2.0, -1.0]])
    risk = torch.tensor([[0.0, 1.0, 0.0]])
    keep = torch.tensor([[True, True, False]])  # the third is a duplicate of the first
    q = torch.softmax(torch.tensor([-0.5, -1.0]), 0)
    assert mrt_loss(lp, risk, 0.5, keep).item() == pytest.approx(float(q[1]))
    assert distinct([[1, 2], [3], [1, 2], [5], [5], [5]], 3).tolist() == [[True, True, False], [True, False, False]]


def test_reinforce_moving_average_baseline() -> None:
    obj = SequenceObjective(ObjectiveConfig(kind="reinforce", baseline_decay=0.5, samples=1))
    tr, _, s = _data(n=60)
    torch.manual_seed(0)
    model = Seq2Seq(s.src_vocabs, s.tgt_vocab, Seq2SeqSection.model_validate({"model": SMALL}).model)
    b = tr.take(torch.arange(8))
    refs = reference_ids(EncodedPairs(b.src, b.src_lengths, b.tgt, b.tgt_lengths))
    first = obj(model, b.src, b.src_lengths, refs, 8, torch.Generator().manual_seed(1))
    assert first.baseline == first.reward  # starts at the first batch's mean reward
    assert obj.baseline == pytest.approx(first.reward)
    second = obj(model, b.src, b.src_lengths, refs, 8, torch.Generator().manual_seed(2))
    assert second.baseline == pytest.approx(first.reward)  # the baseline from before this batch
    assert obj.baseline == pytest.approx(0.5 * first.reward + 0.5 * second.reward)


def _pretrained(tmp: Path, data: Any, epochs: int = 4) -> Trainer:
    tr = _trainer(tmp, data, epochs=epochs, batch_size=16, seed=1, optim={"lr": 1e-2}, schedule={"name": "constant"})
    tr.fit()
    return tr


def _batch(data: EncodedPairs, n: int = 48) -> tuple[Any, list[list[int]]]:
    b = data.take(torch.arange(n))
    return b, reference_ids(EncodedPairs(b.src, b.src_lengths, b.tgt, b.tgt_lengths))


def test_self_critical_raises_the_mean_reward_of_a_teacher_forced_model(tmp_path: Path) -> None:
    data = _data(n=1000)
    model = _pretrained(tmp_path / "tf", data, epochs=2).model  # teacher forcing only
    val, refs = _batch(data[1], len(data[1]))  # held-out pairs
    before = mean_greedy_reward(model, val.src, val.src_lengths, refs, 10, "edit")
    assert 0.5 < before < 0.95  # partly trained: room to improve
    obj = SequenceObjective(ObjectiveConfig(kind="self_critical", reward="edit", samples=4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    train = data[0]
    for step in range(40):  # the sequence-level loss alone: no token cross-entropy
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(step))[:32]
        b = train.take(idx)
        r = reference_ids(EncodedPairs(b.src, b.src_lengths, b.tgt, b.tgt_lengths))
        opt.zero_grad()
        obj(model, b.src, b.src_lengths, r, 10, torch.Generator().manual_seed(100 + step)).loss.backward()
        opt.step()
    after = mean_greedy_reward(model, val.src, val.src_lengths, refs, 10, "edit")
    assert after > before + 0.02, (before, after)


def test_mrt_lowers_the_expected_risk(tmp_path: Path) -> None:
    data = _data(n=300)
    model = _pretrained(tmp_path / "tf", data).model
    b, refs = _batch(data[0], 48)
    risk0 = expected_risk(model, b.src, b.src_lengths, refs, 10, "edit", samples=8, alpha=0.5, seed=7)
    obj = SequenceObjective(ObjectiveConfig(kind="mrt", reward="edit", samples=8, alpha=0.5))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(25):
        opt.zero_grad()
        obj(model, b.src, b.src_lengths, refs, 10, torch.Generator().manual_seed(step)).loss.backward()
        opt.step()
    risk1 = expected_risk(model, b.src, b.src_lengths, refs, 10, "edit", samples=8, alpha=0.5, seed=7)
    assert risk1 < risk0 - 0.05, (risk0, risk1)


def test_trainer_mixes_the_objective_from_its_start_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tr = _trainer(tmp_path, s2s={"objective": {"kind": "self_critical", "start_epoch": 1, "samples": 2}}, epochs=2)
    calls: list[int] = []
    inner = SequenceObjective.__call__

    def call(self: SequenceObjective, *a: Any, **k: Any) -> Any:
        calls.append(tr.epoch)
        return inner(self, *a, **k)

    monkeypatch.setattr(SequenceObjective, "__call__", call)
    tr.fit()
    assert calls and set(calls) == {1} and len(calls) == tr.steps_in_epoch(1)
    assert 0.0 <= tr.history[1]["train_reward"] <= 1.0
    assert tr.history[0]["train_reward"] != tr.history[0]["train_reward"]  # NaN before the start epoch


def test_sequence_focal_loss_is_the_token_loss_when_gamma_is_set(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, s2s={"loss": {"focal_gamma": 2.0, "time_weighting": "linear"}})
    b = tr.train_data.take(torch.arange(8))
    logits = torch.randn(8, b.tgt.shape[1], tr.model.tgt_vocab_size)  # type: ignore[union-attr]
    got = tr.task.token_loss(logits, b.tgt, b.tgt_lengths)  # type: ignore[arg-type]
    want = sequence_focal_loss(logits, b.tgt, b.tgt_lengths, gamma=2.0, weighting="linear", ignore_index=0)  # type: ignore[arg-type]
    assert torch.allclose(got, want)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.tgt.flatten(), ignore_index=0)  # type: ignore[union-attr]
    assert not torch.allclose(got, ce)


# -- curriculum, resume, config ---------------------------------------------------------------------------


def test_length_curriculum_filters_pairs_by_target_length(tmp_path: Path) -> None:
    data = _data(n=300, min_len=2, max_len=10)
    tr = _trainer(tmp_path, data, epochs=3, curriculum={"kind": "length", "start_length": 5, "rate": 3})
    seen: dict[int, int] = {}
    inner = tr.train_step

    def step(batch: Any) -> Any:
        seen[tr.epoch] = max(seen.get(tr.epoch, 0), int(batch.tgt_lengths.max()))
        return inner(batch)

    tr.train_step = step  # type: ignore[method-assign]
    tr.fit()
    assert seen[0] <= 5 and seen[1] <= 8 and seen[2] == 11  # <eos> counts; the last epoch has every pair
    assert len(tr.task.plan(0).order) < len(tr.task.plan(1).order) < len(tr.task.plan(2).order) == len(data[0])


class _Stop(Exception):
    pass


def test_resume_mid_epoch_with_sampling_and_objective_is_exact(tmp_path: Path) -> None:
    s2s = {"sampling": {"schedule": "inverse_sigmoid", "k": 5.0}, "objective": {"kind": "reinforce", "samples": 2}}
    train = {"epochs": 2, "checkpoint_every": 4, "optim": {"lr": 3e-3, "grad_noise": {"std": 0.01}}}
    data = _data(n=160)
    full = _trainer(tmp_path / "full", data, s2s=s2s, **train)
    full.fit()
    cut = _trainer(tmp_path / "cut", data, s2s=s2s, **train)
    inner = cut.train_step

    def step(batch: Any) -> Any:
        if cut.step == 10:  # epoch 2, after the checkpoint at step 8
            raise _Stop
        return inner(batch)

    cut.train_step = step  # type: ignore[method-assign]
    with pytest.raises(_Stop):
        cut.fit()
    again = _trainer(tmp_path / "cut", data, s2s=s2s, **train)
    assert again.restore() and again.step == 8
    again.fit()
    for (name, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert full.task.objective.baseline == again.task.objective.baseline
    drop = ("samples_per_s", "tokens_per_s")
    assert [{k: v for k, v in h.items() if k not in drop} for h in full.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in again.history]


def test_config_refuses_options_of_the_other_task() -> None:
    with pytest.raises(ConfigError, match=r"train\.mixup\.prob"):
        validate({"task": "seq2seq", "train": {"mixup": {"prob": 0.5}}})
    with pytest.raises(ConfigError, match="task is classify"):
        validate({"seq2seq": {"sampling": {"schedule": "exponential"}}})
    with pytest.raises(ConfigError, match="val_f1_macro"):
        validate({"task": "seq2seq", "train": {"early_stopping": {"metric": "val_f1_macro"}}})
    c = validate({"task": "seq2seq"})
    assert c.data.source == "builtin:reverse"  # the seq2seq default dataset
    assert validate({"task": "seq2seq", "data": {"source": "x.tsv"}}).data.source == "x.tsv"


def test_a_nan_loss_never_reaches_the_seq2seq_weights(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=1)
    compute, seen = tr.task.compute_loss, {}

    def compute_loss(*a: Any, **k: Any) -> Any:
        token, correct, n_tok = compute(*a, **k)
        if tr.step == 3:  # the fourth step
            seen["before"] = {n: v.clone() for n, v in tr.model.state_dict().items()}
            return token * math.nan, correct, n_tok
        if "before" in seen and "after" not in seen:
            seen["after"] = {n: v.clone() for n, v in tr.model.state_dict().items()}  # before step 5 moves them
        return token, correct, n_tok

    tr.task.compute_loss = compute_loss  # type: ignore[method-assign]
    tr.fit()
    assert all(torch.equal(seen["before"][n], seen["after"][n]) for n in seen["before"])
    import csv

    with (tmp_path / "diagnostics" / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["action"] for r in rows if r["anomaly"] == "1"] == ["nonfinite"] and rows[3]["step"] == "4"


def test_the_encoders_gates_are_sampled_every_n_steps_on_fixed_validation_pairs(tmp_path: Path) -> None:
    import csv

    from longshort.diagnostics.gates import gate_statistics
    from longshort.diagnostics.monitor import DiagnosticsConfig

    tr, va, s = _data()
    section = Seq2SeqSection.model_validate({"model": SMALL})
    torch.manual_seed(0)
    model = Seq2Seq(s.src_vocabs, s.tgt_vocab, section.model)
    cfg = TrainConfig.model_validate({"epochs": 1, "batch_size": 16, "progress": "off", "tensorboard": False,
                                      "optim": {"lr": 3e-3}, "early_stopping": {"patience": None}})
    trainer = seq2seq_trainer(cfg, section, model, tr, va, seed=0, run_dir=tmp_path,
                             diagnostics=DiagnosticsConfig(gates_every=4, gate_sequences=8, histograms=False))
    trainer.fit()
    with (tmp_path / "diagnostics" / "gates.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert trainer.step == 12 and sorted({int(r["step"]) for r in rows}) == [4, 8, 12]
    last = [r for r in rows if r["step"] == "12"]
    # the bidirectional encoder: 2 directions x (input, forget, output, memory); the decoder cells report none
    assert {r["layer"] for r in last} == {"encoders.0"}
    assert sorted((r["direction"], r["gate"]) for r in last) == sorted(
        (d, g) for d in ("forward", "backward") for g in ("input", "forget", "output", "memory"))
    # the probe is the first 8 validation pairs' source side: the final weights on them give the step-12 rows
    batch = va.take(torch.arange(8), torch.device("cpu"))
    again = gate_statistics(trainer.model, call=lambda: trainer.model.encode(batch.src, batch.src_lengths))
    forget = next(r for r in again if r["direction"] == "forward" and r["gate"] == "forget")
    row = next(r for r in last if r["direction"] == "forward" and r["gate"] == "forget")
    assert float(row["mean"]) == pytest.approx(forget["mean"], rel=1e-5)


# -- what the one Trainer gives every task -----------------------------------------------------------------


def test_the_encoders_dropout_decays_per_epoch_under_the_seq2seq_task(tmp_path: Path) -> None:
    """seq2seq.model.cell.dropout_decay drives the encoder's dropout scale, as model.cell.dropout_decay does the
    classifier's (before the one loop the seq2seq loop never called on_epoch: the scale stayed 1.0)."""
    scales: list[float] = []
    tr = _trainer(tmp_path, s2s={"model": {**SMALL, "cell": {"zoneout": 0.2, "dropout_decay": 1.0}}}, epochs=3)
    lstms = [m for m in tr.model.modules() if hasattr(m, "dropout_scale")]
    assert lstms
    inner = tr.train_step

    def step(batch: Any) -> Any:
        scales.append(lstms[0].dropout_scale)
        return inner(batch)

    tr.train_step = step  # type: ignore[method-assign]
    tr.fit()
    per_epoch = sorted(set(scales), reverse=True)
    assert per_epoch == pytest.approx([1.0, math.exp(-1.0), math.exp(-2.0)])


def test_seq2seq_runs_write_weight_and_gradient_histograms(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from longshort.diagnostics.monitor import DiagnosticsConfig

    tr, va, s = _data()
    section = Seq2SeqSection.model_validate({"model": SMALL})
    model = Seq2Seq(s.src_vocabs, s.tgt_vocab, section.model)
    cfg = TrainConfig.model_validate({"epochs": 2, "batch_size": 32, "progress": "off", "tensorboard": True})
    trainer = seq2seq_trainer(cfg, section, model, tr, va, seed=0, run_dir=tmp_path,
                              diagnostics=DiagnosticsConfig(gates_every=0))
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "tb" / "diagnostics"), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()["histograms"]
    assert any(t.startswith("weights/") for t in tags)
    assert any(t.startswith("grads/") for t in tags)
    assert len(events.Histograms(next(t for t in tags if t.startswith("weights/")))) == 2  # one per epoch


def test_train_phases_set_the_seq2seq_learning_rate_per_phase(tmp_path: Path) -> None:
    """train.phases are the one trainer's, so seq2seq reads them too (they were refused for the second loop)."""
    cfg = validate({"task": "seq2seq", "train": {"phases": [{"epochs": 1, "lr": 0.01}, {"epochs": 2, "lr": 0.002}]}})
    tr = _trainer(tmp_path, **cfg.train.model_dump(include={"phases", "epochs"}))
    tr.fit()
    assert [r["lr"] for r in tr.history] == pytest.approx([0.01, 0.002, 0.002])
    assert [r["phase"] for r in tr.history] == [1, 2, 2]


def test_perplexity_curriculum_trains_the_easiest_pairs_first(tmp_path: Path) -> None:
    data = _data(n=300, min_len=2, max_len=8)
    cur_cfg = {"kind": "difficulty", "score_after": 1, "stages": 3, "final_stage": "hard"}
    tr = _trainer(tmp_path, data, epochs=4, curriculum=cur_cfg)
    seen: dict[int, set[int]] = {}
    inner_take = tr.task.take

    def take(idx: Any, plan: Any) -> Any:
        seen.setdefault(tr.epoch, set()).update(idx.tolist())
        return inner_take(idx, plan)

    tr.task.take = take  # type: ignore[method-assign]
    tr.fit()
    scores = tr.task.scores
    assert scores is not None and scores.shape == (len(data[0]),)
    # the score is each pair's mean token cross-entropy under the model (recomputed here by hand, after training)
    b = data[0].take(torch.arange(5), tr.device)
    with torch.no_grad():
        tr.model.eval()
        logits = tr.model(b.src, b.src_lengths, b.decoder_input()).logits
    hand = [float(F.cross_entropy(logits[i][b.tgt[i] != PAD_ID], b.tgt[i][b.tgt[i] != PAD_ID])) for i in range(5)]
    now = tr.task.pair_log_perplexity(data[0])[:5]
    torch.testing.assert_close(now, torch.tensor(hand), rtol=1e-4, atol=1e-5)
    ranked = torch.sort(scores, stable=True).indices
    third = len(ranked) // 3
    assert len(seen[0]) == len(data[0])  # before scoring: every pair
    assert seen[1] == set(ranked[:third].tolist())  # stage 0: the lowest-perplexity third
    assert seen[3] == set(ranked[-third:].tolist())  # final_stage=hard: the highest-perplexity third alone
    with pytest.raises(ConfigError, match="scorer must be self"):
        validate({"task": "seq2seq", "train": {"curriculum": {"kind": "difficulty", "scorer": "runs/x"}}})
    with pytest.raises(ConfigError, match="has none, length and difficulty"):
        validate({"task": "seq2seq", "train": {"curriculum": {"kind": "adaptive"}}})
