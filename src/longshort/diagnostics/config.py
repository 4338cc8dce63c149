"""The ``diagnostics:`` section of the config, as a leaf: pydantic only, no torch (``monitor.py`` implements it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: ``json_schema_extra`` of a field only one task reads: ``longshort.config`` refuses it, set, for the other
ONLY_CLASSIFY = {"tasks": ["classify"]}
ONLY_SEQ2SEQ = {"tasks": ["seq2seq"]}


# -- from diagnostics/monitor.py ----------

Action = Literal["log", "skip", "rollback"]


class AnomalyConfig(BaseModel):
    """``diagnostics.anomaly``: when a gradient norm is a spike, and what happens then."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sigma: float = Field(3.0, gt=0, description="a step is an anomaly when its gradient norm > EMA mean + sigma * std")
    beta: float = Field(0.98, gt=0, lt=1, description="EMA decay of the norm's mean and variance (per step)")
    warmup: int = Field(50, ge=2, description="steps of statistics before any step can be flagged")
    action: Action = Field(
        "log",
        description="log: record and apply the step; skip: drop the update; rollback: reload the last checkpoint "
        "and multiply the learning rate by lr_factor",
    )
    lr_factor: float = Field(0.5, gt=0, lt=1, description="learning-rate multiplier at each rollback")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks allowed in a run; after them an anomaly is skipped")
    max_nonfinite: int = Field(
        25, ge=1, description="consecutive non-finite steps (NaN/Inf loss or gradient) before training stops"
    )


class DiagnosticsConfig(BaseModel):
    """``diagnostics:`` what is measured while training and after it (see docs/diagnostics.md)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="per-step gradient norms, anomaly handling, gate sampling, files")
    per_module: bool = Field(True, description="gradient norm of every top-level module, each step")
    gates_every: int = Field(50, ge=0, description="steps between gate-statistics samples (0 = never)")
    gate_sequences: int = Field(32, ge=1, description="fixed validation sequences the gate statistics are taken on")
    histograms: bool = Field(True, description="weight and gradient histograms in TensorBoard, once per epoch")
    anomaly: AnomalyConfig = Field(AnomalyConfig())  # type: ignore[call-arg]
    analysis: bool = Field(
        True, description="after training: loss-landscape slices, Hessian top eigenvalue, information flow, "
        "attention maps (RUN_DIR/diagnostics/*.json); task seq2seq: the loss landscape, when set to true",
        json_schema_extra={"tasks": ["classify", "seq2seq"]},
    )
    analysis_batches: int = Field(
        1, ge=1, description="validation batches (of train.batch_size) the landscape and Hessian losses average over",
        json_schema_extra={"tasks": ["classify", "seq2seq"]},
    )
    report: bool = Field(True, description="after training: RUN_DIR/report.html")
