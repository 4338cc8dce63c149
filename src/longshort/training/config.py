"""The training sections of the config (``train:``, ``distributed:`` and ``seq2seq:`` but its model), as a leaf:
pydantic and the other config leaves only, no torch.

The modules that implement each part (``optim.py``, ``losses.py``, ``augment.py``, ``curriculum.py``,
``callbacks.py``, ``distributed.py``, ``sequence_level.py``, ``trainer.py``, ``seq2seq_task.py``) import their
sections from here, so reading or validating a config never imports torch.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from longshort.nn.config import SCHEDULES, ForecasterConfig, Seq2SeqConfig
from longshort.training.recipes import PhaseConfig, RecipeName, merge_under, preset_phases, recipe_values

#: ``json_schema_extra`` of a field only one task reads: ``longshort.config`` refuses it, set, for the other
ONLY_CLASSIFY = {"tasks": ["classify"]}
ONLY_SEQ2SEQ = {"tasks": ["seq2seq"]}
SEQUENCES = {"tasks": ["classify", "regress"]}  # the tasks that read sequences with a target each
DIFFICULTY_TASKS = {"tasks": ["classify", "seq2seq"]}  # the difficulty curriculum (seq2seq: token perplexity)


# -- from training/optim.py ----------

class LookaheadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="wrap the optimizer in Lookahead (slow weights synced every k steps)")
    k: int = Field(5, ge=1, description="Lookahead: inner optimizer steps between slow-weight updates")
    alpha: float = Field(0.5, gt=0, le=1, description="Lookahead: slow <- slow + alpha * (fast - slow)")
    sync_each_epoch: bool = Field(
        False,
        description="Lookahead: at the end of every epoch, before validation and the checkpoint, sync now "
        "(slow <- slow + alpha * (fast - slow), fast <- slow) and restart the k-step count, so the weights "
        "validated and kept are Lookahead's own, not a point part-way through an inner loop",
    )


class GradNoiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    std: float = Field(0.0, ge=0, description="standard deviation of Gaussian noise added to the gradients; 0 = off")
    anneal: float = Field(
        0.0, ge=0, description="gamma: noise variance std^2 / (1 + t)^gamma, t = noisy steps so far; 0 = fixed "
        "(Neelakantan et al. use 0.55)"
    )
    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) with gradient noise")


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["adamw", "sgd"] = Field("adamw", description="optimizer")
    lr: float = Field(1e-4, gt=0, description="base learning rate; OneCycle starts from it and rises to max_lr")
    weight_decay: float = Field(
        0.01, ge=0, description="weight decay (decoupled for AdamW, an L2 term in the gradient for SGD)"
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="AdamW's epsilon in lr * m / (sqrt(v) + eps)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum; 0 = plain SGD")
    nesterov: bool = Field(False, description="SGD: Nesterov momentum (needs momentum > 0)")
    grad_clip: float | None = Field(
        1.0, gt=0, description="clipping threshold (a norm, or the largest |gradient| for clip_mode=value); null = off"
    )
    clip_mode: Literal["norm", "value", "adaptive", "per_gate", "per_gate_adaptive"] = Field(
        "norm",
        description="norm: global gradient norm; value: each element; adaptive: global norm clipped to an EMA "
        "of the norms (this step's included) that starts at grad_clip (after that grad_clip only switches it "
        "on or off); per_gate: each LSTM gate block's norm on its own (nn.LSTM, longshort's LSTM and the "
        "decoders' nn.LSTMCell), the rest by global norm; per_gate_adaptive: each gate block clipped to "
        "gate_clip_factor x the EMA (clip_ema) of its own past gradient norms, from its first step's norm "
        "(seed 003's thresholds from each gate's gradient statistics), the rest by global norm",
    )
    gate_clip_factor: float = Field(
        2.0, gt=0, description="clip_mode=per_gate_adaptive: a gate block's threshold in units of its running norm")
    clip_ema: float = Field(
        0.9, ge=0, lt=1, description="clip_mode=adaptive: a in threshold_t = a * threshold_(t-1) + (1 - a) * |g_t|"
    )
    lookahead: LookaheadConfig = Field(LookaheadConfig(), description="Lookahead optimizer wrapper")
    grad_noise: GradNoiseConfig = Field(GradNoiseConfig(), description="annealed Gaussian gradient noise")

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov=true needs optim.momentum > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must both be in [0, 1), got {self.betas}")
        return self


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["onecycle", "constant", "cosine", "cosine_restarts", "exponential", "step"] = Field(
        "onecycle", description="learning-rate schedule"
    )
    interval: Literal["batch", "epoch"] = Field(
        "batch", description="the schedule steps once per batch or once per epoch; periods count these intervals"
    )
    max_lr: float = Field(1e-3, gt=0, description="OneCycle peak learning rate")
    pct_start: float = Field(0.1, gt=0, lt=1, description="OneCycle warm-up fraction")
    anneal: Literal["cos", "linear"] = Field("cos", description="OneCycle annealing shape")
    cycle_momentum: bool = Field(False, description="OneCycle also cycles beta1 (overrides optim.betas[0])")
    min_lr: float = Field(0.0, ge=0, description="cosine and cosine_restarts: the lowest learning rate (eta_min)")
    restart_period: int = Field(10, ge=1, description="cosine_restarts: intervals until the first restart (T_0)")
    restart_mult: int = Field(1, ge=1, description="cosine_restarts: each period is this many times the last (T_mult)")
    gamma: float = Field(
        0.9, gt=0, le=1, description="exponential: lr_t = lr_0 * gamma^t; step: factor every step_size intervals"
    )
    step_size: int = Field(10, ge=1, description="step: intervals between decays by gamma")
    warmup: int = Field(0, ge=0, description="linear warm-up intervals in front of the schedule; 0 = none")
    warmup_start: float = Field(0.01, gt=0, le=1, description="warm-up starts at this fraction of the learning rate")


# -- from training/curriculum.py ----------

class CurriculumConfig(BaseModel):
    """``train.curriculum``: which examples each epoch sees, in which order, and how long they are."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Literal["none", "length", "difficulty", "adaptive"] = Field(
        "none",
        description="none: every example each epoch; length: a growing length limit; difficulty: easiest "
        "examples first in cumulative stages; adaptive: sample hard examples more as accuracy grows",
    )
    # -- length
    growth: Literal["linear", "exp"] = Field(
        "linear",
        description="length: linear L_e = start_length + rate*e; exp L_e = start_length * beta^(e/tau) "
        "(rounded down, capped at the longest sequence)",
    )
    start_length: int = Field(10, ge=1, description="length: the limit in epoch 0 (time steps)")
    rate: float = Field(5.0, ge=0, description="length, linear growth: steps added to the limit per epoch")
    beta: float = Field(2.0, ge=1, description="length, exp growth: the limit's growth factor per tau epochs")
    tau: float = Field(1.0, gt=0, description="length, exp growth: epochs per factor beta")
    mode: Literal["crop", "filter"] = Field(
        "crop",
        description="length: crop keeps the last L steps of longer sequences; filter uses only sequences of "
        "length <= L (the shortest ones, cropped, if none is that short)",
        json_schema_extra=SEQUENCES,
    )
    # -- difficulty and adaptive
    scorer: str = Field(
        "self",
        min_length=1,
        description="difficulty/adaptive: 'self' scores the examples with the model being trained after "
        "score_after epochs (task seq2seq: by each pair's token perplexity, self only); else a trained run "
        "directory (same data preparation) whose model scores them",
        json_schema_extra=DIFFICULTY_TASKS,
    )
    score_after: int = Field(
        1, ge=0, description="difficulty/adaptive: epochs of normal training before the examples are scored",
        json_schema_extra=DIFFICULTY_TASKS,
    )
    stages: int = Field(
        3, ge=1, description="difficulty: equal parts by score, easiest first; stage s trains on parts 0..s",
        json_schema_extra=DIFFICULTY_TASKS,
    )
    stage_epochs: int | None = Field(
        None,
        ge=1,
        description="difficulty: epochs per stage; null = the epochs after scoring split evenly (the last "
        "stage takes the rest)",
        json_schema_extra=DIFFICULTY_TASKS,
    )
    final_stage: Literal["all", "hard"] = Field(
        "all", description="difficulty: what the last stage trains on: all = every part (cumulative stages); "
        "hard = the hardest part only (seed 003's phase 3: the high-loss examples)",
        json_schema_extra=DIFFICULTY_TASKS,
    )
    p0: float = Field(0.2, ge=0, le=1, description="adaptive: probability of a hard example at accuracy 0",
                      json_schema_extra=ONLY_CLASSIFY)
    alpha: float = Field(
        0.5, ge=0, description="adaptive: p_hard = min(1, p0 + alpha * previous epoch's training accuracy)",
        json_schema_extra=ONLY_CLASSIFY,
    )
    hard_fraction: float = Field(
        0.5, gt=0, lt=1, description="adaptive: the top fraction of examples by scorer loss that count as hard",
        json_schema_extra=ONLY_CLASSIFY,
    )

    @model_validator(mode="after")
    def _check(self) -> CurriculumConfig:
        if self.kind in ("difficulty", "adaptive") and self.scorer == "self" and self.score_after == 0:
            raise ValueError(
                f"curriculum.kind={self.kind} with scorer=self needs score_after >= 1: an untrained model's "
                "losses say nothing about difficulty (or set scorer to a trained run directory)"
            )
        return self


class TaskConfig(BaseModel):
    """``train.tasks``: weights of the main classification loss and the auxiliary regression loss."""

    TASKS: ClassVar[tuple[str, ...]] = ("classify",)  # the tasks that read this section (others refuse it)

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    weighting: Literal["fixed", "performance"] = Field(
        "fixed",
        description="fixed: (1, loss.aux_weight); performance: w_i = n * softmax(log(perf_i)/tau) over the "
        "active tasks from last epoch's validation (accuracy; 1/(1+mse) for aux), better tasks weigh more",
    )
    tau: float = Field(1.0, gt=0, description="performance weighting: temperature (large = nearly equal weights)")
    main_start_epoch: int = Field(0, ge=0, description="the main task's weight is 0 before this epoch")
    aux_start_epoch: int = Field(0, ge=0, description="the auxiliary task's weight is 0 before this epoch")


# -- from training/losses.py ----------

LossName = Literal["cross_entropy", "focal", "adaptive"]


TimeWeighting = Literal["constant", "linear", "reverse", "exp"]


ADAPTIVE_CONFIDENCE_PENALTY = 0.1  # seed 000's AdaptiveLoss coefficient, used when confidence_penalty is None


class LossConfig(BaseModel):

    TASKS: ClassVar[tuple[str, ...]] = ("classify",)  # the tasks that read this section (others refuse it)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: LossName = Field(
        "cross_entropy",
        description="classification loss: cross_entropy; focal (alpha (1-p_t)^gamma CE); adaptive (focal + "
        "confidence penalty, seed 000's AdaptiveLoss with the penalty's sign corrected)",
    )
    class_weights: bool = Field(True, description="weight classes by inverse frequency in the training split")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="mix the one-hot target with uniform (as torch's cross_entropy); 0 = off"
    )
    focal_alpha: float = Field(0.25, ge=0, description="focal/adaptive: overall scale alpha of the focal term")
    focal_gamma: float = Field(
        2.0, ge=0, description="focal/adaptive: focusing exponent gamma on (1 - p_true); 0 = alpha x cross-entropy"
    )
    confidence_penalty: float | None = Field(
        None,
        ge=0,
        description="beta of the confidence penalty: loss - beta * mean entropy of the softmax (penalises "
        "over-confident outputs); null = 0.1 for adaptive, 0 (off) for the others",
    )
    focal_normalize: bool = Field(
        False,
        description="focal/adaptive: divide the focal term by the batch mean of alpha (1-p_t)^gamma (no gradient "
        "through it), so it keeps cross-entropy's scale next to the auxiliary loss and the confidence penalty "
        "while still weighting hard examples up; the relative weights of the examples are unchanged",
    )
    aux_weight: float = Field(
        0.3, ge=0, description="weight of the auxiliary regression loss (when the data has an aux target)"
    )

    @property
    def resolved_confidence_penalty(self) -> float:
        """The penalty coefficient beta in use: ``confidence_penalty``, or its per-loss default when None."""
        if self.confidence_penalty is not None:
            return self.confidence_penalty
        return ADAPTIVE_CONFIDENCE_PENALTY if self.name == "adaptive" else 0.0


# -- from training/augment.py ----------

class NoiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prob: float = Field(0.0, ge=0, le=1, description="probability a sequence gets Gaussian noise; 0 = off")
    std: float = Field(0.01, ge=0, description="standard deviation of the noise added to each valid step")


class TimeShiftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prob: float = Field(0.0, ge=0, le=1, description="probability a sequence is rolled in time; 0 = off")
    max_shift: int = Field(
        5, ge=0, description="roll the valid part circularly by a uniform integer in [-max_shift, max_shift]"
    )


class MagnitudeWarpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prob: float = Field(0.0, ge=0, le=1, description="probability a sequence is rescaled per channel; 0 = off")
    std: float = Field(0.1, ge=0, description="each channel is multiplied by 1 + N(0, std^2)")


class TimeWarpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prob: float = Field(0.0, ge=0, le=1, description="probability a sequence is warped in time; 0 = off")
    strength: float = Field(
        0.2, ge=0, description="speed of each warp segment is 1 + N(0, strength^2), clipped positive"
    )
    knots: int = Field(4, ge=1, description="interior knots of the piecewise-linear time map")


class WindowSliceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prob: float = Field(0.0, ge=0, le=1, description="probability a sequence is window-sliced; 0 = off")
    ratio: float = Field(
        0.9, gt=0, le=1, description="take ceil(ratio * length) contiguous steps and stretch them to the length"
    )


class AugmentConfig(BaseModel):
    """Per-sequence augmentation, each transform drawn independently with its own ``prob`` (all off by default).

    Seed 000 used noise (prob 0.3, std 0.01), time shift (prob 0.2, max_shift 5) and magnitude warp (prob 0.25,
    std 0.1); ``train.recipe=seed`` sets those. Transforms run in the order time_warp, window_slice, time_shift,
    magnitude_warp, noise.
    """

    TASKS: ClassVar[tuple[str, ...]] = ("classify", "regress")  # the tasks that read this section (others refuse it)

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) that is augmented")
    time_warp: TimeWarpConfig = Field(TimeWarpConfig(), description="smooth random monotone warp of the time axis")
    window_slice: WindowSliceConfig = Field(
        WindowSliceConfig(), description="random sub-window stretched back to full length (Le Guennec et al. 2016)"
    )
    time_shift: TimeShiftConfig = Field(TimeShiftConfig(), description="circular roll of the valid part")
    magnitude_warp: MagnitudeWarpConfig = Field(MagnitudeWarpConfig(), description="random per-channel scale")
    noise: NoiseConfig = Field(NoiseConfig(), description="additive Gaussian noise on valid steps")

    @property
    def enabled(self) -> bool:
        """Whether any transform has a positive probability."""
        return any(getattr(self, name).prob > 0 for name in _ORDER)


class MixupConfig(BaseModel):

    TASKS: ClassVar[tuple[str, ...]] = ("classify",)  # the tasks that read this section (others refuse it)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prob: float = Field(0.0, ge=0, le=1, description="probability a batch is mixed (seed 000: 0.5); 0 = off")
    alpha: float = Field(0.2, gt=0, description="mixing weight lam ~ Beta(alpha, alpha)")
    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) with mixup")


# The order transforms are applied in; also the order of their sub-generators (see augment()).
_ORDER = ("time_warp", "window_slice", "time_shift", "magnitude_warp", "noise")


# -- from training/sequence_level.py ----------

ObjectiveKind = Literal["none", "reinforce", "self_critical", "mrt"]


class ObjectiveConfig(BaseModel):
    """``seq2seq.objective``: a sequence-level term mixed with token cross-entropy."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: ObjectiveKind = Field("none", description="reinforce | self_critical (greedy baseline) | mrt (min risk)")
    reward: Literal["exact", "edit", "bleu"] = Field(
        "edit", description="sequence reward in [0, 1]: exact match, 1 - normalised edit distance, sentence BLEU"
    )
    weight: float = Field(
        0.5, ge=0, le=1, description="loss = (1 - weight) * token loss + weight * sequence-level loss"
    )
    start_epoch: int = Field(0, ge=0, description="first epoch (0-based) with the sequence-level term")
    samples: int = Field(4, ge=1, description="sampled sequences per source (mrt: the candidate set before dedup)")
    baseline_decay: float = Field(0.9, ge=0, lt=1, description="reinforce: moving-average baseline decay")
    alpha: float = Field(0.5, gt=0, description="mrt: sharpness of Q(y|x) proportional to p(y|x)^alpha")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (1 = the model's distribution)")


# -- from training/callbacks.py ----------

LOWER_IS_BETTER = {"val_loss", "val_edit_error_rate", "val_rmse", "val_mae", "val_mase"}
REGRESS_METRICS = ("val_loss", "val_rmse", "val_mae")  # what task regress measures each epoch


class EarlyStoppingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    metric: Literal[
        "auto", "val_loss", "val_accuracy", "val_f1_macro", "val_exact_match", "val_token_accuracy",
        "val_edit_error_rate", "val_bleu", "val_rmse", "val_mae",
    ] = Field(
        # Not val_loss: log-loss rises as a model grows confident while its accuracy still improves, and
        # picking by it chose an epoch-2 checkpoint 5 points worse on test in the built-in ablation.
        "auto", description="validation metric that picks the best checkpoint and stops training; auto: "
        "val_f1_macro for task classify, val_exact_match for seq2seq, val_rmse for regress (val_rmse and val_mae "
        "need task regress, the seq2seq metrics task seq2seq)"
    )
    patience: int | None = Field(5, ge=1, description="epochs without improvement before stopping; null = never")
    min_delta: float = Field(0.0, ge=0)


class MlflowConfig(BaseModel):
    """``train.mlflow``: log the run to an MLflow tracking store (``pip install 'longshort[mlflow]'``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    uri: str | None = Field(
        None, description="tracking URI, e.g. sqlite:///mlflow.db (a local file, no server) or "
        "http://127.0.0.1:5000; null: no MLflow. Logged: the resolved config as params, every epoch's metrics, "
        "the final metrics, and config.yaml, metrics.json, the model, history.csv, plots and report.html")
    experiment: str = Field("longshort", description="the MLflow experiment (created when missing)")
    run_name: str | None = Field(None, description="the MLflow run's name; null: the run directory's name")


# -- from training/trainer.py ----------

class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    recipe: RecipeName = Field(
        "default",
        description="preset laid under your own train.* values: plain = unweighted cross-entropy + AdamW with "
        "the OneCycle schedule and no clipping, auxiliary loss, augmentation or Lookahead; seed = seed "
        "000's full loop (see docs/training.md)",
        json_schema_extra=ONLY_CLASSIFY,
    )
    epochs: int = Field(
        12, ge=1, description="epochs in all (with train.phases: their sum); unset: a run chooses them from "
        "train.steps or its automatic budget in optimizer steps for the data's size (config.yaml records them)"
    )
    steps: int | None = Field(
        None, ge=1, description="training budget in optimizer steps, turned into whole epochs when the data is "
        "read; null: train.epochs if set, else an automatic budget (see docs/training.md)",
        json_schema_extra=SEQUENCES,
    )
    batch_size: int = Field(
        64, ge=1, description="unset: about a tenth of the training sequences, between 8 and 64, chosen by a run"
    )
    selection: Literal["auto", "val", "last"] = Field(
        "auto", description="how the kept weights are chosen: val = the best epoch by "
        "train.early_stopping.metric on the validation split (and early stopping); last = no validation split, "
        "all sequences train, the final weights are kept; auto = val when the validation split holds at "
        "least 200 sequences, else last",
        json_schema_extra=SEQUENCES,
    )
    eval_batch_size: int = Field(256, ge=1)
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    mixup: MixupConfig = MixupConfig()
    curriculum: CurriculumConfig = Field(
        CurriculumConfig(), json_schema_extra={"tasks": ["classify", "regress", "seq2seq"]},
        description="which examples each epoch trains on (task forecast: forecast.horizon_curriculum)")
    tasks: TaskConfig = TaskConfig()
    phases: list[PhaseConfig] = Field([], description="consecutive phases with their own lr, dropout, clip, batch")
    phase_preset: Literal["none", "seed"] = Field(
        "none", description="seed: seed 000's warm-up / main / fine-tune phases scaled to train.epochs"
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype of the forward; auto: bf16 on CUDA GPUs that support it and on CPUs "
        "with native bf16 (AMX-BF16, AVX512-BF16) where a short probe runs it faster, fp32 elsewhere (the run "
        "says which; LONGSHORT_CPU_BF16=0 keeps CPUs at fp32); model.lstm_fp32 keeps the LSTM in float32"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: torch's choice")
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps inside an epoch; 0 = off")
    grad_accum_steps: int = Field(
        1, ge=1, description="split each batch into this many micro-batches (same gradient, less activation memory)"
    )
    log_every: int = Field(10, ge=1, description="steps between progress-bar updates (each reads the loss)")
    progress: Literal["auto", "rich", "plain", "off"] = Field(
        "auto", description="auto: a rich bar on a terminal, a line per epoch otherwise"
    )
    tensorboard: bool = True
    mlflow: MlflowConfig = MlflowConfig()

    @model_validator(mode="before")
    @classmethod
    def _presets(cls, data: Any) -> Any:
        """With explicit phases, epochs is their sum; then the recipe is laid under the given values (its start
        epochs scaled to that epoch count)."""
        if not isinstance(data, dict):
            return data
        phases = data.get("phases")
        if isinstance(phases, list) and phases:
            # Malformed phases are left alone here: field validation says what is wrong.
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                data = {**data, "epochs": sum(
                    int(p.epochs if isinstance(p, PhaseConfig) else p.get("epochs", 1)) for p in phases
                )}
        recipe = data.get("recipe", "default")
        if recipe != "default" and isinstance(recipe, str):
            try:
                base = recipe_values(recipe, data.get("epochs"))
            except ValueError:
                base = {}  # the Literal check reports the unknown name
            data = merge_under(base, data)
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.phases and self.phase_preset != "none":
            raise ValueError("set train.phases or train.phase_preset, not both")
        if self.phase_preset != "none" and self.epochs < 3:
            raise ValueError(f"phase_preset={self.phase_preset} needs train.epochs >= 3, got {self.epochs}")
        return self

    def resolved_phases(self) -> list[PhaseConfig]:
        """The phases in force: explicit ``phases``, the preset's scaled to ``epochs``, or none."""
        if self.phases:
            return list(self.phases)
        if self.phase_preset != "none":
            return preset_phases(self.phase_preset, self.epochs)
        return []


# -- from training/distributed.py ----------

class PrefetchConfig(BaseModel):
    """``distributed.prefetch``: how far ahead FSDP2 all-gathers the units' parameters (its explicit
    ``set_modules_to_forward_prefetch`` / ``set_modules_to_backward_prefetch``); 0 leaves FSDP2's own implicit
    prefetch of the next unit."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    forward: int = Field(
        0, ge=0, description="fsdp: when a unit's forward starts, all-gather the next N units (in forward order); "
        "0: FSDP2's default (each unit gathered in turn, the next one overlapped implicitly)"
    )
    backward: int = Field(
        0, ge=0, description="fsdp: when a unit's backward starts, all-gather the N units before it (seed 000's "
        "BACKWARD_PRE with N=1); 0: FSDP2's default (the previous unit, implicitly)"
    )


class DistributedConfig(BaseModel):
    """``distributed:`` how the same run spreads over the processes torchrun starts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    strategy: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="none: one process; ddp: replicate, average gradients; fsdp: FSDP2 fully_shard per block"
    )
    reshard_after_forward: bool = Field(
        True, description="fsdp: free gathered parameters after each block's forward (FULL_SHARD); false keeps "
        "them until the backward (SHARD_GRAD_OP: more memory, less communication)"
    )
    mixed_precision: Literal["none", "bf16", "fp16"] = Field(
        "none", description="fsdp: parameters all-gathered in bf16/fp16 for compute, gradients reduced in fp32; "
        "the BiLSTM blocks keep float32 parameters under model.lstm_fp32 (their own policy); fp16 steps through "
        "a sharded GradScaler"
    )
    cpu_offload: bool = Field(False, description="fsdp: keep sharded parameters and optimizer state on the CPU")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in the backward")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    timeout_s: int = Field(300, ge=10, description="collective timeout: a lost rank fails the job after this")
    prefetch: PrefetchConfig = PrefetchConfig()


# -- from training/seq2seq_task.py ----------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplingConfig(_Strict):
    """``seq2seq.sampling``: scheduled sampling (Bengio et al. 2015). The schedule gives the teacher-forcing
    probability ``eps_i`` at step (or epoch) ``i``; each position of each sequence is fed the gold token with
    probability ``eps_i``, else the model's previous prediction."""

    schedule: Literal["none", "inverse_sigmoid", "linear_with_floor", "exponential"] = Field(
        "none",
        description="none: always teacher forcing; inverse_sigmoid eps = k / (k + exp((i - c) / k)); "
        "linear_with_floor eps = max(floor, start - slope * i); exponential eps = gamma ** i",
    )
    unit: Literal["step", "epoch"] = Field("step", description="i counts optimizer steps or epochs")
    k: float = Field(500.0, gt=0, description="inverse_sigmoid: decay scale (larger decays later)")
    c: float = Field(0.0, description="inverse_sigmoid: centre (eps = k / (k + 1) at i = c)")
    start: float = Field(1.0, ge=0, le=1, description="linear_with_floor: eps at i = 0")
    slope: float = Field(1e-3, ge=0, description="linear_with_floor: eps lost per unit of i")
    floor: float = Field(0.5, ge=0, le=1, description="linear_with_floor: the lowest eps")
    gamma: float = Field(0.999, gt=0, le=1, description="exponential: eps = gamma ** i")

    def teacher_forcing(self, step: int, epoch: int) -> float:
        """``eps`` for the batch at global optimizer ``step`` in ``epoch`` (0-based)."""
        i = float(step if self.unit == "step" else epoch)
        if self.schedule == "none":
            return 1.0
        if self.schedule == "inverse_sigmoid":
            return SCHEDULES["inverse_sigmoid"](i, self.k, self.c)
        if self.schedule == "linear_with_floor":
            return SCHEDULES["linear_with_floor"](i, self.slope, self.floor, self.start)
        return SCHEDULES["exponential"](i, self.gamma)


class TokenLossConfig(_Strict):
    """``seq2seq.loss``: the per-token loss (padding ignored)."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    focal_gamma: float = Field(
        0.0, ge=0, description="> 0: sequence focal loss -sum_t alpha_t (1 - p_t)^gamma log p_t instead of CE"
    )
    focal_alpha: float = Field(1.0, ge=0, description="sequence focal: alpha_0 of the time weights")
    time_weighting: TimeWeighting = Field(
        "constant", description="sequence focal: alpha_t over the target (constant | linear | reverse | exp)"
    )
    time_rate: float = Field(1.0, description="sequence focal, exp weighting: the rate")
    coverage_weight: float = Field(1.0, ge=0, description="weight of the coverage loss (attention.coverage=true)")

    @model_validator(mode="after")
    def _one(self) -> TokenLossConfig:
        if self.focal_gamma > 0 and self.label_smoothing > 0:
            raise ValueError("set seq2seq.loss.focal_gamma or label_smoothing, not both")
        return self


class DecodeConfig(_Strict):
    """``seq2seq.decode``: how validation, evaluation and ``predict`` decode."""

    beam_size: int = Field(1, ge=1, description="1 = greedy; > 1 = beam search")
    length_penalty: float = Field(0.6, ge=0, description="beam search: GNMT alpha, score / ((5 + len) / 6)^alpha")
    max_len_ratio: float = Field(2.0, gt=0, description="max output length = ratio * longest source + extra")
    max_len_extra: int = Field(10, ge=0, description="see max_len_ratio")
    validate_beam: bool = Field(False, description="use the beam for the per-epoch validation too (slower)")

    def max_len(self, src_lengths: Any) -> int:  # a tensor of source lengths
        return max(1, int(self.max_len_ratio * int(src_lengths.max())) + self.max_len_extra)


class Seq2SeqSection(_Strict):
    """``seq2seq:`` everything specific to ``task: seq2seq`` (``train:`` keeps epochs, optimizer, schedule, ...)."""

    TASKS: ClassVar[tuple[str, ...]] = ("seq2seq",)  # the tasks that read this section (others refuse it)

    model: Seq2SeqConfig = Seq2SeqConfig()
    sampling: SamplingConfig = SamplingConfig()
    loss: TokenLossConfig = TokenLossConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    decode: DecodeConfig = DecodeConfig()
    exposure_gap: bool = Field(
        True, description="each epoch, also the free-running validation loss (fed own predictions) and its gap"
    )


# -- from training/regress.py ----------

RegressLoss = Literal["mse", "mae", "huber", "quantile", "gaussian_nll"]


class RegressSection(_Strict):
    """``regress:`` everything specific to ``task: regress`` (a number, or several, per sequence)."""

    TASKS: ClassVar[tuple[str, ...]] = ("regress",)  # the tasks that read this section (others refuse it)

    loss: RegressLoss = Field(
        "mse", description="mse; mae; huber (quadratic within huber_delta, linear beyond); quantile (pinball loss "
        "over regress.quantiles, the median or the middle quantile is the point prediction); gaussian_nll (a "
        "mean and a variance per target, torch's gaussian_nll_loss; predict adds an 80% interval)",
    )
    huber_delta: float = Field(1.0, gt=0, description="huber: the threshold, in units of the scaled target")
    quantiles: list[float] = Field(
        [0.1, 0.5, 0.9], min_length=1, description="quantile: the levels predicted, each in (0, 1), increasing")
    scale_target: bool = Field(
        True, description="standardise each target with the training split's mean and std (the model learns in "
        "those units; every output and metric is in the target's own units)")

    @model_validator(mode="after")
    def _levels(self) -> RegressSection:
        q = self.quantiles
        if any(not 0 < v < 1 for v in q) or any(b <= a for a, b in itertools.pairwise(q)):
            raise ValueError(f"regress.quantiles must be increasing levels in (0, 1), got {q}")
        return self

    @property
    def outputs_per_target(self) -> int:
        """Model outputs for each target: 1 (point losses), one per quantile, or 2 (mean and log-variance)."""
        return {"quantile": len(self.quantiles), "gaussian_nll": 2}.get(self.loss, 1)


# -- from training/forecast_task.py ----------

ForecastLoss = Literal["mse", "mae", "quantile", "gaussian_nll", "student_t"]
CalendarFeature = Literal["hour", "dayofweek", "day", "month", "dayofyear"]
FORECAST_METRICS = ("val_loss", "val_mae", "val_rmse", "val_mase")  # what task forecast measures each epoch


class ForecastSection(_Strict):
    """``forecast:`` everything specific to ``task: forecast`` (the next ``horizon`` steps of one or more series)."""

    TASKS: ClassVar[tuple[str, ...]] = ("forecast",)  # the tasks that read this section (others refuse it)

    horizon: int = Field(12, ge=1, description="H: steps ahead to predict")
    lookback: int = Field(
        0, ge=0, description="steps of history the encoder reads; 0: max(3 H, 2 season, 24), at most what the "
        "shortest training part holds")
    season: int = Field(
        0, ge=0, description="m: the seasonal period (seasonal-naive baseline, MASE scale); 0: the built-in's, "
        "the .tsf frequency's, else the lag (2..lookback) of the largest autocorrelation above 0.3, else 1")
    target: list[str] = Field(
        [], description="columns to forecast; default: every numeric column that is not a covariate, the id or "
        "the time")
    past_covariates: list[str] = Field([], description="columns known only up to the forecast origin (encoder input)")
    known_future: list[str] = Field(
        [], description="columns known for the horizon too (encoder and decoder input; predict needs their next H "
        "rows)")
    calendar: list[CalendarFeature] = Field(
        [], description="calendar features from the parsed time column, known for the future (sin/cos)")
    id_column: str = Field("series_id", description="column naming the series of a long table (many series)")
    time_column: str = Field(
        "time", description="column ordering each series' rows (and giving the calendar); absent: file order")
    loss: ForecastLoss = Field(
        "gaussian_nll", description="mse; mae; quantile (pinball over forecast.quantiles); gaussian_nll (a mean and "
        "a variance per step); student_t (location, scale, degrees of freedom per step)")
    quantiles: list[float] = Field(
        [0.1, 0.5, 0.9], min_length=1, description="quantile: the levels predicted, each in (0, 1), increasing; "
        "every loss reports the 80% interval [0.1, 0.9] when it has one")
    samples: int = Field(
        200, ge=10, description="sample paths drawn by the autoregressive decoder under a distribution loss "
        "(its quantiles are those paths' per-step quantiles)")
    max_windows: int = Field(
        20000, ge=1, description="training windows per epoch at most (a seeded draw from all origins when more)")
    sampling: SamplingConfig = Field(
        SamplingConfig(), description="autoregressive: scheduled sampling of the previous value (real-valued: "
        "each step of each window is fed its own previous prediction with probability 1 - eps)")
    exposure_gap: bool = Field(
        True, description="autoregressive: each epoch, also the free-running validation loss and its gap to the "
        "teacher-forced one")
    horizon_curriculum: float = Field(
        0.0, ge=0, le=1, description="autoregressive: the trained horizon grows linearly from 1 to H over this "
        "share of the epochs (0: off)")
    model: ForecasterConfig = ForecasterConfig()

    @model_validator(mode="after")
    def _check(self) -> ForecastSection:
        q = self.quantiles
        if any(not 0 < v < 1 for v in q) or any(b <= a for a, b in itertools.pairwise(q)):
            raise ValueError(f"forecast.quantiles must be increasing levels in (0, 1), got {q}")
        roles = {"target": self.target, "past_covariates": self.past_covariates, "known_future": self.known_future}
        seen: dict[str, str] = {}
        for role, cols in roles.items():
            for c in cols:
                if c in seen:
                    raise ValueError(f"column '{c}' is in both forecast.{seen[c]} and forecast.{role}")
                if c in (self.id_column, self.time_column):
                    raise ValueError(f"column '{c}' of forecast.{role} is the id or time column")
                seen[c] = role
        return self

    def decoder_options(self) -> None:
        """What only the autoregressive decoder reads is refused with the direct one (checked by the config
        when the task is forecast, so another task's refusal of the whole section comes first)."""
        if self.model.decoder == "direct" and self.sampling.schedule != "none":
            raise ValueError("forecast.sampling (scheduled sampling) needs forecast.model.decoder=autoregressive; "
                             "the direct decoder feeds no previous value")
        if self.model.decoder == "direct" and self.horizon_curriculum > 0:
            raise ValueError("forecast.horizon_curriculum needs forecast.model.decoder=autoregressive")
