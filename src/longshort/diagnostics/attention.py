"""The attention weights of every self-attention block of a model, per head, for a few sequences.

:class:`~longshort.nn.classifier.AttentionBlock` calls ``nn.MultiheadAttention`` with ``need_weights=False`` (the
fast path, no weights kept). :func:`capture_attention` leaves that call alone: a forward hook on each
``nn.MultiheadAttention`` takes the inputs it was given and calls the module's own ``forward`` once more with
``need_weights=True, average_attn_weights=False`` (``forward`` directly, so no hook fires twice and nothing of
the model's output changes). The weights are therefore exactly ``nn.MultiheadAttention``'s own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from longshort.diagnostics._util import model_mode

__all__ = ["capture_attention"]


def capture_attention(model: nn.Module, x: Tensor, lengths: Tensor | None = None) -> list[np.ndarray]:
    """Weights of each ``nn.MultiheadAttention`` of ``model``, in the order the forward calls them: a list of
    float32 arrays [B, heads, T_query, T_key].

    One forward ``model(x, lengths=lengths)`` in eval mode (attention dropout off) under ``no_grad``; modes and
    hooks are restored. Row ``[b, h, t]`` is query step ``t``'s distribution over the keys: it sums to 1 over
    the valid keys (``s < lengths[b]``) and is exactly 0 on padded keys. Rows of padded *queries*
    (``t >= lengths[b]``) are computed by the module too but never used by the model (pooling masks them)."""
    mhas = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    got: list[Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        kw = {**kwargs, "need_weights": True, "average_attn_weights": False}
        _, weights = module.forward(*args, **kw)
        got.append(weights.detach().float().cpu())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mhas]
    try:
        with torch.no_grad(), model_mode(model, False):
            model(x, lengths=lengths)
    finally:
        for h in handles:
            h.remove()
    return [w.numpy() for w in got]
