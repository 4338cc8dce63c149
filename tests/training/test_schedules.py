"""Learning-rate schedules (training/optim.py): each curve against its closed form, warm-up, resume."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from longshort.training.optim import ScheduleConfig, build_schedule

LR = 0.1


def _setup(cfg: ScheduleConfig, total: int, lr: float = LR) -> tuple[torch.optim.Optimizer, Any]:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=lr)
    return opt, build_schedule(opt, cfg, total, lr)


def _run(opt: torch.optim.Optimizer, sched: Any, steps: int) -> list[float]:
    """The lr used by each of ``steps`` optimizer steps (the schedule stepped after each, as the trainer does)."""
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: a no-op that keeps torch's step-order check quiet
        sched.step()
    return lrs


def _curve(cfg: ScheduleConfig, total: int, lr: float = LR) -> list[float]:
    """The lr at t = 0 .. total (the last is after the run's final step)."""
    opt, sched = _setup(cfg, total, lr)
    return [*_run(opt, sched, total), opt.param_groups[0]["lr"]]


def _cos(t: float, period: float, hi: float, lo: float) -> float:
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * t / period))


def _restart_ref(t: int, t0: int, mult: int, hi: float, lo: float) -> float:
    """Cosine with warm restarts by walking the periods T_0, T_0 * mult, ... (reference, not torch's formula)."""
    start, period = 0, t0
    while t >= start + period:
        start, period = start + period, period * mult
    return _cos(t - start, period, hi, lo)


def _onecycle_ref(t: int, total_steps: int, base: float, peak: float, pct: float) -> float:
    """optim.py's OneCycle: total_steps + 1 cycle steps, a whole-step warm-up of >= 2 steps, cos both ways."""
    total = max(total_steps + 1, 4)
    warm = min(max(round(pct * total_steps), 2), total // 2)
    if t <= warm - 1:
        return _cos(t, warm - 1, base, peak)  # from base up to the peak at t = warm - 1
    return _cos(t - (warm - 1), total - warm, peak, base / 1e4)  # down to base / final_div


CLOSED_FORM = {
    "constant": (ScheduleConfig(name="constant"), lambda t, n: LR),
    "cosine": (ScheduleConfig(name="cosine", min_lr=0.01), lambda t, n: _cos(t, n, LR, 0.01)),
    "cosine_restarts": (
        ScheduleConfig(name="cosine_restarts", restart_period=3, restart_mult=2, min_lr=0.001),
        lambda t, n: _restart_ref(t, 3, 2, LR, 0.001),
    ),
    "exponential": (
        ScheduleConfig(name="exponential", gamma=math.exp(-0.2)),
        lambda t, n: LR * math.exp(-0.2 * t),  # gamma = exp(-lambda)
    ),
    "step": (ScheduleConfig(name="step", gamma=0.5, step_size=4), lambda t, n: LR * 0.5 ** (t // 4)),
    "onecycle": (
        ScheduleConfig(name="onecycle", max_lr=1.0, pct_start=0.25),
        lambda t, n: _onecycle_ref(t, n, LR, 1.0, 0.25),
    ),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_each_schedule_follows_its_closed_form(name: str) -> None:
    cfg, formula = CLOSED_FORM[name]
    n = 21
    lrs = _curve(cfg, n)
    assert lrs == pytest.approx([formula(t, n) for t in range(n + 1)], rel=1e-9, abs=1e-15)


def test_cosine_reaches_min_lr_after_the_last_step_and_restarts_return_to_the_base_lr() -> None:
    lrs = _curve(ScheduleConfig(name="cosine", min_lr=0.02), 10)
    assert lrs[0] == LR and lrs[5] == pytest.approx((LR + 0.02) / 2) and lrs[10] == pytest.approx(0.02)
    lrs = _curve(ScheduleConfig(name="cosine_restarts", restart_period=4, restart_mult=2), 30)
    assert [t for t in range(1, 31) if lrs[t] > lrs[t - 1]] == [4, 12, 28]  # T_0, T_0 (1 + T_mult), ...
    assert all(lrs[t] == pytest.approx(LR) for t in (0, 4, 12, 28))
    constant_period = _curve(ScheduleConfig(name="cosine_restarts", restart_period=5), 15)
    assert constant_period[5:10] == pytest.approx(constant_period[:5], rel=1e-12)  # T_mult = 1: equal periods
    assert constant_period[10:15] == pytest.approx(constant_period[:5], rel=1e-12)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_warm_up_is_linear_and_hands_over_to_the_schedule_at_its_t0(name: str) -> None:
    cfg, _ = CLOSED_FORM[name]
    w, n, start = 4, 21, 0.1
    warm = _curve(cfg.model_copy(update={"warmup": w, "warmup_start": start}), n)
    assert warm[:w] == pytest.approx([LR * (start + (1 - start) * t / w) for t in range(w)], rel=1e-12)
    plain = _curve(cfg, n - w)  # the schedule proper over the remaining intervals, from its own t = 0
    assert warm[w:] == pytest.approx(plain, rel=1e-9, abs=1e-15)
    assert warm[w] == pytest.approx(LR)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
@pytest.mark.parametrize("warmup", [0, 3])
def test_schedule_state_dict_round_trip_continues_the_same_curve(name: str, warmup: int) -> None:
    cfg = CLOSED_FORM[name][0].model_copy(update={"warmup": warmup})
    n, cut = 17, 7
    full = _curve(cfg, n)
    opt, sched = _setup(cfg, n)
    first = _run(opt, sched, cut)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # as the trainer's checkpoints are read
    opt, sched = _setup(cfg, n)  # a fresh run, fast-forwarded by the checkpoint
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    rest = [*_run(opt, sched, n - cut), opt.param_groups[0]["lr"]]
    assert first + rest == full  # exactly


def test_interval_is_only_recorded() -> None:
    cfg = ScheduleConfig(name="cosine")
    assert _curve(cfg.model_copy(update={"interval": "epoch"}), 8) == _curve(cfg, 8)
    with pytest.raises(ValidationError, match="interval"):
        ScheduleConfig(interval="step")  # type: ignore[arg-type]


def test_bad_schedule_settings_raise_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"schedule\.warmup=5"):
        _setup(ScheduleConfig(name="cosine", warmup=5), 5)
    with pytest.raises(ValueError, match=r"schedule\.min_lr"):
        _setup(ScheduleConfig(name="cosine", min_lr=LR), 10)
    with pytest.raises(ValueError, match="total_steps"):
        _setup(ScheduleConfig(name="constant"), 0)
    for field, value in [("restart_mult", 0), ("restart_period", 0), ("gamma", 0.0), ("gamma", 1.5),
                         ("step_size", 0), ("warmup", -1), ("warmup_start", 0.0), ("min_lr", -1.0)]:
        with pytest.raises(ValidationError, match=field):
            ScheduleConfig(**{field: value})


def test_onecycle_defaults_are_unchanged() -> None:
    cfg = ScheduleConfig()
    assert (cfg.name, cfg.interval, cfg.max_lr, cfg.pct_start, cfg.anneal, cfg.cycle_momentum) == (
        "onecycle", "batch", 1e-3, 0.1, "cos", False)
    assert (cfg.min_lr, cfg.restart_period, cfg.restart_mult, cfg.gamma, cfg.step_size, cfg.warmup,
            cfg.warmup_start) == (0.0, 10, 1, 0.9, 10, 0, 0.01)
    lrs = _curve(cfg, 40, lr=1e-4)
    assert lrs[0] == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-8)
