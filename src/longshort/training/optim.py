"""Optimizers, Lookahead, gradient clipping, gradient noise and learning-rate schedules.

Optimizers and schedules are chosen by name from small registries (:data:`OPTIMIZERS`, :data:`SCHEDULES`).
:class:`Lookahead` wraps any optimizer (Zhang et al. 2019), :class:`GradClipper` clips by global norm, by value,
by an adaptive (EMA) threshold or per LSTM gate, and :class:`GradNoise` adds annealed Gaussian noise to the
gradients (Neelakantan et al. 2015). Everything with state has ``state_dict()`` / ``load_state_dict()`` so a
resumed run continues exactly; every random draw comes from a ``torch.Generator`` passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from longshort.training.config import GradNoiseConfig as GradNoiseConfig
from longshort.training.config import LookaheadConfig as LookaheadConfig
from longshort.training.config import OptimConfig as OptimConfig
from longshort.training.config import ScheduleConfig as ScheduleConfig

# -- configuration ------------------------------------------------------------------------------------------


# -- optimizers ---------------------------------------------------------------------------------------------


def _adamw(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)


def _sgd(params: list[nn.Parameter], cfg: OptimConfig) -> Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], OptimConfig], Optimizer]] = {"adamw": _adamw, "sgd": _sgd}


class Lookahead(Optimizer):
    """Lookahead (Zhang et al. 2019) around any optimizer: every ``k`` inner steps,
    ``slow <- slow + alpha * (fast - slow)`` and ``fast <- slow``.

    It *is* the inner optimizer as far as schedulers and ``GradScaler`` are concerned: ``param_groups``,
    ``defaults`` and ``state`` are the inner optimizer's own objects (so a scheduler's lr or OneCycle's beta1
    reaches the inner optimizer). Slow weights start as copies of the parameters at construction.
    ``state_dict()`` holds the inner optimizer's state plus the slow weights and the inner-step counter, all of
    which ``load_state_dict`` restores. Like torch optimizers, ``state_dict()`` returns references, not copies.
    """

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"lookahead.k must be an integer >= 1, got {k!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"lookahead.alpha must be in (0, 1], got {alpha!r}")
        self.optimizer = optimizer
        self.k, self.alpha = k, float(alpha)
        self.inner_steps = 0
        self.slow: dict[Tensor, Tensor] = {}
        # Not Optimizer.__init__: that would build param groups of the wrapper's own, and the wrapper must share
        # the inner optimizer's. Optimizer.__setstate__ sets up what else the base class needs (its hook tables
        # and the profiled, hookable step) for whichever torch version runs.
        Optimizer.__setstate__(self, {})
        self._init_slow(p for g in self.param_groups for p in g["params"])

    # The inner optimizer's objects, looked up each time: Optimizer.load_state_dict replaces its param_groups list.
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    def __getstate__(self) -> dict[str, Any]:  # copy / pickle: the whole wrapper, not only the base's 3 keys
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        Optimizer.__setstate__(self, {})

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, {self.optimizer!r})"

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def _init_slow(self, params: Iterable[Tensor]) -> None:
        for p in params:
            self.slow[p] = p.detach().clone()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)
        self._init_slow(p for p in self.param_groups[-1]["params"] if p not in self.slow)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def sync(self) -> None:
        """Sync now (``slow <- slow + alpha * (fast - slow)``, ``fast <- slow``) and restart the k-step count."""
        self._sync()
        self.inner_steps = 0

    @torch.no_grad()
    def _sync(self) -> None:
        params = self._params()
        slow = [self.slow[p] for p in params]
        # Tensor-list ops (one kernel per list, not a Python loop per parameter), as torch's own optimizers use.
        torch._foreach_lerp_(slow, params, self.alpha)  # slow += alpha * (fast - slow)
        torch._foreach_copy_(params, slow)  # fast <- slow

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = self.optimizer.step(closure)  # type: ignore[arg-type]
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            self._sync()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "inner": self.optimizer.state_dict(),
            "lookahead": {
                "k": self.k,
                "alpha": self.alpha,
                "inner_steps": self.inner_steps,
                "slow": [self.slow[p] for p in self._params()],  # in parameter order, like the inner state
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore the inner optimizer, the slow weights and the step counter. A bare inner optimizer's state
        (a run saved without Lookahead) is accepted too: the slow weights then restart from the parameters."""
        params = self._params()
        if "lookahead" not in state_dict:
            self.optimizer.load_state_dict(state_dict)
            self.inner_steps = 0
            self._init_slow(params)
            return
        la = state_dict["lookahead"]
        slow = list(la["slow"])
        if len(slow) != len(params):
            raise ValueError(f"Lookahead state has {len(slow)} slow tensors but the optimizer has {len(params)} params")
        for i, (p, s) in enumerate(zip(params, slow, strict=True)):
            if s.shape != p.shape:
                raise ValueError(f"Lookahead slow tensor {i} has shape {tuple(s.shape)}, param {tuple(p.shape)}")
        self.optimizer.load_state_dict(state_dict["inner"])
        with torch.no_grad():
            for p, s in zip(params, slow, strict=True):
                self.slow[p].copy_(s)
        self.inner_steps = int(la["inner_steps"])


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> Optimizer:
    """The optimizer for ``model``'s trainable parameters, wrapped in :class:`Lookahead` when enabled."""
    opt = OPTIMIZERS[cfg.name]([p for p in model.parameters() if p.requires_grad], cfg)
    if cfg.lookahead.enabled:
        return Lookahead(opt, k=cfg.lookahead.k, alpha=cfg.lookahead.alpha)
    return opt


# -- gradient clipping --------------------------------------------------------------------------------------

_GATE_PREFIXES = ("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # nn.LSTMCell's (no layer suffix)
_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: coefficient threshold / (norm + eps)


def lstm_gate_params(model: nn.Module) -> list[nn.Parameter]:
    """LSTM weights and biases whose dim 0 stacks the 4 gates (i, f, g, o): parameters named ``weight_ih_l*``,
    ``weight_hh_l*``, ``bias_ih_l*``, ``bias_hh_l*`` (``nn.LSTM``'s and ``longshort.nn.lstm.LSTM``'s names), and
    an ``nn.LSTMCell``'s ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (the seq2seq decoder's cell)."""
    out: list[nn.Parameter] = []
    for module in model.modules():
        cell = isinstance(module, nn.LSTMCell)
        for name, p in module.named_parameters(recurse=False):
            named = name.startswith(_GATE_PREFIXES) or (cell and name in _CELL_NAMES)
            if named and p.ndim >= 1 and p.shape[0] % 4 == 0:
                out.append(p)
    return out


class GradClipper:
    """Gradient clipping by ``OptimConfig.clip_mode``. Mode, threshold and EMA rate are read from ``cfg`` at each
    call (so later changes to the config take effect); assigning ``threshold`` overrides ``cfg.grad_clip`` (the
    trainer's phases do), ``None`` turns clipping off."""

    def __init__(self, cfg: OptimConfig) -> None:
        self.cfg = cfg
        self._threshold: float | None = cfg.grad_clip
        self._overridden = False
        self.ema: float | None = None  # adaptive: threshold_(t-1); None until the first clipped step
        # per_gate_adaptive: the running gradient norm of each gate block, [4] per gate parameter (in
        # lstm_gate_params order); empty until the first clipped step
        self.gate_ema: list[Tensor] = []

    @property
    def threshold(self) -> float | None:
        return self._threshold if self._overridden else self.cfg.grad_clip

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"grad_clip threshold must be > 0 or None, got {value!r}")
        self._threshold, self._overridden = value, True

    @torch.no_grad()
    def clip(self, model: nn.Module) -> float:
        """Clip ``model``'s gradients in place; returns the global gradient norm before clipping."""
        params = [p for p in model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        threshold, mode = self.threshold, self.cfg.clip_mode
        if threshold is None or not params:
            return float(nn.utils.get_total_norm(grads))
        if mode == "norm":
            return float(nn.utils.clip_grad_norm_(params, threshold))
        total = nn.utils.get_total_norm(grads)
        if mode == "value":
            nn.utils.clip_grad_value_(params, threshold)
        elif mode == "adaptive":
            a = self.cfg.clip_ema
            self.ema = a * (threshold if self.ema is None else self.ema) + (1 - a) * float(total)
            nn.utils.clip_grads_with_norm_(params, self.ema, total)
        else:
            self._clip_per_gate(model, params, threshold, adaptive=mode == "per_gate_adaptive")
        return float(total)

    def _clip_per_gate(self, model: nn.Module, params: list[nn.Parameter], threshold: float,
                       adaptive: bool = False) -> None:
        gate_list = lstm_gate_params(model)
        gates = {id(p): i for i, p in enumerate(gate_list)}
        if adaptive and len(self.gate_ema) != len(gate_list):
            self.gate_ema = [torch.full((4,), float("nan"), device=p.device) for p in gate_list]
        a, factor = self.cfg.clip_ema, self.cfg.gate_clip_factor
        for p in params:  # a loop over parameters (their shapes differ), each handled by whole-tensor ops
            if id(p) not in gates:
                continue
            g = p.grad.unflatten(0, (4, -1))  # [4, H, ...]: a view, so scaling it scales p.grad
            norms = torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)))  # [4]: one per gate
            if adaptive:  # this gate's own statistics: factor x the EMA of its past (clipped) norms
                ema = self.gate_ema[gates[id(p)]].to(norms.device)
                ema = torch.where(torch.isnan(ema), norms, ema)  # the first step: its own norm
                limit = factor * ema
                clipped = torch.minimum(norms, limit)
                self.gate_ema[gates[id(p)]] = a * ema + (1 - a) * clipped
            else:
                limit = torch.full_like(norms, threshold)
            g.mul_((limit / (norms + _EPS)).clamp(max=1.0).view(4, *([1] * (g.ndim - 1))))
        rest = [p for p in params if id(p) not in gates]
        if rest:
            nn.utils.clip_grad_norm_(rest, threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "gate_ema": [e.tolist() for e in self.gate_ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state["ema"]
        self.ema = None if ema is None else float(ema)
        self.gate_ema = [torch.tensor(e, dtype=torch.float32) for e in state.get("gate_ema", [])]


# -- gradient noise -----------------------------------------------------------------------------------------


class GradNoise:
    """Gaussian gradient noise N(0, sigma_t^2), sigma_t^2 = std^2 / (1 + t)^anneal, t = noisy steps so far."""

    def __init__(self, cfg: GradNoiseConfig) -> None:
        self.cfg = cfg  # read at each call, so later changes to the config take effect
        self.t = 0

    def sigma(self, t: int | None = None) -> float:
        """sigma_t (the current one by default)."""
        t = self.t if t is None else t
        return self.cfg.std / (1 + t) ** (self.cfg.anneal / 2)

    @torch.no_grad()
    def apply(self, model_or_params: nn.Module | Iterable[Tensor], epoch: int, generator: torch.Generator) -> float:
        """Add noise to every gradient when ``epoch >= start_epoch`` and ``std > 0``; returns sigma_t (0 = none).
        The noise is drawn on the generator's device in one call and moved to each gradient's device, so a seed
        gives the same noise on every device."""
        if self.cfg.std <= 0 or epoch < self.cfg.start_epoch:
            return 0.0
        params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
        grads = [p.grad for p in params if p.grad is not None]
        sigma = self.sigma()
        self.t += 1
        if not grads:
            return sigma
        noise = torch.randn(sum(g.numel() for g in grads), generator=generator, device=generator.device)
        for g, n in zip(grads, noise.split([g.numel() for g in grads]), strict=True):
            g.add_(n.view_as(g).to(g.device, g.dtype), alpha=sigma)
        return sigma

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])


# -- schedules ----------------------------------------------------------------------------------------------


def _onecycle(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    # One step more than the run takes: OneCycleLR's cosine would turn back up on its very last step.
    total = max(total_steps + 1, 4)
    # Warm-up as a whole number of steps, so the peak is reached exactly; at least two, since OneCycleLR
    # divides by (warm-up steps - 1) and tiny runs would otherwise raise ZeroDivisionError.
    warm = min(max(round(cfg.pct_start * total_steps), 2), total // 2)
    pct = warm / total
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=cfg.max_lr,
        total_steps=total,
        pct_start=pct,
        anneal_strategy=cfg.anneal,
        cycle_momentum=cfg.cycle_momentum,
        # Start at optim.lr. (The seed kept torch's default div_factor=25, i.e. started at max_lr/25 = 4e-5 and
        # ignored its optimizer's 1e-4; here optim.lr means what it says.)
        div_factor=cfg.max_lr / base_lr,
    )


def _constant(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _cosine(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1), eta_min=cfg.min_lr)


def _cosine_restarts(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=cfg.restart_period, T_mult=cfg.restart_mult, eta_min=cfg.min_lr
    )


def _exponential(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)


def _step(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


SCHEDULES: dict[str, Callable[[Optimizer, ScheduleConfig, int, float], LRScheduler]] = {
    "onecycle": _onecycle,
    "constant": _constant,
    "cosine": _cosine,
    "cosine_restarts": _cosine_restarts,
    "exponential": _exponential,
    "step": _step,
}


def build_schedule(opt: Optimizer, cfg: ScheduleConfig, total_steps: int, base_lr: float) -> LRScheduler:
    """The schedule over ``total_steps`` intervals (batches or epochs, ``cfg.interval``), stepped once per interval
    after ``opt.step()``. With ``cfg.warmup`` > 0 a linear warm-up from ``warmup_start * lr`` takes the first
    ``warmup`` intervals and the schedule proper starts at its own t=0 after them, over the remaining intervals."""
    if total_steps < 1:
        raise ValueError(f"a schedule needs total_steps >= 1, got {total_steps}")
    if cfg.name in ("cosine", "cosine_restarts") and cfg.min_lr >= base_lr:
        raise ValueError(f"schedule.min_lr={cfg.min_lr} must be below the learning rate {base_lr}")
    if cfg.warmup == 0:
        return SCHEDULES[cfg.name](opt, cfg, total_steps, base_lr)
    if cfg.warmup >= total_steps:
        raise ValueError(f"schedule.warmup={cfg.warmup} must be smaller than the run's {total_steps} schedule steps")
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start, end_factor=1.0,
                                             total_iters=cfg.warmup)
    main = SCHEDULES[cfg.name](opt, cfg, total_steps - cfg.warmup, base_lr)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[cfg.warmup])


def scale_learning_rate(opt: Optimizer, schedule: LRScheduler, factor: float) -> None:
    """Multiply the learning rate by ``factor`` from now on, under any of :data:`SCHEDULES` (with warm-up too).

    Schedules keep the rate in different places: recursive ones (exponential, step, cosine's chainable form) read
    the group's current ``lr``; closed-form ones read their ``base_lrs``; OneCycle reads ``initial_lr``, ``max_lr``
    and ``min_lr`` from the group. Scaling all of them keeps every schedule's shape, at ``factor`` times the rate.
    """
    for group in opt.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if isinstance(group.get(key), float | int):
                group[key] = group[key] * factor
    scheds = [schedule, *getattr(schedule, "_schedulers", [])]  # SequentialLR's parts (warm-up, main)
    for s in scheds:
        if hasattr(s, "base_lrs"):
            s.base_lrs = [lr * factor for lr in s.base_lrs]
        if hasattr(s, "_last_lr"):
            s._last_lr = [float(g["lr"]) for g in opt.param_groups]
