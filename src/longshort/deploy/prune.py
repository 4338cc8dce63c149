"""Magnitude pruning of a trained run: ``longshort prune RUN_DIR`` writes a sparser copy of the run.

What is pruned: every weight matrix of the classifier, i.e. ``nn.Linear.weight`` (input projection, heads,
attention output projections, highway gates), ``nn.Conv1d.weight``, attention's packed q/k/v projection
``in_proj_weight`` and each LSTM block's ``weight_ih_l*`` / ``weight_hh_l*``. Biases, LayerNorm gains and layer
norm parameters of the cells are left alone: they are few, and zeroing a gain silences a whole unit. Layers
under a parametrization (``model.spectral_norm``) are skipped, since their ``weight`` is computed, not stored.

How (``torch.nn.utils.prune``):

- unstructured (default): L1 magnitude per tensor, so each matrix loses exactly ``amount`` of its entries and
  no layer is thinned more than asked. The matrices live at different scales (the LSTM's uniform(+-1/sqrt(H))
  init, the convolutions' 1/sqrt(fan_in * kernel)), and one global threshold piles the zeros on the
  smallest-scale ones (on Japanese Vowels at 0.2: convolutions 33%, input projection 11%).
  ``scope="global"`` (``prune.global_unstructured``) is there to compare; on that one run it kept more
  accuracy (0.843 against 0.822, test n=370), so try both.
- structured: ``prune.ln_structured`` (L1 norm, ``dim=0``) per tensor, zeroing whole output rows of Linear /
  LSTM gate matrices and whole output channels of convolutions. The two output layers (class logits, aux
  value) are left out here: a zeroed output row there would delete a class.

Fine-tuning (``finetune_epochs > 0``) keeps prune's masks on while the project's one :class:`Trainer` runs on the
run's training split (its train config, at a tenth of its peak learning rate, constant): the forward sees
``weight_orig * mask``, so the pruned entries get no gradient and stay zero. Then ``prune.remove`` makes it
permanent: plain parameters, plain state dict, a run directory that ``longshort.load`` and ``longshort evaluate``
read like any other. ``prune.json`` there holds the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.utils.hooks import RemovableHandle

from longshort.data.batching import to_tensors
from longshort.data.pipeline import prepare
from longshort.data.types import SequenceData
from longshort.errors import LongshortError, RunDirError
from longshort.evaluate.metrics import classification_metrics
from longshort.evaluate.predict import batched_proba
from longshort.nn.classifier import SequenceClassifier
from longshort.nn.lstm import LSTM
from longshort.training.checkpoint import save_weights
from longshort.training.classify import classifier_trainer

__all__ = ["Pruning", "prunable_weights", "prune_command", "prune_model", "prune_run",
           "sparsity"]

Target = tuple[nn.Module, str]  # (module, parameter name)


def prunable_weights(model: nn.Module, structured: bool = False) -> list[Target]:
    """The weight matrices pruning touches (see the module docstring), in module order."""
    skip: set[int] = set()
    if structured and isinstance(model, SequenceClassifier):
        skip = {id(model.head[-1]), id(model.aux_head[-1])}  # output rows are classes / the aux value
    out: list[Target] = []
    for module in model.modules():
        if id(module) in skip or parametrize.is_parametrized(module):
            continue
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            out.append((module, "weight"))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            out.append((module, "in_proj_weight"))
        elif isinstance(module, LSTM):
            out += [(module, n) for n, _ in module.named_parameters(recurse=False)
                    if n.startswith(("weight_ih_l", "weight_hh_l"))]
    return out


@dataclass
class Pruning:
    """Masks attached by :func:`prune_model`, until :meth:`make_permanent` folds them in."""

    targets: list[Target]
    hooks: list[RemovableHandle] = field(default_factory=list)

    def make_permanent(self) -> None:
        """Fold each mask into its weight (``prune.remove``): plain parameters again, zeros where pruned."""
        for h in self.hooks:
            h.remove()
        for module, name in self.targets:
            prune.remove(module, name)
        self.hooks, self.targets = [], []


def prune_model(model: nn.Module, amount: float = 0.2, structured: bool = False,
                scope: Literal["layer", "global"] = "layer") -> Pruning:
    """Attach prune's masks to ``model`` (each weight reparametrised as ``name_orig * name_mask``, recomputed
    at every forward); call :meth:`Pruning.make_permanent` after any fine-tuning."""
    if not 0 <= amount < 1:
        raise LongshortError(f"--amount must be in [0, 1), got {amount}")
    if structured and scope == "global":
        raise LongshortError("structured pruning is per tensor only (torch has no global ln_structured)")
    targets = prunable_weights(model, structured)
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for module, name in targets:
            if structured:
                prune.ln_structured(module, name, amount=amount, n=1, dim=0)
            else:
                prune.l1_unstructured(module, name, amount=amount)
    return Pruning(targets, _refresh_out_projections(model, {id(m) for m, _ in targets}))


def _refresh_out_projections(model: nn.Module, pruned: set[int]) -> list[RemovableHandle]:
    """prune recomputes ``weight`` in the pruned module's forward pre-hook, but ``nn.MultiheadAttention`` reads
    ``out_proj.weight`` without calling ``out_proj``: left alone, every step would reuse the one product made at
    pruning time (a stale autograd graph, and fine-tuned ``weight_orig`` never seen). Run out_proj's prune
    hooks from the attention module's own pre-hook instead."""
    handles = []
    for mha in model.modules():
        if isinstance(mha, nn.MultiheadAttention) and id(mha.out_proj) in pruned:
            child = mha.out_proj
            methods = [h for h in child._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]

            def refresh(_m: nn.Module, _inputs: Any, child: nn.Module = child,
                        methods: list[prune.BasePruningMethod] = methods) -> None:
                for method in methods:
                    method(child, None)

            handles.append(mha.register_forward_pre_hook(refresh))
    return handles


def sparsity(targets: list[Target], model: nn.Module) -> dict[str, Any]:
    """Fractions of exact zeros: over the pruned matrices, over every parameter, and per matrix."""
    names = {id(m): n for n, m in model.named_modules()}
    per: dict[str, float] = {}
    zeros = total = 0
    for module, name in targets:
        w = getattr(module, name)
        z, n = int((w == 0).sum()), w.numel()
        zeros, total = zeros + z, total + n
        per[f"{names[id(module)]}.{name}"] = z / n
    params = list(model.parameters())
    all_zeros = sum(int((p == 0).sum()) for p in params)
    n_params = sum(p.numel() for p in params)
    return {"pruned_matrices": zeros / max(total, 1), "all_parameters": all_zeros / max(n_params, 1),
            "pruned_matrix_weights": total, "per_matrix": per}


def _metrics(model: nn.Module, data: SequenceData, class_names: list[str], batch_size: int) -> dict[str, Any]:
    assert data.y is not None
    proba = batched_proba(model, to_tensors(data), batch_size).numpy()
    return classification_metrics(data.y, proba, class_names)


def _finetune(run: Any, splits: Any, epochs: int) -> None:
    """``epochs`` of the run's own training loop (its train config, at a tenth of its peak learning rate,
    constant, no phases), masks on; checkpoints go to a temporary directory, not into the pruned run."""
    t = run.config.train
    peak = t.schedule.max_lr if t.schedule.name == "onecycle" else t.optim.lr
    cfg = t.model_copy(update={
        "epochs": epochs, "phases": [], "phase_preset": "none", "checkpoint_every": 0, "tensorboard": False,
        "progress": "off", "optim": t.optim.model_copy(update={"lr": peak / 10}),
        "schedule": t.schedule.model_copy(update={"name": "constant", "warmup": 0}),
    })
    torch.manual_seed(run.config.seed)
    with tempfile.TemporaryDirectory(prefix="longshort-prune-") as tmp:
        trainer = classifier_trainer(cfg, run.model, to_tensors(splits.train),
                                     None if splits.val is None else to_tensors(splits.val),
                                     num_classes=len(splits.prep.class_names), seed=run.config.seed,
                                     run_dir=Path(tmp))
        trainer.fit()
    run.model.eval()


def prune_run(run_dir: str | Path, amount: float = 0.2, structured: bool = False, finetune_epochs: int = 0,
              out: str | Path | None = None, scope: Literal["layer", "global"] = "layer") -> dict[str, Any]:
    """Prune the run in ``run_dir``, optionally fine-tune, and write the result to ``out`` (default
    ``RUN_DIR-pruned``); returns what ``prune.json`` holds (accuracy before and after, sparsity)."""
    from longshort.runs import Run

    src = Path(run_dir)
    dst = Path(out) if out is not None else src.with_name(src.name + "-pruned")
    if dst.resolve() == src.resolve():
        raise RunDirError("--out must differ from the run directory (the original run is kept)")
    if (dst / "config.yaml").exists():
        raise RunDirError(f"{dst} already holds a run: choose another --out")
    if finetune_epochs < 0:
        raise LongshortError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    run = Run.load(src)
    cfg = run.config
    if cfg.task != "classify":
        raise LongshortError(f"{src} is a {cfg.task} run: longshort prune covers classifier runs (task classify)")
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        splits = prepare(cfg.data, cfg.seed)  # the same split (and scaling) the run was trained and tested on
        if (splits.prep.class_names, splits.prep.mean, splits.prep.std) != (
                run.prep.class_names, run.prep.mean, run.prep.std):
            raise LongshortError(f"the data of {src} ({cfg.data.source}) no longer gives the run's preprocess.json "
                                 "(classes or scaling differ): it changed since training")
        split, data = ("test", splits.test) if splits.test is not None else ("val", splits.val)
        if data is None or data.y is None or not len(data):
            raise LongshortError("this run has neither a test nor a validation split to measure accuracy on")
        names, bs = splits.prep.class_names, cfg.train.eval_batch_size
        before = _metrics(run.model, data, names, bs)
        pruning = prune_model(run.model, amount, structured, scope)
        targets = pruning.targets
        pruned = _metrics(run.model, data, names, bs)
        if finetune_epochs:
            _finetune(run, splits, finetune_epochs)
        pruning.make_permanent()
        run.model.cpu().eval()
        after = _metrics(run.model, data, names, bs) if finetune_epochs else pruned
    finally:
        torch.set_num_threads(threads)

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "preprocess.json"):
        shutil.copyfile(src / name, dst / name)
    save_weights(run.model, dst / "model.safetensors", metadata={"format": "longshort.SequenceClassifier"})
    (dst / "metrics.json").write_text(json.dumps({split: after}, indent=1))
    keys = ("accuracy", "f1_macro", "log_loss", "n")
    report = {
        "source": str(src), "out": str(dst), "amount": amount, "structured": structured,
        "method": ("ln_structured L1 dim=0" if structured else "l1_unstructured") + f", {scope}",
        "finetune_epochs": finetune_epochs, "split": split,
        "before": {k: before[k] for k in keys},
        "pruned": {k: pruned[k] for k in keys},  # right after pruning, before any fine-tuning
        "after": {k: after[k] for k in keys},
        "sparsity": sparsity(targets, run.model),
    }
    (dst / "prune.json").write_text(json.dumps(report, indent=1))
    return report


# -- command line (wired into ``longshort`` by cli.py) ---------------------------------------------------------


def prune_command(args: argparse.Namespace) -> None:
    """``longshort prune``: prune, print accuracy before/after and the sparsity, name the new run directory."""
    r = prune_run(args.run_dir, args.amount, args.structured, args.finetune_epochs, args.out, args.scope)
    b, a, s = r["before"], r["after"], r["sparsity"]
    print(f"accuracy before  {b['accuracy']:.4f}  ({r['split']}, n={b['n']})")
    if r["finetune_epochs"]:
        print(f"accuracy pruned  {r['pruned']['accuracy']:.4f}  (before fine-tuning)")
    print(f"accuracy after   {a['accuracy']:.4f}")
    print(f"sparsity         {s['pruned_matrices']:.1%} of the pruned weight matrices "
          f"({s['pruned_matrix_weights']:,} weights), {s['all_parameters']:.1%} of all parameters")
    print(f"pruned run: {r['out']}")
