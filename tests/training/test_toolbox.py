"""The training toolbox inside the Trainer: each technique switched on from TrainConfig changes what it should, when
it should, and a run with all of them on resumes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import longshort.training.classify as classify_mod
from longshort.config import apply_overrides, validate
from longshort.data.batching import TensorData
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.training.classify import classifier_trainer
from longshort.training.optim import Lookahead
from longshort.training.recipes import preset_phases
from longshort.training.trainer import TrainConfig, Trainer


def _data(n: int = 40, t: int = 6, aux: bool = False, ragged: bool = False) -> TensorData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, t, 3, generator=g) + y[:, None, None].float()
    lengths = torch.full((n,), t)
    if ragged:
        lengths = 2 + torch.arange(n) % (t - 1)
        x = x * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    return TensorData(X=x, lengths=lengths, y=y, aux=torch.randn(n, generator=g) if aux else None)


def _model(spectral_norm: bool = False, layers: int = 1) -> SequenceClassifier:
    torch.manual_seed(0)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=layers, conv_dilations=[1], dropout=0.25,
                           spectral_norm=spectral_norm)
    return SequenceClassifier(3, 2, cfg)


def _trainer(tmp_path: Path, data: TensorData | None = None, model: nn.Module | None = None,
             **train: Any) -> Trainer:
    cfg = TrainConfig(**{"progress": "off", "tensorboard": False, "batch_size": 8, **train})
    data = data if data is not None else _data()
    return classifier_trainer(cfg, model if model is not None else _model(), data, _data(16, aux=data.aux is not None),
                   num_classes=2, seed=0, run_dir=tmp_path)


class _Record:
    """Wraps Trainer.train_step to record, per step, the epoch, the batch it got and the run's settings."""

    def __init__(self, tr: Trainer) -> None:
        self.rows: list[dict[str, Any]] = []
        inner = tr.train_step

        def step(batch: Any) -> Any:
            drop = next(m for m in tr.model.modules() if isinstance(m, nn.Dropout))
            self.rows.append({"epoch": tr.epoch, "n": len(batch), "T": batch.x.shape[1],
                              "max_len": int(batch.lengths.max()), "dropout": drop.p,
                              "lr": tr.optimizer.param_groups[0]["lr"], "clip": tr.clipper.threshold})
            return inner(batch)

        tr.train_step = step  # type: ignore[method-assign]

    def epoch(self, e: int) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["epoch"] == e]


# -- phases ---------------------------------------------------------------------------------------------------


def test_phases_change_batch_size_dropout_lr_and_clipping_when_they_should(tmp_path: Path) -> None:
    phases = [{"name": "warm", "epochs": 1, "batch_size": 4, "dropout": 0.1, "lr": 1e-5, "grad_clip": 0.5},
              {"name": "main", "epochs": 2, "batch_size": 16, "dropout": 0.4}]
    # epochs is the phases' sum, whatever was written
    tr = _trainer(tmp_path, model=_model(layers=2), phases=phases, epochs=99)
    assert tr.cfg.epochs == 3
    rec = _Record(tr)
    tr.fit()
    warm, main1, main2 = rec.epoch(0), rec.epoch(1), rec.epoch(2)
    assert [r["n"] for r in warm] == [4] * 10  # 40 examples in batches of 4
    assert [r["n"] for r in main1] == [16, 16, 8] == [r["n"] for r in main2]
    assert {r["dropout"] for r in warm} == {0.1} and {r["dropout"] for r in main1 + main2} == {0.4}
    assert {r["lr"] for r in warm} == {1e-5}  # the phase fixes the lr: the schedule pauses
    assert len({r["lr"] for r in main1 + main2}) > 1  # then the schedule drives it again
    assert {r["clip"] for r in warm} == {0.5} and {r["clip"] for r in main1 + main2} == {1.0}
    assert [h["phase"] for h in tr.history] == [1, 2, 2]
    # Every dropout of the model follows the phase, attention's included.
    mha = next(m for m in tr.model.modules() if isinstance(m, nn.MultiheadAttention))
    assert mha.dropout == 0.4
    # The schedule spans the scheduled (main) epochs only: 2 epochs of 3 batches, OneCycle's extra step included.
    assert tr.schedule.total_steps == 2 * 3 + 1


def test_phase_without_a_setting_keeps_the_runs_own(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, phases=[{"epochs": 1, "dropout": 0.05}, {"epochs": 1}], batch_size=10)
    rec = _Record(tr)
    tr.fit()
    assert {r["dropout"] for r in rec.epoch(0)} == {0.05}
    assert {r["dropout"] for r in rec.epoch(1)} == {0.25}  # back to the model's configured dropout
    assert {r["n"] for r in rec.rows} == {10}


def test_seed_phase_preset_scales_the_seeds_schedule() -> None:
    full = preset_phases("seed", 120)
    assert [(p.name, p.epochs, p.lr, p.dropout, p.grad_clip, p.batch_size) for p in full] == [
        ("warmup", 10, 1e-5, 0.1, 0.5, 32), ("main", 90, 1e-4, 0.3, 1.0, 64), ("finetune", 20, 1e-5, 0.2, 0.5, 32)]
    assert [p.epochs for p in preset_phases("seed", 12)] == [1, 9, 2]
    assert [p.epochs for p in preset_phases("seed", 3)] == [1, 1, 1]
    assert TrainConfig(phase_preset="seed", epochs=24).resolved_phases() == preset_phases("seed", 24)
    with pytest.raises(ValueError, match="epochs >= 3"):
        TrainConfig(phase_preset="seed", epochs=2)
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(phase_preset="seed", phases=[{"epochs": 3}])


# -- recipes --------------------------------------------------------------------------------------------------


def test_seed_recipe_sets_the_seeds_loop_and_scales_its_start_epochs() -> None:
    c = TrainConfig(recipe="seed")
    assert c.epochs == 100 and c.early_stopping.patience is None
    assert c.optim.name == "adamw" and c.optim.lr == 1e-4 and c.optim.betas == (0.9, 0.95)
    assert c.optim.lookahead.enabled and (c.optim.lookahead.k, c.optim.lookahead.alpha) == (5, 0.5)
    assert c.optim.grad_clip == 1.0 and c.optim.clip_mode == "norm"
    assert (c.optim.grad_noise.std, c.optim.grad_noise.start_epoch) == (0.01, 50)
    assert (c.schedule.name, c.schedule.max_lr, c.schedule.interval) == ("onecycle", 1e-3, "batch")
    assert (c.loss.name, c.loss.focal_alpha, c.loss.focal_gamma, c.loss.aux_weight) == ("adaptive", 0.25, 2.0, 0.3)
    assert c.loss.resolved_confidence_penalty == 0.1 and c.loss.focal_normalize and not c.loss.class_weights
    assert c.augment.start_epoch == 10
    assert (c.augment.noise.prob, c.augment.time_shift.prob, c.augment.magnitude_warp.prob) == (0.3, 0.2, 0.25)
    assert (c.mixup.prob, c.mixup.alpha, c.mixup.start_epoch) == (0.5, 0.2, 20)
    short = TrainConfig(recipe="seed", epochs=20)
    assert (short.augment.start_epoch, short.mixup.start_epoch, short.optim.grad_noise.start_epoch) == (2, 4, 10)


def test_your_values_win_over_the_recipe_from_yaml_and_overrides() -> None:
    c = TrainConfig(recipe="seed", optim={"lookahead": {"k": 3}}, mixup={"start_epoch": 7})
    assert c.optim.lookahead.enabled and c.optim.lookahead.k == 3  # the rest of the section stays the recipe's
    assert c.mixup.start_epoch == 7 and c.mixup.prob == 0.5
    cfg = validate(apply_overrides({}, ["train.recipe=seed", "train.mixup.prob=0", "train.loss.name=focal"]))
    assert cfg.train.mixup.prob == 0 and cfg.train.loss.name == "focal" and cfg.train.optim.lookahead.enabled


def test_plain_recipe_is_cross_entropy_and_adamw_only() -> None:
    c = TrainConfig(recipe="plain")
    assert (c.loss.name, c.loss.class_weights, c.loss.label_smoothing, c.loss.aux_weight) == (
        "cross_entropy", False, 0.0, 0.0)
    assert c.optim.name == "adamw" and c.optim.grad_clip is None and not c.optim.lookahead.enabled
    assert c.optim.grad_noise.std == 0 and c.mixup.prob == 0 and c.augment.noise.prob == 0


def test_a_resolved_recipe_round_trips_through_its_dump() -> None:
    c = TrainConfig(recipe="seed", epochs=30)
    again = TrainConfig(**c.model_dump())
    assert again == c


def test_unknown_recipe_is_rejected_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="plain"):
        TrainConfig(recipe="fancy")


# -- augmentation, mixup, gradient noise: from their start epoch on ------------------------------------------


def test_augmentation_mixup_and_noise_start_at_their_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, list[int]] = {"augment": [], "mixup": []}
    tr = _trainer(tmp_path, epochs=3, batch_size=10,
                  augment={"start_epoch": 1, "noise": {"prob": 1.0}},
                  mixup={"prob": 1.0, "start_epoch": 2},
                  optim={"grad_noise": {"std": 0.01, "start_epoch": 2}})
    for name in calls:
        real = getattr(classify_mod, name)

        def spy(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            calls[_name].append(tr.epoch)
            return _real(*a, **k)

        monkeypatch.setattr(classify_mod, name, spy)
    noise_t = []
    rec = _Record(tr)
    for _ in range(3):
        tr.epoch < 3 and tr._run_epoch()
        noise_t.append(tr.noise.t)
    assert calls["augment"] == [1] * 4 + [2] * 4
    assert calls["mixup"] == [2] * 4
    assert noise_t == [0, 0, 4]  # one noisy step per batch of epoch 2 only
    assert len(rec.rows) == 12


def test_mixup_loss_and_accuracy_use_both_labels_inside_the_trainer(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    tr = _trainer(tmp_path, epochs=1, batch_size=40, mixup={"prob": 1.0, "alpha": 0.4})
    mixed_seen: list[Any] = []
    real_mixup = classify_mod.mixup

    def spy_mixup(*a: Any, **k: Any) -> Any:
        mixed_seen.append(real_mixup(*a, **k))
        return mixed_seen[-1]

    monkeypatch.setattr(classify_mod, "mixup", spy_mixup)
    outs: list[tuple[Any, Any]] = []
    inner = tr.task.compute_loss

    def spy_loss(batch: Any, mixed: Any = None) -> Any:
        loss, logits, se = inner(batch, mixed)
        outs.append((loss.detach(), logits.detach()))
        return loss, logits, se

    tr.task.compute_loss = spy_loss  # type: ignore[method-assign]
    tr.fit()
    (mixed,), ((loss, logits),) = mixed_seen, outs
    assert 0 < mixed.lam < 1 and not torch.equal(mixed.y_a, mixed.y_b)
    ce = torch.nn.functional.cross_entropy
    w = tr.task.loss_fn  # class-weighted cross-entropy by default
    expected = mixed.lam * w(logits, mixed.y_a) + (1 - mixed.lam) * w(logits, mixed.y_b)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss) != pytest.approx(float(ce(logits, mixed.y_a)), rel=1e-3)
    pred = logits.argmax(1)
    acc = (mixed.lam * (pred == mixed.y_a).sum() + (1 - mixed.lam) * (pred == mixed.y_b).sum()) / 40
    assert tr.history[0]["train_accuracy"] == pytest.approx(float(acc))


def test_augmentation_leaves_padding_zero_inside_the_trainer(tmp_path: Path) -> None:
    data = _data(ragged=True)
    tr = _trainer(tmp_path, data=data, epochs=1, batch_size=40,
                  augment={"noise": {"prob": 1.0, "std": 1.0}, "time_warp": {"prob": 1.0},
                           "magnitude_warp": {"prob": 1.0}})
    seen: list[Any] = []
    inner = tr.task.compute_loss

    def spy(batch: Any, mixed: Any = None) -> Any:
        seen.append(batch)
        return inner(batch, mixed)

    tr.task.compute_loss = spy  # type: ignore[method-assign]
    tr.fit()
    b = seen[0]
    pad = torch.arange(b.x.shape[1])[None, :] >= b.lengths[:, None]
    assert pad.any() and (b.x[pad] == 0).all()
    valid = ~pad
    raw = data.X[: b.x.shape[0], : b.x.shape[1]]
    assert not torch.allclose(b.x[valid], raw[valid])  # but the valid steps did change (order aside)


# -- curriculum inside the trainer ----------------------------------------------------------------------------


def test_length_curriculum_never_feeds_a_step_beyond_the_limit(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, data=_data(t=12), epochs=4, batch_size=10,
                  curriculum={"kind": "length", "start_length": 3, "rate": 3})
    rec = _Record(tr)
    tr.fit()
    for e, limit in enumerate([3, 6, 9, 12]):
        rows = rec.epoch(e)
        assert len(rows) == 4
        assert max(r["T"] for r in rows) == limit and max(r["max_len"] for r in rows) == limit


def test_filtered_length_curriculum_uses_fewer_examples_early(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, data=_data(t=6, ragged=True), epochs=3, batch_size=4,
                  curriculum={"kind": "length", "start_length": 3, "rate": 1.5, "mode": "filter"})
    rec = _Record(tr)
    tr.fit()
    n = [sum(r["n"] for r in rec.epoch(e)) for e in range(3)]
    lengths = 2 + torch.arange(40) % 5
    assert n == [int((lengths <= lim).sum()) for lim in (3, 4, 6)]
    assert all(r["max_len"] <= lim for e, lim in enumerate((3, 4, 6)) for r in rec.epoch(e))


def test_difficulty_curriculum_scores_once_and_trains_easiest_first(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=4, batch_size=5,
                  curriculum={"kind": "difficulty", "score_after": 1, "stages": 3})
    rec = _Record(tr)
    tr.fit()
    assert tr.task.scores is not None and tr.task.scores.shape == (40,)
    n = [sum(r["n"] for r in rec.epoch(e)) for e in range(4)]
    assert n[0] == 40 and n[1] < n[2] < n[3] == 40  # cumulative stages after one plain epoch


def test_performance_task_weighting_changes_the_weights_each_epoch(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, data=_data(aux=True), epochs=3, batch_size=10,
                  loss={"aux_weight": 0.3}, tasks={"weighting": "performance", "aux_start_epoch": 1})
    weights = []
    for _ in range(3):
        tr._run_epoch()
        weights.append(dict(tr.task.task_w))
    assert weights[0] == {"main": 1.0, "aux": 0.0}  # the aux task is introduced in epoch 1
    assert weights[1]["aux"] > 0 and weights[1]["main"] + weights[1]["aux"] == pytest.approx(2.0)
    assert "train_aux_mse" in tr.history[0] and "val_aux_mse" in tr.history[0]


# -- regularisation -------------------------------------------------------------------------------------------


def test_spectral_norm_keeps_every_linear_at_unit_spectral_norm(tmp_path: Path) -> None:
    model = _model(spectral_norm=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in linears)
    tr = _trainer(tmp_path, model=model, epochs=2, batch_size=10, optim={"lr": 1e-2},
                  schedule={"name": "constant"})
    tr.fit()
    model.eval()
    for m in linears:
        assert torch.linalg.matrix_norm(m.weight.detach(), ord=2) == pytest.approx(1.0, abs=0.05)
    plain = _model()
    big = max(float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) for m in plain.modules()
              if isinstance(m, nn.Linear))
    assert big > 1.05  # without it some Linear is well above 1, so the check above is not vacuous


def test_lookahead_sync_each_epoch_keeps_lookaheads_own_weights(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=2, batch_size=16,  # 3 steps an epoch: never a multiple of k=5
                  optim={"lookahead": {"enabled": True, "sync_each_epoch": True}})
    tr.fit()
    assert isinstance(tr.optimizer, Lookahead) and tr.optimizer.inner_steps == 0
    for p in tr.model.parameters():
        assert torch.equal(p.detach(), tr.optimizer.slow[p])
    off = _trainer(tmp_path / "off", epochs=2, batch_size=16, optim={"lookahead": {"enabled": True}})
    off.fit()
    assert off.optimizer.inner_steps == 6
    assert not all(torch.equal(p.detach(), off.optimizer.slow[p]) for p in off.model.parameters())


# -- the whole toolbox resumes exactly ------------------------------------------------------------------------


class _Stop(Exception):
    pass


def test_a_run_with_every_technique_on_resumes_bit_identically(tmp_path: Path) -> None:
    train = {"epochs": 4, "batch_size": 8, "checkpoint_every": 3, "recipe": "seed",
             "loss": {"aux_weight": 0.3}, "optim": {"clip_mode": "adaptive"},
             "augment": {"time_warp": {"prob": 0.5}, "window_slice": {"prob": 0.5}},
             "curriculum": {"kind": "adaptive", "score_after": 1}}
    data = _data(aux=True, ragged=True)
    full = _trainer(tmp_path / "full", data=data, **train)
    assert isinstance(full.optimizer, Lookahead)
    full.fit()

    cut = _trainer(tmp_path / "cut", data=data, **train)
    inner = cut.train_step

    def step(batch: Any) -> Any:
        if cut.step == 13:  # epoch 2, batch 3: after the mid-epoch checkpoint at step 12
            raise _Stop
        return inner(batch)

    cut.train_step = step  # type: ignore[method-assign]
    with pytest.raises(_Stop):
        cut.fit()
    again = _trainer(tmp_path / "cut", data=data, **train)
    assert again.restore() and (again.epoch, again.batch) == (2, 2)
    again.fit()
    for (name, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    slow_a = full.optimizer.state_dict()["lookahead"]["slow"]
    slow_b = again.optimizer.state_dict()["lookahead"]["slow"]
    assert all(torch.equal(a, b) for a, b in zip(slow_a, slow_b, strict=True))
    assert full.noise.t == again.noise.t > 0 and full.clipper.ema == again.clipper.ema
    strip = [{k: v for k, v in h.items() if k != "samples_per_s"} for h in full.history]
    assert strip == [{k: v for k, v in h.items() if k != "samples_per_s"} for h in again.history]


def test_seed_recipe_with_phases_scales_its_start_epochs_to_the_phases_total() -> None:
    c = TrainConfig(recipe="seed", phases=[{"epochs": 4}, {"epochs": 16}])
    assert c.epochs == 20 and not c.loss.class_weights  # the seed's loss is unweighted
    assert (c.augment.start_epoch, c.mixup.start_epoch, c.optim.grad_noise.start_epoch) == (2, 4, 10)


def test_two_identical_phases_are_numbered_apart(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, phases=[{"epochs": 1}, {"epochs": 1}], batch_size=20)
    tr.fit()
    assert [h["phase"] for h in tr.history] == [1, 2]


def test_a_recipe_config_keeps_its_sections_typed_after_an_assignment() -> None:
    """``train.recipe=seed`` lays values under the sections; a later assignment (what sizing.resolve does to
    ``train.epochs``) re-runs that merge, and the sections must stay models, not become dicts."""
    from longshort.config import validate
    from longshort.training.config import LossConfig, OptimConfig

    cfg = validate({"train": {"recipe": "seed", "epochs": 3}})
    before = cfg.model_dump(mode="json")
    cfg.train.epochs = 5
    assert isinstance(cfg.train.optim, OptimConfig) and isinstance(cfg.train.loss, LossConfig)
    assert cfg.train.optim.lookahead.enabled  # the recipe's value survives
    before["train"]["epochs"] = 5
    assert cfg.model_dump(mode="json", warnings="error") == before
