"""Every key of the config tree, for every task: a key the task does not read is refused; every other key is read.

Refused: set to a value other than its default, a key whose section or field declares other tasks (``TASKS`` /
``json_schema_extra``, see :func:`longshort.config.unread_keys`) fails validation with a message naming it.

Read: the other keys are read by the task's code. A few short real runs, with every access to a config field
recorded (outside the config machinery itself), must read each of them: the default run reads most; a key read
only when a feature is on is listed in ``WHEN`` with the overrides that turn it on, and that run must read it.
Keys only another command or another input reads are listed in ``ELSEWHERE`` with the test that covers them.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterator
from os import sep
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from longshort.config import Config, _tasks_of, apply_overrides, config_keys, validate
from longshort.errors import ConfigError

TASKS = ("classify", "regress", "seq2seq", "forecast")

TINY: dict[str, list[str]] = {
    "classify": ["data.builtin.n=96", "data.builtin.length=12", "model.hidden_dim=8", "model.num_heads=2",
                 "model.num_lstm_layers=2", "model.conv_dilations=[1]", "train.epochs=2", "train.batch_size=32",
                 "train.progress=off", "diagnostics.analysis=false", "diagnostics.report=false",
                 "train.selection=val"],
    "regress": ["task=regress", "data.builtin.n=96", "data.builtin.length=12", "model.hidden_dim=8",
                "model.num_heads=2", "model.num_lstm_layers=2", "model.conv_dilations=[1]", "train.epochs=2",
                "train.batch_size=32", "train.progress=off", "diagnostics.report=false", "train.selection=val"],
    "seq2seq": ["task=seq2seq", "data.builtin.n=60", "seq2seq.model.emb_dim=8", "seq2seq.model.hidden_dim=8",
                "train.epochs=2", "train.batch_size=16", "train.progress=off", "diagnostics.report=false"],
    "forecast": ["task=forecast", "data.builtin.n=30", "data.builtin.length=40", "forecast.horizon=3",
                 "forecast.model.hidden_dim=8", "forecast.model.layers=1", "train.epochs=2", "train.batch_size=32",
                 "train.progress=off", "diagnostics.report=false"],
}

# what every sequence task (classify, regress) reads only when a feature is on
SEQUENCE_WHEN: dict[str, list[str]] = {
    "train.augment.": ["train.augment.time_shift.prob=1", "train.augment.time_warp.prob=1",
                       "train.augment.window_slice.prob=1", "train.augment.noise.prob=1",
                       "train.augment.magnitude_warp.prob=1"],  # regress has none on by default
    "train.optim.lookahead.": ["train.optim.lookahead.enabled=true"],
    "train.optim.grad_noise.": ["train.optim.grad_noise.std=0.01"],
    "train.optim.momentum": ["train.optim.name=sgd"],
    "train.optim.nesterov": ["train.optim.name=sgd"],
    "train.optim.clip_ema": ["train.optim.clip_mode=adaptive"],
    "train.optim.gate_clip_factor": ["train.optim.clip_mode=per_gate_adaptive"],
    "train.curriculum.growth": ["train.curriculum.kind=length"],
    "train.curriculum.start_length": ["train.curriculum.kind=length"],
    "train.curriculum.rate": ["train.curriculum.kind=length"],
    "train.curriculum.mode": ["train.curriculum.kind=length"],
    "train.curriculum.beta": ["train.curriculum.kind=length", "train.curriculum.growth=exp"],
    "train.curriculum.tau": ["train.curriculum.kind=length", "train.curriculum.growth=exp"],
    "train.early_stopping.": ["train.epochs=3"],
    "train.schedule.warmup_start": ["train.schedule.name=cosine", "train.schedule.warmup=2"],
    "train.schedule.min_lr": ["train.schedule.name=cosine"],
    "train.schedule.restart_": ["train.schedule.name=cosine_restarts"],
    "train.schedule.step_size": ["train.schedule.name=step"],
    "train.schedule.gamma": ["train.schedule.name=step"],
    "train.steps": ["train.steps=4"],
    "model.attention_dropout": ["model.attention_every=1"],
    "diagnostics.histograms": ["train.tensorboard=true"],
}

# key prefix -> the overrides under which the train run reads it (one tracked run each)
WHEN: dict[str, dict[str, list[str]]] = {
    "classify": SEQUENCE_WHEN | {
        "train.mixup.": ["train.mixup.prob=1.0", "train.mixup.start_epoch=1"],
        "train.loss.focal_": ["train.loss.name=focal"],
        "train.tasks.tau": ["train.tasks.weighting=performance"],
        "train.curriculum.score": ["train.curriculum.kind=difficulty", "train.epochs=3"],
        "train.curriculum.stage": ["train.curriculum.kind=difficulty", "train.epochs=3"],
        "train.curriculum.final_stage": ["train.curriculum.kind=difficulty", "train.epochs=3"],
        "train.curriculum.p0": ["train.curriculum.kind=adaptive", "train.epochs=3"],
        "train.curriculum.alpha": ["train.curriculum.kind=adaptive", "train.epochs=3"],
        "train.curriculum.hard_fraction": ["train.curriculum.kind=adaptive", "train.epochs=3"],
        "diagnostics.analysis_batches": ["diagnostics.analysis=true"],
    },
    "regress": SEQUENCE_WHEN,
    "seq2seq": {
        "seq2seq.sampling.": ["seq2seq.sampling.schedule=inverse_sigmoid"],
        "seq2seq.sampling.slope": ["seq2seq.sampling.schedule=linear_with_floor"],
        "seq2seq.sampling.floor": ["seq2seq.sampling.schedule=linear_with_floor"],
        "seq2seq.sampling.start": ["seq2seq.sampling.schedule=linear_with_floor"],
        "seq2seq.sampling.gamma": ["seq2seq.sampling.schedule=exponential"],
        "seq2seq.loss.focal_alpha": ["seq2seq.loss.focal_gamma=1.0"],
        "seq2seq.loss.time_": ["seq2seq.loss.focal_gamma=1.0", "seq2seq.loss.time_weighting=exp"],
        "seq2seq.loss.coverage_weight": ["seq2seq.model.attention.coverage=true"],
        "seq2seq.objective.": ["seq2seq.objective.kind=mrt", "seq2seq.objective.start_epoch=1"],
        "seq2seq.objective.baseline": ["seq2seq.objective.kind=reinforce"],
        "seq2seq.decode.length_penalty": ["seq2seq.decode.beam_size=2"],
        "diagnostics.analysis_batches": ["diagnostics.analysis=true"],
        "seq2seq.model.attention.window": ["seq2seq.model.attention.kind=local_monotonic"],
        "seq2seq.model.attention.sigma": ["seq2seq.model.attention.kind=local_monotonic"],
        "seq2seq.model.cell.": ["seq2seq.model.cell.zoneout=0.1", "seq2seq.model.cell.dropout_decay=0.1"],
        "seq2seq.model.hierarchical": ["seq2seq.model.enc_layers=2"],
        "train.optim.lookahead.": ["train.optim.lookahead.enabled=true"],
        "train.optim.grad_noise.": ["train.optim.grad_noise.std=0.01"],
        "train.optim.momentum": ["train.optim.name=sgd"],
        "train.optim.nesterov": ["train.optim.name=sgd"],
        "train.optim.clip_ema": ["train.optim.clip_mode=adaptive"],
        "train.optim.gate_clip_factor": ["train.optim.clip_mode=per_gate_adaptive"],
        "train.curriculum.": ["train.curriculum.kind=length", "train.curriculum.growth=exp"],
        "train.curriculum.rate": ["train.curriculum.kind=length"],
        "train.curriculum.score": ["train.curriculum.kind=difficulty", "train.epochs=3"],
        "train.curriculum.stage": ["train.curriculum.kind=difficulty", "train.epochs=3"],
        "train.curriculum.final_stage": ["train.curriculum.kind=difficulty", "train.epochs=3"],
        "train.early_stopping.": ["train.epochs=3"],
        "train.schedule.warmup_start": ["train.schedule.name=cosine", "train.schedule.warmup=2"],
        "train.schedule.min_lr": ["train.schedule.name=cosine"],
        "train.schedule.restart_": ["train.schedule.name=cosine_restarts"],
        "train.schedule.step_size": ["train.schedule.name=step"],
        "train.schedule.gamma": ["train.schedule.name=step"],
        "diagnostics.histograms": ["train.tensorboard=true"],
    },
}

WHEN["forecast"] = {
    "forecast.sampling.": ["forecast.model.decoder=autoregressive", "forecast.sampling.schedule=inverse_sigmoid"],
    "forecast.sampling.slope": ["forecast.model.decoder=autoregressive",
                                "forecast.sampling.schedule=linear_with_floor"],
    "forecast.sampling.floor": ["forecast.model.decoder=autoregressive",
                                "forecast.sampling.schedule=linear_with_floor"],
    "forecast.sampling.start": ["forecast.model.decoder=autoregressive",
                                "forecast.sampling.schedule=linear_with_floor"],
    "forecast.sampling.gamma": ["forecast.model.decoder=autoregressive", "forecast.sampling.schedule=exponential"],
    "forecast.exposure_gap": ["forecast.model.decoder=autoregressive", "forecast.sampling.schedule=exponential"],
    "forecast.horizon_curriculum": ["forecast.model.decoder=autoregressive", "forecast.horizon_curriculum=0.5"],
    "forecast.samples": ["forecast.model.decoder=autoregressive", "forecast.sampling.schedule=exponential"],
    "forecast.quantiles": ["forecast.loss=quantile"],
    "forecast.model.attention.": ["forecast.model.attend=true", "forecast.model.decoder=autoregressive"],
    "forecast.model.attention.window": ["forecast.model.attend=true", "forecast.model.attention.kind=local_monotonic"],
    "forecast.model.attention.sigma": ["forecast.model.attend=true", "forecast.model.attention.kind=local_monotonic"],
    "forecast.model.cell.": ["forecast.model.cell.zoneout=0.1", "forecast.model.cell.dropout_decay=0.1"],
    "forecast.model.stack.": ["forecast.model.layers=2", "forecast.model.stack.skip=residual"],
    "train.optim.lookahead.": ["train.optim.lookahead.enabled=true"],
    "train.optim.grad_noise.": ["train.optim.grad_noise.std=0.01"],
    "train.optim.momentum": ["train.optim.name=sgd"],
    "train.optim.nesterov": ["train.optim.name=sgd"],
    "train.optim.clip_ema": ["train.optim.clip_mode=adaptive"],
    "train.optim.gate_clip_factor": ["train.optim.clip_mode=per_gate_adaptive"],
    "train.early_stopping.": ["train.epochs=3"],
    "train.schedule.warmup_start": ["train.schedule.name=cosine", "train.schedule.warmup=2"],
    "train.schedule.min_lr": ["train.schedule.name=cosine"],
    "train.schedule.restart_": ["train.schedule.name=cosine_restarts"],
    "train.schedule.step_size": ["train.schedule.name=step"],
    "train.schedule.gamma": ["train.schedule.name=step"],
    "diagnostics.histograms": ["train.tensorboard=true"],
}

# key prefix -> who reads it when not `longshort train` on a built-in set (and the test that shows it)
ELSEWHERE: dict[str, str] = {
    "cv.": "longshort cv (tests/evaluate/test_validation.py)",
    "tune.": "longshort tune (tests/test_tune.py)",
    "train.mlflow.": "a run with train.mlflow.uri set (tests/training/test_mlflow.py)",
    "distributed.": "under torchrun (tests/training/test_distributed.py, tests/e2e/test_distributed_cli.py)",
    "diagnostics.anomaly.": "on a gradient spike or a non-finite loss (tests/diagnostics/test_monitor.py)",
    "data.format": "reading a file (tests/data/test_sources.py)",
    "data.layout": "reading a file (tests/data/test_sources.py)",
    "data.long.": "reading a long-format file (tests/data/test_sources.py)",
    "data.series.": "reading a continuous series (tests/data/test_windows.py)",
    "data.split.gap": "splitting a continuous series (tests/data/test_windows.py)",
    "data.test_source": "--test-data (tests/e2e/test_cli_train.py)",
    "data.pairs.": "reading a pairs file (tests/data/test_pairs.py)",
    "train.device": "read when not cpu-only (tests/training/test_trainer.py)",
    "train.recipe": "by the config itself: the recipe's values are laid under train.* (tests/training/test_toolbox.py)",
    "train.phase_preset": "by the config itself: the preset's phases (tests/training/test_toolbox.py)",
    "train.curriculum.scorer": "a scorer run directory (tests/training/test_curriculum.py)",
    "train.checkpoint_every": "read with a positive value (tests/e2e/test_resume.py)",
    "model.size": "by sizing.resolve before the run (tests/test_sizing.py)",
    "train.threads": "read with a value (tests/test_tune.py)",
    "seq2seq.model.bridge": "read when the decoder starts (tests/nn/test_seq2seq.py)",
    "data.builtin.digits": "the built-in addition set (tests/data/test_pairs.py)",
    "forecast.target": "reading a table (tests/training/test_forecast.py)",
    "forecast.past_covariates": "reading a table (tests/training/test_forecast.py)",
    "forecast.known_future": "reading a table (tests/training/test_forecast.py)",
    "forecast.calendar": "reading a table (tests/training/test_forecast.py)",
    "forecast.id_column": "reading a table (tests/training/test_forecast.py)",
    "forecast.time_column": "reading a table (tests/training/test_forecast.py)",
}


def _sections(model: type[BaseModel], acc: set[type[BaseModel]] | None = None) -> set[type[BaseModel]]:
    acc = set() if acc is None else acc
    acc.add(model)
    for f in model.model_fields.values():
        for a in (f.annotation, *typing.get_args(f.annotation)):
            if isinstance(a, type) and issubclass(a, BaseModel) and a not in acc:
                _sections(a, acc)
    return acc


def _path(key: str) -> list[tuple[type[BaseModel], str]]:
    """(section class, field name) along ``key``."""
    out, model = [], Config
    for part in key.split("."):
        out.append((model, part))
        ann = model.model_fields[part].annotation
        sub = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sub:
            break
        model = sub[0]
    return out


def _refused_for(key: str, task: str) -> bool:
    return any((t := _tasks_of(cls, name)) is not None and task not in t for cls, name in _path(key))


def _leaf_field(key: str) -> Any:
    cls, name = _path(key)[-1]
    return cls.model_fields[name]


def _other_value(key: str) -> Any:
    """A valid value of ``key`` other than its default."""
    field = _leaf_field(key)
    default: Any = Config()  # the value in the default tree (a section's own default may differ from its class's)
    for part in key.split("."):
        default = getattr(default, part)
    ann = field.annotation
    union = typing.get_origin(ann) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(ann) if a is not type(None)] if union else [ann]
    lits = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    if lits:
        return next(v for v in lits if v != default)
    low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
    gt = next((m.gt for m in field.metadata if getattr(m, "gt", None) is not None), None)
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    lt = next((m.lt for m in field.metadata if getattr(m, "lt", None) is not None), None)
    kind = args[0]
    if kind is bool:
        return not default
    if kind is int:  # candidates: the first one the key's own checks accept is used
        d = default if default is not None else (low or 1)
        ok = [v for v in (d * 2, d + 2, d + 1, d - 1) if v != default and (low is None or v >= low)
              and (high is None or v <= high) and (lt is None or v < lt) and (gt is None or v > gt)]
        return _Candidates(ok)
    if kind is float:
        base = default if default is not None else (low if low is not None else (gt or 0.0) + 0.1)
        v = base / 2 if base else 0.05
        if (low is not None and v < low) or (gt is not None and v <= gt):
            v = base + 0.05
        return v if v != default else v + 0.01
    if kind is str:
        return "other"
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        if typing.get_origin(item) is Literal:
            return [typing.get_args(item)[0]]
        return ["other"] if item is str else [0.25] if item is float else [2]
    if typing.get_origin(kind) is tuple:
        return [0.8, 0.95]
    if typing.get_origin(kind) is dict:
        return {}
    raise AssertionError(f"no test value for {key} ({ann})")


class _Candidates(list):  # type: ignore[type-arg]
    """Several values to try, in order."""


def _validate(task: str, key: str) -> str:
    """The validation error of ``key`` set to another value under ``task`` ("" when valid): the first candidate
    value that is valid or refused as unread (not one the key's own checks reject)."""
    value = _other_value(key)
    error = ""
    for v in value if isinstance(value, _Candidates) else [value]:
        try:
            validate(_raw(task, key, v))
            return ""
        except ConfigError as exc:
            error = str(exc)
            if "does not read" in error:
                return error
    return error


def _raw(task: str, key: str, value: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": task}
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return raw


LEAVES = [k for k, _, _ in config_keys() if k != "task"]


@pytest.mark.parametrize("task", TASKS)
def test_every_key_the_task_does_not_read_is_refused_naming_it(task: str) -> None:
    refused, accepted = 0, 0
    for key in LEAVES:
        error = _validate(task, key)
        if _refused_for(key, task):
            assert f"does not read {key}" in error or f", {key}" in error, (key, error)
            refused += 1
        else:
            assert "does not read" not in error, (key, error)
            accepted += 1
    assert refused > 20 and accepted > 100  # both kinds are exercised (236 keys today)


class _Reads:
    """Records (section class, field) of every config field read outside the config machinery."""

    def __init__(self) -> None:
        self.seen: set[tuple[type, str]] = set()

    @staticmethod
    def _machinery(code: Any) -> bool:
        """The config's own reading: longshort/config.py, pydantic, and the leaves' validators (private
        functions); a leaf's public method (``resolved_phases``, ``teacher_forcing``) reads for its caller."""
        name = code.co_filename
        if name.endswith(f"longshort{sep}config.py") or f"{sep}pydantic{sep}" in name:
            return True
        return name.endswith(("config.py", "recipes.py")) and code.co_name.startswith("_")

    def __enter__(self) -> _Reads:
        self.saved = {}
        for cls in _sections(Config):
            orig = cls.__getattribute__
            self.saved[cls] = cls.__dict__.get("__getattribute__")

            def getattribute(obj: Any, name: str, _orig: Any = orig, _seen: set = self.seen) -> Any:
                fields = type(obj).model_fields
                if name in fields and not _Reads._machinery(sys._getframe(1).f_code):
                    _seen.add((type(obj), name))
                return _orig(obj, name)

            cls.__getattribute__ = getattribute  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, orig in self.saved.items():
            if orig is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = orig  # type: ignore[method-assign]


def _runs(task: str) -> Iterator[tuple[str, list[str]]]:
    yield "defaults", []
    groups: dict[tuple[str, ...], list[str]] = {}
    for prefix, overrides in WHEN[task].items():
        groups.setdefault(tuple(overrides), []).append(prefix)
    for overrides, prefixes in groups.items():
        yield ",".join(prefixes), list(overrides)


@pytest.mark.parametrize("task", TASKS)
def test_every_other_key_is_read_by_a_run_of_the_task(task: str, tmp_path: Path) -> None:
    from longshort.run import train

    reads = _Reads()
    seen_by: dict[str, set[tuple[type, str]]] = {}
    for i, (name, overrides) in enumerate(_runs(task)):
        cfg = validate(apply_overrides({}, [*TINY[task], *overrides]))
        with _Reads() as r:
            train(cfg, out=tmp_path / f"run-{i}")
        seen_by[name] = r.seen
        reads.seen |= r.seen
    missing = []
    for key in LEAVES:
        if _refused_for(key, task) or any(key.startswith(p) for p in ELSEWHERE):
            continue
        cls, field = _path(key)[-1]
        if (cls, field) not in reads.seen:
            missing.append(key)
    assert not missing, f"task {task}: keys neither refused nor read by any run: {missing}"
    for prefix in WHEN[task]:  # each condition's run reads what it claims to
        keys = [k for k in LEAVES if k.startswith(prefix) and not _refused_for(k, task)]
        assert keys, f"WHEN entry {prefix} matches no key"
        run = next(n for n in seen_by if prefix in n.split(","))
        assert any(_path(k)[-1] in seen_by[run] for k in keys), (prefix, run)
