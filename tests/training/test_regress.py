"""Task regress below the CLI: numeric targets read from every sequence format (and bad ones refused naming the
place), target scaling fitted on the training split, the head's losses and readings, the metrics, the config's
task rules and the sizing choices that differ from the classifier's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from longshort.config import validate
from longshort.data.builtin import SIGNAL_NOISE, signal
from longshort.data.config import DataConfig
from longshort.data.pipeline import Preprocessor, prepare
from longshort.data.sources import read_any
from longshort.errors import ConfigError, DataError
from longshort.evaluate.metrics import regression_metrics
from longshort.nn.regression import Z_80, RegressionOutputs
from longshort.sizing import DataShape, resolve

CFG = DataConfig()


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _ts(tmp_path: Path, header: str, lines: list[str]) -> Path:
    path = tmp_path / "data.ts"
    path.write_text(header + "@data\n" + "\n".join(lines) + "\n")
    return path


TS_TARGET = "@problemName t\n@timeStamps false\n@univariate true\n@equalLength true\n@targetLabel true\n"
TS_CLASSES = "@problemName t\n@timeStamps false\n@univariate true\n@equalLength true\n@classLabel true a b\n"


# -- reading ------------------------------------------------------------------------------------------------


def test_npz_float_targets_one_or_several_per_sequence(tmp_path: Path) -> None:
    x = np.zeros((4, 5, 2), np.float32)
    one = read_any(_npz(tmp_path, X=x, y=np.array([0.5, 1.5, -2.0, 3.25])), CFG, target="value")
    assert one.y.shape == (4, 1) and one.y.dtype == np.float32 and one.y[3, 0] == 3.25
    two = read_any(_npz(tmp_path, X=x, y=np.arange(8.0).reshape(4, 2)), CFG, target="value")
    assert two.y.shape == (4, 2) and two.y[1, 1] == 3.0
    # the same file as a classifier's: non-integer floats are not class labels
    with pytest.raises(DataError, match=r"non-integer floats"):
        read_any(_npz(tmp_path, X=x, y=np.array([0.5, 1.5, -2.0, 3.25])), CFG)


@pytest.mark.parametrize(("y", "message"), [
    (np.array(["a", "b", "c", "d"]), "array 'y' has non-numeric dtype <U1: task regress needs numbers"),
    (np.array([0.0, np.nan, 1.0, 2.0]), "array 'y': NaN at index 1"),
    (np.array([[0.0, 1.0], [1.0, 2.0], [2.0, np.inf], [0.0, 0.0]]), "array 'y': inf at index 2, target 1"),
    (np.zeros(3), "array 'y' has shape (3,), expected (4,) or (4, k)"),
])
def test_bad_npz_targets_name_the_array_and_index(tmp_path: Path, y: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_any(_npz(tmp_path, X=np.zeros((4, 5, 1), np.float32), y=y), CFG, target="value")
    assert "data.npz" in str(exc.value)


def test_ts_target_label_is_the_regression_target(tmp_path: Path) -> None:
    path = _ts(tmp_path, TS_TARGET, ["1,2,3:0.5", "4,5,6:-1.25"])
    data = read_any(path, CFG, target="value")
    assert data.y.tolist() == [[0.5], [-1.25]] and data.aux is None
    with pytest.raises(DataError, match=r"labels are needed here .its @targetLabel numbers are task regress"):
        read_any(path, CFG)  # a classifier is told where the numbers belong
    bad = _ts(tmp_path, TS_TARGET, ["1,2,3:0.5", "4,5,6:high"])
    with pytest.raises(DataError, match=r"line 8: target 'high' is not a number"):
        read_any(bad, CFG, target="value")
    with pytest.raises(DataError, match=r"holds class labels .@classLabel.: task regress needs a numeric target"):
        read_any(_ts(tmp_path, TS_CLASSES, ["1,2,3:a", "4,5,6:b"]), CFG, target="value")


def _long(tmp_path: Path, labels: list[object]) -> Path:
    df = pd.DataFrame({"series_id": [0, 0, 1, 1, 2, 2], "time": [0, 1] * 3, "v": np.arange(6.0), "label": labels})
    path = tmp_path / "long.csv"
    df.to_csv(path, index=False)
    return path


def test_long_table_numeric_label_per_series(tmp_path: Path) -> None:
    data = read_any(_long(tmp_path, [0.5, 0.5, 2.0, 2.0, -1.0, -1.0]), CFG, target="value")
    assert data.y.tolist() == [[0.5], [2.0], [-1.0]] and data.feature_names == ["v"]
    with pytest.raises(DataError, match=r"series '1' has more than one value in target column 'label': row 5"):
        read_any(_long(tmp_path, [0.5, 0.5, 2.0, 2.5, -1.0, -1.0]), CFG, target="value")
    with pytest.raises(DataError, match=r"column 'label' is not numeric: row 4 holds 'up'"):
        read_any(_long(tmp_path, [0.5, 0.5, "up", "up", -1.0, -1.0]), CFG, target="value")


def test_a_continuous_series_has_no_target_per_sequence(tmp_path: Path) -> None:
    path = tmp_path / "series.csv"
    pd.DataFrame({"time": range(50), "price": np.arange(50.0)}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"is one continuous series .no 'series_id' column.: task regress"):
        read_any(path, CFG, target="value")


# -- preprocessing ------------------------------------------------------------------------------------------


def test_target_scaling_is_fitted_on_the_training_split_and_inverts(tmp_path: Path) -> None:
    raw = signal(n=300, length=10, seed=1)
    raw.y = raw.y * 100 + 7  # far from standard units
    splits = prepare(CFG.model_copy(update={"source": "builtin:signal"}), 0, raw, target="value")
    prep = splits.prep
    train_y = prep.unscale_targets(splits.train.y)
    assert prep.regression and prep.target_names == ["target"]
    np.testing.assert_allclose(prep.target_mean, [train_y.mean()], rtol=1e-5)
    np.testing.assert_allclose(splits.train.y.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(splits.train.y.std(), 1.0, atol=1e-4)
    assert abs(float(splits.test.y.mean())) > 1e-4  # the test split is scaled with the training statistics only
    prep.save(tmp_path / "preprocess.json")
    again = Preprocessor.load(tmp_path / "preprocess.json")
    assert again == prep
    z = np.array([[0.0], [1.0]])
    np.testing.assert_allclose(again.unscale_targets(z)[:, 0], [prep.target_mean[0],
                                                                prep.target_mean[0] + prep.target_std[0]])
    # random, disjoint splits of every sequence
    assert len(splits.train) + len(splits.val) + len(splits.test) == 300


def test_a_file_with_another_number_of_targets_is_refused(tmp_path: Path) -> None:
    prep = Preprocessor.fit(signal(n=40, length=5).subset(np.arange(40)), "sequences", "standard", "value")
    two = read_any(_npz(tmp_path, X=np.zeros((3, 5, 3), np.float32), y=np.zeros((3, 2))), CFG, target="value")
    with pytest.raises(DataError, match=r"has 2 targets per sequence but the model was trained on 1 .target."):
        prep.transform(two)


# -- the head's losses and readings -------------------------------------------------------------------------


def test_point_losses_are_torchs() -> None:
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g)
    assert torch.allclose(RegressionOutputs("mse", 2).loss_value(z, y), F.mse_loss(z, y))
    assert torch.allclose(RegressionOutputs("mae", 2).loss_value(z, y), F.l1_loss(z, y))
    assert torch.allclose(RegressionOutputs("huber", 2, huber_delta=0.3).loss_value(z, y),
                          F.huber_loss(z, y, delta=0.3))


def test_pinball_loss_by_hand_and_quantiles_never_cross() -> None:
    out = RegressionOutputs("quantile", 1, (0.1, 0.5, 0.9))
    z = torch.tensor([[1.0, 0.0, -1.0]])  # crossed: the 0.1 level above the 0.9 level
    y = torch.tensor([[0.5]])
    # residual y - q: -0.5, 0.5, 1.5 at levels 0.1, 0.5, 0.9 -> 0.9*0.5, 0.5*0.5, 0.9*1.5
    assert out.loss_value(z, y).item() == pytest.approx((0.45 + 0.25 + 1.35) / 3)
    assert out.quantile_values(z).tolist() == [[[-1.0, 0.0, 1.0]]] and out.point(z).tolist() == [[0.0]]
    assert out.size == 3 and out.levels == (0.1, 0.5, 0.9)


def test_gaussian_head_mean_variance_and_80_percent_interval() -> None:
    out = RegressionOutputs("gaussian_nll", 1)
    raw_var = torch.log(torch.expm1(torch.tensor(4.0)))  # softplus^-1(4): variance 4 (+ the floor)
    z = torch.tensor([[3.0, float(raw_var)]])
    assert out.point(z).item() == 3.0
    lo, hi = out.quantile_values(z)[0, 0].tolist()
    assert (lo, hi) == pytest.approx((3 - 2 * Z_80, 3 + 2 * Z_80), abs=1e-3)
    y = torch.tensor([[1.0]])
    expected = F.gaussian_nll_loss(torch.tensor([[3.0]]), y, torch.tensor([[4.0 + 1e-4]]))
    assert out.loss_value(z, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_head_of_the_wrong_width_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"outputs 2 values per sequence, expected 3 .1 targets x 3"):
        RegressionOutputs("quantile", 1).point(torch.zeros(4, 2))


# -- metrics ----------------------------------------------------------------------------------------------


def test_regression_metrics_known_values() -> None:
    y = np.array([[1.0], [2.0], [3.0], [0.0]])
    p = np.array([[1.5], [2.0], [2.0], [0.5]])
    m = regression_metrics(y, p, ["t"])
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 0.25) / 4))
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 1.5 / 5.0)
    assert m["mape"] == pytest.approx((0.5 + 0 + 1 / 3) / 3) and m["mape_n"] == 3  # the zero target is left out
    q = np.stack([p - 1, p + 0.2], -1)  # intervals [p - 1, p + 0.2]: cover y = 1, 2, 0 but not 3
    m = regression_metrics(y, p, ["t"], (0.1, 0.9), q)
    assert m["coverage"] == pytest.approx(0.75) and m["coverage_nominal"] == pytest.approx(0.8)


# -- config and sizing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train": {"mixup": {"prob": 0.5}}}, "does not read train.mixup.prob"),
    ({"train": {"loss": {"name": "focal"}}}, "does not read train.loss.name .options of task classify"),
    ({"train": {"curriculum": {"kind": "difficulty"}}}, "scores examples with a classifier's loss"),
    ({"train": {"early_stopping": {"metric": "val_f1_macro"}}}, "not measured by task regress"),
    ({"regress": {"quantiles": [0.9, 0.1]}}, "increasing levels in .0, 1."),
])
def test_regress_refuses_what_it_does_not_do(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({"task": "regress", **overrides})


def test_regress_defaults_and_the_classifier_refuses_its_keys() -> None:
    cfg = validate({"task": "regress"})
    assert cfg.data.source == "builtin:signal" and cfg.regress.loss == "mse"
    with pytest.raises(ConfigError, match=r"does not read regress.loss .options of task regress"):
        validate({"regress": {"loss": "mae"}})
    with pytest.raises(ConfigError, match=r"is a regression metric"):
        validate({"train": {"early_stopping": {"metric": "val_rmse"}}})
    with pytest.raises(ConfigError, match=r"built-in dataset 'regimes' is a classify set; task regress has signal"):
        prepare(DataConfig(source="builtin:regimes"), 0, target="value")


def test_small_regression_sets_are_not_augmented() -> None:
    """Magnitude warps and time shifts keep a class but can change a numeric target: not on by default."""
    shape = DataShape(n=300, length=100, channels=3, classes=0)
    regress, notes = resolve(validate({"task": "regress"}), shape)
    classify, _ = resolve(validate({}), shape)
    assert classify.train.augment.enabled and not regress.train.augment.enabled
    assert not any(n.startswith("augmentation") for n in notes)
    assert regress.train.epochs == classify.train.epochs  # the same budget and model size otherwise
    assert regress.model.hidden_dim == classify.model.hidden_dim


def test_signal_noise_floor_is_the_residual_of_the_true_function() -> None:
    data = signal(n=20000, length=30, seed=3)
    x = data.X.astype(np.float64)
    mean = 1.5 * x[:, :, 0].mean(1) + (x[:, :, 1] * x[:, :, 2]).mean(1) + 0.5 * x[:, -1, 0]
    assert np.sqrt(np.mean((data.y[:, 0] - mean) ** 2)) == pytest.approx(SIGNAL_NOISE, rel=0.02)
