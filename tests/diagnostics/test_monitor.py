"""The training monitor inside the real trainer: a gradient spike is flagged and each action does what it says;
a NaN loss never reaches the weights; per-module norms add up to the global norm; gates are sampled on schedule;
and the learning-rate scaling used by rollbacks keeps every schedule's shape."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from longshort.data.batching import TensorData
from longshort.diagnostics.monitor import AnomalyConfig, DiagnosticsConfig, TrainingDiverged, module_key
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.training.classify import classifier_trainer
from longshort.training.optim import SCHEDULES, OptimConfig, ScheduleConfig, build_schedule, scale_learning_rate
from longshort.training.trainer import TrainConfig, Trainer

SPIKE_STEP = 12


def _data(n: int, t: int = 6) -> TensorData:
    g = torch.Generator().manual_seed(n)
    y = torch.arange(n) % 2
    x = torch.randn(n, t, 3, generator=g) + y[:, None, None].float()
    return TensorData(X=x, lengths=torch.full((n,), t), y=y, aux=None)


def _trainer(tmp_path: Path, action: str = "log", epochs: int = 3, **diag: Any) -> Trainer:
    torch.manual_seed(0)
    model = SequenceClassifier(3, 2, ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1,
                                                      conv_dilations=[1], dropout=0.0))
    cfg = TrainConfig(progress="off", tensorboard=False, batch_size=16, epochs=epochs, schedule={"name": "constant"},
                      optim={"lr": 1e-3})
    d = DiagnosticsConfig(anomaly=AnomalyConfig(action=action, warmup=8), histograms=False, **diag)
    return classifier_trainer(cfg, model, _data(96), _data(16), num_classes=2, seed=0, run_dir=tmp_path, diagnostics=d)


def _inject(tr: Trainer, at: int, factor: float) -> dict[str, Any]:
    """Multiply the loss (so every gradient) by ``factor`` at step ``at``, once; record the weights around it."""
    seen: dict[str, Any] = {}
    compute, step = tr.task.compute_loss, tr.train_step

    def compute_loss(*a: Any, **k: Any) -> Any:
        loss, logits, aux = compute(*a, **k)
        if tr.step + 1 == at and not seen.get("fired"):
            seen["fired"] = True
            loss = loss * factor
        return loss, logits, aux

    def train_step(batch: Any) -> Any:
        if tr.step + 1 == at and not seen.get("fired"):
            seen["before"] = {k: v.clone() for k, v in tr.model.state_dict().items()}
            seen["adam_steps"] = [float(s["step"]) for s in tr.optimizer.state.values()]
            out = step(batch)
            seen["after"] = {k: v.clone() for k, v in tr.model.state_dict().items()}
            seen["adam_steps_after"] = [float(s["step"]) for s in tr.optimizer.state.values()]
            return out
        return step(batch)

    tr.task.compute_loss = compute_loss  # type: ignore[method-assign]
    tr.train_step = train_step  # type: ignore[method-assign]
    return seen


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_spike_is_flagged_and_logged_and_still_applied(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "log")
    seen = _inject(tr, SPIKE_STEP, 1e4)
    tr.fit()
    rows = _rows(tmp_path / "diagnostics" / "steps.csv")
    spike = next(r for r in rows if int(r["step"]) == SPIKE_STEP)
    assert spike["anomaly"] == "1" and spike["action"] == "log"
    assert float(spike["grad_norm"]) > float(spike["threshold"]) > 0
    assert sum(r["anomaly"] == "1" for r in rows) == 1  # nothing else in this calm run
    assert not _same(seen["before"], seen["after"])  # log: the update went through
    assert len(rows) == tr.step


def test_skip_leaves_weights_and_optimizer_state_untouched(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "skip")
    seen = _inject(tr, SPIKE_STEP, 1e4)
    tr.fit()
    assert _same(seen["before"], seen["after"])
    assert seen["adam_steps_after"] == seen["adam_steps"]  # no optimizer step: its moments did not move either
    spike = next(r for r in _rows(tmp_path / "diagnostics" / "steps.csv") if int(r["step"]) == SPIKE_STEP)
    assert spike["action"] == "skip"
    assert len(tr.history) == 3  # training went on


def test_rollback_reloads_the_last_checkpoint_with_a_lower_learning_rate(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "rollback")
    seen = _inject(tr, SPIKE_STEP, 1e4)  # steps_per_epoch is 6: the spike is in epoch 2, the checkpoint at step 6
    ckpt: dict[str, torch.Tensor] = {}
    save = tr.save

    def save_and_remember(tags: list[str]) -> None:
        save(tags)
        if tr.step == 6:
            ckpt.update({k: v.clone() for k, v in tr.model.state_dict().items()})

    tr.save = save_and_remember  # type: ignore[method-assign]
    tr.fit()
    assert "after" not in seen  # the spiked step never finished: it raised out to the rollback
    assert tr.monitor is not None and tr.monitor.rollbacks == 1
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    rows = _rows(tmp_path / "diagnostics" / "steps.csv")
    assert [r["action"] for r in rows if r["anomaly"] == "1"] == ["rollback"]
    steps = [int(r["step"]) for r in rows]
    assert steps.index(SPIKE_STEP) < len(steps) - 1 and steps[steps.index(SPIKE_STEP) + 1] == 7  # back to step 6
    redo = next(r for r in rows[steps.index(SPIKE_STEP) + 1:] if int(r["step"]) == 7)
    assert float(redo["lr"]) == pytest.approx(5e-4)
    assert len(tr.history) == 3 and tr.step == 18


def test_rollback_without_a_checkpoint_skips_instead(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "rollback")
    tr.save = lambda tags: None  # type: ignore[method-assign]  # as in tune trials: no checkpoints
    seen = _inject(tr, SPIKE_STEP, 1e4)
    tr.fit()
    assert _same(seen["before"], seen["after"])
    assert tr.monitor is not None and tr.monitor.rollbacks == 0


def test_a_nan_loss_never_reaches_the_weights(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "log")  # whatever the action, a non-finite step is dropped
    seen = _inject(tr, 3, math.nan)  # inside the warm-up: nothing to compare with yet, still caught
    tr.fit()
    assert _same(seen["before"], seen["after"])
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    row = next(r for r in _rows(tmp_path / "diagnostics" / "steps.csv") if int(r["step"]) == 3)
    assert row["action"] == "nonfinite" and row["anomaly"] == "1"


def test_endless_nan_losses_stop_training_with_a_clear_error(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, "log")
    tr.cfg.optim.lr = 1e-2
    tr.monitor.cfg.anomaly.max_nonfinite = 4  # type: ignore[union-attr]
    compute = tr.task.compute_loss
    tr.task.compute_loss = lambda *a, **k: (lambda r: (r[0] * math.nan, *r[1:]))(compute(*a, **k))  # type: ignore
    with pytest.raises(TrainingDiverged, match="4 consecutive steps"):
        tr.fit()


def test_per_module_norms_add_up_to_the_global_norm(tmp_path: Path) -> None:
    tr = _trainer(tmp_path)
    batch = next(tr._batches(0, 0))[1]
    loss, _, _ = tr.task.compute_loss(batch)
    loss.backward()
    assert tr.monitor is not None
    total, per = tr.monitor.norms()
    expected = torch.nn.utils.get_total_norm([p.grad for p in tr.model.parameters() if p.grad is not None])
    assert total == pytest.approx(float(expected), rel=1e-5)
    assert math.sqrt(sum(v * v for v in per.values())) == pytest.approx(total, rel=1e-5)
    assert set(per) == {"grad_norm/input_proj", "grad_norm/convs.0", "grad_norm/lstms.0", "grad_norm/head",
                        "grad_norm/aux_head"}
    assert module_key("module.lstms.3._checkpoint_wrapped_module.lstm.weight_hh_l0", frozenset({"lstms"})) == \
        "lstms.3"


def test_gates_are_sampled_every_n_steps_on_the_probe_batch(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, gates_every=4, epochs=2)
    tr.fit()
    rows = _rows(tmp_path / "diagnostics" / "gates.csv")
    assert sorted({int(r["step"]) for r in rows}) == [4, 8, 12]
    at4 = [r for r in rows if r["step"] == "4"]
    # one BiLSTM layer: 2 directions x (input, forget, output, memory)
    assert sorted((r["direction"], r["gate"]) for r in at4) == sorted(
        (d, g) for d in ("forward", "backward") for g in ("input", "forget", "output", "memory"))
    forget = next(r for r in at4 if r["gate"] == "forget")
    assert (float(forget["low"]), float(forget["high"])) == (0.3, 0.7)
    assert forget["flagged"] == str(int(not 0.3 <= float(forget["mean"]) <= 0.7))
    assert tr.model.training  # the probe forward left the model in train mode


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_scaling_the_learning_rate_keeps_each_schedules_shape(name: str) -> None:
    def lrs(factor: float | None) -> list[float]:
        p = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.SGD([p], lr=1e-2)
        sched = build_schedule(opt, ScheduleConfig(name=name, warmup=3, max_lr=5e-2, min_lr=1e-4, step_size=4,
                                                   restart_period=5), 20, OptimConfig(lr=1e-2).lr)
        out = []
        for i in range(20):
            if i == 8 and factor is not None:
                scale_learning_rate(opt, sched, factor)
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    plain, halved = lrs(None), lrs(0.5)
    assert halved[:8] == plain[:8]
    for a, b in zip(plain[8:], halved[8:], strict=True):
        assert b == pytest.approx(0.5 * a, rel=1e-6, abs=0.5e-4)  # min_lr floors shift by at most min_lr / 2
