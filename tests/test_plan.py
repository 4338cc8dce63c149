"""``longshort.plan``: parameter counts, memory per rank (checked against real tensors) and the time estimate."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pytest
import torch
from rich.console import Console

from longshort.config import Config, validate
from longshort.nn.classifier import SequenceClassifier
from longshort.plan import (
    MemoryRow,
    activation_bytes_per_sample,
    activation_profile,
    measured_peak,
    memory_rows,
    plan,
    print_plan,
    time_steps,
)

LENGTH, INPUT_DIM, NUM_CLASSES = 12, 9, 3  # builtin:regimes at length 12


def tiny(**train: Any) -> Config:
    return validate({
        "data": {"builtin": {"n": 60, "length": LENGTH}},
        "model": {"hidden_dim": 16, "num_heads": 2, "num_lstm_layers": 2, "conv_dilations": [1]},
        "train": {"batch_size": 8, "epochs": 1, **train},
    })


@pytest.fixture(scope="module")
def cfg() -> Config:
    return tiny()


@pytest.fixture(scope="module")
def model(cfg: Config) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(INPUT_DIM, NUM_CLASSES, cfg.model)


@pytest.fixture(scope="module")
def result(cfg: Config) -> dict[str, Any]:
    return plan(cfg, [1, 2, 4, 8], measure_steps=1, rss=False)  # the RSS probes: tests/e2e/test_distributed_cli.py


def numel(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def row(rows: list[MemoryRow], strategy: str, n: int) -> MemoryRow:
    return next(r for r in rows if r.strategy == strategy and r.nproc == n)


def test_parameter_counts(result: dict[str, Any], model: SequenceClassifier) -> None:
    assert (result["input_dim"], result["num_classes"], result["length"]) == (INPUT_DIM, NUM_CLASSES, LENGTH)
    assert result["total_params"] == sum(result["components"].values()) == numel(model)
    assert result["components"] == model.parameter_counts()


def test_ddp_bytes_and_adamw_state_counted_exactly(cfg: Config, model: SequenceClassifier) -> None:
    rows = memory_rows(model, cfg, [1, 2], 0.0)
    n, tensors = numel(model), len(list(model.parameters()))
    for r in (row(rows, "none", 1), row(rows, "ddp", 2)):
        assert r.params == r.grads == 4 * n
        assert r.optimizer == 8 * n + 4 * tensors  # exp_avg, exp_avg_sq, and a 0-dim fp32 step per tensor
        assert r.gathered == 0 and r.total == r.params + r.grads + r.optimizer + r.activations
    real = measured_peak(model, cfg, 2, LENGTH, INPUT_DIM, NUM_CLASSES)  # AdamW's state after a real step
    assert (real["params"], real["grads"], real["optimizer"]) == (4 * n, 4 * n, 8 * n + 4 * tensors)


def test_sgd_momentum_state(model: SequenceClassifier) -> None:
    sgd = tiny(optim={"name": "sgd", "momentum": 0.9})
    r = row(memory_rows(model, sgd, [1], 0.0), "none", 1)
    assert r.optimizer == 4 * numel(model)
    assert measured_peak(model, sgd, 2, LENGTH, INPUT_DIM, NUM_CLASSES)["optimizer"] == r.optimizer
    plain = tiny(optim={"name": "sgd", "momentum": 0.0})
    assert row(memory_rows(model, plain, [1], 0.0), "none", 1).optimizer == 0


def test_fsdp_shards_per_tensor(cfg: Config, model: SequenceClassifier) -> None:
    rows = memory_rows(model, cfg, [1, 2, 3], 0.0)
    ddp, f2 = row(rows, "ddp", 2), row(rows, "fsdp", 2)
    assert f2.params + f2.grads + f2.optimizer <= 0.55 * (ddp.params + ddp.grads + ddp.optimizer)
    shard3 = sum(math.ceil(p.shape[0] / 3) * (p.numel() // p.shape[0]) for p in model.parameters())
    f3 = row(rows, "fsdp", 3)
    assert f3.params == f3.grads == 4 * shard3 and f3.optimizer == 8 * shard3 + 4 * len(list(model.parameters()))
    assert row(rows, "fsdp", 1).params == ddp.params
    units = [*model.convs, *model.lstms, *model.attns.values()]
    in_units = {id(p) for u in units for p in u.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    assert f2.gathered == 4 * max(root, *(numel(u) for u in units))


def test_activations_scale_linearly(model: SequenceClassifier) -> None:
    per_sample, fixed = activation_profile(model, LENGTH, INPUT_DIM)
    assert per_sample == activation_bytes_per_sample(model, LENGTH, INPUT_DIM) > 0 and fixed >= 0
    a4 = row(memory_rows(model, tiny(batch_size=4), [1], per_sample), "none", 1).activations
    a8 = row(memory_rows(model, tiny(batch_size=8), [1], per_sample), "none", 1).activations
    assert a8 == 2 * a4
    rows = memory_rows(model, tiny(batch_size=8), [1, 2], per_sample, fixed)
    assert row(rows, "none", 1).activations == a8 + fixed
    assert row(rows, "ddp", 2).activations == a4 + fixed == row(rows, "fsdp", 2).activations


@pytest.mark.parametrize("batch", [8, 16])
def test_estimate_matches_measured_peak(model: SequenceClassifier, batch: int) -> None:
    est = row(memory_rows(model, tiny(batch_size=batch), [1], *activation_profile(model, LENGTH, INPUT_DIM)),
              "none", 1)
    real = measured_peak(model, tiny(batch_size=batch), batch, LENGTH, INPUT_DIM, NUM_CLASSES)
    assert real["total"] == real["params"] + real["grads"] + real["optimizer"] + real["activations"]
    assert 0.8 <= est.total / real["total"] <= 1.2


def test_measurements_leave_the_model_alone(cfg: Config, model: SequenceClassifier) -> None:
    before = [p.detach().clone() for p in model.parameters()]
    model.eval()
    measured_peak(model, cfg, 2, LENGTH, INPUT_DIM, NUM_CLASSES)
    assert time_steps(model, cfg, 2, LENGTH, INPUT_DIM, NUM_CLASSES, steps=1) > 0
    activation_bytes_per_sample(model, LENGTH, INPUT_DIM)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.train()


def test_plan_time_and_json(result: dict[str, Any]) -> None:
    json.dumps(result)
    assert result["steps_per_epoch"] == math.ceil(result["train_size"] / 8) and result["epochs"] == 1
    assert set(result["estimated_seconds"]) == {"1", "2", "4", "8"}
    assert result["per_rank_batch"] == {"1": 8, "2": 4, "4": 2, "8": 1}
    for n, est in result["estimated_seconds"].items():
        assert result["seconds_per_step"][n] > 0
        assert est == pytest.approx(result["seconds_per_step"][n] * result["steps_per_epoch"])
    strategies = [(r["strategy"], r["nproc"]) for r in result["memory"]]
    assert strategies[0] == ("none", 1) and ("ddp", 8) in strategies and ("fsdp", 8) in strategies
    assert not any(s == "none" and n > 1 for s, n in strategies)
    assert any("ideal scaling" in note for note in result["notes"])


def test_print_plan(result: dict[str, Any]) -> None:
    buf = io.StringIO()
    print_plan(result, Console(file=buf, width=150))
    text = buf.getvalue()
    for heading in ("parameters by component", "memory per rank (MiB)", "training time", "fsdp", "total"):
        assert heading in text
