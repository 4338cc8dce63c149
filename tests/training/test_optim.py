"""Optimizers, Lookahead, gradient clipping and gradient noise (training/optim.py)."""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from longshort.nn.lstm import LSTM
from longshort.training.optim import (
    GradClipper,
    GradNoise,
    GradNoiseConfig,
    Lookahead,
    LookaheadConfig,
    OptimConfig,
    ScheduleConfig,
    build_optimizer,
    build_schedule,
    lstm_gate_params,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    x, y = _batch(step)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save and a weights-only load, as the trainer's checkpoints go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# -- config and build_optimizer -------------------------------------------------------------------------


def test_optim_config_defaults_and_bad_values() -> None:
    cfg = OptimConfig()
    assert (cfg.name, cfg.lr, cfg.weight_decay, cfg.betas) == ("adamw", 1e-4, 0.01, (0.9, 0.95))
    assert (cfg.momentum, cfg.nesterov, cfg.grad_clip, cfg.clip_mode, cfg.clip_ema) == (0.9, False, 1.0, "norm", 0.9)
    assert (cfg.lookahead.enabled, cfg.lookahead.k, cfg.lookahead.alpha) == (False, 5, 0.5)
    assert (cfg.grad_noise.std, cfg.grad_noise.anneal, cfg.grad_noise.start_epoch) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match=r"optim\.nesterov"):
        OptimConfig(name="sgd", momentum=0.0, nesterov=True)
    with pytest.raises(ValidationError, match="clip_ema"):
        OptimConfig(clip_ema=1.0)
    with pytest.raises(ValidationError, match="clip_mode"):
        OptimConfig(clip_mode="gates")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="k"):
        LookaheadConfig(k=0)
    with pytest.raises(ValidationError, match="alpha"):
        LookaheadConfig(alpha=0.0)
    with pytest.raises(ValidationError, match="alpha"):
        LookaheadConfig(alpha=1.5)
    with pytest.raises(ValidationError, match="std"):
        GradNoiseConfig(std=-0.1)
    with pytest.raises(ValidationError, match="grad_clip"):
        OptimConfig(grad_clip=0.0)


def test_build_optimizer_sgd_adamw_and_lookahead() -> None:
    m = _model()
    sgd = build_optimizer(m, OptimConfig(name="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.0))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.05, 0.8, True, 0.0)
    assert isinstance(build_optimizer(m, OptimConfig()), torch.optim.AdamW)
    la = build_optimizer(m, OptimConfig(lookahead=LookaheadConfig(enabled=True, k=3, alpha=0.25)))
    assert isinstance(la, Lookahead) and isinstance(la, torch.optim.Optimizer)
    assert isinstance(la.optimizer, torch.optim.AdamW) and (la.k, la.alpha) == (3, 0.25)
    assert la.param_groups is la.optimizer.param_groups and la.defaults is la.optimizer.defaults


def test_sgd_momentum_follows_the_heavy_ball_formula() -> None:
    p = nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer(nn.ParameterList([p]), OptimConfig(name="sgd", lr=0.1, momentum=0.5, weight_decay=0.0))
    for _ in range(3):  # loss p^2 / 2: gradient p; v <- 0.5 v + g; p <- p - 0.1 v
        opt.zero_grad()
        (p**2 / 2).sum().backward()
        opt.step()
    v, q = 0.0, 1.0
    for _ in range(3):
        v = 0.5 * v + q
        q -= 0.1 * v
    assert float(p.detach()) == pytest.approx(q, rel=1e-6)


# -- Lookahead ------------------------------------------------------------------------------------------


def test_lookahead_interpolates_slow_weights_every_k_steps() -> None:
    k, alpha = 4, 0.3
    m, ref = _model(), _model()  # same start
    la = Lookahead(torch.optim.AdamW(m.parameters(), lr=0.05), k=k, alpha=alpha)
    bare = torch.optim.AdamW(ref.parameters(), lr=0.05)
    slow0 = _params(m)
    for step in range(k - 1):
        _train_step(m, la, step)
        _train_step(ref, bare, step)
    for a, b in zip(m.parameters(), ref.parameters(), strict=True):  # between syncs: the inner optimizer alone
        assert torch.equal(a, b)
    _train_step(m, la, k - 1)
    _train_step(ref, bare, k - 1)
    fast_k = _params(ref)
    for p, s0, f, s in zip(m.parameters(), slow0, fast_k, la.slow.values(), strict=True):
        assert (f - s0).abs().max() > 1e-2  # the inner steps moved the weights
        torch.testing.assert_close(p.detach(), s0 + alpha * (f - s0), rtol=1e-6, atol=1e-7)
        assert torch.equal(s, p.detach())  # fast <- slow
    # The second cycle starts from the synced weights with the inner optimizer's state carried on.
    with torch.no_grad():
        for r, p in zip(ref.parameters(), m.parameters(), strict=True):
            r.copy_(p)
    slow_k = _params(m)
    for step in range(k, 2 * k):
        _train_step(m, la, step)
        _train_step(ref, bare, step)
    for p, s1, f in zip(m.parameters(), slow_k, _params(ref), strict=True):
        torch.testing.assert_close(p.detach(), s1 + alpha * (f - s1), rtol=1e-6, atol=1e-7)
    assert la.inner_steps == 2 * k


def test_lookahead_sync_interpolates_now_and_restarts_the_k_count() -> None:
    m = _model()
    la = Lookahead(torch.optim.AdamW(m.parameters(), lr=0.05), k=5, alpha=0.5)
    slow0 = _params(m)
    for step in range(2):  # part-way through an inner loop
        _train_step(m, la, step)
    fast = _params(m)
    la.sync()
    for p, s0, f, s in zip(m.parameters(), slow0, fast, la.slow.values(), strict=True):
        torch.testing.assert_close(p.detach(), s0 + 0.5 * (f - s0))
        assert torch.equal(s, p.detach())
    assert la.inner_steps == 0
    before = _params(m)
    for step in range(2, 6):  # 4 more steps: no sync yet (the count restarted at the forced sync)
        _train_step(m, la, step)
    assert all(torch.equal(s, b) for s, b in zip(la.slow.values(), before, strict=True))
    _train_step(m, la, 6)
    assert not all(torch.equal(s, b) for s, b in zip(la.slow.values(), before, strict=True))


def test_lookahead_k1_halves_each_plain_sgd_step() -> None:
    p = nn.Parameter(torch.tensor([2.0, -1.0]))
    la = Lookahead(torch.optim.SGD([p], lr=0.1), k=1, alpha=0.5)
    la.zero_grad()
    (p**2 / 2).sum().backward()  # gradient = p
    la.step()
    assert p.tolist() == pytest.approx([2.0 - 0.5 * 0.1 * 2.0, -1.0 + 0.5 * 0.1 * 1.0])


def test_lookahead_with_alpha_one_is_the_inner_optimizer() -> None:
    m, ref = _model(), _model()
    la = Lookahead(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), k=2, alpha=1.0)
    bare = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(5):
        _train_step(m, la, step)
        _train_step(ref, bare, step)
    for a, b in zip(m.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("error")  # no "scheduler stepped before optimizer" or override warnings
def test_lookahead_drives_onecycle_with_cycled_momentum_like_the_bare_optimizer() -> None:
    cfg = ScheduleConfig(name="onecycle", max_lr=1e-2, cycle_momentum=True)
    m, ref = _model(), _model()
    la = Lookahead(torch.optim.AdamW(m.parameters(), lr=1e-3), k=3)
    bare = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    s_la, s_bare = build_schedule(la, cfg, 10, 1e-3), build_schedule(bare, cfg, 10, 1e-3)
    seen = []
    for step in range(10):
        _train_step(m, la, step)
        _train_step(ref, bare, step)
        s_la.step()
        s_bare.step()
        inner = la.optimizer.param_groups[0]
        assert inner["lr"] == bare.param_groups[0]["lr"] and inner["betas"] == bare.param_groups[0]["betas"]
        seen.append(inner["betas"][0])
    assert min(seen) < 0.9 and len(set(seen)) > 3  # beta1 really cycles inside the wrapped AdamW


def test_lookahead_with_a_grad_scaler() -> None:
    m, ref = _model(), _model()
    la = Lookahead(torch.optim.AdamW(m.parameters(), lr=0.05), k=2)
    bare = Lookahead(torch.optim.AdamW(ref.parameters(), lr=0.05), k=2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for step in range(5):
        x, y = _batch(step)
        la.zero_grad()
        scaler.scale(nn.functional.cross_entropy(m(x), y)).backward()
        scaler.unscale_(la)
        scaler.step(la)
        scaler.update()
        _train_step(ref, bare, step)
    for a, b in zip(m.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    # An enabled scaler skips the step on non-finite gradients: neither weights nor the Lookahead counter move.
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    before, steps = _params(m), la.inner_steps
    la.zero_grad()
    x, y = _batch(9)
    scaler.scale(nn.functional.cross_entropy(m(x), y) * float("inf")).backward()
    scaler.unscale_(la)
    scaler.step(la)
    scaler.update()
    assert la.inner_steps == steps and all(torch.equal(a, b) for a, b in zip(m.parameters(), before, strict=True))
    assert scaler.get_scale() == 2.0


def _lookahead_run(model: nn.Module, cfg: OptimConfig) -> tuple[Lookahead, Any]:
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, Lookahead)
    return opt, build_schedule(opt, ScheduleConfig(name="cosine", warmup=2), 13, cfg.lr)


def test_lookahead_resume_is_bit_identical() -> None:
    cfg = OptimConfig(lr=0.02, lookahead=LookaheadConfig(enabled=True, k=3, alpha=0.5))
    n, total = 7, 13  # stop mid-cycle (7 = 2 * 3 + 1)
    full = _model()
    opt, sched = _lookahead_run(full, cfg)
    for step in range(total):
        _train_step(full, opt, step)
        sched.step()

    part = _model()
    opt, sched = _lookahead_run(part, cfg)
    for step in range(n):
        _train_step(part, opt, step)
        sched.step()
    weights = copy.deepcopy(part.state_dict())
    state = _roundtrip({"opt": opt.state_dict(), "sched": sched.state_dict()})
    assert state["opt"]["lookahead"]["inner_steps"] == n
    assert not all(torch.equal(s, p) for s, p in zip(opt.slow.values(), part.parameters(), strict=True))

    resumed = _model(seed=5)  # different initial weights: everything must come from the checkpoint
    opt, sched = _lookahead_run(resumed, cfg)
    resumed.load_state_dict(weights)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    assert opt.inner_steps == n
    for step in range(n, total):
        _train_step(resumed, opt, step)
        sched.step()
    for a, b in zip(resumed.parameters(), full.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lookahead_loads_a_bare_optimizer_state_and_rejects_a_mismatched_one() -> None:
    m = _model()
    bare = torch.optim.AdamW(m.parameters(), lr=0.01)
    _train_step(m, bare, 0)
    la = Lookahead(torch.optim.AdamW(m.parameters(), lr=0.01), k=2)
    _train_step(m, la, 1)
    la.load_state_dict(bare.state_dict())
    assert la.inner_steps == 0
    assert all(torch.equal(s, p) for s, p in zip(la.slow.values(), m.parameters(), strict=True))
    assert la.optimizer.state_dict()["state"][0]["step"] == 1  # the inner state is the bare optimizer's
    other = Lookahead(torch.optim.AdamW(nn.Linear(2, 2).parameters()))
    with pytest.raises(ValueError, match="slow tensors"):
        la.load_state_dict(other.state_dict())


def test_lookahead_rejects_bad_arguments_and_delegates() -> None:
    m = _model()
    with pytest.raises(ValueError, match=r"lookahead\.k"):
        Lookahead(torch.optim.SGD(m.parameters(), lr=0.1), k=0)
    with pytest.raises(ValueError, match=r"lookahead\.alpha"):
        Lookahead(torch.optim.SGD(m.parameters(), lr=0.1), alpha=0.0)
    with pytest.raises(TypeError, match="Optimizer"):
        Lookahead(object(), k=2)  # type: ignore[arg-type]
    la = Lookahead(torch.optim.SGD(m.parameters(), lr=0.1), k=2)
    _train_step(m, la, 0)
    la.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    extra = nn.Parameter(torch.ones(3))
    la.add_param_group({"params": [extra], "lr": 0.5})
    assert len(la.optimizer.param_groups) == 2 and torch.equal(la.slow[extra], extra.detach())


# -- clipping -------------------------------------------------------------------------------------------


def _with_grads(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * scale
    return model


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_norm_clipping_equals_clip_grad_norm() -> None:
    m, ref = _with_grads(_model(), scale=3.0), _with_grads(_model(), scale=3.0)
    total = GradClipper(OptimConfig(grad_clip=0.5)).clip(m)
    expected = float(nn.utils.clip_grad_norm_(ref.parameters(), 0.5))
    assert total == expected > 0.5
    assert all(torch.equal(a, b) for a, b in zip(_grads(m), _grads(ref), strict=True))
    assert float(nn.utils.get_total_norm(_grads(m))) == pytest.approx(0.5, rel=1e-5)


def test_value_clipping_is_elementwise_and_none_turns_clipping_off() -> None:
    m = _with_grads(_model(), scale=2.0)
    before = _grads(m)
    total = GradClipper(OptimConfig(grad_clip=0.3, clip_mode="value")).clip(m)
    assert total == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in before)), rel=1e-6)
    for b, a in zip(before, _grads(m), strict=True):
        assert torch.equal(a, b.clamp(-0.3, 0.3))
    off = GradClipper(OptimConfig(grad_clip=None, clip_mode="per_gate"))
    assert off.clip(m) == pytest.approx(float(nn.utils.get_total_norm(_grads(m))))
    assert all(torch.equal(a, b.clamp(-0.3, 0.3)) for a, b in zip(_grads(m), before, strict=True))


def test_adaptive_clipping_follows_the_ema_and_resumes() -> None:
    a, c0 = 0.8, 1.0
    cfg = OptimConfig(grad_clip=c0, clip_mode="adaptive", clip_ema=a)
    clipper = GradClipper(cfg)
    scales = [0.1, 5.0, 2.0, 0.05, 10.0, 1.0]
    threshold, clipped = c0, []
    for i, s in enumerate(scales):
        m = _with_grads(_model(), seed=i, scale=s)
        norm = float(nn.utils.get_total_norm(_grads(m)))
        threshold = a * threshold + (1 - a) * norm  # threshold_t = a * threshold_(t-1) + (1 - a) * |g_t|
        assert clipper.clip(m) == pytest.approx(norm)
        assert clipper.ema == pytest.approx(threshold)
        after = float(nn.utils.get_total_norm(_grads(m)))
        assert after == pytest.approx(min(norm, threshold), rel=1e-5)
        clipped.append(after < norm * (1 - 1e-3))
        if i == 2:
            resumed = GradClipper(cfg)
            resumed.load_state_dict(_roundtrip(clipper.state_dict()))
            clipper = resumed
    assert any(clipped) and not all(clipped)  # the sequence exercises both sides of the threshold
    with pytest.raises(KeyError):
        clipper.load_state_dict({})


def _lstm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"rnn": nn.LSTM(3, 4, num_layers=2, bidirectional=True), "head": nn.Linear(8, 2)})


def test_lstm_gate_params_finds_both_lstm_kinds_and_skips_projections() -> None:
    m = _lstm_model()
    assert len(lstm_gate_params(m)) == 2 * 2 * 4  # layers x directions x (w_ih, w_hh, b_ih, b_hh)
    proj = nn.LSTM(3, 4, proj_size=2)
    names = {id(p) for p in lstm_gate_params(proj)}
    assert id(proj.weight_hr_l0) not in names and id(proj.weight_hh_l0) in names
    ours = LSTM(3, 4, num_layers=1)
    assert {id(p) for p in lstm_gate_params(ours)} == {
        id(getattr(ours, n)) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    }


def test_per_gate_clipping_bounds_each_gate_block_separately() -> None:
    thr = 1.0
    m = _lstm_model()
    gates = {id(p) for p in lstm_gate_params(m)}
    for p in m.parameters():  # every gate block and each head tensor: norm 0.5
        p.grad = torch.full(p.shape, 0.5 / math.sqrt(p.numel() / 4 if id(p) in gates else p.numel()))
    rnn = m["rnn"]
    assert isinstance(rnn, nn.LSTM)
    hidden = rnn.hidden_size
    huge = rnn.weight_hh_l1.grad[hidden : 2 * hidden]  # the forget-gate block of one weight
    huge.mul_(200.0)  # block norm 100
    m["head"].weight.grad.mul_(10.0)  # head (weight 5, bias 0.5): global norm of the rest sqrt(25.25)
    before = _grads(m)
    total = GradClipper(OptimConfig(grad_clip=thr, clip_mode="per_gate")).clip(m)
    assert total == pytest.approx(math.sqrt(sum(float(g.pow(2).sum()) for g in before)), rel=1e-6)
    for p, b in zip(m.parameters(), before, strict=True):
        if id(p) not in gates:
            continue
        for i, (blk, blk0) in enumerate(zip(p.grad.chunk(4), b.chunk(4), strict=True)):
            norm0 = float(torch.linalg.vector_norm(blk0))
            assert float(torch.linalg.vector_norm(blk)) <= thr * (1 + 1e-6)
            if p is rnn.weight_hh_l1 and i == 1:
                assert norm0 == pytest.approx(100.0)
                torch.testing.assert_close(blk, blk0 * (thr / (norm0 + 1e-6)))  # only this block was scaled
            else:
                assert torch.equal(blk, blk0)  # untouched: 0.5 <= threshold
    head = m["head"]
    rest = math.sqrt(25.0 + 0.25)
    torch.testing.assert_close(head.weight.grad, before[-2] * (thr / (rest + 1e-6)))
    torch.testing.assert_close(head.bias.grad, before[-1] * (thr / (rest + 1e-6)))


# -- gradient noise -------------------------------------------------------------------------------------


def _zero_grads(n: int = 200_000) -> list[nn.Parameter]:
    ps = [nn.Parameter(torch.zeros(n // 2)), nn.Parameter(torch.zeros(n // 4, 2))]
    for p in ps:
        p.grad = torch.zeros_like(p)
    return ps


def _added(ps: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in ps])


def test_fixed_gradient_noise_has_the_configured_variance() -> None:
    noise = GradNoise(GradNoiseConfig(std=0.1))
    ps = _zero_grads()
    assert noise.apply(ps, epoch=0, generator=torch.Generator().manual_seed(0)) == 0.1
    x = _added(ps)
    assert float(x.var()) == pytest.approx(0.01, rel=0.02)  # std error of the estimate: 0.3%
    assert abs(float(x.mean())) < 5 * 0.1 / math.sqrt(x.numel())


def test_annealed_gradient_noise_follows_std2_over_1_plus_t_to_the_gamma() -> None:
    noise = GradNoise(GradNoiseConfig(std=1.0, anneal=0.55, start_epoch=2))
    g = torch.Generator().manual_seed(1)
    ps = _zero_grads()
    assert noise.apply(ps, epoch=1, generator=g) == 0.0  # before start_epoch: nothing added, t does not move
    assert float(_added(ps).abs().max()) == 0.0 and noise.t == 0
    for t in range(4):
        for p in ps:
            p.grad.zero_()
        sigma = noise.apply(ps, epoch=2 + t, generator=g)
        expected_var = 1.0 / (1 + t) ** 0.55
        assert sigma**2 == pytest.approx(expected_var)
        assert float(_added(ps).var()) == pytest.approx(expected_var, rel=0.02)
    assert noise.state_dict() == {"t": 4}
    resumed = GradNoise(GradNoiseConfig(std=1.0, anneal=0.55, start_epoch=2))
    resumed.load_state_dict(_roundtrip(noise.state_dict()))
    assert resumed.sigma() == pytest.approx((1 / 5**0.55) ** 0.5)


def test_gradient_noise_is_a_function_of_the_generator_seed() -> None:
    def draw(seed: int) -> torch.Tensor:
        m = _with_grads(_model(), scale=0.0)
        GradNoise(GradNoiseConfig(std=0.5)).apply(m, 0, torch.Generator().manual_seed(seed))
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    torch.manual_seed(123)
    a = draw(7)
    torch.manual_seed(456)  # the global RNG plays no part
    assert torch.equal(a, draw(7)) and not torch.equal(a, draw(8))
    off = GradNoise(GradNoiseConfig(std=0.0))
    m = _with_grads(_model())
    before = _grads(m)
    assert off.apply(m, 10, torch.Generator()) == 0.0
    assert all(torch.equal(x, y) for x, y in zip(_grads(m), before, strict=True))


def test_clipper_follows_config_changes_and_threshold_overrides() -> None:
    cfg = OptimConfig(grad_clip=100.0)
    clipper = GradClipper(cfg)
    cfg.grad_clip = 0.5  # a later config change takes effect
    m = _with_grads(_model(), scale=3.0)
    assert clipper.clip(m) > 0.5
    assert float(nn.utils.get_total_norm(_grads(m))) == pytest.approx(0.5, rel=1e-5)
    clipper.threshold = 0.2  # an override (a phase's grad_clip) wins over the config
    clipper.clip(m)
    assert float(nn.utils.get_total_norm(_grads(m))) == pytest.approx(0.2, rel=1e-5)
    clipper.threshold = None
    before = _grads(m)
    assert clipper.clip(m) == pytest.approx(0.2, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(_grads(m), before, strict=True))
    with pytest.raises(ValueError, match="grad_clip"):
        clipper.threshold = 0.0


def test_the_decoder_cells_gates_are_recognised_and_a_gru_is_not() -> None:
    m = nn.ModuleDict({"cell": nn.LSTMCell(3, 4), "gru": nn.GRUCell(3, 8), "head": nn.Linear(4, 2)})
    cell = m["cell"]
    assert {id(p) for p in lstm_gate_params(m)} == {id(cell.weight_ih), id(cell.weight_hh), id(cell.bias_ih),
                                                    id(cell.bias_hh)}


def test_per_gate_adaptive_thresholds_follow_each_gates_own_gradient_statistics() -> None:
    a, factor = 0.9, 2.0
    cell = nn.LSTMCell(2, 3)
    cfg = OptimConfig(grad_clip=1.0, clip_mode="per_gate_adaptive", clip_ema=a, gate_clip_factor=factor)
    clipper = GradClipper(cfg)

    def step(scale_forget: float) -> list[torch.Tensor]:
        for p in cell.parameters():  # every gate block of every tensor: norm 0.5 (the rest of the model: none)
            p.grad = torch.full(p.shape, 0.5 / math.sqrt(p.numel() / 4))
        cell.weight_hh.grad[3:6].mul_(scale_forget)  # the forget gate of weight_hh
        clipper.clip(cell)
        return [torch.linalg.vector_norm(b) for b in cell.weight_hh.grad.chunk(4)]

    first = step(1.0)  # the first step sets each gate's statistics from its own norm: nothing is clipped
    assert [float(n) for n in first] == pytest.approx([0.5] * 4)
    second = step(10.0)  # the forget gate's norm 5.0 > 2 x its running norm 0.5: clipped to 1.0, the rest not
    assert float(second[1]) == pytest.approx(factor * 0.5, rel=1e-5)
    assert [float(second[i]) for i in (0, 2, 3)] == pytest.approx([0.5] * 3)
    ema = a * 0.5 + (1 - a) * 1.0  # the EMA takes the clipped norm, so one spike does not raise the bar much
    resumed = GradClipper(cfg)
    resumed.load_state_dict(clipper.state_dict())
    third, clipper = step(10.0), resumed
    assert float(third[1]) == pytest.approx(factor * ema, rel=1e-5)
    assert float(step(10.0)[1]) == pytest.approx(factor * ema, rel=1e-5)  # the resumed clipper: the same bar
