"""The config tree: one typed, validated object per run, read from YAML plus ``key.sub=value`` overrides.

Each package keeps its sections in a leaf module that imports only pydantic and other config modules
(``data/config.py``, ``nn/config.py``, ``training/config.py``, ``diagnostics/config.py``, ``evaluate/config.py``,
``tune_config.py``), so this module imports no torch; it assembles them, reads and writes YAML, applies
overrides, and turns validation failures into one readable line that names the key and what it accepts.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from longshort.data.config import DataConfig
from longshort.diagnostics.config import DiagnosticsConfig
from longshort.errors import ConfigError
from longshort.evaluate.config import CVConfig
from longshort.nn.config import ClassifierConfig
from longshort.training.config import (
    FORECAST_METRICS,
    REGRESS_METRICS,
    DistributedConfig,
    ForecastSection,
    RegressSection,
    Seq2SeqSection,
    TrainConfig,
)
from longshort.tune_config import TuneConfig


class Config(BaseModel):
    """Everything one run needs. ``longshort train`` writes it, resolved, to ``RUN_DIR/config.yaml``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: Literal["classify", "regress", "seq2seq", "forecast"] = Field(
        "classify", description="classify: sequence -> class (model.*); regress: sequence -> a number, or several "
        "(model.*, regress.*); seq2seq: token sequence -> token sequence (seq2seq.*, data.pairs.*); forecast: a "
        "series' history -> its next forecast.horizon steps (forecast.*)"
    )
    seed: int = Field(0, description="fixes data order, splits, initial weights, dropout and augmentation")
    data: DataConfig = DataConfig()
    model: ClassifierConfig = ClassifierConfig()
    train: TrainConfig = TrainConfig()
    regress: RegressSection = RegressSection()
    seq2seq: Seq2SeqSection = Seq2SeqSection()
    forecast: ForecastSection = ForecastSection()
    distributed: DistributedConfig = DistributedConfig()
    cv: CVConfig = CVConfig()
    tune: TuneConfig = TuneConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()

    @model_validator(mode="after")
    def _distributed_options(self) -> Config:
        """What the data-parallel strategies do not (yet) support is refused, not run differently."""
        d, o = self.distributed, self.train.optim
        if d.strategy == "none":
            return self
        bad = []
        if self.task == "seq2seq" and d.strategy == "fsdp" and self.seq2seq.objective.kind != "none":
            bad.append("seq2seq.objective with fsdp (its sampled decoding calls the model outside forward, "
                       "which FSDP2 runs sharded; ddp runs it)")
        if o.lookahead.enabled:
            bad.append("train.optim.lookahead (its slow weights are not sharded)")
        if d.strategy == "fsdp" and o.grad_noise.std > 0:
            bad.append("train.optim.grad_noise with fsdp (noise on shards would differ from one process)")
        if d.strategy == "fsdp" and o.clip_mode in ("per_gate", "per_gate_adaptive"):
            bad.append(f"train.optim.clip_mode={o.clip_mode} with fsdp (gate blocks are split across shards)")
        if bad:
            raise ValueError(f"distributed.strategy={d.strategy} does not support " + "; ".join(bad))
        return self

    @model_validator(mode="after")
    def _task_options(self) -> Config:
        """A key the chosen task does not read is refused when set to anything but its default, so no setting is
        silently ignored. Which task reads what is said where each key is defined (:func:`unread_keys`)."""
        bad = unread_keys(self, self.task)
        if bad:
            others = [t for t in TASK_NAMES if t != self.task and not unread_keys(self, t)]
            where = (f"options of task {others[0]}; set task: {others[0]} or leave them out" if others else
                     "options of other tasks; leave them out")
            raise ValueError(f"task is {self.task}, which does not read {', '.join(bad)} ({where})")
        if self.task == "regress":
            return self._regress_options()
        if self.task == "forecast":
            return self._forecast_options()
        if self.task != "seq2seq":
            if self.train.early_stopping.metric in ("val_rmse", "val_mae"):
                raise ValueError(f"train.early_stopping.metric={self.train.early_stopping.metric} is a regression "
                                 "metric; task classify has val_f1_macro, val_accuracy, val_loss")
            if self.tune.metric in ("val_rmse", "val_mae"):
                raise ValueError(f"tune.metric={self.tune.metric} is a regression metric; task classify has "
                                 "val_f1_macro, val_accuracy, val_loss")
            return self
        t = self.train
        if t.curriculum.kind not in ("none", "length", "difficulty"):
            raise ValueError(f"train.curriculum.kind={t.curriculum.kind} is a classifier curriculum; task seq2seq "
                             "has none, length and difficulty (by token perplexity)")
        if t.curriculum.kind == "difficulty" and t.curriculum.scorer != "self":
            raise ValueError("task seq2seq's difficulty curriculum scores pairs by the model's own token perplexity: "
                             "train.curriculum.scorer must be self")
        if t.early_stopping.metric in ("val_f1_macro",):
            raise ValueError("train.early_stopping.metric=val_f1_macro is a classifier metric; task seq2seq has "
                             "val_exact_match, val_token_accuracy, val_edit_error_rate, val_bleu, val_loss, "
                             "val_accuracy")
        if "source" not in self.data.model_fields_set:
            self.data.source = "builtin:reverse"  # the classifier's default dataset; seq2seq's is reverse
        return self

    def _forecast_options(self) -> Config:
        t = self.train
        self.forecast.decoder_options()
        if t.early_stopping.metric not in ("auto", *FORECAST_METRICS):
            raise ValueError(f"train.early_stopping.metric={t.early_stopping.metric} is not measured by task "
                             f"forecast; it has {', '.join(FORECAST_METRICS)}")
        if self.distributed.strategy != "none":
            raise ValueError("task forecast trains in one process (distributed.strategy=none)")
        if "source" not in self.data.model_fields_set:
            self.data.source = "builtin:seasonal_ar"  # the classifier's default dataset; forecast's is seasonal_ar
        return self

    def _regress_options(self) -> Config:
        t = self.train
        if t.curriculum.kind in ("difficulty", "adaptive"):
            raise ValueError(f"train.curriculum.kind={t.curriculum.kind} scores examples with a classifier's loss; "
                             "task regress has none and length")
        if t.early_stopping.metric not in ("auto", *REGRESS_METRICS):
            raise ValueError(f"train.early_stopping.metric={t.early_stopping.metric} is not measured by task "
                             f"regress; it has {', '.join(REGRESS_METRICS)}")
        if self.tune.metric in ("val_f1_macro", "val_accuracy"):
            raise ValueError(f"tune.metric={self.tune.metric} is a classifier metric; task regress has val_rmse, "
                             "val_mae, val_loss")
        if "source" not in self.data.model_fields_set:
            self.data.source = "builtin:signal"  # the classifier's default dataset; regress's is signal
        return self


TASK_NAMES: tuple[str, ...] = typing.get_args(Config.model_fields["task"].annotation)


def _tasks_of(section: type[BaseModel], name: str) -> tuple[str, ...] | None:
    """The tasks that read field ``name`` of ``section``: the section's ``TASKS``, else the field's
    ``json_schema_extra["tasks"]``, else None (every task)."""
    owned = getattr(section, "TASKS", None)
    if owned is not None:
        return tuple(owned)
    extra = section.model_fields[name].json_schema_extra
    tasks = extra.get("tasks") if isinstance(extra, dict) else None
    return tuple(tasks) if isinstance(tasks, list) else None  # type: ignore[arg-type]


def _changed(value: Any, default: Any, key: str) -> list[str]:
    """The leaf keys under ``key`` whose value differs from the default."""
    if isinstance(value, BaseModel) and type(value) is type(default):
        return [k for name in type(value).model_fields
                for k in _changed(getattr(value, name), getattr(default, name), f"{key}.{name}")]
    return [] if value == default else [key]


def unread_keys(section: BaseModel, task: str, prefix: str = "") -> list[str]:
    """Keys of ``section`` set to something other than their default that ``task`` does not read.

    Which task reads a key is declared where the key is defined: a section class read by one task only says so
    in its ``TASKS`` class variable (``model:``'s ClassifierConfig, ``seq2seq:``, ``train.loss``, ...); a single
    field of a shared section in ``json_schema_extra={"tasks": [...]}`` (``train.recipe``, ``data.scale``, ...).
    ``tests/test_config.py`` walks every key of the tree for both tasks."""
    out: list[str] = []
    cls = type(section)
    for name, field in cls.model_fields.items():
        key, value = f"{prefix}{name}", getattr(section, name)
        tasks = _tasks_of(cls, name)
        if tasks is not None and task not in tasks:
            out += _changed(value, field.get_default(call_default_factory=True), key)
        elif isinstance(value, BaseModel):
            out += unread_keys(value, task, key + ".")
    return out


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: only true/false are booleans, so ``progress: off`` stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list(_first)
    )


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: constructs no Python objects


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names accepted at ``loc`` (a path of field names) inside ``model``."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        sub = field.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        model = sub
    return sorted(model.model_fields)


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(Config, loc[:-1]))
        return f"unknown key '{key}' (allowed here: {allowed})"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"'{key}': {msg}{shown}"


# Every count, size and seed in the config fits a C int (what torch, numpy and the tensors they allocate index
# with); a value past it is a typo or a unit slip, and would otherwise fail deep inside an allocation.
INT_LIMIT = 2**31 - 1
SEED_LIMIT = 2**32 - 1  # numpy's and torch's seeds


def _unreasonable(node: Any, key: str) -> str | None:
    """The first number under ``node`` that no run can use (not finite, or beyond :data:`INT_LIMIT`), described
    with its key; None when there is none. Pydantic's bounds are per field; these hold for every field."""
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            found = _unreasonable(getattr(node, name), f"{key}.{name}" if key else name)
            if found:
                return found
    elif isinstance(node, dict):
        for k, v in node.items():
            found = _unreasonable(v, f"{key}.{k}")
            if found:
                return found
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            found = _unreasonable(v, f"{key}[{i}]")
            if found:
                return found
    elif isinstance(node, float) and not math.isfinite(node):
        return f"'{key}': must be a finite number (got {node!r}; a YAML number beyond 1.8e308 reads as inf)"
    elif isinstance(node, int) and not isinstance(node, bool):
        limit = SEED_LIMIT if key.rsplit(".", 1)[-1] == "seed" else INT_LIMIT
        if abs(node) > limit:
            return f"'{key}': {node} is beyond what any run can use (at most {limit:,})"
    return None


def validate(raw: dict[str, Any]) -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("config " + "; ".join(_describe(e) for e in exc.errors())) from None
    problem = _unreasonable(cfg, "")
    if problem:
        raise ConfigError(f"config {problem}")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5). Values are read as YAML scalars or lists, never eval'd."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    try:
        parsed = _load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML{_yaml_where(exc)}") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{'.'.join(path[: i + 1])}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _yaml_where(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line report (context, caret lines) as one clause: where, and what it expected."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context, problem = getattr(exc, "context", None), getattr(exc, "problem", None)
    what = ", ".join(str(x) for x in dict.fromkeys((context, problem)) if x)  # each once, context first
    return f"{where}: {what}" if what else where


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        raw = _load_yaml(p.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p}: not UTF-8 text (byte {exc.start}); is it a YAML file?") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}: not valid YAML{_yaml_where(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (or the defaults), apply ``overrides``, validate."""
    raw = read_yaml(path) if path else {}
    return validate(apply_overrides(raw, list(overrides or [])))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def config_keys(model: type[BaseModel] = Config, prefix: str = "", only: tuple[str, ...] | None = None
                ) -> list[tuple[str, str, str]]:
    """(key, default, description) for every leaf, for ``--help`` and the docs; a key one task reads says so."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}{name}"
        tasks = only or _tasks_of(model, name)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += config_keys(ann, key + ".", tasks)
        else:
            args = typing.get_args(ann) if typing.get_origin(ann) is Literal else ()
            desc = field.description or ""
            if args:
                desc = (desc + " " if desc else "") + "(" + " | ".join(map(str, args)) + ")"
            if tasks is not None:
                desc = f"[{'/'.join(tasks)} only] {desc}".rstrip()
            default = field.get_default(call_default_factory=True)
            shown = repr(default) if not isinstance(default, dict) else "{" + ", ".join(default) + "}"
            rows.append((key, shown, desc))
    return rows
