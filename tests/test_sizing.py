"""Size-aware defaults: budget in optimizer steps, small-data model selection, model size, the strided stem."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import longshort
from longshort import sizing
from longshort.config import Config, load_config, save_config, validate
from longshort.data.batching import TensorData
from longshort.nn.classifier import ClassifierConfig, DownsampleStem, SequenceClassifier
from longshort.sizing import DataShape, resolve
from longshort.training.classify import classifier_trainer


def _shape(n: int, length: int = 50) -> DataShape:
    return DataShape(n=n, length=length, channels=3, classes=4)


@pytest.mark.parametrize(("n", "batch", "epochs"), [
    (30, 8, 375),  # tiny: 4 steps an epoch, so hundreds of epochs reach the step budget
    (600, 32, 94),  # medium: 16 steps an epoch (its 90 validation sequences are folded into training)
    (200_000, 64, 4),  # large: thousands of steps an epoch, the minimum of epochs
])
def test_budget_is_counted_in_optimizer_steps_for_every_size(n: int, batch: int, epochs: int) -> None:
    cfg, notes = resolve(Config(), _shape(n))
    t = cfg.train
    n_train = round(n * (1 - cfg.data.split.val - cfg.data.split.test))
    per_epoch = -(-n_train // t.batch_size)
    assert (t.batch_size, t.epochs) == (batch, epochs)
    if n < 100_000:  # small and medium sets: the step budget, whatever the epoch count it takes
        assert abs(t.epochs * per_epoch - sizing.STEPS) <= per_epoch
    else:  # a large set reaches the budget within an epoch: it still sees every sequence MIN_EPOCHS times
        assert t.epochs == sizing.MIN_EPOCHS and t.epochs * per_epoch > sizing.STEPS
    assert any("optimizer steps" in note for note in notes)


def test_long_series_get_a_smaller_step_budget_and_a_stem() -> None:
    cfg, _ = resolve(Config(), _shape(100, length=2000))
    assert cfg.model.stem_stride == 8  # 2000 / 8 = 250 steps for the LSTM
    n_train = round(100 * (1 - 0.15))  # selection last folds the validation share into training
    per_epoch = -(-n_train // cfg.train.batch_size)
    steps = cfg.train.epochs * per_epoch
    assert abs(steps - sizing.WORK / (cfg.train.batch_size * 250)) <= per_epoch  # the compute cap, not STEPS
    assert steps < sizing.STEPS
    assert sizing.stem_stride(256) == 1 and sizing.stem_stride(257) == 2 and sizing.stem_stride(1460) == 8


def test_user_values_win_over_the_automatic_ones() -> None:
    cfg, _ = resolve(validate({"train": {"epochs": 3, "batch_size": 5}, "model": {"hidden_dim": 32}}), _shape(30))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.hidden_dim) == (3, 5, 32)
    cfg, _ = resolve(validate({"train": {"steps": 100, "batch_size": 10}}), _shape(1000))
    n_train = round(1000 * 0.7)  # 150 validation sequences: last, so 850 train
    assert cfg.train.epochs == -(-100 // -(-n_train // 10)) and cfg.train.steps is None
    seed, _ = resolve(validate({"model": {"size": "seed"}}), _shape(30))
    assert (seed.model.hidden_dim, seed.model.num_lstm_layers, seed.model.num_heads) == (256, 4, 8)
    assert seed.model.positions and not cfg.model.positions  # seed 000's codes; auto leaves them out
    mine, _ = resolve(validate({"model": {"positions": True}}), _shape(30))
    assert mine.model.positions


def test_small_data_trains_on_everything_and_keeps_the_last_weights() -> None:
    small, notes = resolve(Config(), _shape(40))
    assert small.train.selection == "last" and small.data.split.val == 0
    assert any("model selection: last" in n and "fewer than 200" in n for n in notes)
    big, notes = resolve(Config(), _shape(4000))
    assert big.train.selection == "val" and big.data.split.val == 0.15
    forced, _ = resolve(Config(), _shape(40), need_validation=True)  # tune chooses by a validation metric
    assert forced.train.selection == "val" and forced.data.split.val == 0.15


def test_small_sets_are_augmented_unless_the_user_chose() -> None:
    small, notes = resolve(Config(), _shape(300))
    assert small.train.augment.enabled and small.train.augment.noise.prob == 0.3
    assert any(n.startswith("augmentation:") for n in notes)
    assert small.train.augment.time_shift.max_shift == 1  # 2% of 50 steps
    assert resolve(Config(), _shape(300, length=24))[0].train.augment.time_shift.prob == 0  # position matters
    assert resolve(Config(), _shape(300, length=1000))[0].train.augment.time_shift.max_shift == 5
    assert not resolve(Config(), _shape(40_000))[0].train.augment.enabled
    assert not resolve(validate({"train": {"recipe": "plain"}}), _shape(300))[0].train.augment.enabled
    mine, _ = resolve(validate({"train": {"augment": {"time_warp": {"prob": 0.5}}}}), _shape(300))
    assert mine.train.augment.time_warp.prob == 0.5 and mine.train.augment.noise.prob == 0


def test_sequences_of_very_different_scales_are_normalised_one_by_one() -> None:
    wild, notes = resolve(Config(), DataShape(n=500, length=100, channels=1, classes=3, scale_spread=1e5))
    assert wild.data.scale == "series" and any(n.startswith("scaling: series") for n in notes)
    assert resolve(Config(), DataShape(500, 100, 1, 3, scale_spread=2.0))[0].data.scale == "standard"
    assert resolve(validate({"data": {"scale": "none"}}), DataShape(500, 100, 1, 3, 1e5))[0].data.scale == "none"


def test_scale_spread_and_per_series_preprocessing() -> None:
    from longshort.data.pipeline import Preprocessor
    from longshort.data.scaling import scale_spread
    from longshort.data.types import SequenceData
    from longshort.deploy.runtime import scale

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 30, 2)).astype(np.float32)
    lengths = rng.integers(5, 31, 40)
    x *= np.arange(30)[None, :, None] < lengths[:, None, None]
    assert scale_spread(x, lengths) < 2
    wild = x * np.float32(10.0) ** rng.integers(-3, 3, (40, 1, 1)).astype(np.float32)  # scales 1e-3 .. 1e2
    assert scale_spread(wild, lengths) > 100
    data = SequenceData(X=wild, lengths=lengths, y=np.arange(40) % 2, feature_names=["a", "b"])
    prep = Preprocessor.fit(data, "sequences", "series")
    out = prep.transform(data).X
    again = prep.transform(SequenceData(X=x, lengths=lengths, y=np.arange(40) % 2, feature_names=["a", "b"])).X
    np.testing.assert_allclose(out, again, atol=2e-4)  # each sequence's own scale is gone
    plain = Preprocessor.fit(data, "sequences", "standard").transform(data).X
    small = np.flatnonzero(np.abs(wild).max((1, 2)) < 0.1)
    assert len(small) and all(plain[i, : lengths[i]].std(0).max() < 0.01 for i in small)  # squashed flat
    # the torch-free runtime applies the same preprocessing to the bit
    assert np.array_equal(scale(wild, lengths, prep.mean, prep.std, per_series=True), out)


def test_model_size_follows_the_training_set() -> None:
    sizes = [resolve(Config(), _shape(n))[0].model for n in (50, 5_000, 50_000)]
    assert [(m.hidden_dim, m.num_lstm_layers) for m in sizes] == [(64, 2), (128, 2), (256, 4)]
    assert all(m.attention_dropout == 0.0 for m in sizes)


def test_the_resolved_config_reloads_identically(tmp_path: Path) -> None:
    cfg, _ = resolve(Config(), _shape(37, length=700))
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    resolved_again, notes = resolve(again, _shape(5000, length=10))  # other data: nothing left to choose
    assert resolved_again == cfg and notes == []


def test_the_schedule_is_laid_over_the_real_number_of_steps() -> None:
    cfg, _ = resolve(Config(), _shape(30))
    n = round(30 * 0.85)
    data = TensorData(X=torch.randn(n, 12, 3), lengths=torch.full((n,), 12), y=torch.arange(n) % 4, aux=None)
    model = SequenceClassifier(3, 4, ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1))
    tr = classifier_trainer(cfg.train, model, data, None, num_classes=4, seed=0, run_dir=Path("unused"))
    steps = cfg.train.epochs * -(-n // cfg.train.batch_size)
    assert tr._schedule_length() == steps >= 1000  # not 12 epochs of 3 steps
    assert tr.schedule.total_steps == steps + 1  # OneCycle: warm-up and annealing over exactly these steps


@pytest.mark.parametrize("stride", [1, 2, 8])
def test_stem_shortens_every_sequence_by_its_stride(stride: int) -> None:
    torch.manual_seed(0)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=1, conv_dilations=[1], stem_stride=stride)
    model = SequenceClassifier(2, 3, cfg).eval()
    lengths = torch.tensor([37, 1, 16, 40])
    x = torch.randn(4, 40, 2) * (torch.arange(40)[None, :, None] < lengths[:, None, None])
    z = model.encode(x, lengths)
    expected = -(-lengths // stride)  # ceil(L / stride)
    assert z.shape[1] == -(-40 // stride)
    assert torch.equal(model.output_lengths(lengths), expected)
    for b in range(4):  # padding never reaches a valid step: each sequence alone gives the same output
        alone = model(x[b:b + 1, : lengths[b]], lengths[b:b + 1]).logits
        torch.testing.assert_close(model(x, lengths).logits[b:b + 1], alone, atol=1e-5, rtol=1e-5)


def test_causal_stem_reads_only_the_past() -> None:
    torch.manual_seed(0)
    stem = DownsampleStem(4, 2, causal=True).eval()
    x = torch.randn(1, 32, 4)
    y, _ = stem(x, None)
    x2 = x.clone()
    x2[:, 20:] += 1.0  # change the future from input step 20 on
    y2, _ = stem(x2, None)
    # output j of two stride-2 stages reads inputs <= 4j + 3
    assert torch.equal(y[:, :5], y2[:, :5]) and not torch.equal(y[:, 5:], y2[:, 5:])


def test_stem_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        ClassifierConfig(stem_stride=3)


def test_a_small_run_says_what_it_chose_and_writes_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, t = 24, 300
    y = np.arange(n) % 2
    x = rng.normal(size=(n, t, 1)).astype(np.float32) + y[:, None, None] * 1.5
    np.savez(tmp_path / "d.npz", X=x, y=y)
    buf = io.StringIO()
    run = longshort.train({"data": {"source": str(tmp_path / "d.npz")},
                           "model": {"hidden_dim": 8, "num_heads": 2, "conv_dilations": [1]},
                           "train": {"steps": 6, "threads": 1, "progress": "off", "tensorboard": False},
                           "diagnostics": {"analysis": False, "report": False}},
                          out=tmp_path / "run", console=Console(file=buf, width=300))
    out = buf.getvalue()
    assert "auto: model selection: last" in out and "auto: training budget: " in out
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train.selection == "last" and saved.data.split.val == 0
    assert saved.model.stem_stride == 2 and saved.model.num_lstm_layers == 2
    assert saved.train.epochs == 2 and saved.train.batch_size == 8  # 6 steps, 3 an epoch (20 train sequences)
    assert "val" not in run.metrics and run.metrics["epochs_run"] == 2
    again = longshort.load(tmp_path / "run")
    np.testing.assert_allclose(again.predict_proba(x), run.predict_proba(x), atol=1e-6)


def test_the_compute_cap_counts_a_batch_at_its_longest_sequence_not_the_sets() -> None:
    # 600 sequences, most 100 steps and a few 2,000: batches are trimmed to their longest, so the cap that binds
    # at the set's longest length (2,000) leaves more updates when it counts the expected longest of a batch.
    lengths = np.r_[np.full(590, 100), np.full(10, 2000)]
    q = tuple(np.quantile(lengths, (np.arange(100) + 0.5) / 100).tolist())
    flat, _ = resolve(Config(), DataShape(600, 2000, 1, 3))
    varied, _ = resolve(Config(), DataShape(600, 2000, 1, 3, length_quantiles=q))
    assert sizing.batch_length(DataShape(600, 2000, 1, 3), 32) == 2000
    assert 100 < sizing.batch_length(DataShape(600, 2000, 1, 3, length_quantiles=q), 32) < 2000
    assert varied.train.epochs > flat.train.epochs


def test_positions_false_leaves_out_the_position_codes() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 12, 3)
    with_codes = SequenceClassifier(3, 2, ClassifierConfig(hidden_dim=8, num_lstm_layers=1, num_heads=1)).eval()
    without = SequenceClassifier(3, 2, ClassifierConfig(hidden_dim=8, num_lstm_layers=1, num_heads=1,
                                                         positions=False)).eval()
    without.load_state_dict(with_codes.state_dict())  # same weights: only the codes differ
    assert not torch.allclose(with_codes(x).logits, without(x).logits)
