"""task forecast: the built-in's oracle, holdouts and windows without look-ahead, walk-forward folds, the
decoders' teacher forcing and scheduled sampling, the distribution heads, metrics, readers and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from longshort.config import validate
from longshort.data.forecast_data import (
    SeriesSet,
    build_windows,
    extend_future,
    fit_scaler,
    guess_season,
    prepare_forecast,
    read_series_table,
    read_tsf,
    sar_levels,
    sar_oracle,
    seasonal_ar,
)
from longshort.errors import ConfigError, DataError
from longshort.evaluate.forecast_metrics import forecast_metrics, point_metrics
from longshort.evaluate.forecast_predict import make_batch
from longshort.nn.forecaster import build_forecaster
from longshort.nn.regression import RegressionOutputs

TINY: dict[str, Any] = {"task": "forecast", "data": {"builtin": {"n": 30, "length": 60}},
                        "forecast": {"horizon": 4, "model": {"hidden_dim": 8, "layers": 1}},
                        "train": {"epochs": 2, "progress": "off", "batch_size": 32},
                        "diagnostics": {"report": False}}


def _cfg(**forecast: Any) -> Any:
    raw = {**TINY, "forecast": {**TINY["forecast"], **forecast}}
    return validate(raw)


def test_oracle_mean_and_spread_match_simulated_continuations() -> None:
    data = seasonal_ar(n=30, length=200, seed=3)
    level, scale = sar_levels(30, 200, 3)
    i, h = 5, 12
    y = data.target[i][:, 0]
    mean, sd = sar_oracle(y, h, level[i], scale[i])
    # continue the same process from this history many times: the mean and std of the paths are the oracle's
    from longshort.data.forecast_data import _sar_coefficients

    a, _ = _sar_coefficients()
    rng = np.random.default_rng(0)
    z0 = (y - level[i]) / scale[i]
    paths = np.empty((4000, h))
    for p in range(len(paths)):
        z = list(z0)
        for t in range(h):
            z.append(sum(a[j] * z[-j] for j in range(1, len(a))) + rng.normal())
            paths[p, t] = z[-1]
    paths = level[i] + scale[i] * paths
    np.testing.assert_allclose(paths.mean(0), mean, atol=4 * scale[i] * sd.max() / scale[i] / np.sqrt(4000) * 1.5)
    np.testing.assert_allclose(paths.std(0), sd, rtol=0.06)
    assert sd[0] == pytest.approx(scale[i]) and (np.diff(sd) >= 0).all()  # uncertainty grows with the horizon


def test_holdouts_never_train_on_validation_or_test_targets() -> None:
    cfg = _cfg()
    data = seasonal_ar(n=30, length=60, seed=0)
    s = prepare_forecast(data, cfg.forecast, 0)
    H = 4
    assert s.val is not None and s.test is not None
    for i, n in enumerate(data.lengths):
        tr = s.train.origin[s.train.series == i]
        assert tr.max() + H <= n - 2 * H  # every training target row is before the validation block
        assert s.val.origin[s.val.series == i].tolist() == [n - 2 * H]
        assert s.test.origin[s.test.series == i].tolist() == [n - H]


def test_window_scaling_reads_only_the_past() -> None:
    cfg = _cfg()
    data = seasonal_ar(n=30, length=60, seed=0)
    s = prepare_forecast(data, cfg.forecast, 0)
    idx = np.arange(len(s.test))  # type: ignore[arg-type]
    b1 = make_batch(s.test, idx, torch.device("cpu"))  # type: ignore[arg-type]
    changed = SeriesSet(data.ids, [t.copy() for t in data.target], data.past, data.known, data.times,
                        data.target_names)
    for t in changed.target:
        t[-4:] += 1000.0  # the test horizon's values only
    ws2 = build_windows(changed, s.scaler, [np.array([len(t) - 4]) for t in changed.target])
    b2 = make_batch(ws2, idx, torch.device("cpu"))
    np.testing.assert_array_equal(b1.loc, b2.loc)
    np.testing.assert_array_equal(b1.scale, b2.scale)
    assert torch.equal(b1.past, b2.past)
    assert b1.y is not None and b2.y is not None and not torch.equal(b1.y, b2.y)


def test_walk_forward_folds_share_no_test_row_and_train_before_testing() -> None:
    from longshort.forecast_run import fold_splits

    cfg = _cfg()
    data = seasonal_ar(n=30, length=80, seed=0)
    folds = fold_splits(cfg, data, 3)
    H = 4
    seen: dict[int, set[int]] = {}
    for f in folds:
        assert f.test is not None and f.val is not None
        for i in range(len(data)):
            start = int(f.test.origin[f.test.series == i][0])
            test_rows = set(range(start, start + H))
            assert not (seen.setdefault(i, set()) & test_rows)  # no row is tested twice
            seen[i] |= test_rows
            val0 = int(f.val.origin[f.val.series == i][0])
            assert f.train.origin[f.train.series == i].max() + H <= val0 < min(test_rows)
    assert [len(v) for v in seen.values()] == [3 * H] * len(data)  # three consecutive test blocks per series


def _model(decoder: str, loss: str = "gaussian_nll", attend: bool = False, skip: bool = True) -> Any:
    cfg = _cfg(model={"decoder": decoder, "hidden_dim": 8, "layers": 1, "attend": attend, "dropout": 0.0,
                      "linear_skip": skip}, loss=loss)
    torch.manual_seed(0)
    return build_forecaster(cfg.forecast, 1, 0, 2, lookback=10).eval()


@pytest.mark.parametrize("decoder", ["direct", "autoregressive"])
@pytest.mark.parametrize("loss", ["gaussian_nll", "quantile"])
def test_linear_skip_adds_a_map_of_the_lookback_to_the_location_only(decoder: str, loss: str) -> None:
    plain, m = _model(decoder, loss, skip=False), _model(decoder, loss)
    m.load_state_dict(plain.state_dict() | {k: v for k, v in m.state_dict().items() if k.startswith("skip.")})
    past, known = torch.randn(4, 10, 3), torch.randn(4, 4, 2)
    with torch.no_grad():
        assert torch.equal(m(past, known), plain(past, known))  # it starts at zero: the LSTM's forecast
        m.skip.weight.zero_()
        m.skip.weight[:, -1] = 1.0  # every step: + the last observed (scaled) value
        m.skip.bias.fill_(0.5)
        z, z0 = m(past, known, torch.zeros(4, 4, 1), 0.0), plain(past, known, torch.zeros(4, 4, 1), 0.0)
    shift = past[:, -1, :1] + 0.5  # [B, 1] -> the same shift at every step
    if loss == "quantile":  # every quantile moves with the location
        assert torch.allclose(z - z0, shift[:, None, :].expand(4, 4, 3), atol=1e-6)
    else:  # the mean moves, the variance does not
        assert torch.allclose(z[..., 0] - z0[..., 0], shift.expand(4, 4), atol=1e-6)
        assert torch.equal(z[..., 1], z0[..., 1])
    if decoder == "autoregressive":  # running free, the fed-back prediction includes the skip
        with torch.no_grad():
            assert not torch.allclose(m(past, known)[:, 1:, 1], plain(past, known)[:, 1:, 1])


@pytest.mark.parametrize("attention", [None, {"kind": "bahdanau", "input_feeding": False}])
def test_teacher_forcing_in_one_decoder_call_equals_the_step_loop(attention: dict[str, Any] | None) -> None:
    model = {"decoder": "autoregressive", "hidden_dim": 8, "layers": 2, "dropout": 0.0,
             **({"attend": True, "attention": attention} if attention else {})}
    cfg = _cfg(model=model)
    torch.manual_seed(0)
    m = build_forecaster(cfg.forecast, 1, 0, 2, lookback=10).eval()
    past, known, y = torch.randn(4, 10, 3), torch.randn(4, 4, 2), torch.randn(4, 4, 1)
    with torch.no_grad():
        fused = m(past, known, y, 0.0)
        # a probability that never draws the own prediction takes the step-by-step loop, fed the truth
        loop = m(past, known, y, 1e-12, torch.Generator().manual_seed(0))
        free = m(past, known, None)
    assert torch.allclose(fused, loop, atol=1e-6)
    assert not torch.allclose(fused[:, 1:], free[:, 1:])


def test_linear_skip_needs_the_lookback() -> None:
    cfg = _cfg(model={"linear_skip": True})
    with pytest.raises(ValueError, match="linear_skip needs the lookback"):
        build_forecaster(cfg.forecast, 1, 0, 0, lookback=0)


@pytest.mark.parametrize("attend", [False, True])
def test_scheduled_sampling_mixes_teacher_forcing_and_free_running(attend: bool) -> None:
    m = _model("autoregressive", attend=attend)
    past, known, y = torch.randn(16, 10, 3), torch.randn(16, 4, 2), torch.randn(16, 4, 1) * 5
    with torch.no_grad():
        tf = m(past, known, y, 0.0)
        free = m(past, known, None)
        free2 = m(past, known, y, 1.0)
        mixed = m(past, known, y, 0.5, torch.Generator().manual_seed(1))
        mixed2 = m(past, known, y, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(free, free2)  # probability 1: the truth is never fed
    assert torch.equal(tf[:, 0], free[:, 0])  # the first step reads the last observed value either way
    assert not torch.allclose(tf[:, 1:], free[:, 1:])
    assert torch.equal(mixed, mixed2)  # the draws come from the generator
    rows_tf = [torch.equal(mixed[b], tf[b]) for b in range(16)]
    rows_free = [torch.equal(mixed[b], free[b]) for b in range(16)]
    assert not all(rows_tf) and not all(rows_free)


def test_direct_decoder_reads_no_target_and_autoregressive_paths_are_seeded() -> None:
    d = _model("direct")
    past, known = torch.randn(4, 10, 3), torch.randn(4, 4, 2)
    with torch.no_grad():
        assert torch.equal(d(past, known, torch.randn(4, 4, 1), 0.0), d(past, known))
    a = _model("autoregressive", loss="student_t")
    p1, p2 = a.sample_paths(past, known, 50, seed=3), a.sample_paths(past, known, 50, seed=3)
    assert p1.shape == (4, 50, 4, 1) and torch.equal(p1, p2)
    assert not torch.equal(p1, a.sample_paths(past, known, 50, seed=4))
    assert (p1.std(1) > 0).all()


def test_horizon_curriculum_grows_the_trained_horizon() -> None:
    from longshort.training.forecast_task import ForecastTask

    cfg = validate({**TINY, "forecast": {**TINY["forecast"], "horizon": 8, "horizon_curriculum": 0.5,
                                         "model": {"decoder": "autoregressive"}}, "train": {"epochs": 8}})
    task = ForecastTask(cfg.train, cfg.forecast, None, None)  # type: ignore[arg-type]
    assert [task.steps_trained(e) for e in range(8)] == [2, 4, 6, 8, 8, 8, 8, 8]
    with pytest.raises(ConfigError, match="horizon_curriculum needs"):
        validate({"task": "forecast", "forecast": {"horizon_curriculum": 0.5}})
    with pytest.raises(ConfigError, match=r"needs forecast\.model\.decoder=autoregressive"):
        validate({"task": "forecast", "forecast": {"sampling": {"schedule": "exponential"}}})


def test_student_t_and_gaussian_intervals_are_their_quantiles() -> None:
    from scipy.stats import norm, t

    z = torch.randn(5, 3)
    st = RegressionOutputs("student_t", 1)
    q = st.quantile_values(z)
    d = st.distribution(z)
    ref = t.ppf(0.9, d.df.numpy()) * d.scale.numpy() + d.loc.numpy()
    np.testing.assert_allclose(q[..., 1].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert float(st.loss_value(z, torch.zeros(5, 1))) == pytest.approx(float(-d.log_prob(torch.zeros(5, 1)).mean()))
    g = RegressionOutputs("gaussian_nll", 1)
    zg = torch.randn(5, 2)
    dg = g.distribution(zg)
    np.testing.assert_allclose(g.quantile_values(zg)[..., 0].numpy(),
                               norm.ppf(0.1, dg.loc.numpy(), dg.scale.numpy()), rtol=1e-5, atol=1e-6)


def test_metrics_against_baselines() -> None:
    y = np.array([[[1.0], [2.0]], [[3.0], [4.0]]])
    pred = y + 1
    m = point_metrics(y, pred, np.array([[2.0], [0.5]]))
    assert m["mae"] == 1 and m["rmse"] == 1 and m["mase"] == pytest.approx((1 / 2 + 1 / 0.5) / 2)
    assert m["smape"] == pytest.approx(200 * np.mean([1 / 3, 1 / 5, 1 / 7, 1 / 9]))
    full = forecast_metrics(y, pred, np.ones((2, 1)), ["y"], (0.1, 0.9), np.stack([pred - 0.5, pred + 0.5], -1),
                            {"naive": y + 2, "seasonal_naive": pred})
    assert full["coverage"] == 0 and full["skill_naive"] == pytest.approx(0.5) and full["skill_seasonal_naive"] == 0


def test_season_is_found_from_the_autocorrelation() -> None:
    data = seasonal_ar(n=20, length=200, seed=1)
    data.season = None
    assert guess_season(data, 48)[0] == 12
    flat = SeriesSet(["a"], [np.random.default_rng(0).normal(size=(200, 1))], [np.zeros((200, 0))],
                     [np.zeros((200, 0))], [None], ["y"])
    assert guess_season(flat, 48)[0] == 1


TSF = """# a tiny .tsf
@relation tiny
@attribute series_name string
@attribute start_timestamp date
@frequency monthly
@horizon 6
@missing false
@equallength false
@data
T1:2000-01-01 00-00-00:{a}
T2:2001-01-01 00-00-00:{b}
"""


def test_tsf_reader_and_its_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.tsf"
    p.write_text(TSF.format(a=",".join(str(v) for v in range(30)), b=",".join(str(v) for v in range(40))))
    data = read_tsf(p)
    assert data.ids == ["T1", "T2"] and data.season == 12 and data.horizon == 6
    assert data.lengths.tolist() == [30, 40] and data.times[1] is not None
    assert str(data.times[1][0])[:10] == "2001-01-01" and str(data.times[1][1])[:10] == "2001-02-01"
    p.write_text(TSF.format(a="1,2,?,4", b="1,2"))
    with pytest.raises(DataError, match=r"line 10: value 3 is missing"):
        read_tsf(p)
    p.write_text(TSF.format(a="1,2,x", b="1,2"))
    with pytest.raises(DataError, match=r"line 10: value 3 is 'x', not a number"):
        read_tsf(p)


def test_long_table_reader_orders_by_time_and_names_bad_rows(tmp_path: Path) -> None:
    import pandas as pd

    fc = _cfg(known_future=["promo"], calendar=["month"]).forecast
    rows = [{"series_id": s, "time": f"2020-{m:02d}-01", "sales": float(m + (10 if s == "b" else 0)),
             "promo": float(m % 2)} for s in ("a", "b") for m in range(12, 0, -1)]
    df = pd.DataFrame(rows)
    data = read_series_table(df, fc, Path("t.csv"))
    assert data.ids == ["a", "b"] and data.target_names == ["sales"]
    assert data.target[0][:, 0].tolist() == [float(m) for m in range(1, 13)]  # sorted by time
    assert data.known_names == ["promo", "month_sin", "month_cos"] and data.known[0].shape == (12, 3)
    bad = df.astype({"sales": object})
    bad.loc[3, "sales"] = "oops"
    with pytest.raises(DataError, match=r"column 'sales' is not numeric: row 3 holds 'oops' \(series 'a'\)"):
        read_series_table(bad, fc, Path("t.csv"))
    dup = df.copy()
    dup.loc[1, "time"] = dup.loc[0, "time"]
    with pytest.raises(DataError, match="series 'a' has two rows at time"):
        read_series_table(dup, fc, Path("t.csv"))
    with pytest.raises(DataError, match=r"forecast\.known_future names column 'promo', which is missing"):
        read_series_table(df.drop(columns="promo"), fc, Path("t.csv"))
    scaler = fit_scaler(data, 6, 3, 12, ["month"])
    with pytest.raises(DataError, match="known-future columns promo: give their next 3 rows"):
        extend_future(data, None, scaler, fc)


def test_a_horizon_longer_than_the_series_is_one_line() -> None:
    cfg = validate({**TINY, "forecast": {**TINY["forecast"], "horizon": 30}})
    with pytest.raises(DataError, match=r"series 's0' has 60 steps; forecast.horizon=30 needs at least 91"):
        prepare_forecast(seasonal_ar(n=30, length=60), cfg.forecast, 0)


def test_config_refuses_what_forecast_does_not_read() -> None:
    with pytest.raises(ConfigError, match=r"does not read data\.split\.val"):
        validate({"task": "forecast", "data": {"split": {"val": 0.2}}})
    with pytest.raises(ConfigError, match=r"does not read forecast\.horizon"):
        validate({"task": "classify", "forecast": {"horizon": 3}})
    with pytest.raises(ConfigError, match=r"in both forecast\.target and forecast\.known_future"):
        validate({"task": "forecast", "forecast": {"target": ["a"], "known_future": ["a"]}})


def test_exposure_gap_and_sampling_are_recorded_per_epoch(tmp_path: Path) -> None:
    from longshort.run import train

    cfg = validate({**TINY, "forecast": {**TINY["forecast"], "model": {"decoder": "autoregressive",
                                                                        "hidden_dim": 8, "layers": 1},
                                         "sampling": {"schedule": "linear_with_floor", "slope": 0.05}}})
    run = train(cfg, out=tmp_path / "r")
    import pandas as pd

    h = pd.read_csv(tmp_path / "r" / "history.csv")
    assert {"val_exposure_gap", "val_tf_loss", "sampling_prob"} <= set(h.columns)
    assert np.allclose(h.val_exposure_gap, h.val_loss - h.val_tf_loss)
    assert h.sampling_prob.iloc[1] > h.sampling_prob.iloc[0] > 0
    m = run.metrics["test"]
    assert {"mase", "smape", "mae", "rmse", "coverage", "baselines"} <= set(m)
