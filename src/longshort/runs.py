"""Loading a run directory: the finished runs ``longshort train`` writes, read back for predict, evaluate, export,
streaming and analysis. This module depends on the config, data, model and checkpoint modules, never on the
trainer, so whatever only reads runs (deploy, diagnostics, report) does not import the training code.

A classifier run directory::

    RUN_DIR/config.yaml         the resolved config (reloads into the same run)
    RUN_DIR/preprocess.json     classes, features and scaling fitted on the training split
    RUN_DIR/model.safetensors   the best weights (by train.early_stopping.metric)
    RUN_DIR/checkpoints/        best and last: weights + optimizer, schedule, RNG, data position
    RUN_DIR/history.csv, tb/    per-epoch metrics (CSV and TensorBoard)
    RUN_DIR/metrics.json        val and test metrics
    RUN_DIR/plots/              confusion_matrix.png, learning_curve.png

A seq2seq run directory adds ``vocab_source*.json`` and ``vocab_target.json`` (training split only),
``test_predictions.tsv`` and ``plots/attention.png`` and has no ``preprocess.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from longshort.config import Config, load_config
from longshort.data.batching import TensorData, to_tensors
from longshort.data.pair_pipeline import EncodedPairs, encode_pairs, load_pair_source, prepare_pairs
from longshort.data.pairs import PairData, Vocab
from longshort.data.pipeline import Preprocessor, load_for_model, prepare
from longshort.data.types import SequenceData
from longshort.errors import DataError, LongshortError, RunDirError, read_json_object
from longshort.evaluate.metrics import classification_metrics, regression_metrics
from longshort.evaluate.predict import batched_head, batched_proba
from longshort.evaluate.seq_metrics import sequence_metrics
from longshort.nn.classifier import SequenceClassifier
from longshort.nn.decoding import decode_all
from longshort.nn.regression import regression_outputs
from longshort.nn.seq2seq import Seq2Seq
from longshort.training.checkpoint import load_classifier as load_classifier
from longshort.training.checkpoint import load_weights


class Run:
    """A trained model with its preprocessing, loaded from (or just written to) a run directory."""

    def __init__(self, run_dir: Path, config: Config, model: SequenceClassifier, prep: Preprocessor) -> None:
        self.dir, self.config, self.model, self.prep = Path(run_dir), config, model, prep
        self.model.eval()

    task = "classify"

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> Run:
        cfg, prep, model = load_classifier(run_dir, device)
        return cls(Path(run_dir), cfg, model, prep)

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.dir / "metrics.json"
        return read_json_object(p) if p.is_file() else {}

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray | SequenceData, lengths: np.ndarray | None = None,
                      batch_size: int = 256, prepared: bool = False) -> np.ndarray:
        """Class probabilities [N, K] for raw (unscaled) sequences ``x`` [N, T, C] or a SequenceData.

        ``prepared=True`` says ``x`` already went through this run's preprocessing (``load_for_model``).
        """
        data = self._prepared(x, lengths, prepared)
        return _proba(self.model, to_tensors(data), batch_size)

    def _prepared(self, x: Any, lengths: Any, prepared: bool) -> SequenceData:
        """``x`` through this run's preprocessing: a SequenceData, a 3-D array (with ``lengths``, or refused when
        it looks padded), a list of 2-D arrays, or a DataFrame read as the training file was."""
        import pandas as pd

        if isinstance(x, pd.DataFrame):
            import tempfile

            from longshort.data.memory import write_source

            with tempfile.TemporaryDirectory(prefix="longshort-predict-") as tmp:
                path = write_source(x, Path(tmp), "predict")
                return load_for_model(str(path), self.config.data, self.prep, self.config.seed, labels="optional")
        data = x if isinstance(x, SequenceData) else _raw_sequences(x, lengths)
        if not prepared:
            check_finite(data, allow_nan=self.prep.missing != "error")
            data = self.prep.transform(data, labelled=False)
        return data

    def predict(self, x: np.ndarray | SequenceData, lengths: np.ndarray | None = None) -> np.ndarray:
        """Predicted labels for each sequence (integers when the training labels were, else their names)."""
        return self.labels(self.predict_proba(x, lengths).argmax(1))

    def labels(self, index: np.ndarray) -> np.ndarray:
        """Class indices -> the training labels (as integers when they were integers)."""
        names = np.asarray(self.prep.class_names)[np.asarray(index)]
        return names.astype(np.int64) if self.prep.label_kind == "int" else names

    def streamer(self, batch_size: int = 1) -> Any:
        """A :class:`~longshort.deploy.streaming.RunStreamer`: feed raw steps of ``batch_size`` streams one at a
        time and get each prefix's class probabilities (needs a model trained with model.bidirectional=false)."""
        from longshort.deploy.streaming import RunStreamer

        return RunStreamer(self, batch_size)

    def evaluate(self, data: str | None = None) -> dict[str, Any]:
        """Metrics on a file (all of it), or on the run's own test split when ``data`` is None."""
        if data is None:
            splits = prepare(self.config.data, self.config.seed)
            test = splits.test
            if test is None:
                raise LongshortError("this run has no test split (split.test=0): pass --data FILE")
        else:
            test = load_for_model(data, self.config.data, self.prep, self.config.seed)
            if test.y is None:
                raise LongshortError(f"{data} has no labels to evaluate against")
        assert test.y is not None
        proba = _proba(self.model, to_tensors(test), self.config.train.eval_batch_size)
        return classification_metrics(test.y, proba, self.prep.class_names)


def _raw_sequences(x: Any, lengths: Any) -> SequenceData:
    """A 3-D array [N, T, C] (``lengths``: the real steps; without them an array whose sequences end in
    all-zero steps is refused as padded, ``"full"`` takes every step) or a list of [T_i, C] arrays."""
    from longshort.data.memory import as_sequences

    X, lens = as_sequences(x, lengths)
    return SequenceData(X=X, lengths=lens, y=None, feature_names=[], source="(in-memory data)")


def check_finite(data: SequenceData, allow_nan: bool = False) -> None:
    """A NaN (unless ``allow_nan``: data.missing fills it) or an infinity at a real step is an error naming the
    sequence, step and channel (as the readers do for files), never a NaN prediction. Windows of one series:
    their rows are checked once, and the error names the row."""
    if data.windows is not None:
        rows = data.windows.covered().values
        bad_rows = np.isinf(rows) if allow_nan else ~np.isfinite(rows)
        if bad_rows.any():
            r, c = (int(v) for v in np.argwhere(bad_rows)[0])
            raise DataError(data.source, f"row {r + data.windows.span[0]} of the windowed series, channel {c} is "
                                         f"{rows[r, c]} ({int(bad_rows.sum())} values are not finite); fill them "
                                         "first, or train with data.missing=ffill, zero, mean or mask")
        return
    if data.ragged is not None:
        r = data.ragged
        bad_steps = np.isinf(r.values) if allow_nan else ~np.isfinite(r.values)
        if bad_steps.any():
            k, c = (int(v) for v in np.argwhere(bad_steps)[0])
            i = int(np.searchsorted(r.offsets, k, side="right")) - 1
            raise DataError(data.source, f"sequence {i}, step {k - int(r.offsets[i])}, channel {c} is "
                                         f"{r.values[k, c]} ({int(bad_steps.sum())} values are not finite); fill "
                                         "them first, or train with data.missing=ffill, zero, mean or mask")
        return
    valid = np.arange(data.X.shape[1])[None, :] < data.lengths[:, None]
    bad = (np.isinf(data.X) if allow_nan else ~np.isfinite(data.X)) & valid[..., None]
    if bad.any():
        i, t, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(data.source, f"sequence {i}, step {t}, channel {c} is {data.X[i, t, c]} ({int(bad.sum())} "
                                     "values are not finite); fill them first, or train with data.missing=ffill, "
                                     "zero, mean or mask")


def _proba(model: torch.nn.Module, data: TensorData, batch_size: int) -> np.ndarray:
    return batched_proba(model, data, batch_size).numpy()


def load(run_dir: str | Path) -> Any:
    """The run in ``run_dir``: a :class:`Run` (classifier) or a :class:`Seq2SeqRun`."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise RunDirError(f"{d} is not a finished run directory: config.yaml is missing")
    cfg = load_config(d / "config.yaml")
    if cfg.task == "seq2seq":
        return Seq2SeqRun.load(d, config=cfg)
    if cfg.task == "regress":
        return RegressRun.load(d)
    if cfg.task == "forecast":
        return ForecastRun.load(d, config=cfg)
    return Run.load(d)


class RegressRun(Run):
    """A trained regressor (task regress): the classifier's backbone with a regression head, its preprocessing
    (feature and target scaling) and config. Predictions are in the target's own units."""

    task = "regress"

    def read(self, path: str, labels: str = "require") -> SequenceData:
        """A file read and preprocessed as the training data was (targets optional with ``labels="optional"``)."""
        return load_for_model(path, self.config.data, self.prep, self.config.seed,
                              labels="optional" if labels == "optional" else "require")

    @torch.no_grad()
    def predict_values(self, x: np.ndarray | SequenceData, lengths: np.ndarray | None = None,
                       prepared: bool = False, batch_size: int = 256
                       ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """(predictions [N, k], quantiles [N, k, L], their levels) for raw sequences ``x`` [N, T, C] or a
        SequenceData (``prepared``: already through this run's preprocessing). ``L`` is 0 for the point losses;
        regress.loss=quantile predicts its levels, gaussian_nll an 80% interval (0.1 and 0.9)."""
        data = self._prepared(x, lengths, prepared)
        outputs = regression_outputs(self.config.regress, len(self.prep.target_names))
        z = batched_head(self.model, to_tensors(data), batch_size)
        return (self.prep.unscale_targets(outputs.point(z).numpy()),
                self.prep.unscale_targets(outputs.quantile_values(z).numpy()), outputs.levels)

    def predict(self, x: np.ndarray | SequenceData, lengths: np.ndarray | None = None) -> np.ndarray:
        """Predicted values: [N] for one target, [N, k] for k."""
        point = self.predict_values(x, lengths)[0]
        return point[:, 0] if point.shape[1] == 1 else point

    def predict_proba(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise LongshortError("a regress run predicts values, not class probabilities: use predict or "
                             "predict_values")

    def streamer(self, batch_size: int = 1) -> Any:
        raise LongshortError("streaming covers classifier runs (task classify); a regress run predicts whole "
                             "sequences: use predict")

    def evaluate(self, data: str | None = None) -> dict[str, Any]:
        """Regression metrics on a file (all of it), or on the run's own test split when ``data`` is None."""
        if data is None:
            test = prepare(self.config.data, self.config.seed, target="value",
                           scale_target=self.config.regress.scale_target).test
            if test is None:
                raise LongshortError("this run has no test split (split.test=0): pass --data FILE")
        else:
            test = self.read(data)
            if test.y is None:
                raise LongshortError(f"{data} has no targets to evaluate against")
        assert test.y is not None
        point, quant, levels = self.predict_values(test, prepared=True,
                                                   batch_size=self.config.train.eval_batch_size)
        return regression_metrics(self.prep.unscale_targets(test.y), point, self.prep.target_names, levels, quant)


def vocab_names(n_fields: int) -> list[str]:
    return ["vocab_source.json"] + [f"vocab_source_{i}.json" for i in range(1, n_fields)]


class Seq2SeqRun:
    """A trained seq2seq model with its vocabularies, loaded from (or just written to) a run directory."""

    task = "seq2seq"

    def __init__(self, run_dir: Path, config: Config, model: Seq2Seq, src_vocabs: list[Vocab],
                 tgt_vocab: Vocab) -> None:
        self.dir, self.config, self.model = Path(run_dir), config, model
        self.src_vocabs, self.tgt_vocab = src_vocabs, tgt_vocab
        self.model.eval()

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", config: Config | None = None) -> Seq2SeqRun:
        d = Path(run_dir)
        cfg = config or load_config(d / "config.yaml")
        names = vocab_names(1 + len(cfg.data.pairs.extra_sources))
        for name in [*names, "vocab_target.json", "model.safetensors"]:
            if not (d / name).is_file():
                raise RunDirError(f"{d} is not a finished seq2seq run directory: {name} is missing")
        src = [Vocab.load(d / n) for n in names]
        tgt = Vocab.load(d / "vocab_target.json")
        model = Seq2Seq(src, tgt, cfg.seq2seq.model).to(device)
        load_weights(model, d / "model.safetensors")
        return cls(d, cfg, model, src, tgt)

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.dir / "metrics.json"
        return read_json_object(p) if p.is_file() else {}

    def encode(self, data: PairData) -> EncodedPairs:
        return encode_pairs(data, self.src_vocabs, self.tgt_vocab)

    def translate(self, data: PairData | list[list[str]], beam_size: int | None = None,
                  batch_size: int | None = None) -> list[list[str]]:
        """Output tokens for each source (token lists, or a PairData with all its source fields)."""
        if not isinstance(data, PairData):
            data = PairData(source=[list(s) for s in data], target=None, source_file="input",
                            rows=np.arange(len(data), dtype=np.int64))
        dec = self.config.seq2seq.decode
        if beam_size is not None:
            dec = dec.model_copy(update={"beam_size": beam_size})
        enc = encode_pairs(data, self.src_vocabs, None)
        device = next(self.model.parameters()).device
        ids = decode_all(self.model, enc, dec, batch_size or self.config.train.eval_batch_size, device)
        return [self.tgt_vocab.decode(i) for i in ids]

    def read(self, path: str) -> PairData:
        return load_pair_source(path, self.config.data, self.config.seed)

    def evaluate(self, data: str | None = None, beam_size: int | None = None) -> dict[str, Any]:
        """Sequence metrics on a file (or the run's own test split) against its targets."""
        if data is None:
            test = prepare_pairs(self.config.data, self.config.seed).test
            if test is None:
                raise LongshortError("this run has no test split (split.test=0): pass --data FILE")
        else:
            test = self.read(data)
            if test.target is None:
                raise LongshortError(f"{data} has no target column '{self.config.data.pairs.target}' to evaluate "
                                     "against")
        assert test.target is not None
        pred = self.translate(test, beam_size)
        return sequence_metrics(pred, test.target)


class ForecastRun:
    """A trained forecaster (task forecast) with its column roles, scaling, lookback and horizon."""

    task = "forecast"

    def __init__(self, run_dir: Path, config: Config, model: Any, scaler: Any) -> None:
        self.dir, self.config, self.model, self.scaler = Path(run_dir), config, model, scaler
        self.model.eval()

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", config: Config | None = None) -> ForecastRun:
        from longshort.data.forecast_data import FeatureScaler
        from longshort.nn.forecaster import build_forecaster

        d = Path(run_dir)
        cfg = config or load_config(d / "config.yaml")
        for name in ("preprocess.json", "model.safetensors"):
            if not (d / name).is_file():
                raise RunDirError(f"{d} is not a finished forecast run directory: {name} is missing")
        scaler = FeatureScaler.from_json(read_json_object(d / "preprocess.json"))
        if cfg.forecast.model.linear_skip and not _has_tensor(d / "model.safetensors", "skip.weight"):
            # a run from before forecast.model.linear_skip existed (its config.yaml does not say): built without
            cfg.forecast.model.linear_skip = False
        model = build_forecaster(cfg.forecast, len(scaler.target_names), len(scaler.past_names),
                                 len(scaler.known_names)).to(device)
        load_weights(model, d / "model.safetensors")
        return cls(d, cfg, model, scaler)

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.dir / "metrics.json"
        return read_json_object(p) if p.is_file() else {}

    def read(self, path: str | Path) -> Any:
        """The series of a file, checked to have the model's columns."""
        from longshort.data.forecast_data import check_like, read_forecast_source

        data = read_forecast_source(str(path), self.config.forecast, 0, 0, self.config.seed)
        check_like(data, self.scaler, str(path))
        return data

    def forecast(self, history: str | Path | Any, future: str | Path | Any | None = None
                 ) -> tuple[Any, Any, np.ndarray, np.ndarray, tuple[float, ...]]:
        """The next ``horizon`` steps after the end of every series of ``history`` (a file or a SeriesSet):
        (series, windows, point [S, H, k], quantiles [S, H, k, Q], levels), in the series' own units.
        ``future`` (a file or SeriesSet with the same series ids) gives the next ``horizon`` rows of the
        known-future columns; calendar features are extended from the time column's own spacing."""
        from longshort.data.forecast_data import extend_future
        from longshort.evaluate.forecast_predict import predict_windows

        data = history if not isinstance(history, str | Path) else self.read(history)
        fut = None
        if future is not None:
            from longshort.data.forecast_data import read_forecast_source

            fut = future if not isinstance(future, str | Path) else read_forecast_source(
                str(future), self.config.forecast.model_copy(update={"target": [], "past_covariates": []}), 0, 0, 0,
                need_target=False)
        extended, ws = extend_future(data, fut, self.scaler, self.config.forecast)
        point, quant, levels = predict_windows(self.model, ws, self.config.forecast, torch.device("cpu"),
                                               self.config.train.eval_batch_size, self.config.seed)
        return extended, ws, point, quant, levels

    def evaluate(self, path: str | Path | None = None) -> dict[str, Any]:
        """Metrics of the last ``horizon`` steps of every series of ``path`` (forecast from the steps before them);
        no path: the metrics the run recorded for its test split."""
        if path is None:
            m = self.metrics.get("test")
            if m is None:
                raise RunDirError(f"{self.dir}/metrics.json has no test metrics; give --data")
            return m
        from longshort.data.forecast_data import build_windows
        from longshort.errors import DataError
        from longshort.evaluate.forecast_metrics import forecast_metrics
        from longshort.evaluate.forecast_predict import predict_windows

        data = self.read(path)
        h = self.scaler.horizon
        short = [(sid, n) for sid, n in zip(data.ids, data.lengths, strict=True) if n < h + 1]
        if short:
            raise DataError(path, f"series '{short[0][0]}' has {short[0][1]} steps; evaluating needs "
                                  f"forecast.horizon={h} of them and at least 1 step of history")
        ws = build_windows(data, self.scaler, [np.array([n - h]) for n in data.lengths], with_baselines=True)
        point, quant, levels = predict_windows(self.model, ws, self.config.forecast, torch.device("cpu"),
                                               self.config.train.eval_batch_size, self.config.seed)
        rows = ws.gather(np.arange(len(ws)))
        actual = rows[:, ws.lookback:, : ws.k].astype(np.float64)
        return forecast_metrics(actual, point, ws.mase_scale, self.scaler.target_names, levels, quant, ws.baselines)


def _has_tensor(path: Path, name: str) -> bool:
    """Whether the safetensors file ``path`` holds a tensor ``name`` (its header only is read)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return name in f.keys()  # noqa: SIM118 - safe_open is not a mapping
