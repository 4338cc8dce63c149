"""Configuration of the data stage: where data comes from, how it is read, split, windowed and scaled."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_N_SPECIALS = 4  # <pad> <unk> <bos> <eos>: see longshort.data.pairs


#: ``json_schema_extra`` of a field only one task reads: ``longshort.config`` refuses it, set, for the other
ONLY_CLASSIFY = {"tasks": ["classify"]}
ONLY_SEQ2SEQ = {"tasks": ["seq2seq"]}
SEQUENCES = {"tasks": ["classify", "regress"]}  # the tasks that read sequences with a target each
# task forecast holds out the last forecast.horizon steps of each series instead of shares of the data
NOT_FORECAST = {"tasks": ["classify", "regress", "seq2seq"]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_aux_column(aux: str | None, features: list[str] | None, others: dict[str, str | None]) -> None:
    """The aux column is a training target only: never a feature, nor a column with another role."""
    if aux is None:
        return
    if features and aux in features:
        raise ValueError(f"aux column '{aux}' is also listed in features; the aux target is never a feature")
    for role, col in others.items():
        if col == aux:
            raise ValueError(f"aux column '{aux}' is also the {role} column; give the aux target its own column")


class LongFormat(_Strict):
    """CSV/Parquet long format: one row per (sequence, time step)."""

    TASKS: ClassVar[tuple[str, ...]] = ("classify", "regress")  # the tasks that read this section (others refuse it)

    series_id: str = "series_id"
    time: str | None = Field(
        None, description="column that orders the rows of each sequence; default: a column named time or timestamp "
        "(any case) when features are not listed, else file order"
    )
    label: str = "label"
    features: list[str] | None = Field(None, description="feature columns; default: every other column")
    aux: str | None = Field(
        None,
        description="column holding a per-sequence auxiliary regression target (the training target of "
        "train.loss.aux_weight); must be numeric, finite and constant within each series; never a feature, "
        "and ignored when predicting or evaluating",
    )

    @model_validator(mode="after")
    def _aux_column(self) -> LongFormat:
        _check_aux_column(self.aux, self.features, {"series_id": self.series_id, "time": self.time,
                                                    "label": self.label})
        return self


class SeriesFormat(_Strict):
    """One continuous multivariate series (a row per time step) cut into labelled windows."""

    TASKS: ClassVar[tuple[str, ...]] = ("classify",)  # the tasks that read this section (others refuse it)

    window: int = Field(50, ge=2, description="time steps per window")
    stride: int = Field(1, ge=1, description="steps between consecutive window starts")
    target: str = Field("close", description="column whose future change gives the label")
    horizon: int = Field(5, ge=1, description="steps ahead the change is measured over")
    flat_band: float = Field(0.001, ge=0, description="|change| <= flat_band is labelled 'flat'")
    change: Literal["pct", "diff"] = Field("pct", description="relative (pct) or absolute (diff) change")
    features: list[str] | None = Field(None, description="feature columns; default: every numeric column")
    time: str | None = Field(
        None, description="column the rows are sorted by (never a feature); default: a column named time or "
        "timestamp (any case) when features are not listed, else file order"
    )
    aux: str | None = Field(
        None,
        description="column giving each window's auxiliary regression target: its value at the window's last "
        "row, taken as given (make it a future quantity yourself if you want one; a look-ahead of k rows stays "
        "out of the next split while k <= horizon + split.gap); default: the target's forward change over "
        "horizon. Never a feature; ignored when predicting or evaluating",
    )

    cache: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on: the scaled rows the windows are cut from are written once beside the run directory "
        "(RUN_DIR/../.cache, removed once every process has mapped them) and memory-mapped, so the processes of "
        "one machine share them and the OS can page them out; auto: on under torchrun with more than one "
        "process; off: every process keeps its own copy in memory",
    )

    @model_validator(mode="after")
    def _aux_column(self) -> SeriesFormat:
        _check_aux_column(self.aux, self.features, {"time": self.time, "target": self.target})
        return self


class SplitConfig(_Strict):
    val: float = Field(0.15, ge=0, lt=1, description="fraction of the data for validation",
                       json_schema_extra=NOT_FORECAST)
    test: float = Field(0.15, ge=0, lt=1, description="fraction for test (ignored when --test-data is given)",
                        json_schema_extra=NOT_FORECAST)
    gap: int | None = Field(
        None, ge=0, description="rows dropped between chronological splits; default window + horizon",
        json_schema_extra=ONLY_CLASSIFY,
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"split.val + split.test must be below 0.9, got {self.val + self.test:g}")
        return self


class BuiltinConfig(_Strict):
    """Size of a generated built-in dataset (``source: builtin:NAME``)."""

    n: int = Field(4000, ge=30, description="sequences (seq2seq: pairs; forecast: series, unset 64) to generate")
    length: int = Field(50, ge=2, description="time steps per sequence (forecast: per series; unset 360)",
                        json_schema_extra={"tasks": ["classify", "regress", "forecast"]})
    min_len: int = Field(5, ge=1, description="seq2seq built-ins: shortest source (reverse, sort; cmudict letters)",
        json_schema_extra=ONLY_SEQ2SEQ,
    )
    max_len: int = Field(20, ge=1, description="seq2seq built-ins: longest source (reverse, sort; cmudict letters)",
        json_schema_extra=ONLY_SEQ2SEQ,
    )
    digits: int = Field(3, ge=1, description="seq2seq built-in addition: the most digits of an operand",
        json_schema_extra=ONLY_SEQ2SEQ,
    )

    @model_validator(mode="after")
    def _lengths(self) -> BuiltinConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"builtin.min_len ({self.min_len}) must be <= builtin.max_len ({self.max_len})")
        return self


class PairFormat(BaseModel):
    """How a pairs file is laid out and tokenised."""

    TASKS: ClassVar[tuple[str, ...]] = ("seq2seq",)  # the tasks that read this section (others refuse it)

    model_config = ConfigDict(extra="forbid")

    source: str = Field("source", description="column of the input sequences")
    target: str = Field("target", description="column of the output sequences; a file without it is prediction input")
    extra_sources: list[str] = Field(
        [], description="more input columns (multi-modal seq2seq): each gets its own vocabulary and encoder"
    )
    tokenize: Literal["space", "char"] = "space"
    lowercase: bool = False
    min_freq: int = Field(default=1, ge=1)  # tokens rarer than this in the training split map to <unk>
    max_vocab: int | None = Field(default=None, ge=_N_SPECIALS)  # total size, the 4 specials included


class DataConfig(_Strict):
    source: str = Field("builtin:regimes", description="a file path or builtin:NAME (see `longshort datasets`)")
    missing: Literal["error", "ffill", "zero", "mean", "mask"] = Field(
        "error", json_schema_extra=SEQUENCES,
        description="missing feature values (NaN, empty cells): error = refused, naming the row or step; ffill = "
        "the last observed value of the sequence (its first one before it); zero; mean = the training mean; "
        "mask = the training mean plus an indicator channel per feature (1 where the value was missing), so the "
        "model sees where values were absent. The same at predict time")
    test_source: str | None = Field(None, description="separate test file; no test split is cut when set")
    format: Literal["auto", "npz", "csv", "parquet", "ts"] = Field("auto", json_schema_extra=SEQUENCES)
    layout: Literal["auto", "sequences", "long", "series"] = Field(
        "auto", description="sequences (npz/.ts), long (a row per sequence step), series (one continuous series)",
        json_schema_extra=SEQUENCES,
    )
    long: LongFormat = LongFormat()
    series: SeriesFormat = SeriesFormat()
    split: SplitConfig = SplitConfig()
    builtin: BuiltinConfig = BuiltinConfig()
    scale: Literal["auto", "standard", "series", "none"] = Field(
        "auto", description="standard: per-feature mean/std fitted on the training split; series: first each "
        "sequence per feature to zero mean and unit std over its own valid steps (for sets whose sequences "
        "differ in scale by orders of magnitude), then standard; auto: series when the standard deviations of "
        "the sequences read from data.source spread more than 10x (10th to 90th percentile, any feature), "
        "else standard (continuous series: standard); none: raw values",
        json_schema_extra=SEQUENCES,
    )
    pairs: PairFormat = Field(PairFormat(), description="seq2seq (task: seq2seq): columns and tokenisation")
