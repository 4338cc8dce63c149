from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from longshort.data.batching import TensorData, batch_indices, epoch_order
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.training.callbacks import EarlyStopping, EarlyStoppingConfig
from longshort.training.checkpoint import checkpoint_path, save_checkpoint
from longshort.training.classify import classifier_trainer
from longshort.training.losses import balanced_class_weights
from longshort.training.trainer import TrainConfig, Trainer, resolve_precision


def _data(n: int = 40, t: int = 6) -> TensorData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, t, 3, generator=g) + y[:, None, None].float()
    return TensorData(X=x, lengths=torch.full((n,), t), y=y, aux=None)


def _trainer(tmp_path: Path, **train: object) -> Trainer:
    torch.manual_seed(0)
    model = SequenceClassifier(3, 2, ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1,
                                                      conv_dilations=[1]))
    cfg = TrainConfig(progress="off", tensorboard=False, batch_size=8, **train)
    return classifier_trainer(cfg, model, _data(), _data(16), num_classes=2, seed=0, run_dir=tmp_path)


def test_onecycle_is_stepped_per_batch_over_the_whole_run(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=8)
    total = tr.steps_per_epoch * 8
    lrs = []
    for i in range(total):
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        if i < total - 1:
            tr.optimizer.step()  # no gradients: changes nothing, keeps torch's step-order check quiet
            tr.schedule.step()
    assert lrs[0] == pytest.approx(1e-4)  # starts at optim.lr
    assert max(lrs) == pytest.approx(1e-3)  # peaks at max_lr
    peak = lrs.index(max(lrs))
    assert peak == round(0.1 * len(lrs)) - 1 or peak == round(0.1 * len(lrs))  # after 10% warm-up
    tail = lrs[peak:]
    assert all(b <= a for a, b in itertools.pairwise(tail))  # never turns back up at the end
    tr.optimizer.step()
    tr.schedule.step()  # the run's last step
    assert tr.schedule.get_last_lr()[0] == pytest.approx(1e-8)  # max_lr / (div * final_div)


def test_onecycle_survives_runs_too_short_for_its_warm_up(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=1)  # 5 steps: 10% warm-up would be half a step
    tr.fit()
    assert len(tr.history) == 1


def test_adamw_uses_the_seed_recipe(tmp_path: Path) -> None:
    tr = _trainer(tmp_path)
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    for _ in range(3):
        tr.optimizer.step()
        tr.schedule.step()
    g = tr.optimizer.param_groups[0]
    assert g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.95)  # OneCycle does not cycle beta1


def test_gradient_clipping_bounds_the_update_norm(tmp_path: Path) -> None:
    tr = _trainer(tmp_path)
    tr.cfg.optim.grad_clip = 1e-3
    seen = []
    orig = tr.optimizer.step

    def spy(*a: object, **k: object) -> object:
        seen.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in tr.model.parameters() if p.grad is not None)))
        return orig(*a, **k)

    tr.optimizer.step = spy  # type: ignore[method-assign]
    with pytest.warns(UserWarning, match="overridden"):  # torch notices the spy; harmless here
        tr.fit()
    assert seen and max(seen) <= 1e-3 * 1.0001


def test_fit_learns_and_writes_last_and_best(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=3)
    tr.cfg.schedule.max_lr = 1e-2
    hist = tr.fit()
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert checkpoint_path(tmp_path / "checkpoints", "last") is not None
    assert checkpoint_path(tmp_path / "checkpoints", "best") is not None


def test_early_stopping_counts_epochs_without_improvement() -> None:
    es = EarlyStopping(EarlyStoppingConfig(metric="val_accuracy", patience=2))
    assert es.update({"epoch": 1, "val_accuracy": 0.5})
    assert not es.update({"epoch": 2, "val_accuracy": 0.5})
    assert not es.should_stop
    assert not es.update({"epoch": 3, "val_accuracy": 0.4})
    assert es.should_stop and es.best_epoch == 1 and es.best_value == 0.5
    loss = EarlyStopping(EarlyStoppingConfig(metric="val_loss"))
    loss.update({"epoch": 1, "val_loss": 1.0})
    assert loss.update({"epoch": 2, "val_loss": 0.9})  # lower loss is better


def test_data_order_depends_only_on_seed_and_epoch() -> None:
    assert torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 2))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 3))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 4, 2))
    assert [len(b) for b in batch_indices(torch.arange(10), 4)] == [4, 4, 2]


def test_class_weights_are_balanced_from_training_labels() -> None:
    w = balanced_class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 0.0]))


def test_explicit_precisions_map_to_their_autocast_dtype() -> None:
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float16
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_precision("fp32", torch.device("cpu")) is None


def _cpu(monkeypatch: pytest.MonkeyPatch, features: list[str], speedup: float) -> list[int]:
    """Pretend this CPU has ``features`` and the probe measures ``speedup``; returns the widths probed."""
    from longshort.training import precision

    monkeypatch.delenv("LONGSHORT_CPU_BF16", raising=False)
    probed: list[int] = []
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: features)
    monkeypatch.setattr(precision, "probe_bf16_speedup", lambda w: probed.append(w) or speedup)
    return probed


def test_auto_stays_fp32_on_a_cpu_without_native_bf16_whatever_a_probe_would_say(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    probed = _cpu(monkeypatch, [], speedup=5.0)
    tr = _trainer(tmp_path, epochs=1, precision="auto")
    assert tr.amp_dtype is None and tr.cfg.precision == "fp32"  # written back: config.yaml records fp32
    assert probed == []  # emulated bf16 is never tried
    assert "auto: train.precision=fp32 (this CPU has no native bf16" in capsys.readouterr().out


def test_auto_picks_bf16_autocast_on_a_native_bf16_cpu_only_when_the_probe_shows_it_faster(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from longshort.training.precision import MIN_SPEEDUP

    probed = _cpu(monkeypatch, ["AVX512-BF16"], speedup=MIN_SPEEDUP + 0.5)
    tr = _trainer(tmp_path / "fast", epochs=1, precision="auto")
    assert tr.amp_dtype == torch.bfloat16 and tr.cfg.precision == "bf16"
    assert probed == [16]  # the commonest linear width: the heads read mean+max pooling, 2 x hidden_dim 8
    out = capsys.readouterr().out
    assert "auto: train.precision=bf16 (bf16 autocast: this CPU has AVX512-BF16" in out and "1.70x" in out
    hist = tr.fit()
    assert math.isfinite(hist[0]["train_loss"])

    _cpu(monkeypatch, ["AMX-BF16", "AVX512-BF16"], speedup=MIN_SPEEDUP - 0.15)
    tr = _trainer(tmp_path / "slow", epochs=1, precision="auto")
    assert tr.amp_dtype is None and tr.cfg.precision == "fp32"
    assert "bf16 only 1.05x as fast as fp32" in capsys.readouterr().out

    probed = _cpu(monkeypatch, ["AVX512-BF16"], speedup=3.0)
    monkeypatch.setenv("LONGSHORT_CPU_BF16", "0")  # the opt-out: no probe, fp32
    assert resolve_precision("auto", torch.device("cpu")) is None and probed == []


def test_checkpoint_tags_point_only_at_complete_checkpoints(tmp_path: Path) -> None:
    m = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, ["last", "best"], m, {"step": 1}, 1)
    (tmp_path / ".step-000000002.partial").mkdir()  # what a kill during the next save leaves behind
    assert checkpoint_path(tmp_path, "last") == tmp_path / "step-000000001"
    save_checkpoint(tmp_path, ["last"], m, {"step": 2}, 2)
    save_checkpoint(tmp_path, ["last"], m, {"step": 3}, 3)
    kept = sorted(p.name for p in tmp_path.glob("step-*"))
    assert kept == ["step-000000001", "step-000000003"]  # best (1) and last (3); 2 was dropped


def test_bf16_autocast_on_cpu_trains_with_finite_loss(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, epochs=1, precision="bf16")
    assert tr.amp_dtype == torch.bfloat16
    hist = tr.fit()
    assert math.isfinite(hist[0]["train_loss"]) and math.isfinite(hist[0]["val_loss"])


def test_trainer_drives_the_adaptive_dropout_schedule(tmp_path: Path) -> None:
    from longshort.nn.lstm import CellConfig

    torch.manual_seed(0)
    cell = CellConfig(zoneout=0.2, dropout_decay=0.5)
    model = SequenceClassifier(3, 2, ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1,
                                                      conv_dilations=[1], cell=cell))
    cfg = TrainConfig(progress="off", tensorboard=False, batch_size=8, epochs=3)
    tr = classifier_trainer(cfg, model, _data(), None, num_classes=2, seed=0, run_dir=tmp_path)
    tr.fit()
    assert model.lstms[0].lstm.dropout_scale == pytest.approx(math.exp(-0.5 * 2))  # set at the last epoch's start
