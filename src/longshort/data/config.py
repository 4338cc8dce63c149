"""Configuration of the data stage: where data comes from, how it is read, split, windowed and scaled."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LongFormat(_Strict):
    """CSV/Parquet long format: one row per (sequence, time step)."""

    series_id: str = "series_id"
    time: str | None = Field(None, description="optional column that orders the rows of each sequence")
    label: str = "label"
    features: list[str] | None = Field(None, description="feature columns; default: every other column")


class SeriesFormat(_Strict):
    """One continuous multivariate series (a row per time step) cut into labelled windows."""

    window: int = Field(50, ge=2, description="time steps per window")
    stride: int = Field(1, ge=1, description="steps between consecutive window starts")
    target: str = Field("close", description="column whose future change gives the label")
    horizon: int = Field(5, ge=1, description="steps ahead the change is measured over")
    flat_band: float = Field(0.001, ge=0, description="|change| <= flat_band is labelled 'flat'")
    change: Literal["pct", "diff"] = Field("pct", description="relative (pct) or absolute (diff) change")
    features: list[str] | None = Field(None, description="feature columns; default: every numeric column")
    time: str | None = Field(None, description="optional column the rows are sorted by")


class SplitConfig(_Strict):
    val: float = Field(0.15, ge=0, lt=1, description="fraction of the data for validation")
    test: float = Field(0.15, ge=0, lt=1, description="fraction for test (ignored when --test-data is given)")
    gap: int | None = Field(
        None, ge=0, description="rows dropped between chronological splits; default window + horizon"
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"split.val + split.test must be below 0.9, got {self.val + self.test:g}")
        return self


class BuiltinConfig(_Strict):
    """Size of a generated built-in dataset (``source: builtin:NAME``)."""

    n: int = Field(4000, ge=30, description="sequences to generate")
    length: int = Field(50, ge=2, description="time steps per sequence")


class DataConfig(_Strict):
    source: str = Field("builtin:regimes", description="a file path or builtin:NAME (see `longshort datasets`)")
    test_source: str | None = Field(None, description="separate test file; no test split is cut when set")
    format: Literal["auto", "npz", "csv", "parquet", "ts"] = "auto"
    layout: Literal["auto", "sequences", "long", "series"] = Field(
        "auto", description="sequences (npz/.ts), long (a row per sequence step), series (one continuous series)"
    )
    long: LongFormat = LongFormat()
    series: SeriesFormat = SeriesFormat()
    split: SplitConfig = SplitConfig()
    builtin: BuiltinConfig = BuiltinConfig()
    scale: Literal["standard", "none"] = Field("standard", description="fitted on the training split only")
