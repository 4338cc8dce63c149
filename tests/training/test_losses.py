"""Numbers for the training losses: focal, the confidence penalty, the auxiliary loss, sequence focal loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from longshort.training.losses import (
    LossConfig,
    aux_loss,
    balanced_class_weights,
    build_loss,
    confidence_penalty,
    entropy,
    focal_loss,
    sequence_focal_loss,
    time_weights,
)

# Three examples, three classes: the first is easy (p_true ~ 0.84), the others harder.
LOGITS = [[2.5, 0.5, 0.0], [0.2, 0.1, 0.4], [1.0, 1.5, -0.5]]
TARGET = [0, 1, 0]


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in _softmax(row))


def _z() -> torch.Tensor:
    return torch.tensor(LOGITS)


def _y() -> torch.Tensor:
    return torch.tensor(TARGET)


# ----------------------------------------------------------------------------------------------- focal


@pytest.mark.parametrize("class_weights", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_focal_with_gamma0_alpha1_is_cross_entropy(class_weights: bool, label_smoothing: float) -> None:
    train_y = torch.tensor([0, 0, 0, 1, 2, 2])  # balanced weights [2/3, 2, 1]
    cfg = LossConfig(name="focal", focal_alpha=1.0, focal_gamma=0.0, class_weights=class_weights,
                     label_smoothing=label_smoothing)
    got = build_loss(cfg, train_y, 3)(_z(), _y())
    w = balanced_class_weights(train_y, 3) if class_weights else None
    want = F.cross_entropy(_z(), _y(), weight=w, label_smoothing=label_smoothing)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # ... and the weights really change the value (the comparison is not vacuous).
    plain = F.cross_entropy(_z(), _y(), label_smoothing=label_smoothing).item()
    assert (abs(got.item() - plain) > 1e-2) == class_weights


def test_focal_scales_each_example_by_alpha_times_one_minus_p_to_the_gamma() -> None:
    alpha, gamma = 0.25, 2.0
    per_focal = focal_loss(_z(), _y(), alpha=alpha, gamma=gamma, reduction="none")
    per_ce = F.cross_entropy(_z(), _y(), reduction="none")
    for i, (row, c) in enumerate(zip(LOGITS, TARGET, strict=True)):
        p = _softmax(row)[c]
        assert per_ce[i].item() == pytest.approx(-math.log(p), rel=1e-6)
        assert (per_focal[i] / per_ce[i]).item() == pytest.approx(alpha * (1 - p) ** gamma, rel=1e-5)
    # mean and sum reductions of the same terms
    assert focal_loss(_z(), _y(), alpha=alpha, gamma=gamma).item() == pytest.approx(per_focal.mean().item())
    assert focal_loss(_z(), _y(), alpha=alpha, gamma=gamma, reduction="sum").item() == pytest.approx(
        per_focal.sum().item()
    )


def test_focal_shrinks_the_easy_examples_share_of_the_loss() -> None:
    per_ce = F.cross_entropy(_z(), _y(), reduction="none")
    per_focal = focal_loss(_z(), _y(), alpha=1.0, gamma=2.0, reduction="none")
    share_ce = (per_ce[0] / per_ce.sum()).item()
    share_focal = (per_focal[0] / per_focal.sum()).item()
    p = [_softmax(r)[c] for r, c in zip(LOGITS, TARGET, strict=True)]
    ce = [-math.log(q) for q in p]
    fl = [(1 - q) ** 2 * e for q, e in zip(p, ce, strict=True)]
    assert share_ce == pytest.approx(ce[0] / sum(ce), rel=1e-5)  # ~0.093
    assert share_focal == pytest.approx(fl[0] / sum(fl), rel=1e-5)  # ~0.005
    assert share_focal < share_ce / 10


def test_focal_with_class_weights_is_a_weighted_mean() -> None:
    w = [0.5, 2.0, 1.0]
    got = focal_loss(_z(), _y(), alpha=0.5, gamma=1.5, weight=torch.tensor(w)).item()
    terms, ws = [], []
    for row, c in zip(LOGITS, TARGET, strict=True):
        p = _softmax(row)[c]
        terms.append(w[c] * 0.5 * (1 - p) ** 1.5 * -math.log(p))
        ws.append(w[c])
    assert got == pytest.approx(sum(terms) / sum(ws), rel=1e-5)


def test_focal_label_smoothing_applies_to_the_ce_factor() -> None:
    eps, gamma = 0.2, 2.0
    got = focal_loss(_z(), _y(), alpha=1.0, gamma=gamma, label_smoothing=eps, reduction="none")
    for i, (row, c) in enumerate(zip(LOGITS, TARGET, strict=True)):
        ps = _softmax(row)
        ce_smooth = -(1 - eps) * math.log(ps[c]) - eps / 3 * sum(math.log(q) for q in ps)
        assert got[i].item() == pytest.approx((1 - ps[c]) ** gamma * ce_smooth, rel=1e-5)


def test_focal_is_finite_on_saturated_predictions_with_fractional_gamma() -> None:
    z = torch.tensor([[60.0, -60.0], [0.0, 1.0]], requires_grad=True)  # first row: p_true == 1 in float32
    loss = focal_loss(z, torch.tensor([0, 1]), alpha=1.0, gamma=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert z.grad[0].abs().max().item() == 0.0
    p = _softmax([0.0, 1.0])[1]
    assert loss.item() == pytest.approx((1 - p) ** 0.5 * -math.log(p) / 2, rel=1e-5)


def test_focal_computes_in_float32_from_half_logits() -> None:
    z16 = _z().to(torch.bfloat16)
    got = focal_loss(z16, _y())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(focal_loss(z16.float(), _y()).item(), rel=1e-6)


# ----------------------------------------------------------------------------------------- confidence penalty


def test_adaptive_is_focal_minus_beta_times_mean_entropy() -> None:
    train_y = torch.tensor([0, 1, 2])
    adaptive = build_loss(LossConfig(name="adaptive", class_weights=False), train_y, 3)(_z(), _y()).item()
    focal = build_loss(LossConfig(name="focal", class_weights=False), train_y, 3)(_z(), _y()).item()
    mean_h = sum(_entropy(r) for r in LOGITS) / len(LOGITS)
    hand_focal = sum(
        0.25 * (1 - _softmax(r)[c]) ** 2 * -math.log(_softmax(r)[c]) for r, c in zip(LOGITS, TARGET, strict=True)
    ) / 3
    assert focal == pytest.approx(hand_focal, rel=1e-5)
    assert adaptive == pytest.approx(hand_focal - 0.1 * mean_h, rel=1e-5)
    assert entropy(_z()).tolist() == pytest.approx([_entropy(r) for r in LOGITS], rel=1e-5)


def test_confidence_penalty_defaults_resolve_per_loss() -> None:
    assert LossConfig(name="adaptive").resolved_confidence_penalty == 0.1
    assert LossConfig(name="focal").resolved_confidence_penalty == 0.0
    assert LossConfig().resolved_confidence_penalty == 0.0
    assert LossConfig(name="adaptive", confidence_penalty=0.0).resolved_confidence_penalty == 0.0
    assert LossConfig(name="focal", confidence_penalty=0.3).resolved_confidence_penalty == 0.3


def test_confidence_penalty_also_applies_to_cross_entropy() -> None:
    cfg = LossConfig(class_weights=False, confidence_penalty=0.5)
    got = build_loss(cfg, torch.tensor([0, 1, 2]), 3)(_z(), _y()).item()
    mean_h = sum(_entropy(r) for r in LOGITS) / len(LOGITS)
    assert got == pytest.approx(F.cross_entropy(_z(), _y()).item() - 0.5 * mean_h, rel=1e-6)


def test_confidence_penalty_gradient_raises_entropy() -> None:
    beta = 0.1
    z = _z().requires_grad_(True)
    confidence_penalty(z, beta).backward()
    # Closed form: d(-beta mean H)/dz_ij = beta/B * p_ij (log p_ij + H_i).
    for i, row in enumerate(LOGITS):
        ps, h = _softmax(row), _entropy(row)
        want = [beta / 3 * p * (math.log(p) + h) for p in ps]
        assert z.grad[i].tolist() == pytest.approx(want, rel=1e-4, abs=1e-7)
    lr = 0.1
    before = entropy(z.detach())
    after = entropy(z.detach() - lr * z.grad)  # one gradient-descent step on the penalty alone
    assert (after > before).all()
    # First order: the step is lr * beta/B * grad H_i, so H_i rises by about lr * B/beta * |grad_i|^2.
    predicted = lr * 3 / beta * (z.grad**2).sum(1)
    torch.testing.assert_close(after - before, predicted, rtol=0.05, atol=1e-6)


# ------------------------------------------------------------------------------------------------ aux loss


def test_aux_loss_is_float32_mse_and_rejects_mismatched_shapes() -> None:
    pred = torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16)
    target = torch.tensor([0.0, 2.0, 1.0])
    got = aux_loss(pred, target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx((1 + 0 + 9) / 3)
    with pytest.raises(ValueError, match="aux prediction shape"):
        aux_loss(pred.unsqueeze(1), target)


# ---------------------------------------------------------------------------------------- sequence focal

# [2, 4, 3]; the second sequence has length 2, its last two steps are padding.
SEQ_LOGITS = [
    [[1.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 2.0], [-0.5, 0.3, 0.1]],
    [[0.2, -0.4, 1.1], [2.0, 1.0, 0.0], [9.0, 9.0, 9.0], [-3.0, 4.0, 0.0]],
]
SEQ_TARGET = [[0, 1, 2, 0], [2, 1, 0, 0]]
SEQ_LENGTHS = [4, 2]


def _hand_f(weighting: str, t: int, n: int, rate: float) -> float:
    u = (t + 1) / n
    return {"constant": 1.0, "linear": u, "reverse": 1 - u + 1 / n, "exp": math.exp(rate * (u - 1))}[weighting]


def _hand_seq_terms(weighting: str, alpha0: float, gamma: float, rate: float) -> list[list[float]]:
    out = []
    for b, n in enumerate(SEQ_LENGTHS):
        row = []
        for t in range(n):
            p = _softmax(SEQ_LOGITS[b][t])[SEQ_TARGET[b][t]]
            row.append(-alpha0 * _hand_f(weighting, t, n, rate) * (1 - p) ** gamma * math.log(p))
        out.append(row)
    return out


@pytest.mark.parametrize("weighting", ["constant", "linear", "reverse", "exp"])
def test_sequence_focal_matches_hand_computation(weighting: str) -> None:
    alpha0, gamma, rate = 0.5, 2.0, 2.0
    z, y, n = torch.tensor(SEQ_LOGITS), torch.tensor(SEQ_TARGET), torch.tensor(SEQ_LENGTHS)
    terms = _hand_seq_terms(weighting, alpha0, gamma, rate)
    kw = {"alpha0": alpha0, "gamma": gamma, "weighting": weighting, "rate": rate}
    per_seq = sequence_focal_loss(z, y, n, reduction="none", **kw)
    assert per_seq.tolist() == pytest.approx([sum(r) for r in terms], rel=1e-5)
    total = sum(sum(r) for r in terms)
    assert sequence_focal_loss(z, y, n, reduction="sum", **kw).item() == pytest.approx(total, rel=1e-5)
    assert sequence_focal_loss(z, y, n, **kw).item() == pytest.approx(total / 6, rel=1e-5)  # 6 valid steps


def test_time_weights_hand_values() -> None:
    n = torch.tensor([4, 2])
    assert time_weights(n, 4, 2.0, "constant").tolist() == [[2, 2, 2, 2], [2, 2, 0, 0]]
    def close(got: torch.Tensor, want: list[list[float]]) -> None:
        torch.testing.assert_close(got, torch.tensor(want))

    close(time_weights(n, 4, 1.0, "linear"), [[0.25, 0.5, 0.75, 1.0], [0.5, 1.0, 0, 0]])
    close(time_weights(n, 4, 1.0, "reverse"), [[1.0, 0.75, 0.5, 0.25], [1.0, 0.5, 0, 0]])
    close(time_weights(n, 4, 1.0, "exp", rate=2.0),
          [[math.exp(-1.5), math.exp(-1.0), math.exp(-0.5), 1.0], [math.exp(-1.0), 1.0, 0, 0]])
    assert time_weights(torch.tensor([0]), 3).tolist() == [[0.0, 0.0, 0.0]]


def test_sequence_focal_padding_logits_change_nothing_and_get_no_gradient() -> None:
    y, n = torch.tensor(SEQ_TARGET), torch.tensor(SEQ_LENGTHS)
    base = torch.tensor(SEQ_LOGITS)
    ref = sequence_focal_loss(base, y, n, weighting="linear")
    g = torch.Generator().manual_seed(0)
    for fill in [torch.randn(2, 3, generator=g) * 50, torch.full((2, 3), float("nan")),
                 torch.tensor([[float("inf"), 0.0, -float("inf")]] * 2)]:
        z = base.clone()
        z[1, 2:] = fill
        z.requires_grad_(True)
        loss = sequence_focal_loss(z, y, n, weighting="linear")
        loss.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        assert z.grad[1, 2:].abs().sum().item() == 0.0
        assert torch.isfinite(z.grad).all() and z.grad[0].abs().sum().item() > 0


def test_sequence_focal_gamma0_constant_is_masked_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 5, 4, generator=g)
    y = torch.randint(0, 4, (3, 5), generator=g)
    n = torch.tensor([5, 3, 1])
    masked = y.clone()
    masked[torch.arange(5) >= n[:, None]] = -100
    want = F.cross_entropy(z.reshape(-1, 4), masked.reshape(-1), ignore_index=-100)
    got = sequence_focal_loss(z, y, n, gamma=0.0, alpha0=1.0, weighting="constant")
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # The same through ignore_index alone (no lengths).
    assert sequence_focal_loss(z, masked, gamma=0.0).item() == pytest.approx(want.item(), rel=1e-6)


def test_sequence_focal_without_lengths_uses_the_counted_steps_as_T() -> None:
    z, n = torch.tensor(SEQ_LOGITS), torch.tensor(SEQ_LENGTHS)
    y = torch.tensor(SEQ_TARGET)
    y_ign = y.clone()
    y_ign[1, 2:] = -100
    for weighting in ["linear", "reverse", "exp"]:
        a = sequence_focal_loss(z, y, n, weighting=weighting, reduction="none")
        b = sequence_focal_loss(z, y_ign, weighting=weighting, reduction="none")
        assert b.tolist() == pytest.approx(a.tolist(), rel=1e-6)


def test_sequence_focal_ignore_index_inside_the_length_drops_that_step_only() -> None:
    z, y, n = torch.tensor(SEQ_LOGITS), torch.tensor(SEQ_TARGET), torch.tensor(SEQ_LENGTHS)
    y_ign = y.clone()
    y_ign[0, 1] = -100
    terms = _hand_seq_terms("linear", 1.0, 2.0, 1.0)
    got = sequence_focal_loss(z, y_ign, n, weighting="linear", reduction="none")
    # T stays 4 for the first sequence: the other steps keep their weights u = (t+1)/4.
    assert got.tolist() == pytest.approx([sum(terms[0]) - terms[0][1], sum(terms[1])], rel=1e-5)
    mean = sequence_focal_loss(z, y_ign, n, weighting="linear").item()
    assert mean == pytest.approx(got.sum().item() / 5, rel=1e-6)


def test_sequence_focal_with_nothing_counted_is_zero() -> None:
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = sequence_focal_loss(z, torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and z.grad.abs().sum().item() == 0.0


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "hinge"), ("focal_alpha", -0.1), ("focal_gamma", -1.0), ("confidence_penalty", -0.5),
     ("label_smoothing", 1.0), ("aux_weight", -1.0), ("focal_gamma", "two")],
)
def test_loss_config_rejects_bad_values_naming_the_option(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        LossConfig(**{field: value})
    cfg = LossConfig()
    with pytest.raises(ValidationError, match=field):
        setattr(cfg, field, value)
    with pytest.raises(ValidationError, match="focal_gama"):
        LossConfig(focal_gama=1.0)  # typo: extra keys are forbidden


def test_sequence_focal_rejects_bad_options_and_shapes() -> None:
    z, y, n = torch.tensor(SEQ_LOGITS), torch.tensor(SEQ_TARGET), torch.tensor(SEQ_LENGTHS)
    with pytest.raises(ValueError, match="weighting"):
        sequence_focal_loss(z, y, n, weighting="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        sequence_focal_loss(z, y, n, reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma"):
        sequence_focal_loss(z, y, n, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha0"):
        sequence_focal_loss(z, y, n, alpha0=-1.0)
    with pytest.raises(ValueError, match="lengths"):
        sequence_focal_loss(z, y, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="lengths"):
        sequence_focal_loss(z, y, torch.tensor([4, 2, 1]))
    with pytest.raises(ValueError, match="target"):
        sequence_focal_loss(z, y[:, :3], n)
    with pytest.raises(ValueError, match="logits"):
        sequence_focal_loss(z[0], y, n)


def test_focal_and_class_weights_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(_z(), _y(), gamma=-0.5)
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(_z(), _y(), alpha=-1.0)
    with pytest.raises(ValueError, match="target"):
        focal_loss(_z(), _y()[:2])
    with pytest.raises(ValueError, match="confidence_penalty"):
        confidence_penalty(_z(), -0.1)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 2\)"):
        balanced_class_weights(torch.tensor([0, 1, 2]), 2)


def test_normalised_focal_keeps_relative_weights_on_cross_entropys_scale() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (32,), generator=g)
    logits = torch.randn(32, 4, generator=g) + 3 * F.one_hot(target, 4)  # mostly right, as in training
    raw = focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    norm = focal_loss(logits, target, alpha=0.25, gamma=2.0, normalize=True, reduction="none")
    ratio = norm / raw
    torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))  # one common factor: same relative weights
    logp = logits.log_softmax(-1).gather(1, target[:, None]).squeeze(1)
    mean_mod = (0.25 * (1 - logp.exp()) ** 2).mean()
    torch.testing.assert_close(ratio[0], 1 / mean_mod)
    ce = F.cross_entropy(logits, target)
    assert float(raw.mean()) < 0.05 * float(ce)  # unnormalised: far below cross-entropy's scale
    assert float(ce) < float(norm.mean()) < 4 * float(ce)  # a mean of CE weighted towards the hard examples
    # gamma = 0: exactly cross-entropy, whatever alpha (class weights included).
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    torch.testing.assert_close(focal_loss(logits, target, alpha=0.1, gamma=0.0, normalize=True, weight=w),
                               F.cross_entropy(logits, target, weight=w))


def test_normalised_focal_passes_no_gradient_through_the_normaliser() -> None:
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(16, 3, generator=g) * 2).requires_grad_()
    target = torch.randint(0, 3, (16,), generator=g)
    focal_loss(logits, target, normalize=True).backward()
    got = logits.grad.clone()
    logits.grad = None
    logp = logits.detach().log_softmax(-1).gather(1, target[:, None]).squeeze(1)
    scale = (0.25 * (1 - logp.exp()) ** 2).mean()
    (focal_loss(logits, target) / scale).backward()
    torch.testing.assert_close(got, logits.grad)


def test_focal_normalize_reaches_the_built_loss() -> None:
    y = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([[4.0, 0, 0], [0, 3.0, 0], [0, 0, 0.5], [1.0, 0, 0]])
    plain = build_loss(LossConfig(name="focal", class_weights=False), y, 3)(logits, y)
    norm = build_loss(LossConfig(name="focal", class_weights=False, focal_normalize=True), y, 3)(logits, y)
    assert float(norm) > 5 * float(plain)
