from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from longshort.config import Config
from longshort.data.pipeline import Preprocessor
from longshort.data.types import SequenceData
from longshort.deploy.streaming import RunStreamer, StreamingClassifier, StreamingError
from longshort.errors import LongshortError
from longshort.nn.classifier import ClassifierConfig, SequenceClassifier
from longshort.nn.lstm import CellConfig, StackConfig
from longshort.run import Run

# every block kind: two dilated convs (dilation 2 > 1), three LSTM blocks, attention after the 2nd, residual skip
CAUSAL = ClassifierConfig(hidden_dim=12, num_heads=3, num_lstm_layers=3, conv_dilations=[1, 2], attention_every=2,
                          dropout=0.0, bidirectional=False)


def _model(cfg: ClassifierConfig = CAUSAL, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(4, 3, cfg).eval()


def _assert_prefix_outputs(m: SequenceClassifier, x: torch.Tensor) -> float:
    """Step through ``x`` [B, T, C] and hold every step to the full model on that prefix; the worst gap."""
    stream = StreamingClassifier(m, x.shape[0])
    worst = 0.0
    for t in range(x.shape[1]):
        out = stream.step(x[:, t])
        ref = m(x[:, : t + 1])
        torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.aux, ref.aux, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.proba, torch.softmax(ref.logits, -1), rtol=0, atol=1e-5)
        worst = max(worst, (out.logits - ref.logits).abs().max().item())
    return worst


def test_every_step_equals_the_full_model_on_that_prefix() -> None:
    m = _model()
    assert m.convs[1].left_pad == 4 and len(m.attns) == 1
    _assert_prefix_outputs(m, torch.randn(3, 14, 4))


@pytest.mark.parametrize(("skip", "cell"), [("dense", CellConfig(layer_norm=True)),
                                            ("highway", CellConfig(zoneout=0.2, recurrent_dropout=0.3)),
                                            ("residual", CellConfig(time_skip="highway")),
                                            ("none", CellConfig(time_skip="residual", layer_norm=True))])
def test_layer_norm_zoneout_and_other_skips_stream(skip: str, cell: CellConfig) -> None:
    cfg = CAUSAL.model_copy(update={"stack": StackConfig(skip=skip), "cell": cell, "attention_every": 1})
    _assert_prefix_outputs(_model(cfg), torch.randn(2, 9, 4))


def test_chunks_with_idle_streams_equal_their_own_prefixes() -> None:
    m = _model()
    x = torch.randn(3, 10, 4)
    stream = StreamingClassifier(m, 3)
    stream.step(x[:, :4], lengths=[4, 0, 2])  # stream 1 idle, stream 2 takes only its first two steps
    out = stream.step(x[:, 4:10])
    seqs = [x[0, :10], x[1, 4:10], torch.cat([x[2, :2], x[2, 4:10]])]
    for i, seq in enumerate(seqs):
        torch.testing.assert_close(out.logits[i], m(seq[None]).logits[0], rtol=0, atol=1e-5)
    assert stream.state.position.tolist() == [10, 6, 8]


def test_saved_state_branches_and_reset_restarts_one_stream() -> None:
    m = _model()
    x, other = torch.randn(2, 8, 4), torch.randn(2, 3, 4)
    stream = StreamingClassifier(m, 2)
    stream.step(x[:, :5])
    saved = stream.get_state()
    stream.step(x[:, 5:])  # must not change the saved copy
    stream.set_state(saved)
    out = stream.step(other)
    torch.testing.assert_close(out.logits, m(torch.cat([x[:, :5], other], 1)).logits, rtol=0, atol=1e-5)

    stream.reset([1])
    out = stream.step(x[:, :2])
    torch.testing.assert_close(out.logits[0], m(torch.cat([x[0, :5], other[0], x[0, :2]])[None]).logits[0],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits[1], m(x[1:, :2]).logits[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="other blocks"):
        StreamingClassifier(_model(CAUSAL.model_copy(update={"conv_dilations": [1]}))).set_state(saved)


def test_refuses_bidirectional_and_stem_models() -> None:
    with pytest.raises(StreamingError, match="bidirectional=false"):
        StreamingClassifier(_model(CAUSAL.model_copy(update={"bidirectional": True})))
    with pytest.raises(StreamingError, match="stem_stride=1"):
        StreamingClassifier(_model(CAUSAL.model_copy(update={"stem_stride": 2})))


SELF_ATTENTION = CAUSAL.model_copy(update={"cell": CellConfig(self_attention=True)})


def test_self_attention_cell_streams_with_its_memory_in_the_cache() -> None:
    m = _model(SELF_ATTENTION)
    _assert_prefix_outputs(m, torch.randn(2, 9, 4))
    stream = StreamingClassifier(m, 2)
    assert [t.shape for t in stream.state.memory] == [(2, 0, 12)] * 3
    x = torch.randn(2, 9, 4)
    stream.step(x[:, :3], lengths=[3, 0])  # stream 1 idle: its memory slots are marked empty
    stream.step(x[:, 3:5], lengths=[1, 2])
    out = stream.step(x[:, 5:])
    assert stream.state.memory[0].shape == (2, 9, 12) and stream.state.slots.sum(1).tolist() == [8, 6]
    seqs = [torch.cat([x[0, :4], x[0, 5:]]), x[1, 3:]]
    for i, seq in enumerate(seqs):
        torch.testing.assert_close(out.logits[i], m(seq[None]).logits[0], rtol=0, atol=1e-5)
    stream.reset([0])  # a restarted stream attends to none of its old states
    out = stream.step(x[:, :2])
    torch.testing.assert_close(out.logits[0], m(x[:1, :2]).logits[0], rtol=0, atol=1e-5)


def test_the_stream_is_the_models_own_forward_with_a_cache() -> None:
    m = _model()
    x = torch.randn(2, 6, 4)
    cache = m.initial_cache(2)
    out = m(x[:, :4], None, cache)
    assert out.cache is not None and cache.position.tolist() == [0, 0]  # the given cache is left as it was
    assert out.cache.position.tolist() == [4, 4] and out.cache.keys["1"].shape == (2, 3, 4, 4)
    assert [t.shape for t in out.cache.conv] == [(2, 2, 12), (2, 4, 12)]
    seen: list[torch.Tensor] = []
    handle = m.convs[1].register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    m(x[:, :4])
    handle.remove()
    torch.testing.assert_close(out.cache.conv[1], seen[0][:, -4:])  # the left context: its last 4 inputs
    again = m(x[:, 4:], None, out.cache)
    torch.testing.assert_close(again.logits, m(x).logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="causal model"):
        _model(CAUSAL.model_copy(update={"bidirectional": True})).initial_cache(1)


def _run(tmp_path: Path) -> Run:
    cfg = Config(model=CAUSAL)
    prep = Preprocessor(layout="sequences", class_names=["a", "b", "c"], feature_names=["f0", "f1", "f2", "f3"],
                        mean=[10.0, -2.0, 0.5, 100.0], std=[2.0, 0.5, 1.0, 30.0], aux_mean=3.0, aux_std=2.0)
    return Run(tmp_path, cfg, _model(), prep)


def test_run_streamer_scales_raw_steps_like_predict_proba(tmp_path: Path) -> None:
    run = _run(tmp_path)
    raw = np.random.default_rng(0).normal([10, -2, 0.5, 100], [2, 0.5, 1, 30], (2, 7, 4)).astype(np.float32)
    streamer = run.streamer(batch_size=2)
    assert streamer.class_names == ["a", "b", "c"]
    for t in range(7):
        proba, aux = streamer.step_outputs(raw[:, t])
        np.testing.assert_allclose(proba, run.predict_proba(raw[:, : t + 1]), atol=1e-5)
    full = SequenceData(X=raw, lengths=np.full(2, 7), y=None, feature_names=[], source="array")
    scaled = torch.from_numpy(run.prep.transform(full, labelled=False).X)
    np.testing.assert_allclose(aux, run.model(scaled).aux.detach().numpy() * 2.0 + 3.0, atol=1e-5)
    with pytest.raises(LongshortError, match="trained on 4"):
        streamer.step(raw[:, 0, :3])


def test_run_streamer_refuses_preprocessing_it_cannot_apply_per_step(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class PerSequence(Preprocessor):
        per_sequence_norm: bool = True

    run = _run(tmp_path)
    run.prep = PerSequence(**dataclasses.asdict(run.prep))
    with pytest.raises(StreamingError, match="per_sequence_norm"):
        RunStreamer(run)
    run.prep = dataclasses.replace(_run(tmp_path / "b").prep, per_series=True)  # data.scale=series
    with pytest.raises(StreamingError, match=r"data\.scale=series"):
        RunStreamer(run)

