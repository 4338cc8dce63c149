"""The ``cv:`` section of the config, as a leaf: pydantic only (``validation.py`` implements it)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SEQUENCES = {"tasks": ["classify", "regress"]}  # task forecast folds by whole horizons (forecast_run.fold_splits)

# -- from evaluate/validation.py ----------

class CVConfig(BaseModel):
    """``cv:`` how ``longshort cv`` folds the data."""

    TASKS: ClassVar[tuple[str, ...]] = ("classify", "regress", "forecast")  # the tasks that read this section

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    folds: int = Field(5, ge=2, description="number of folds (test blocks)")
    scheme: Literal["auto", "expanding", "sliding", "kfold"] = Field(
        "auto", description="auto: expanding walk-forward for a continuous series (and task forecast, which has "
        "only that), stratified k-fold otherwise"
    )
    gap: int | None = Field(
        None, ge=0, description="purge: rows between the last training window's end and the first test window's "
        "end; default window + horizon; less than window + horizon - 1 would share rows and is refused",
        json_schema_extra=SEQUENCES,
    )
    embargo: int | None = Field(
        None, ge=0, description="rows purged between each fold's training and validation windows (default "
        "window + horizon; the same minimum as gap)", json_schema_extra=SEQUENCES,
    )
    train_windows: int | None = Field(None, ge=10, description="sliding: training windows per fold (default: "
                                      "as many as one test block)", json_schema_extra=SEQUENCES)
    val_fraction: float = Field(0.15, ge=0, lt=0.5, description="share of each fold's training part for validation",
                                json_schema_extra=SEQUENCES)
