from __future__ import annotations

import pytest
import torch

from longshort.nn.classifier import ClassifierConfig, SequenceClassifier

TINY = ClassifierConfig(hidden_dim=16, num_heads=2, num_lstm_layers=4, conv_dilations=[1, 2], dropout=0.0)


def test_default_model_matches_seed_size_and_counts_add_up() -> None:
    m = SequenceClassifier(9, 3)
    counts = m.parameter_counts()
    total = sum(p.numel() for p in m.parameters())
    assert sum(counts.values()) == total
    assert 2_000_000 <= total <= 5_000_000  # the seed's estimate for its ComplexLSTMModel
    assert counts["input projection"] == 9 * 256 + 256
    # attention after every second of the four BiLSTM blocks
    assert m.attention_after == [1, 3]


def test_output_shapes() -> None:
    m = SequenceClassifier(5, 4, TINY)
    out = m(torch.randn(3, 11, 5))
    assert out.logits.shape == (3, 4)
    assert out.aux.shape == (3,)


def test_padding_never_changes_valid_outputs() -> None:
    torch.manual_seed(0)
    m = SequenceClassifier(3, 2, TINY).eval()
    short = torch.randn(1, 7, 3)
    alone = m(short, torch.tensor([7])).logits
    batch = torch.zeros(2, 15, 3)
    batch[0, :7] = short[0]
    batch[0, 7:] = 100.0  # garbage in the padding must not leak into the result
    batch[1] = torch.randn(15, 3)
    padded = m(batch, torch.tensor([7, 15])).logits
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


def test_no_gradient_reaches_padded_steps() -> None:
    torch.manual_seed(0)
    m = SequenceClassifier(3, 2, TINY).eval()
    x = torch.randn(2, 9, 3, requires_grad=True)
    m(x, torch.tensor([4, 9])).logits.sum().backward()
    assert x.grad is not None
    assert torch.count_nonzero(x.grad[0, 4:]) == 0
    assert torch.count_nonzero(x.grad[0, :4]) > 0


def test_lstm_stays_fp32_under_bf16_autocast() -> None:
    m = SequenceClassifier(3, 2, TINY)
    seen: list[torch.dtype] = []
    m.lstms[0].lstm.register_forward_hook(lambda mod, inp, out: seen.append(out[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(2, 6, 3))
    assert seen == [torch.float32]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"hidden_dim": 30, "num_heads": 4}, "must divide"), ({"hidden_dim": 15, "num_heads": 1}, "even"),
     ({"conv_kernel": 4}, "odd")],
)
def test_config_rejects_inconsistent_shapes(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassifierConfig(**kwargs)


def test_cell_and_stack_options_reach_every_block() -> None:
    from longshort.config import apply_overrides, validate

    cfg = validate(apply_overrides({}, ["model.cell.layer_norm=true", "model.cell.zoneout=0.1",
                                        "model.stack.skip=highway", "model.hidden_dim=16", "model.num_heads=2"]))
    m = SequenceClassifier(3, 2, cfg.model)
    for block in m.lstms:
        assert block.lstm.cell.layer_norm and block.lstm.cell.zoneout == 0.1
        assert not block.lstm.uses_fused_path
        assert block.skip == "highway"
    out = m(torch.randn(2, 6, 3), torch.tensor([6, 4]))
    assert out.logits.shape == (2, 2)


def test_highway_block_is_gate_weighted_mix_of_input_and_lstm() -> None:
    from longshort.nn.classifier import BiLSTMBlock
    from longshort.nn.lstm import CellConfig

    torch.manual_seed(0)
    block = BiLSTMBlock(8, 8, 0.0, CellConfig(), "highway").eval()
    x = torch.randn(2, 5, 8)
    y = block.lstm(x)[0]
    t = torch.sigmoid(block.gate(x))
    torch.testing.assert_close(block(x, None)[0], block.norm(t * y + (1 - t) * x))


@pytest.mark.parametrize("skip", ["none", "residual", "dense"])
def test_stack_variants(skip: str) -> None:
    cfg = TINY.model_copy(update={"stack": TINY.stack.model_copy(update={"skip": skip})})
    m = SequenceClassifier(3, 2, cfg)
    sizes = [b.lstm.input_size for b in m.lstms]
    assert sizes == ([16, 32, 48, 64] if skip == "dense" else [16] * 4)
    assert m(torch.randn(2, 5, 3), torch.tensor([5, 3])).logits.shape == (2, 2)


CAUSAL = TINY.model_copy(update={"bidirectional": False, "attention_every": 1})


def _perturbed_features(cfg: ClassifierConfig, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    m = SequenceClassifier(3, 2, cfg).eval()
    x = torch.randn(2, 12, 3)
    y = x.clone()
    y[:, t] += 5.0
    return m.encode(x), m.encode(y)


def test_causal_model_features_before_a_perturbed_step_do_not_change() -> None:
    before, after = _perturbed_features(CAUSAL, t=6)
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=1e-6)
    assert (after[:, 6:] - before[:, 6:]).abs().amax() > 1e-3  # from step 6 on the change does arrive


def test_default_model_is_not_causal() -> None:
    before, after = _perturbed_features(TINY, t=6)
    assert (after[:, :6] - before[:, :6]).abs().amax() > 1e-3


def test_causal_model_has_forward_only_blocks_of_full_width() -> None:
    m = SequenceClassifier(3, 2, CAUSAL.model_copy(update={"conv_kernel": 4}))  # even kernels are fine here
    assert m.causal and not SequenceClassifier(3, 2, TINY).causal
    for block in m.lstms:
        assert not block.lstm.bidirectional and block.lstm.hidden_size == 16
    assert not any("reverse" in name for name in m.state_dict())
    assert [c.left_pad for c in m.convs] == [3, 6]
    assert m(torch.randn(2, 5, 3)).logits.shape == (2, 2)


def test_causal_model_ignores_padding_too() -> None:
    torch.manual_seed(0)
    m = SequenceClassifier(3, 2, CAUSAL).eval()
    short = torch.randn(1, 7, 3)
    batch = torch.full((2, 10, 3), 100.0)
    batch[0, :7] = short[0]
    batch[1] = torch.randn(10, 3)
    torch.testing.assert_close(m(batch, torch.tensor([7, 10])).logits[0], m(short).logits[0], rtol=1e-5, atol=1e-5)
