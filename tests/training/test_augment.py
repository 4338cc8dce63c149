"""Augmentation and mixup checked against what each transform promises: exact rolls, per-channel factors, noise
variance, endpoint-preserving monotone warps, stretched windows, Beta-distributed mixing weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from longshort.training.augment import AugmentConfig, MixedBatch, MixupConfig, augment, mixup, mixup_loss


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(lengths: list[int], t: int | None = None, c: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random data, zero past each row's length."""
    lens = torch.tensor(lengths)
    t = max(lengths) if t is None else t
    x = torch.randn(len(lengths), t, c, generator=_gen(seed))
    return x * (torch.arange(t) < lens[:, None]).unsqueeze(-1), lens


def _only(name: str, **params: float) -> AugmentConfig:
    """A config with just transform ``name`` on, with probability 1 unless given."""
    return AugmentConfig.model_validate({name: {"prob": 1.0, **params}})


def _padding(x: Tensor, lengths: Tensor) -> Tensor:
    return x[torch.arange(x.shape[1]) >= lengths[:, None]]


def _ramp(lengths: list[int], t: int | None = None) -> tuple[Tensor, Tensor]:
    """x[b, s, 0] = s on valid steps (a linear ramp), one channel."""
    lens = torch.tensor(lengths)
    t = max(lengths) if t is None else t
    steps = torch.arange(t, dtype=torch.float32).expand(len(lengths), t)
    return (steps * (steps < lens[:, None])).unsqueeze(-1), lens


ALL = {"time_warp": {"prob": 1.0}, "window_slice": {"prob": 1.0}, "time_shift": {"prob": 1.0},
       "magnitude_warp": {"prob": 1.0}, "noise": {"prob": 1.0}}


# -- config ---------------------------------------------------------------------------------------------------


def test_config_defaults_are_off_and_nested_overrides_work() -> None:
    cfg = AugmentConfig()
    assert not cfg.enabled and cfg.start_epoch == 0
    assert (cfg.noise.prob, cfg.noise.std) == (0.0, 0.01)
    assert (cfg.time_shift.prob, cfg.time_shift.max_shift) == (0.0, 5)
    assert (cfg.magnitude_warp.prob, cfg.magnitude_warp.std) == (0.0, 0.1)
    assert (cfg.time_warp.prob, cfg.time_warp.strength, cfg.time_warp.knots) == (0.0, 0.2, 4)
    assert (cfg.window_slice.prob, cfg.window_slice.ratio) == (0.0, 0.9)
    assert MixupConfig().model_dump() == {"prob": 0.0, "alpha": 0.2, "start_epoch": 0}
    seed = AugmentConfig.model_validate({"start_epoch": 10, "noise": {"prob": 0.3, "std": 0.01},
                                         "time_shift": {"prob": 0.2, "max_shift": 5},
                                         "magnitude_warp": {"prob": 0.25, "std": 0.1}})
    assert seed.enabled and seed.noise.prob == 0.3 and seed.time_warp.prob == 0.0
    cfg.window_slice.prob = 0.5  # validate_assignment: still a valid, now enabled, config
    assert cfg.enabled


@pytest.mark.parametrize(("section", "key", "value"), [
    ("noise", "prob", 1.5), ("noise", "std", -0.1), ("time_shift", "max_shift", -1),
    ("magnitude_warp", "prob", -0.2), ("time_warp", "knots", 0), ("time_warp", "strength", -1.0),
    ("window_slice", "ratio", 0.0), ("window_slice", "ratio", 1.2),
])
def test_config_rejects_bad_values_naming_the_key(section: str, key: str, value: float) -> None:
    with pytest.raises(ValidationError, match=f"{section}.{key}"):
        AugmentConfig.model_validate({section: {key: value}})


def test_config_rejects_unknown_keys_and_bad_mixup() -> None:
    with pytest.raises(ValidationError, match="extra"):
        AugmentConfig.model_validate({"noise": {"sigma": 0.1}})
    with pytest.raises(ValidationError, match="start_epoch"):
        AugmentConfig(start_epoch=-1)
    with pytest.raises(ValidationError, match="alpha"):
        MixupConfig(alpha=0.0)
    with pytest.raises(ValidationError, match="prob"):
        MixupConfig(prob=2.0)


# -- augment: general contract ----------------------------------------------------------------------------


def test_prob_zero_is_identity_on_a_copy() -> None:
    x, lens = _batch([5, 3, 1])
    out = augment(x, lens, AugmentConfig(), _gen())
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_input_untouched_padding_zero_lengths_any() -> None:
    x, lens = _batch([9, 4, 1, 0, 2], t=9)
    before = x.clone()
    out = augment(x, lens, AugmentConfig.model_validate(ALL), _gen(3))
    assert torch.equal(x, before)
    assert out.shape == x.shape
    assert torch.count_nonzero(_padding(out, lens)) == 0
    assert not torch.equal(out[0], x[0])
    # A length-1 row: the time transforms are identities on one step, so only magnitude warp and noise act.
    one, one_len = _batch([1], c=4)
    only_time = AugmentConfig.model_validate({k: ALL[k] for k in ("time_warp", "window_slice", "time_shift")})
    assert torch.equal(augment(one, one_len, only_time, _gen()), one)


def test_same_seed_same_output_other_seed_differs() -> None:
    x, lens = _batch([12, 7, 3, 10], seed=1)
    cfg = AugmentConfig.model_validate({k: {"prob": 0.5} for k in ALL})
    a, b = augment(x, lens, cfg, _gen(42)), augment(x, lens, cfg, _gen(42))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, lens, cfg, _gen(43)))


def test_a_transform_draws_do_not_depend_on_other_transforms() -> None:
    # Turning noise on with std 0 adds exactly 0, so the magnitude warp (drawn from its own stream) must match.
    x, lens = _batch([8, 5, 8, 2], seed=2)
    mag = {"magnitude_warp": {"prob": 0.5}}
    alone = augment(x, lens, AugmentConfig.model_validate(mag), _gen(7))
    with_noise = augment(x, lens, AugmentConfig.model_validate({**mag, "noise": {"prob": 1.0, "std": 0.0}}), _gen(7))
    assert torch.equal(alone, with_noise) and not torch.equal(alone, x)


def test_per_sequence_probability() -> None:
    n = 4000
    x, lens = _batch([6] * n, c=2, seed=4)
    out = augment(x, lens, AugmentConfig.model_validate({"noise": {"prob": 0.3, "std": 0.1}}), _gen(5))
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert abs(changed - 0.3) < 0.025  # binomial sd ~0.007
    # A row is either chosen (all of its 6 x 2 values get noise) or bit-for-bit untouched: nothing in between.
    per_row = (out != x).flatten(1).sum(1)
    assert set(per_row.tolist()) == {0, 12}


def test_bad_input_is_rejected() -> None:
    x, lens = _batch([4, 2])
    cfg = _only("noise")
    with pytest.raises(ValueError, match=r"\[batch, time, channels\]"):
        augment(x[0], lens, cfg, _gen())
    with pytest.raises(ValueError, match="lengths must be \\[batch\\]"):
        augment(x, lens[:1], cfg, _gen())
    with pytest.raises(ValueError, match="lengths must lie in \\[0, 4\\]"):
        augment(x, torch.tensor([5, 2]), cfg, _gen())
    with pytest.raises(ValueError, match="lengths must lie"):
        augment(x, torch.tensor([-1, 2]), cfg, _gen())
    with pytest.raises(ValueError, match="floating-point"):
        augment(x.long(), lens, cfg, _gen())


# -- augment: each transform ------------------------------------------------------------------------------


def test_noise_variance_on_valid_steps_and_zero_padding() -> None:
    x, lens = _batch([50, 20, 35, 1] * 50, t=50, c=4)
    out = augment(x, lens, _only("noise", std=0.05), _gen())
    valid = torch.arange(50) < lens[:, None]
    d = (out - x)[valid]  # [n_valid, C]
    assert d.numel() == 4 * 50 * (50 + 20 + 35 + 1)
    assert abs(d.mean().item()) < 0.002
    assert d.var().item() == pytest.approx(0.05**2, rel=0.03)  # ~21k samples: sd of the estimate ~1%
    assert torch.count_nonzero(_padding(out, lens)) == 0


def test_time_shift_is_a_roll_of_each_valid_part() -> None:
    lengths = [10, 7, 3, 1, 9] * 60
    x, lens = _batch(lengths, c=2)
    m = 3
    out = augment(x, lens, _only("time_shift", max_shift=m), _gen(1))
    shifts = []
    for b, n in enumerate(lengths):
        # The row must equal torch.roll of its valid slice for exactly one shift s in [-m, m] (random data).
        hits = [s for s in range(-m, m + 1) if torch.equal(out[b, :n], torch.roll(x[b, :n], s, dims=0))]
        assert hits, f"row {b} is no roll of its valid part"
        if n > 2 * m:  # every shift in range is distinct mod n: the shift is identified
            assert len(hits) == 1
            shifts.append(hits[0])
        assert torch.count_nonzero(out[b, n:]) == 0
    counts = torch.bincount(torch.tensor(shifts) + m, minlength=2 * m + 1).float()
    assert counts.numel() == 2 * m + 1 and counts.min() > 0  # every value in [-m, m] occurs
    assert (counts / counts.sum() - 1 / (2 * m + 1)).abs().max() < 0.07  # roughly uniform (180 draws)


def test_magnitude_warp_is_one_factor_per_row_and_channel() -> None:
    n, t, c = 1000, 6, 3
    x, lens = _batch([t] * n, c=c)
    x = x.abs() + 0.5  # no zeros: the factor is out / x everywhere
    out = augment(x, lens, _only("magnitude_warp", std=0.1), _gen(2))
    ratio = out / x  # [n, t, c]
    factor = ratio[:, :1]
    torch.testing.assert_close(ratio, factor.expand_as(ratio), rtol=1e-5, atol=0)  # constant in time
    assert factor.mean().item() == pytest.approx(1.0, abs=0.01)
    assert factor.std().item() == pytest.approx(0.1, rel=0.05)  # 3000 factors: sd of the estimate ~1.3%
    # factors differ between channels of a row
    assert (factor[:, 0, 0] - factor[:, 0, 1]).abs().min() > 0


def test_time_warp_keeps_endpoints_and_monotonicity() -> None:
    x, lens = _batch([30, 12, 2, 1, 25], seed=6)
    x = x.cumsum(1).abs().cumsum(1)  # non-negative increments: monotone non-decreasing per channel
    x = x * (torch.arange(30) < lens[:, None]).unsqueeze(-1)
    out = augment(x, lens, _only("time_warp", strength=0.5, knots=3), _gen(3))
    for b, n in enumerate(lens.tolist()):
        assert torch.equal(out[b, 0], x[b, 0]) and torch.equal(out[b, n - 1], x[b, n - 1])
        assert n < 2 or (out[b, 1:n] - out[b, : n - 1]).min() >= 0
        assert torch.count_nonzero(out[b, n:]) == 0
        # interpolation never leaves the range of the data
        assert out[b, :n].min() >= x[b, :n].min() and out[b, :n].max() <= x[b, :n].max()
    assert not torch.equal(out[0], x[0])


def test_time_warp_strength_zero_is_identity() -> None:
    x, lens = _batch([40, 17, 5, 1])
    out = augment(x, lens, _only("time_warp", strength=0.0, knots=5), _gen())
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_time_warp_of_a_ramp_is_piecewise_linear_with_knots_kinks() -> None:
    # On x[t] = t the output *is* the time map: kinks only at the knots (u = k/5 -> t = 20, 40, 60, 80 for
    # length 101, knots 4), mean slope 1 (the map spans 0 .. 100), every slope positive.
    x, lens = _ramp([101] * 8)
    out = augment(x, lens, _only("time_warp", strength=0.4, knots=4), _gen(9))[..., 0]
    slope = out[:, 1:] - out[:, :-1]  # [8, 100]
    kink = (slope[:, 1:] - slope[:, :-1]).abs() > 1e-3  # second difference at t = 1 .. 99
    where = kink.any(0).nonzero().squeeze(1) + 1
    assert set(where.tolist()) <= {20, 40, 60, 80} and len(where) >= 3
    assert torch.equal(out[:, 0], torch.zeros(8)) and torch.equal(out[:, -1], torch.full((8,), 100.0))
    assert slope.min() > 0
    # the slopes of one segment are constant and the 5 segment slopes average to 1
    seg = slope.reshape(8, 5, 20)
    torch.testing.assert_close(seg, seg[..., :1].expand_as(seg), rtol=0, atol=1e-3)
    torch.testing.assert_close(seg[..., 0].mean(1), torch.ones(8), rtol=0, atol=1e-4)


def test_window_slice_ratio_one_is_identity() -> None:
    x, lens = _batch([11, 6, 1, 3])
    assert torch.equal(augment(x, lens, _only("window_slice", ratio=1.0), _gen()), x)


def test_window_slice_of_a_ramp_is_a_stretched_sub_ramp() -> None:
    lengths = [20, 20, 10, 7, 1] * 40
    x, lens = _ramp(lengths)
    ratio = 0.5
    out = augment(x, lens, _only("window_slice", ratio=ratio), _gen(4))[..., 0]
    starts: list[int] = []
    for b, n in enumerate(lengths):
        w = math.ceil(ratio * n)  # 10, 5, 4, 1 steps
        first = out[b, 0].item()
        assert first == int(first) and 0 <= first <= n - w  # an integer start inside the row
        expected = first + torch.arange(n) * ((w - 1) / max(n - 1, 1))  # stretched window [first, first + w - 1]
        torch.testing.assert_close(out[b, :n], expected, rtol=0, atol=1e-5)
        assert torch.count_nonzero(out[b, n:]) == 0
        if n == 20:
            starts.append(int(first))
    assert set(starts) == set(range(11))  # starts are uniform over 0 .. 10 (80 draws, 11 values)


def test_window_slice_length_is_the_exact_ceiling() -> None:
    # 0.7 * 10 = 7.000000000000001 in floating point: the window is still 7 steps, not 8.
    x, lens = _ramp([10] * 50)
    out = augment(x, lens, _only("window_slice", ratio=0.7), _gen(5))[..., 0]
    torch.testing.assert_close(out[:, -1] - out[:, 0], torch.full((50,), 6.0), rtol=0, atol=1e-5)


def test_all_transforms_in_order_vectorised_over_variable_lengths() -> None:
    # Time shift after an identity time warp / window slice (strength 0, ratio 1) is still an exact roll.
    x, lens = _batch([6, 4, 1])
    cfg = AugmentConfig.model_validate({"time_warp": {"prob": 1.0, "strength": 0.0},
                                        "window_slice": {"prob": 1.0, "ratio": 1.0},
                                        "time_shift": {"prob": 1.0, "max_shift": 1}})
    out = augment(x, lens, cfg, _gen(8))
    for b, n in enumerate(lens.tolist()):
        assert any(torch.allclose(out[b, :n], torch.roll(x[b, :n], s, 0), atol=1e-5) for s in (-1, 0, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x, lens = _batch([12, 5, 1, 9])
    cfg = AugmentConfig.model_validate(ALL)
    cpu = augment(x, lens, cfg, _gen(11))
    gpu = augment(x.cuda(), lens.cuda(), cfg, _gen(11))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


# -- mixup ------------------------------------------------------------------------------------------------


def test_mixup_formula_lengths_labels_and_aux() -> None:
    x, lens = _batch([5, 2, 4, 3], c=2)
    y = torch.tensor([0, 1, 2, 1])
    aux = torch.tensor([0.5, -1.0, 2.0, 3.0])
    before = x.clone()
    m = mixup(x, lens, y, aux, 0.4, _gen(3))
    assert isinstance(m, MixedBatch) and 0.0 <= m.lam <= 1.0
    assert sorted(m.perm.tolist()) == [0, 1, 2, 3]
    assert not torch.equal(m.perm, torch.arange(4))  # this seed's permutation moves rows
    torch.testing.assert_close(m.x, m.lam * x + (1 - m.lam) * x[m.perm])
    assert torch.equal(m.lengths, torch.maximum(lens, lens[m.perm]))
    assert torch.equal(m.y_a, y) and torch.equal(m.y_b, y[m.perm])
    assert m.aux is not None
    torch.testing.assert_close(m.aux, m.lam * aux + (1 - m.lam) * aux[m.perm])
    assert torch.count_nonzero(_padding(m.x, m.lengths)) == 0
    assert torch.equal(x, before)
    assert mixup(x, lens, y, None, 0.4, _gen(3)).aux is None


def test_mixup_is_reproducible_from_the_generator() -> None:
    x, lens = _batch([3, 3, 3])
    y = torch.tensor([0, 1, 0])
    a, b = mixup(x, lens, y, None, 0.2, _gen(1)), mixup(x, lens, y, None, 0.2, _gen(1))
    assert a.lam == b.lam and torch.equal(a.perm, b.perm) and torch.equal(a.x, b.x)
    torch.manual_seed(123)  # global state must not matter
    c = mixup(x, lens, y, None, 0.2, _gen(1))
    assert c.lam == a.lam
    assert mixup(x, lens, y, None, 0.2, _gen(2)).lam != a.lam


def test_mixup_loss_is_the_weighted_sum_of_the_two_losses() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [1.0, -1.0, 0.0]])
    m = MixedBatch(x=torch.zeros(3, 1, 1), lengths=torch.ones(3, dtype=torch.long), y_a=torch.tensor([0, 1, 2]),
                   y_b=torch.tensor([2, 0, 2]), aux=None, lam=0.7, perm=torch.tensor([2, 0, 1]))
    logp = logits - logits.exp().sum(1, keepdim=True).log()
    la = -(logp[0, 0] + logp[1, 1] + logp[2, 2]) / 3
    lb = -(logp[0, 2] + logp[1, 0] + logp[2, 2]) / 3
    got = mixup_loss(F.cross_entropy, logits, m)
    assert got.item() == pytest.approx(0.7 * la.item() + 0.3 * lb.item(), rel=1e-6)


@pytest.mark.parametrize(("alpha", "near_edges"), [(0.2, 0.6734), (1.0, 0.2)])
def test_lam_follows_beta_alpha_alpha(alpha: float, near_edges: float) -> None:
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); P(lam < 0.1 or lam > 0.9) = 2 * I_0.1(a, a), which is
    # 0.6734 for a = 0.2 (scipy.stats.beta(0.2, 0.2).cdf(0.1) * 2) and 0.2 for a = 1 (uniform).
    g = _gen(0)
    x, lens = _batch([2, 2])
    y = torch.tensor([0, 1])
    lam = torch.tensor([mixup(x, lens, y, None, alpha, g).lam for _ in range(3000)], dtype=torch.float64)
    assert lam.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
    frac = ((lam < 0.1) | (lam > 0.9)).double().mean().item()
    assert frac == pytest.approx(near_edges, abs=0.03)


def test_mixup_bad_input() -> None:
    x, lens = _batch([3, 2])
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, lens, y, None, 0.0, _gen())
    with pytest.raises(ValueError, match="y must be"):
        mixup(x, lens, y[:1], None, 0.2, _gen())
    with pytest.raises(ValueError, match="aux must be"):
        mixup(x, lens, y, torch.zeros(2, 1), 0.2, _gen())
