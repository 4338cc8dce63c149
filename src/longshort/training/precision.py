"""``train.precision``: the dtype a run's forward computes in under autocast (None: plain float32).

``auto`` chooses per device:

- CUDA: bf16 autocast when the GPU supports bf16, else fp32.
- CPU: bf16 autocast only when the CPU has native bf16 arithmetic (AMX-BF16 or AVX512-BF16, as torch reports
  them) *and* a short probe at the model's width runs faster in bf16 than in fp32 (at least
  :data:`MIN_SPEEDUP` times); fp32 otherwise. Without native bf16 the probe is not run: emulated bf16 is slower.
  ``LONGSHORT_CPU_BF16=0`` in the environment keeps ``auto`` at fp32 on every CPU (runs comparable across
  machines; the test suite sets it).
- other devices: fp32.

The probe is the forward and backward of a feed-forward block (``Linear(w, 4w)``, GELU, ``Linear(4w, w)``,
LayerNorm) on 1,024 rows of the model's commonest layer width ``w``, in fp32 and under bf16 autocast, interleaved,
the best of three each after a warm-up: some 10-100 ms. It draws from its own generator, so the run's random
streams are untouched. The recurrence is not part of it: under ``model.lstm_fp32`` (the default) the LSTM runs
in float32 whatever autocast does.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: bf16 must beat fp32 by this factor in the probe for ``auto`` to choose it on a CPU
MIN_SPEEDUP = 1.2
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Choice:
    """What ``train.precision`` resolved to: the autocast dtype (None: fp32) and, for ``auto``, why."""

    dtype: torch.dtype | None
    note: str | None = None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def cpu_bf16_features() -> list[str]:
    """This CPU's native bf16 instruction sets, as torch detects them (empty: bf16 is emulated)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return [name for key, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if caps.get(key)]


def cpu_description() -> str:
    """The CPU's name and its vector/matrix features that matter for precision (for benchmark output)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    feats = [k for k in ("avx2", "avx512_f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
             if caps.get(k)]
    return f"{caps.get('cpu_name', 'unknown CPU')} ({', '.join(feats) or 'no AVX2'}; torch capability " \
           f"{torch.backends.cpu.get_cpu_capability()})"


def model_width(model: nn.Module) -> int:
    """The commonest input width of ``model``'s linear layers (the larger on a tie); 256 when it has none."""
    widths = Counter(m.in_features for m in model.modules() if isinstance(m, nn.Linear))
    if not widths:
        return 256
    return max(widths, key=lambda w: (widths[w], w))


@functools.cache
def probe_bf16_speedup(width: int, rows: int = 1024) -> float:
    """fp32 seconds over bf16-autocast seconds for one forward and backward of a feed-forward block of
    ``width`` on ``rows`` rows, on the CPU (> 1: bf16 is faster). Cached per width for the process."""
    g = torch.Generator().manual_seed(0)
    w1 = (torch.randn(4 * width, width, generator=g) / width**0.5).requires_grad_()
    w2 = (torch.randn(width, 4 * width, generator=g) / (4 * width) ** 0.5).requires_grad_()
    x = torch.randn(rows, width, generator=g)

    def once(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = F.layer_norm(F.linear(F.gelu(F.linear(x, w1)), w2) + x, (width,))
        y.float().square().mean().backward()
        w1.grad = w2.grad = None
        return time.perf_counter() - t0

    once(False), once(True)  # warm-up: kernels chosen, memory allocated
    fp32, bf16 = [], []
    for _ in range(3):
        fp32.append(once(False))
        bf16.append(once(True))
    return min(fp32) / min(bf16)


def resolve(name: str, device: torch.device, model: nn.Module | None = None) -> Choice:
    """The autocast dtype for ``train.precision=name`` on ``device`` (``model``: whose width the CPU probe
    uses), with a note saying why when ``name`` is auto."""
    if name != "auto":
        return Choice(_DTYPES[name])
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice(torch.bfloat16, "train.precision=bf16 (bf16 autocast: this GPU supports bf16)")
        return Choice(None, "train.precision=fp32 (this GPU has no bf16)")
    if device.type != "cpu":
        return Choice(None, f"train.precision=fp32 (on {device.type})")
    if os.environ.get("LONGSHORT_CPU_BF16") == "0":
        return Choice(None, "train.precision=fp32 (LONGSHORT_CPU_BF16=0)")
    native = cpu_bf16_features()
    if not native:
        return Choice(None, "train.precision=fp32 (this CPU has no native bf16: no AMX-BF16 or AVX512-BF16)")
    width = model_width(model) if model is not None else 256
    speedup = probe_bf16_speedup(width)
    has = " and ".join(native)
    if speedup >= MIN_SPEEDUP:
        return Choice(torch.bfloat16, f"train.precision=bf16 (bf16 autocast: this CPU has {has} and a probe at "
                      f"width {width} ran {speedup:.2f}x faster than fp32; the LSTM stays float32 under "
                      "model.lstm_fp32)")
    return Choice(None, f"train.precision=fp32 (this CPU has {has}, but a probe at width {width} ran bf16 "
                  f"only {speedup:.2f}x as fast as fp32, under the {MIN_SPEEDUP}x needed)")
