"""Size-aware defaults: the model, batch size, training budget and model selection that suit the data in hand.

A recipe tuned on 4,000 sequences does not carry to 30: at batch 64 that is one optimizer step per epoch, a
12-epoch budget is 12 updates, and a validation split of 6 sequences picks checkpoints by noise. So what the
user leaves unset is chosen here from the training data's shape, once the data is read and before the split:

- ``data.scale=auto``: per-sequence normalisation first when the sequences' scales spread over 10x;
- ``model.size=auto``: a width and depth for the number of training sequences (seed 000's 256 x 4 blocks only
  from 10,000 sequences on), and above ``LONG_SERIES`` steps a strided stem (``model.stem_stride``) so the LSTM
  runs over at most ``LONG_SERIES`` steps;
- ``train.batch_size``: about a tenth of the training set, between 8 and 64, so small sets get many updates;
- ``train.epochs``: a budget in optimizer steps (``train.steps``, or ``STEPS`` capped by ``WORK``) turned
  into whole epochs; the schedule (OneCycle's warm-up and annealing) is laid over those real steps by the trainer;
- ``train.augment``: seed 000's noise, time shift and magnitude warp below ``AUGMENT_BELOW`` sequences;
- ``train.selection=auto``: ``val`` (a validation split picks the best epoch and stops early) when the split
  would hold at least ``MIN_VALIDATION`` sequences; otherwise ``last``: no validation split, every sequence
  trains, and the final weights of the annealed schedule are kept. With tens of sequences a validation
  accuracy moves in steps of several points, so choosing by it is choosing by noise.

Every resolved value is written back into the config, which ``RUN_DIR/config.yaml`` records, so a run reloads
(and resumes) identically; :func:`resolve` returns what it chose as sentences for the run's output. Values the
user set are never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Above this many steps a strided stem shortens the sequence to at most this many (a power-of-2 stride).
LONG_SERIES = 256
#: Below this many training sequences seed 000's augmentation is on unless train.augment is set.
AUGMENT_BELOW = 10_000
#: ``data.scale=auto`` normalises each sequence first when their standard deviations spread more than this
#: (90th over 10th percentile): PLAID spreads 10^5x (0.363 -> 0.801 test accuracy), the other suite sets <2x.
SCALE_SPREAD = 10.0
#: Fewest validation sequences for ``selection=auto`` to choose by validation.
MIN_VALIDATION = 200
#: The automatic budget: ``STEPS`` optimizer steps, at least ``MIN_EPOCHS`` and at most ``MAX_EPOCHS`` epochs.
STEPS = 1500
MIN_EPOCHS = 4
MAX_EPOCHS = 1000
#: ... and at most ``WORK`` units of compute, a unit being one sequence step through the LSTM blocks (after the
#: stem; a batch counted at its expected longest sequence, :func:`batch_length`) of a 64-wide, 2-block model,
#: scaled by width and depth (``batch x steps x hidden/64 x blocks/2`` an update), so long or wide sets still
#: train in minutes on a CPU: measured 50-70 microseconds a unit on one x86 core (AVX2), so ``WORK`` is about
#: 2 minutes there; batch-64 steps of length 50 through hidden 128 cost 2.2x those of hidden 64, and seed
#: 000's 256 x 4 blocks 11x.
WORK = 2_400_000

# (fewest training sequences, hidden_dim, num_lstm_layers, num_heads): the first row whose size fits.
_SIZES = [
    (10_000, 256, 4, 8),  # seed 000's model
    (1_000, 128, 2, 4),
    (0, 64, 2, 4),
]


@dataclass(frozen=True)
class DataShape:
    """What the automatic choices look at: the data before the validation split."""

    n: int  # sequences (windows) available for training and validation together
    length: int  # the longest sequence
    channels: int
    classes: int
    scale_spread: float = 1.0  # 90th / 10th percentile of the sequences' standard deviations (any feature)
    #: quantiles of the sequences' lengths (ascending; empty: all are ``length`` long): a batch is trimmed to its
    #: longest sequence, so the budget counts what a batch really costs (:func:`batch_length`)
    length_quantiles: tuple[float, ...] = ()


def stem_stride(length: int) -> int:
    """The smallest power of 2 that brings ``length`` steps to at most ``LONG_SERIES``."""
    return 1 if length <= LONG_SERIES else 2 ** math.ceil(math.log2(length / LONG_SERIES))


def batch_length(shape: DataShape, batch: int) -> float:
    """The expected longest sequence of a random batch of ``batch``: what a batch trimmed to its longest
    sequence costs. For lengths with distribution F it is the sum of ``q_k (F(q_k)^b - F(q_{k-1})^b)`` over the
    quantiles (draws with replacement, close to a shuffled epoch's): PLAID's 537 sequences of 100-1,344 steps
    give about 690 steps at batch 32 (710 drawn at random) where the longest is 1,344."""
    q = shape.length_quantiles
    if not q:
        return float(shape.length)
    n = len(q)
    return float(sum(v * (((k + 1) / n) ** batch - (k / n) ** batch) for k, v in enumerate(q)))


def batch_size(n_train: int) -> int:
    """About a tenth of the training set, as a power of 2 between 8 and 64."""
    return min(64, max(8, 2 ** math.floor(math.log2(max(n_train, 10) / 10))))


def budget_epochs(n_train: int, batch: int, steps: int | None, lstm_steps: int, hidden: int = 64,
                  blocks: int = 2) -> tuple[int, int]:
    """(epochs, optimizer steps) for ``steps`` (None: the automatic budget) at ``batch`` per step, for
    sequences the LSTM runs over ``lstm_steps`` steps of (after the stem), in a model ``hidden`` wide with
    ``blocks`` BiLSTM blocks."""
    per_epoch = max(1, -(-n_train // batch))
    if steps is not None:
        epochs = max(1, -(-steps // per_epoch))
        return epochs, epochs * per_epoch
    unit_cost = min(batch, n_train) * max(lstm_steps, 1) * (hidden / 64) * (blocks / 2)
    target = min(STEPS, int(WORK / unit_cost))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, round(target / per_epoch)))
    return epochs, epochs * per_epoch


def _set(model: Any, key: str, value: Any, chosen: dict[str, Any]) -> None:
    """Set ``key`` unless the user already did; remember what was chosen."""
    if key not in model.model_fields_set:
        setattr(model, key, value)
        chosen[key] = value


def resolve(cfg: Any, shape: DataShape, *, need_validation: bool = False) -> tuple[Any, list[str]]:
    """A copy of ``cfg`` (a :class:`longshort.config.Config`; not imported, so this module stays a leaf that the
    commands config.py assembles can call) with every automatic choice made for data of ``shape``, and what
    was chosen, in words.

    ``need_validation``: the caller picks by a validation metric (``tune``, ``cv``): ``selection=auto`` is val.
    """
    cfg = cfg.model_copy(deep=True)
    notes: list[str] = []
    if cfg.task not in ("classify", "regress"):  # seq2seq sizes itself
        return cfg, notes
    m, t, split = cfg.model, cfg.train, cfg.data.split
    if cfg.data.scale == "auto":
        series = shape.scale_spread > SCALE_SPREAD
        cfg.data.scale = "series" if series else "standard"
        if series:  # a global mean/std would leave the small-scale sequences near zero
            notes.append(f"scaling: series (the sequences' standard deviations spread {shape.scale_spread:.3g}x, "
                         f"more than {SCALE_SPREAD:g}x: each is normalised over its own steps first; "
                         "data.scale=standard to choose)")

    selection = t.selection
    test_share = 0.0 if cfg.data.test_source else split.test  # the shares are of all the data read
    n_val = round(shape.n * split.val)
    if selection == "auto":
        selection = "val" if need_validation or n_val >= MIN_VALIDATION or split.val == 0 else "last"
        why = (f"a validation split of about {n_val} sequences" if selection == "val" else
               f"a validation split would hold about {n_val} sequences (fewer than {MIN_VALIDATION}), too few to "
               "choose by; every sequence trains and the annealed schedule's final weights are kept")
        notes.append(f"model selection: {selection} ({why}; train.selection=val|last to choose)")
    t.selection = selection
    if selection == "last" and split.val > 0:
        split.val = 0.0
    n_train = max(1, round(shape.n * (1 - split.val - test_share)))

    if m.size == "auto":
        chosen: dict[str, Any] = {}
        _, hidden, layers, heads = next(row for row in _SIZES if n_train >= row[0])
        _set(m, "hidden_dim", hidden, chosen)
        _set(m, "num_lstm_layers", layers, chosen)
        _set(m, "num_heads", heads if m.hidden_dim % heads == 0 else 1, chosen)
        _set(m, "stem_stride", stem_stride(shape.length), chosen)
        _set(m, "attention_dropout", 0.0, chosen)
        # no sinusoidal codes: over the suite (docs/accuracy.md) +0.8 points of test accuracy on average, PigCVP
        # 0.572 -> 0.654 and regimes 0.897 -> 0.920, PLAID 0.845 -> 0.818 (the convolutions and the LSTM see
        # the order already)
        _set(m, "positions", False, chosen)
        if chosen:
            notes.append("model size: auto for " + f"{n_train} training sequences of up to {shape.length} steps -> "
                         + ", ".join(f"{k} {v}" for k, v in chosen.items()) + " (model.size=seed: seed 000's model)")

    # not for task regress: a warp of the magnitude or a shift in time may change the target itself
    if ("augment" not in t.model_fields_set and n_train < AUGMENT_BELOW and t.recipe == "default"
            and cfg.task == "classify"):
        # seed 000's augmentation: on 50 training series it took GunPoint from 0.953 to 0.987 test accuracy
        # (1,500 steps, docs/accuracy.md); large sets have the variety it imitates already
        # The shift is a circular roll: at most 2% of the length (and 5 steps), none on short series, where
        # position carries the class (ItalyPowerDemand's 24 hours: 0.969 -> 0.948 with 5-step rolls).
        shift = min(5, round(0.02 * shape.length))
        t.augment = type(t.augment).model_validate(
            {"noise": {"prob": 0.3, "std": 0.01}, "time_shift": {"prob": 0.2 if shift else 0.0,
                                                                  "max_shift": max(shift, 1)},
             "magnitude_warp": {"prob": 0.25, "std": 0.1}})
        notes.append(f"augmentation: noise, {f'time shift ({shift} steps), ' if shift else ''}magnitude warp "
                     f"({n_train} training sequences, fewer than {AUGMENT_BELOW:,}; set any train.augment key to "
                     "choose yourself)")
    if "batch_size" not in t.model_fields_set:
        t.batch_size = batch_size(n_train)
    if t.steps is not None or "epochs" not in t.model_fields_set:
        lstm_steps = math.ceil(batch_length(shape, min(t.batch_size, n_train)) / m.stem_stride)
        t.epochs, total = budget_epochs(n_train, t.batch_size, t.steps, lstm_steps, m.hidden_dim, m.num_lstm_layers)
        how = "train.steps" if t.steps is not None else "automatic budget"
        notes.append(f"training budget: {total} optimizer steps = {t.epochs} epochs of batch {t.batch_size} "
                     f"({how}; train.epochs or train.steps to set it)")
        t.steps = None  # resolved into epochs, which config.yaml records
    return type(cfg).model_validate(cfg.model_dump()), notes

