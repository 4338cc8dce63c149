"""The ``tune:`` section of the config, as a leaf: pydantic only (``tune.py`` implements it)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# -- from tune.py ----------

class ParamSpace(BaseModel):
    """One searched key: ``float`` / ``int`` in [low, high] (``log`` for log-uniform), or ``categorical`` choices."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical search space needs choices")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} search space needs low < high, got {self.low} and {self.high}")
        elif self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, got {self.low}")
        return self


#: the default space's learning-rate key: under the default OneCycle schedule the rate that matters is its peak
#: (``train.optim.lr`` is only where it starts); :func:`space_for` swaps in ``train.optim.lr`` for other schedules
PEAK_LR, BASE_LR = "train.schedule.max_lr", "train.optim.lr"


def _default_space() -> dict[str, ParamSpace]:
    return {
        PEAK_LR: ParamSpace(type="float", low=3e-4, high=1e-2, log=True),
        "model.dropout": ParamSpace(type="float", low=0.0, high=0.5),
        "model.hidden_dim": ParamSpace(type="categorical", choices=[64, 128, 256]),
    }


class TuneConfig(BaseModel):
    """``tune:`` what ``longshort tune`` searches and how."""

    TASKS: ClassVar[tuple[str, ...]] = ("classify", "regress")  # the tasks that read this section (others refuse it)

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    space: dict[str, ParamSpace] = Field(
        default_factory=_default_space,
        description="KEY: {type, low, high, log, choices}; a combination the config refuses (e.g. model.num_heads "
        "not dividing model.hidden_dim) is pruned",
    )
    metric: Literal["auto", "val_f1_macro", "val_accuracy", "val_loss", "val_rmse", "val_mae"] = Field(
        "auto", description="the validation metric trials are compared by (each trial's best epoch); auto: "
        "val_f1_macro for task classify, val_rmse for regress (val_rmse and val_mae: task regress only; val_loss, "
        "val_rmse and val_mae are minimised)")
    pruner: Literal["median", "hyperband", "none"] = Field("median")
    startup_trials: int = Field(5, ge=0, description="TPE's random start and the median pruner's warm-up trials")
    heartbeat_s: int = Field(60, ge=1, description="a trial without a heartbeat for 2 x this is failed and retried")
    max_retry: int = Field(2, ge=0, description="times a failed (killed) trial is queued again")


def tune_metric(metric: str, task: str) -> str:
    """``tune.metric`` with auto resolved for ``task``."""
    return ("val_rmse" if task == "regress" else "val_f1_macro") if metric == "auto" else metric


def space_for(tune: TuneConfig, schedule: str) -> dict[str, ParamSpace]:
    """The space a study searches: ``tune.space`` as given, or the default one with its learning-rate key on
    the knob that sets the rate under ``schedule`` (OneCycle's peak, else the optimizer's rate)."""
    if "space" in tune.model_fields_set or schedule == "onecycle":
        return tune.space
    return {(BASE_LR if k == PEAK_LR else k): v for k, v in tune.space.items()}
