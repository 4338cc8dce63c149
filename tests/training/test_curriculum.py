"""Curriculum learning (length, difficulty, adaptive) and multi-task weighting, checked against hand computations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from longshort.data.batching import TensorData, batch_indices, epoch_order, take
from longshort.errors import ConfigError
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.training import curriculum as cur
from longshort.training.curriculum import CurriculumConfig, TaskConfig

# -- config ------------------------------------------------------------------------------------------------


def test_defaults_and_bad_values_name_the_option() -> None:
    cfg = CurriculumConfig()
    assert (cfg.kind, cfg.growth, cfg.start_length, cfg.rate, cfg.beta, cfg.tau, cfg.mode) == (
        "none", "linear", 10, 5.0, 2.0, 1.0, "crop")
    assert (cfg.scorer, cfg.score_after, cfg.stages, cfg.stage_epochs) == ("self", 1, 3, None)
    assert (cfg.p0, cfg.alpha, cfg.hard_fraction) == (0.2, 0.5, 0.5)
    assert TaskConfig().model_dump() == {"weighting": "fixed", "tau": 1.0, "main_start_epoch": 0,
                                         "aux_start_epoch": 0}
    for field, value in [("kind", "random"), ("start_length", 0), ("tau", 0.0), ("stages", 0),
                         ("hard_fraction", 1.0), ("p0", 1.5), ("mode", "pad"), ("beta", 0.5)]:
        with pytest.raises(ValidationError, match=field):
            CurriculumConfig(**{field: value})
    with pytest.raises(ValidationError, match="tau"):
        TaskConfig(tau=0)
    with pytest.raises(ValidationError, match="extra"):
        CurriculumConfig(growth_rate=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="score_after >= 1"):
        CurriculumConfig(kind="difficulty", score_after=0)
    CurriculumConfig(kind="difficulty", score_after=0, scorer="runs/teacher")  # an external scorer may score at 0


# -- length curriculum ---------------------------------------------------------------------------------------


def test_linear_length_limit_follows_its_formula_and_caps_at_max() -> None:
    cfg = CurriculumConfig(kind="length", growth="linear", start_length=10, rate=5.0)
    assert [cur.length_limit(cfg, e, 42) for e in range(8)] == [10, 15, 20, 25, 30, 35, 40, 42]
    frac = CurriculumConfig(kind="length", start_length=3, rate=2.5)  # rounded down
    assert [cur.length_limit(frac, e, 100) for e in range(5)] == [3, 5, 8, 10, 13]
    exact = CurriculumConfig(kind="length", start_length=10, rate=0.7)  # 10 + 0.7*10 is 16.999999999999996 in floats
    assert cur.length_limit(exact, 10, 100) == 17
    assert cur.length_limit(cfg, 0, 4) == 4  # L_start above L_max: the cap wins
    assert cur.length_limit(CurriculumConfig(kind="none"), 3, 17) == 17  # other kinds: no limit


def test_exp_length_limit_follows_its_formula_and_caps_at_max() -> None:
    cfg = CurriculumConfig(kind="length", growth="exp", start_length=10, beta=2.0, tau=1.0)
    assert [cur.length_limit(cfg, e, 100) for e in range(6)] == [10, 20, 40, 80, 100, 100]
    slow = CurriculumConfig(kind="length", growth="exp", start_length=10, beta=2.0, tau=2.0)
    expected = [min(120, math.floor(10 * 2 ** (e / 2))) for e in range(9)]
    assert expected == [10, 14, 20, 28, 40, 56, 80, 113, 120]
    assert [cur.length_limit(slow, e, 120) for e in range(9)] == expected
    assert cur.length_limit(cfg, 5000, 100) == 100  # 2^5000 overflows a float: capped, no error
    one = CurriculumConfig(kind="length", growth="exp", start_length=1, beta=1.0)
    assert [cur.length_limit(one, e, 9) for e in range(3)] == [1, 1, 1]  # at least 1
    with pytest.raises(ValueError, match="epoch"):
        cur.length_limit(cfg, -1, 100)
    with pytest.raises(ValueError, match="max_length"):
        cur.length_limit(cfg, 0, 0)


def test_limit_batch_keeps_the_last_steps_shifted_to_the_front() -> None:
    x = torch.arange(1, 31, dtype=torch.float32).reshape(3, 5, 2)
    lengths = torch.tensor([5, 2, 4])
    x[1, 2:] = 0
    x[2, 4:] = 0
    out, lens = cur.limit_batch(x, lengths, 3)
    assert lens.tolist() == [3, 2, 3]
    expected = torch.stack([
        x[0, 2:5],  # last 3 of 5
        torch.cat([x[1, 0:2], torch.zeros(1, 2)]),  # already short: unchanged, zero padded
        x[2, 1:4],  # last 3 of 4
    ])
    assert torch.equal(out, expected)
    assert out.shape == (3, 3, 2)


def test_limit_batch_without_long_rows_only_trims_and_rejects_bad_input() -> None:
    x = torch.randn(2, 6, 1, generator=torch.Generator().manual_seed(0))
    out, lens = cur.limit_batch(x, torch.tensor([2, 4]), 5)
    assert torch.equal(out, x[:, :4]) and lens.tolist() == [2, 4]
    with pytest.raises(ValueError, match="limit must be >= 1"):
        cur.limit_batch(x, torch.tensor([2, 4]), 0)
    with pytest.raises(ValueError, match="lengths must lie"):
        cur.limit_batch(x, torch.tensor([2, 7]), 3)
    with pytest.raises(ValueError, match="lengths must be"):
        cur.limit_batch(x, torch.tensor([2, 4, 1]), 3)
    with pytest.raises(ValueError, match=r"\[B, T, C\]"):
        cur.limit_batch(x[0], torch.tensor([2]), 3)


def _ragged(n: int = 23, t: int = 12, c: int = 2, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    x = torch.randn(n, t, c, generator=g) * (torch.arange(t)[None, :] < lengths[:, None])[..., None]
    return TensorData(X=x, lengths=lengths, y=torch.arange(n) % 3, aux=None)


def test_a_whole_cropped_epoch_respects_the_limit_and_keeps_the_last_steps() -> None:
    data = _ragged()
    cfg = CurriculumConfig(kind="length", start_length=3, rate=2.0, mode="crop")
    plan = cur.plan_epoch(cfg, 1, 10, 7, data.lengths, None, 0.0)
    assert plan.limit == 5 and torch.equal(plan.order, epoch_order(len(data), 7, 1))  # crop: all, same order
    seen = []
    for idx in batch_indices(plan.order, 4):
        b = take(data, idx, torch.device("cpu"))
        assert plan.limit is not None
        x, lens = cur.limit_batch(b.x, b.lengths, plan.limit)
        assert int(lens.max()) <= 5 and x.shape[1] <= 5
        for row, i in enumerate(idx.tolist()):
            n_i = int(data.lengths[i])
            keep = min(n_i, 5)
            assert int(lens[row]) == keep
            assert torch.equal(x[row, :keep], data.X[i, n_i - keep:n_i])
            assert not x[row, keep:].any()
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(data)))


def test_filter_mode_uses_only_short_sequences_in_shuffled_order() -> None:
    data = _ragged()
    cfg = CurriculumConfig(kind="length", start_length=4, rate=0.0, mode="filter")
    plan = cur.plan_epoch(cfg, 0, 10, 3, data.lengths, None, 0.0)
    base = epoch_order(len(data), 3, 0)
    expected = [i for i in base.tolist() if int(data.lengths[i]) <= 4]
    assert 0 < len(expected) < len(data)
    assert plan.order.tolist() == expected
    assert plan.limit == 4


def test_filter_mode_falls_back_to_the_shortest_sequences() -> None:
    lengths = torch.tensor([6, 3, 9, 3, 5])
    order = torch.tensor([4, 3, 0, 1, 2])
    assert cur.length_order(lengths, 2, order, "filter").tolist() == [3, 1]  # none <= 2: the length-3 ones
    assert cur.length_order(lengths, 5, order, "filter").tolist() == [4, 3, 1]
    assert cur.length_order(lengths, 2, order, "crop") is order
    with pytest.raises(ValueError, match=r"curriculum\.mode"):
        cur.length_order(lengths, 2, order, "drop")  # type: ignore[arg-type]


# -- difficulty curriculum ------------------------------------------------------------------------------------


def test_difficulty_stages_follow_the_epochs() -> None:
    cfg = CurriculumConfig(kind="difficulty", score_after=1, stages=3)
    assert [cur.difficulty_stage(cfg, e, 10) for e in range(10)] == [None, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [cur.difficulty_stage(cfg, e, 12) for e in range(12)] == [None, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    fixed = CurriculumConfig(kind="difficulty", score_after=2, stages=3, stage_epochs=2)
    assert [cur.difficulty_stage(fixed, e, 12) for e in range(10)] == [None, None, 0, 0, 1, 1, 2, 2, 2, 2]
    assert cur.difficulty_stage(CurriculumConfig(kind="adaptive"), 5, 10) is None
    assert [cur.difficulty_stage(cfg, e, 3) for e in range(3)] == [None, 0, 1]  # fewer epochs than stages
    with pytest.raises(ValueError, match="epoch"):
        cur.difficulty_stage(cfg, -1, 10)


def test_difficulty_subsets_are_cumulative_and_easiest_first() -> None:
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    assert cur.difficulty_subset(scores, 0, 3).tolist() == [1, 5]  # the easiest third
    assert cur.difficulty_subset(scores, 1, 3).tolist() == [1, 5, 3, 2]
    assert cur.difficulty_subset(scores, 2, 3).tolist() == [1, 5, 3, 2, 4, 0]
    assert cur.difficulty_subset(torch.tensor([1.0, 1.0, 0.0, 0.0]), 0, 2).tolist() == [2, 3]  # ties by index
    seven = torch.arange(7, 0, -1).float()  # example 6 easiest
    assert [len(cur.difficulty_subset(seven, s, 3)) for s in range(3)] == [3, 5, 7]
    # final_stage=hard: the last stage is the hardest third alone; the earlier stages are as before
    assert cur.difficulty_subset(scores, 2, 3, "hard").tolist() == [4, 0]
    assert cur.difficulty_subset(scores, 1, 3, "hard").tolist() == [1, 5, 3, 2]
    assert cur.difficulty_subset(scores, 0, 1, "hard").tolist() == [1, 5, 3, 2, 4, 0]  # one stage: all of it
    with pytest.raises(ValueError, match="stage must lie"):
        cur.difficulty_subset(scores, 3, 3)
    with pytest.raises(ValueError, match="NaN"):
        cur.difficulty_subset(torch.tensor([0.1, float("nan")]), 0, 1)


def test_difficulty_plan_shuffles_the_stage_subset_with_the_seed() -> None:
    lengths = torch.full((9,), 4)
    scores = torch.tensor([0.8, 0.1, 0.9, 0.2, 0.5, 0.3, 0.6, 0.7, 0.4])
    cfg = CurriculumConfig(kind="difficulty", score_after=1, stages=3)
    before = cur.plan_epoch(cfg, 0, 10, 5, lengths, None, 0.0)
    assert torch.equal(before.order, epoch_order(9, 5, 0))  # normal training before scoring
    plan = cur.plan_epoch(cfg, 1, 10, 5, lengths, scores, 0.0)
    easiest = torch.tensor([1, 3, 5])
    assert torch.equal(plan.order, easiest[epoch_order(3, 5, 1)])
    later = cur.plan_epoch(cfg, 4, 10, 5, lengths, scores, 0.0)
    assert sorted(later.order.tolist()) == [1, 3, 4, 5, 6, 8]  # stage 1: easiest two thirds
    with pytest.raises(ValueError, match="needs the examples' scores"):
        cur.plan_epoch(cfg, 1, 10, 5, lengths, None, 0.0)
    with pytest.raises(ValueError, match="cover 3 examples"):
        cur.plan_epoch(cfg, 1, 10, 5, lengths, scores[:3], 0.0)
    assert cur.needs_scores(cfg, 1) and not cur.needs_scores(cfg, 0)
    assert not cur.needs_scores(CurriculumConfig(kind="length"), 5)


# -- adaptive curriculum --------------------------------------------------------------------------------------


def test_p_hard_formula_and_cap() -> None:
    cfg = CurriculumConfig(kind="adaptive", p0=0.2, alpha=0.5)
    assert cur.p_hard(cfg, 0.0) == pytest.approx(0.2)
    assert cur.p_hard(cfg, 0.6) == pytest.approx(0.5)
    assert cur.p_hard(CurriculumConfig(p0=0.7, alpha=0.5), 0.9) == 1.0  # 1.15 capped
    with pytest.raises(ValueError, match="accuracy"):
        cur.p_hard(cfg, 1.5)


def test_adaptive_draws_hard_examples_with_probability_p_hard() -> None:
    n = 4000
    scores = torch.rand(n, generator=torch.Generator().manual_seed(1))
    hard = set(torch.topk(scores, n // 2).indices.tolist())  # hard_fraction 0.5: the higher-loss half
    for p in (0.2, 0.35, 0.8):
        order = cur.adaptive_order(scores, p, 0.5, torch.Generator().manual_seed(2))
        assert order.shape == (n,) and order.dtype == torch.int64
        frac = sum(i in hard for i in order.tolist()) / n
        assert abs(frac - p) < 0.03  # binomial sd is at most 0.008
    all_hard = cur.adaptive_order(scores, 1.0, 0.5, torch.Generator().manual_seed(3))
    assert set(all_hard.tolist()) <= hard
    no_hard = cur.adaptive_order(scores, 0.0, 0.5, torch.Generator().manual_seed(3))
    assert not set(no_hard.tolist()) & hard


def test_adaptive_pools_and_reproducibility() -> None:
    scores = torch.arange(10).float()
    order = cur.adaptive_order(scores, 1.0, 0.3, torch.Generator().manual_seed(0))
    assert set(order.tolist()) <= {7, 8, 9}  # top 30% by loss
    a = cur.adaptive_order(scores, 0.5, 0.3, torch.Generator().manual_seed(4))
    b = cur.adaptive_order(scores, 0.5, 0.3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    tiny = cur.adaptive_order(torch.tensor([0.1, 0.2]), 1.0, 0.01, torch.Generator().manual_seed(0))
    assert tiny.tolist() == [1, 1]  # at least one example in each pool
    assert cur.adaptive_order(torch.tensor([0.3]), 0.5, 0.5, torch.Generator()).tolist() == [0]
    with pytest.raises(ValueError, match="p_hard"):
        cur.adaptive_order(scores, 1.2, 0.3, torch.Generator())
    with pytest.raises(ValueError, match="hard_fraction"):
        cur.adaptive_order(scores, 0.5, 1.0, torch.Generator())


def test_adaptive_plan_uses_previous_accuracy_and_replays_per_seed_and_epoch() -> None:
    n = 1000
    lengths = torch.full((n,), 3)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(5))
    hard = set(torch.topk(scores, n // 2).indices.tolist())
    cfg = CurriculumConfig(kind="adaptive", p0=0.1, alpha=0.8)
    plan = cur.plan_epoch(cfg, 2, 10, 9, lengths, scores, 0.5)  # p_hard = 0.1 + 0.8*0.5 = 0.5
    again = cur.plan_epoch(cfg, 2, 10, 9, lengths, scores, 0.5)
    assert torch.equal(plan.order, again.order) and plan.limit is None
    assert not torch.equal(plan.order, cur.plan_epoch(cfg, 3, 10, 9, lengths, scores, 0.5).order)
    frac = sum(i in hard for i in plan.order.tolist()) / n
    assert abs(frac - 0.5) < 0.06
    low = cur.plan_epoch(cfg, 2, 10, 9, lengths, scores, 0.0).order  # p_hard = 0.1
    assert abs(sum(i in hard for i in low.tolist()) / n - 0.1) < 0.04


# -- scoring ---------------------------------------------------------------------------------------------------


class _Out(NamedTuple):
    logits: Tensor
    aux: Tensor


class _MeanModel(nn.Module):
    """Logits from the mean over valid steps, through dropout (which must be off while scoring)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.drop = nn.Dropout(0.9)

    def forward(self, x: Tensor, lengths: Tensor) -> _Out:
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
        mean = (x * mask).sum(1) / lengths[:, None]
        logits = self.lin(self.drop(mean))
        return _Out(logits, logits[:, 0])


def test_score_examples_is_per_example_cross_entropy_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = _MeanModel()
    data = _ragged(n=7, t=5)
    mean = (data.X.sum(1) / data.lengths[:, None]).float()
    assert data.y is not None
    expected = F.cross_entropy(model.lin(mean), data.y, reduction="none").detach()
    scores = cur.score_examples(model, data, 3, "cpu")
    assert scores.shape == (7,) and not scores.requires_grad
    torch.testing.assert_close(scores, expected)
    assert model.training  # restored
    model.eval()
    cur.score_examples(model, data, 3, "cpu")
    assert not model.training
    with pytest.raises(ValueError, match="labelled"):
        cur.score_examples(model, TensorData(data.X, data.lengths, None, None), 3, "cpu")


def test_score_examples_on_the_sequence_classifier() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier(2, 3, ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1,
                                                      conv_dilations=[1]))
    data = _ragged(n=6, t=5)
    assert data.y is not None
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(data.X, data.lengths).logits, data.y, reduction="none")
    model.train()
    scores = cur.score_examples(model, data, 4, torch.device("cpu"))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert model.training


def test_load_scorer_names_the_option_for_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.curriculum\.scorer=.*not a directory"):
        cur.load_scorer(str(tmp_path / "nope"), "cpu", 2, 3)
    with pytest.raises(ValueError, match="self"):
        cur.load_scorer("self", "cpu", 2, 3)


def test_load_scorer_loads_a_run_and_checks_it_fits_the_data(tmp_path: Path) -> None:
    from longshort.config import Config, save_config
    from longshort.data.pipeline import Preprocessor
    from longshort.training.checkpoint import save_weights

    with pytest.raises(ConfigError, match=r"train\.curriculum\.scorer=.*config\.yaml is missing"):
        cur.load_scorer(str(tmp_path), "cpu", 2, 3)
    arch = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1, conv_dilations=[1])
    torch.manual_seed(0)
    teacher = SequenceClassifier(2, 3, arch)
    save_config(Config(model=arch), tmp_path / "config.yaml")
    Preprocessor(layout="sequences", class_names=["a", "b", "c"], feature_names=["f0", "f1"]).save(
        tmp_path / "preprocess.json")
    save_weights(teacher, tmp_path / "model.safetensors")
    scorer = cur.load_scorer(str(tmp_path), "cpu", 2, 3)
    data = _ragged(n=5, t=4)
    torch.testing.assert_close(cur.score_examples(scorer, data, 8, "cpu"), cur.score_examples(teacher, data, 8, "cpu"))
    with pytest.raises(ConfigError, match="takes 2 features and 3 classes, this data has 4 and 3"):
        cur.load_scorer(str(tmp_path), "cpu", 4, 3)


# -- multi-task weighting --------------------------------------------------------------------------------------


def test_performance_weights_are_n_times_softmax_of_log_perf_over_tau() -> None:
    perf = {"main": 0.8, "aux": 0.4}
    w = cur.task_weights(TaskConfig(weighting="performance", tau=0.5), 0.3, 0, perf)
    # perf^(1/tau) = 0.64, 0.16 -> softmax 0.8, 0.2 -> times n = 2
    assert w["main"] == pytest.approx(1.6) and w["aux"] == pytest.approx(0.4)
    w1 = cur.task_weights(TaskConfig(weighting="performance", tau=1.0), 0.3, 0, perf)
    assert w1["main"] == pytest.approx(2 * 0.8 / 1.2) and w1["aux"] == pytest.approx(2 * 0.4 / 1.2)
    assert w1["main"] > w1["aux"]  # the better task weighs more
    assert sum(w1.values()) == pytest.approx(2.0)
    even = cur.task_weights(TaskConfig(weighting="performance", tau=0.3), 0.3, 0, {"main": 0.6, "aux": 0.6})
    assert even == pytest.approx({"main": 1.0, "aux": 1.0})
    zero = cur.task_weights(TaskConfig(weighting="performance"), 0.3, 0, {"main": 0.0, "aux": 0.5})
    assert zero["main"] == pytest.approx(2 * 1e-6 / (1e-6 + 0.5))  # clamped to 1e-6, finite
    assert cur.task_weights(TaskConfig(weighting="performance"), 0.3, 0, None) == {"main": 1.0, "aux": 1.0}


def test_task_performance_feeds_the_weights() -> None:
    perf = cur.task_performance(0.75, 3.0)
    assert perf == {"main": 0.75, "aux": 0.25}
    w = cur.task_weights(TaskConfig(weighting="performance"), 0.3, 0, perf)
    assert w == pytest.approx({"main": 1.5, "aux": 0.5})


def test_tasks_weigh_zero_before_their_start_epoch() -> None:
    fixed = TaskConfig(aux_start_epoch=2)
    assert cur.task_weights(fixed, 0.3, 1, None) == {"main": 1.0, "aux": 0.0}
    assert cur.task_weights(fixed, 0.3, 2, None) == {"main": 1.0, "aux": 0.3}
    perf = TaskConfig(weighting="performance", main_start_epoch=1, aux_start_epoch=3)
    scores = {"main": 0.9, "aux": 0.2}
    assert cur.task_weights(perf, 0.3, 0, scores) == {"main": 0.0, "aux": 0.0}
    assert cur.task_weights(perf, 0.3, 1, scores) == {"main": 1.0, "aux": 0.0}  # alone: n * softmax = 1
    assert cur.task_weights(perf, 0.3, 3, scores) == pytest.approx({"main": 2 * 0.9 / 1.1, "aux": 2 * 0.2 / 1.1})
    assert cur.task_weights(TaskConfig(), 0.3, 0, None) == {"main": 1.0, "aux": 0.3}  # fixed


def test_task_weights_reject_bad_input() -> None:
    perf = TaskConfig(weighting="performance")
    assert cur.task_weights(perf, 0.0, 0, {"main": 0.7}) == {"main": 1.0, "aux": 0.0}  # no aux task
    with pytest.raises(ValueError, match="no performance for active task"):
        cur.task_weights(perf, 0.3, 0, {"main": 0.7})
    with pytest.raises(ValueError, match="performance of 'aux'"):
        cur.task_weights(perf, 0.3, 0, {"main": 0.7, "aux": 1.5})
    with pytest.raises(ValueError, match="performance of 'main'"):
        cur.task_weights(perf, 0.3, 0, {"main": float("nan"), "aux": 0.5})
    with pytest.raises(ValueError, match="aux_weight"):
        cur.task_weights(perf, -1.0, 0, None)


def test_curriculum_generator_is_fixed_by_seed_and_epoch() -> None:
    a = torch.rand(4, generator=cur.curriculum_generator(3, 1))
    assert torch.equal(a, torch.rand(4, generator=cur.curriculum_generator(3, 1)))
    assert not torch.equal(a, torch.rand(4, generator=cur.curriculum_generator(3, 2)))
    assert not torch.equal(a, torch.rand(4, generator=cur.curriculum_generator(4, 1)))
    torch.rand(4, generator=cur.curriculum_generator(-1, 0))  # negative seeds work
