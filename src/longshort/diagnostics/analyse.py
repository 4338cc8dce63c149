"""Every post-training diagnostic on a finished classifier run, written to ``RUN_DIR/diagnostics/``.

:func:`analyse_run` loads the run (:meth:`longshort.run.Run.load`), rebuilds its splits from its config and seed
(:func:`longshort.data.pipeline.prepare`, the same call training made) and analyses the first sequences of the
validation split, in data order (the test split when there is no validation split, else the training split;
``"split"`` in each file says which). Everything runs on the CPU in float32 with the model in eval mode.

The loss is the training objective at the end of training without its stochastic parts:
``w_main * L_main(logits, y) + w_aux * MSE(aux)`` with the run's ``train.loss`` (class weights from the training
split, label smoothing, focal ...) and ``w_aux = train.loss.aux_weight``; no augmentation, mixup or dropout. The
landscape functions evaluate it as the mean over ``n_batches`` fixed batches of ``train.batch_size`` sequences.

Files (a contract with the report page; keys beyond these may be added, none renamed):

``landscape.json``::

    {"directions": "filter-normalised ...",          # how the directions were drawn (landscape.DIRECTIONS)
     "split": "val", "n_sequences": 128, "loss_fn": "...",
     "1d": {"alpha": [21 floats], "loss": [21 floats]},          # L(theta + alpha d1)
     "2d": {"alpha": [11], "beta": [11], "loss": [[11] x 11]},   # loss[i][j] = L(theta + alpha_i d1 + beta_j d2)
     "hessian_top_eigenvalue": float,                            # lambda_max by power iteration
     "hessian_batches": 1,                                       # of the loss batches, how many it used
     "gradient_predictiveness": {"step_size": [...], "loss0": float, "grad_norm": float, "loss": [...],
                                 "actual_decrease": [...], "predicted_decrease": [...], "ratio": [...],
                                 "grad_diff_norm": [...], "beta": [...]}}

``d1`` (seed) is the same direction in the 1-D slice and the 2-D grid; ``d2`` uses seed + 1.

``information.json``::

    {"estimator": "...", "bias": "...", "split": "val", "n_sequences": 512,
     "hidden": {"label": "...", "future": "..."},                # which states h_t are
     "label": {"t": [...], "mi": [...], "baseline": [...], "n": [...]},          # I(h_t; class) per step, nats
     "future": {"k": [...], "mi": [...], "baseline": [...], "n": [...], "target": "close"}}  # I(h_t; y_{t+k})

``future`` is there only for a windowed series (``data.series``), whose target column gives ``y_{t+k}`` at every
step, including the rows after a window's end; otherwise it is absent and ``"future_omitted"`` holds the reason.

``gates_final.json``: ``{"split", "n_sequences", "healthy_ranges": {gate: [low, high]}, "rows": [...]}`` with the
rows of :func:`longshort.diagnostics.gates.gate_statistics` (its docstring defines each key).

``attention.npz``: ``attn_{i}`` float32 [B, heads, T, T] for the attention block after BiLSTM block ``i`` (one
key per block; none when the model has no attention), ``lengths`` int64 [B], ``index`` int64 [B] (positions of
the sequences in the split), ``y`` int64 [B] (their classes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from longshort.data.batching import Batch, sequential_batches, to_tensors
from longshort.diagnostics._util import json_safe, model_mode
from longshort.errors import LongshortError, RunDirError
from longshort.training.classify import ClassifierObjective

if TYPE_CHECKING:  # config imports the trainer: importing it here at run time would make trainer -> analyse a cycle
    from longshort.config import Config
    from longshort.data.types import SequenceData
    from longshort.nn.classifier import SequenceClassifier

__all__ = ["analyse_run", "training_loss"]

ALPHAS_1D = np.linspace(-1.0, 1.0, 21).tolist()
ALPHAS_2D = np.linspace(-1.0, 1.0, 11).tolist()
STEP_SIZES = (0.01, 0.03, 0.1, 0.3, 1.0)
KS = (1, 2, 5, 10)


def training_loss(cfg: Config, train_y: Tensor, num_classes: int) -> Callable[[SequenceClassifier, Batch], Tensor]:
    """``(model, batch) -> loss``: the trainer's objective (:class:`ClassifierObjective`) for a batch without
    mixup, at the initial task weights (main 1, aux ``train.loss.aux_weight``), so a diagnostic needs no trainer."""
    objective = ClassifierObjective(cfg.train.loss, train_y, num_classes)

    def loss(model: SequenceClassifier, batch: Batch) -> Tensor:
        assert batch.y is not None
        return objective(model(batch.x, batch.lengths), batch.y, batch.aux)

    return loss


def _future_series(cfg: Config, split: str, data: SequenceData, ks: Sequence[int]) -> tuple[np.ndarray, str] | str:
    """``(series [N, T + max k], target name)`` for a windowed series split, else the reason there is none.

    Rebuilds the split's rows exactly as :func:`~longshort.data.pipeline.prepare` cut them (same fractions, gap and
    bounds), then reads the target column from each window's first row on; NaN past the split's last row."""
    from longshort.data.pipeline import _chronological_bounds, read_source, series_gap
    from longshort.data.types import SeriesData

    if cfg.data.test_source and split == "test":
        return "the test split comes from data.test_source, whose rows are not rebuilt here"
    raw = read_source(cfg.data.source, cfg.data, cfg.seed)
    if not isinstance(raw, SeriesData):
        return ("no continuous target series: independent sequences have one label (and at most one aux value) "
                "each, so there is no y_{t+k}")
    if data.order is None:
        return "the split's windows carry no row order"
    d = cfg.data
    fractions = [1 - d.split.val - (0 if d.test_source else d.split.test), d.split.val]
    if not d.test_source:
        fractions.append(d.split.test)
    bounds = _chronological_bounds(len(raw), fractions, series_gap(d), raw.source)
    start, stop = bounds[{"train": 0, "val": 1, "test": 2}[split]]
    target = raw.target[start:stop].astype(np.float64)
    width = data.X.shape[1] + max(ks)
    first = np.asarray(data.order, dtype=np.int64) - d.series.window + 1  # window start, relative to the split
    rows = first[:, None] + np.arange(width)[None, :]
    ok = (rows >= 0) & (rows < len(target))
    series = np.where(ok, target[np.clip(rows, 0, len(target) - 1)], np.nan)
    return series, raw.target_name


def analyse_run(run_dir: str | Path, n_batches: int = 2, seed: int = 0, *, batch_size: int | None = None,
                alphas: Sequence[float] = ALPHAS_1D, grid: Sequence[float] = ALPHAS_2D, hessian_iters: int = 20,
                hessian_tol: float = 1e-3, hessian_batches: int = 1, step_sizes: Sequence[float] = STEP_SIZES,
                info_sequences: int = 512, ks: Sequence[int] = KS, attention_sequences: int = 4) -> dict[str, Any]:
    """Run every diagnostic on the finished run in ``run_dir`` and write the four files of the module docstring.

    ``n_batches`` batches of ``batch_size`` (default ``train.batch_size``) sequences feed the loss landscape,
    gradient predictiveness and the gate statistics, the first ``hessian_batches`` of them the Hessian (a
    Hessian-vector product through an LSTM costs several forward passes; power iteration runs ``hessian_iters`` of
    them at most, stopping at relative change ``hessian_tol``); ``info_sequences`` sequences the mutual information
    (per step, so more samples help); ``attention_sequences`` the attention maps. ``alphas`` (1-D) and ``grid``
    (both axes of 2-D) are in units of the filter-normalised directions. ``seed`` fixes the directions, the Hessian
    start vector and the permutation baselines. Returns ``{"dir", "files", "landscape", "information", "gates",
    "attention"}``: the written contents (attention as shapes).
    """
    from longshort.config import load_config
    from longshort.data.pipeline import prepare
    from longshort.diagnostics.attention import capture_attention
    from longshort.diagnostics.gates import HEALTHY_RANGES, gate_statistics
    from longshort.diagnostics.information import BIAS, ESTIMATOR, hidden_states, mi_with_future, mi_with_label
    from longshort.diagnostics.landscape import (
        DIRECTIONS,
        gradient_predictiveness,
        loss_slice_1d,
        loss_slice_2d,
        top_hessian_eigenvalue,
    )
    from longshort.runs import Run

    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise RunDirError(f"{d} is not a finished run directory: config.yaml is missing")
    task = load_config(d / "config.yaml").task
    if task != "classify":
        raise LongshortError(f"diagnostics analyse a classifier run; this run's task is {task}")
    run = Run.load(d)
    cfg, model = run.config, run.model
    splits = prepare(cfg.data, cfg.seed)
    split, data = next((name, s) for name, s in (("val", splits.val), ("test", splits.test), ("train", splits.train))
                       if s is not None and len(s))
    tensors = to_tensors(data)
    bs = batch_size or cfg.train.batch_size
    loss_data = tensors.head(n_batches * bs)
    batches = list(sequential_batches(loss_data, bs, torch.device("cpu")))
    per_batch = training_loss(cfg, to_tensors(splits.train).y, len(splits.prep.class_names))  # type: ignore[arg-type]

    def loss_over(some: list[Batch]) -> Callable[[], Tensor]:
        return lambda: torch.stack([per_batch(model, b) for b in some]).mean()

    loss_fn = loss_over(batches)
    n_hess = max(1, min(hessian_batches, len(batches)))

    out_dir = d / "diagnostics"
    out_dir.mkdir(exist_ok=True)
    common = {"split": split, "n_sequences": len(loss_data)}
    with model_mode(model, False):
        landscape = {
            "directions": DIRECTIONS,
            **common,
            "loss_fn": f"training loss (train.loss, aux weight {cfg.train.loss.aux_weight}) in eval mode, mean over "
                       f"{len(batches)} batches of {bs}",
            "1d": {k: v for k, v in loss_slice_1d(model, loss_fn, alphas, seed).items() if k != "directions"},
            "2d": {k: v for k, v in loss_slice_2d(model, loss_fn, grid, grid, seed).items() if k != "directions"},
            "hessian_top_eigenvalue": top_hessian_eigenvalue(model, loss_over(batches[:n_hess]), hessian_iters,
                                                             hessian_tol, seed),
            "hessian_batches": n_hess,
            "gradient_predictiveness": gradient_predictiveness(model, loss_fn, step_sizes),
        }
    gates = {**common, "healthy_ranges": {g: list(r) for g, r in HEALTHY_RANGES.items()},
             "rows": gate_statistics(model, loss_data.X, loss_data.lengths, seed=seed)}

    info_data = tensors.head(info_sequences)
    h = hidden_states(model, info_data.X, info_data.lengths)
    assert info_data.y is not None
    label = mi_with_label(h, info_data.y, info_data.lengths, seed=seed)
    ahead = sum(dl * (cfg.model.conv_kernel // 2) for dl in cfg.model.conv_dilations)
    information: dict[str, Any] = {
        "estimator": ESTIMATOR, "bias": BIAS, "split": split, "n_sequences": len(info_data),
        "hidden": {"label": "output of the last BiLSTM block (both directions, after skip and LayerNorm)",
                   "future": "forward direction of the last BiLSTM block's LSTM (causal in the LSTM; the convolutions "
                             f"before it see {ahead} steps ahead)"},
        "label": label,
    }
    future = _future_series(cfg, split, data, ks)
    if isinstance(future, str):
        information["future_omitted"] = future
    else:
        series, name = future
        fwd = hidden_states(model, info_data.X, info_data.lengths, part="forward")
        n = len(info_data)
        information["future"] = {**mi_with_future(fwd, series[:n], ks, info_data.lengths, seed=seed), "target": name}

    att_data = tensors.head(attention_sequences)
    maps = capture_attention(model, att_data.X, att_data.lengths)
    arrays: dict[str, np.ndarray] = {f"attn_{i}": w for i, w in zip(model.attention_after, maps, strict=True)}
    arrays["lengths"] = att_data.lengths.numpy().astype(np.int64)
    arrays["index"] = np.arange(len(att_data), dtype=np.int64)
    if att_data.y is not None:
        arrays["y"] = att_data.y.numpy().astype(np.int64)

    files = {name: out_dir / name for name in ("landscape.json", "information.json", "gates_final.json",
                                                "attention.npz")}
    for name, content in (("landscape.json", landscape), ("information.json", information),
                          ("gates_final.json", gates)):
        files[name].write_text(json.dumps(json_safe(content), indent=1, allow_nan=False))
    np.savez(files["attention.npz"], **arrays)  # type: ignore[arg-type]
    return {"dir": str(out_dir), "files": {k: str(v) for k, v in files.items()}, "landscape": json_safe(landscape),
            "information": json_safe(information), "gates": json_safe(gates),
            "attention": {k: list(v.shape) for k, v in arrays.items()}}


SEQ2SEQ_KS = (0, 1, 2, 3)  # target tokens ahead of the decoder step in the seq2seq information flow


def analyse_seq2seq_run(run_dir: str | Path, n_batches: int = 1, seed: int = 0, *, batch_size: int | None = None,
                        alphas: Sequence[float] = ALPHAS_1D, grid: Sequence[float] = ALPHAS_2D,
                        hessian_iters: int = 20, hessian_tol: float = 1e-3,
                        step_sizes: Sequence[float] = STEP_SIZES, info_sequences: int = 512,
                        ks: Sequence[int] = SEQ2SEQ_KS) -> dict[str, Any]:
    """The after-training analyses of a finished seq2seq run, on its validation pairs (else test, else train).

    - ``diagnostics/landscape.json``, as :func:`analyse_run` writes it: 1-D and 2-D slices along
      filter-normalised directions, the Hessian's top eigenvalue and gradient predictiveness, of the
      teacher-forced token cross-entropy on ``n_batches`` batches;
    - ``diagnostics/information.json``: seed 003's ``I_t = MI(h_t, y_{t+k})`` with ``h_t`` the decoder's
      attentional state ``h~_t`` (what the output layer reads at step t, teacher-forced) and ``y_{t+k}`` the
      target token k steps on (k = 0: the token step t predicts), pooled over ``info_sequences`` pairs and their
      steps, with a permutation baseline (Ross's estimator for a discrete target, see
      :mod:`longshort.diagnostics.information`).

    The decoder's attention over the source is drawn by training itself (``plots/attention.png``)."""
    import torch.nn.functional as F

    from longshort.data.pair_pipeline import encode_pairs, prepare_pairs
    from longshort.data.pairs import PAD_ID
    from longshort.diagnostics.information import BIAS, ESTIMATOR, mi_with_future
    from longshort.diagnostics.landscape import (
        DIRECTIONS,
        gradient_predictiveness,
        loss_slice_1d,
        loss_slice_2d,
        top_hessian_eigenvalue,
    )
    from longshort.runs import Seq2SeqRun

    run = Seq2SeqRun.load(run_dir)
    cfg, model = run.config, run.model
    splits = prepare_pairs(cfg.data, cfg.seed)
    split, pairs = next((n, s) for n, s in (("val", splits.val), ("test", splits.test), ("train", splits.train))
                        if s is not None and len(s))
    data = encode_pairs(pairs, run.src_vocabs, run.tgt_vocab)
    bs = batch_size or cfg.train.batch_size
    n = min(len(data), n_batches * bs)
    batches = [data.take(idx) for idx in torch.arange(n).split(bs)]

    def loss_fn() -> Tensor:
        total = []
        for b in batches:
            assert b.tgt is not None
            logits = model(b.src, b.src_lengths, b.decoder_input()).logits
            total.append(F.cross_entropy(logits.float().flatten(0, 1), b.tgt.flatten(), ignore_index=PAD_ID))
        return torch.stack(total).mean()

    with model_mode(model, False):
        landscape = {
            "directions": DIRECTIONS, "split": split, "n_sequences": n,
            "loss_fn": f"teacher-forced token cross-entropy in eval mode, mean over {len(batches)} batches of {bs} "
                       "pairs",
            "1d": {k: v for k, v in loss_slice_1d(model, loss_fn, alphas, seed).items() if k != "directions"},
            "2d": {k: v for k, v in loss_slice_2d(model, loss_fn, grid, grid, seed).items() if k != "directions"},
            "hessian_top_eigenvalue": top_hessian_eigenvalue(model, loss_fn, hessian_iters, hessian_tol, seed),
            "hessian_batches": len(batches),
            "gradient_predictiveness": gradient_predictiveness(model, loss_fn, step_sizes),
        }
    info_batch = data.take(torch.arange(min(len(data), info_sequences)))
    assert info_batch.tgt is not None and info_batch.tgt_lengths is not None
    states: list[Tensor] = []  # h~_t of every step: the output layer's input (dropout is off in eval mode)
    hook = model.out.register_forward_pre_hook(lambda _m, args: states.append(args[0].detach().float().cpu()))
    try:
        with torch.no_grad(), model_mode(model, False):
            model(info_batch.src, info_batch.src_lengths, info_batch.decoder_input())
    finally:
        hook.remove()
    tokens = info_batch.tgt.double().masked_fill(info_batch.tgt == PAD_ID, float("nan"))
    information = {
        "estimator": ESTIMATOR.replace("the class label", "the target token"), "bias": BIAS, "split": split,
        "n_sequences": len(info_batch),
        "hidden": {"future": "the decoder's attentional state h~_t = tanh(W_c [h_t; c_t]) under teacher forcing; "
                             "k = 0 is the token step t predicts"},
        "future": {**mi_with_future(torch.stack(states, 1), tokens, ks, info_batch.tgt_lengths, seed=seed,
                                    discrete=True), "target": "target token y_(t+k)"},
    }
    out = Path(run_dir) / "diagnostics"
    out.mkdir(exist_ok=True)
    (out / "landscape.json").write_text(json.dumps(json_safe(landscape), indent=1, allow_nan=False))
    (out / "information.json").write_text(json.dumps(json_safe(information), indent=1, allow_nan=False))
    return {"landscape": json_safe(landscape), "information": json_safe(information)}
