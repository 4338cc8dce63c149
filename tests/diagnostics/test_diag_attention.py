"""capture_attention against attention weights recomputed from the in-projection weights by hand."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from longshort.diagnostics.attention import capture_attention
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier


def by_hand(mha: torch.nn.MultiheadAttention, x: Tensor, pad: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d)) per head from in_proj_weight/bias, padded keys at -inf: [B, heads, T, T]."""
    e, heads = mha.embed_dim, mha.num_heads
    d = e // heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q = x @ w[:e].T + b[:e]
    k = x @ w[e : 2 * e].T + b[e : 2 * e]
    bsz, t, _ = x.shape
    q = q.view(bsz, t, heads, d).transpose(1, 2)
    k = k.view(bsz, t, heads, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1)


def test_capture_matches_a_hand_computation_and_masks_padding() -> None:
    torch.manual_seed(0)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=2, num_lstm_layers=4, conv_dilations=[1], attention_every=2)
    model = SequenceClassifier(3, 2, cfg).train()
    x, lengths = torch.randn(3, 7, 3), torch.tensor([7, 4, 2])
    inputs: list[tuple[Tensor, Tensor | None]] = []
    for key in ("1", "3"):
        model.attns[key].attn.register_forward_hook(
            lambda _m, args, kwargs, _o: inputs.append((args[0], kwargs["key_padding_mask"])), with_kwargs=True)
    with torch.no_grad():
        model.eval()
        logits = model(x, lengths).logits
        model.train()
    n_hooks = [len(model.attns[k].attn._forward_hooks) for k in ("1", "3")]
    ws = capture_attention(model, x, lengths)
    assert model.training and [len(model.attns[k].attn._forward_hooks) for k in ("1", "3")] == n_hooks
    assert len(ws) == 2 and all(w.shape == (3, 2, 7, 7) and w.dtype == np.float32 for w in ws)
    for w, key, (inp, pad) in zip(ws, ("1", "3"), inputs[:2], strict=True):
        with torch.no_grad():
            ref = by_hand(model.attns[key].attn, inp, pad)
        np.testing.assert_allclose(w, ref.numpy(), atol=1e-6)
        valid = (np.arange(7)[None, :] < lengths.numpy()[:, None])[:, None, None, :]  # [B, 1, 1, T_key]
        np.testing.assert_allclose(np.where(valid, w, 0).sum(-1), 1.0, atol=1e-6)
        assert np.all(w[np.broadcast_to(~valid, w.shape)] == 0)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x, lengths).logits, logits)  # the model computes what it did before


def test_full_lengths_and_no_attention() -> None:
    torch.manual_seed(1)
    cfg = ClassifierConfig(hidden_dim=8, num_heads=4, num_lstm_layers=2, conv_dilations=[1], attention_every=1)
    model = SequenceClassifier(3, 2, cfg)
    ws = capture_attention(model, torch.randn(2, 5, 3), torch.tensor([5, 5]))
    assert [w.shape for w in ws] == [(2, 4, 5, 5)] * 2
    np.testing.assert_allclose(ws[0].sum(-1), 1.0, atol=1e-6)
    none = SequenceClassifier(3, 2, cfg.model_copy(update={"attention_every": 0}))
    assert capture_attention(none, torch.randn(2, 5, 3)) == []
