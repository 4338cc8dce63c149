"""The model sections of the config (``model:`` and ``seq2seq.model:``), as a leaf: pydantic only, no torch.

:class:`ClassifierConfig`, :class:`Seq2SeqConfig` and the parts they share (:class:`CellConfig`,
:class:`StackConfig`, :class:`AttentionConfig`). The modules that build the models (``lstm.py``,
``attention.py``, ``classifier.py``, ``seq2seq.py``) import them from here, so reading or validating a config
never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# -- from nn/lstm.py ----------

class CellConfig(BaseModel):
    """Options of each LSTM cell. The defaults are ``nn.LSTM``'s cell, except the forget-gate bias initialisation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    layer_norm: bool = Field(
        False,
        description="layer-normalise each gate's recurrent term W_* h_{t-1} (own gain and bias per gate) and the "
        "cell state inside h_t = o_t * tanh(LN(c_t)); c_t is carried un-normalised",
    )
    zoneout: float = Field(
        0.0, ge=0, lt=1, description="zoneout rate of both c and h: probability that a unit keeps its previous value"
    )
    zoneout_c: float | None = Field(None, ge=0, lt=1, description="zoneout rate of the cell state; overrides zoneout")
    zoneout_h: float | None = Field(None, ge=0, lt=1, description="zoneout rate of the hidden state; overrides zoneout")
    recurrent_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on h_{t-1} inside the recurrence: one mask per sequence and unit, fixed "
        "across time (training only)",
    )
    input_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="variational dropout on each layer's input: one mask per sequence and feature, "
        "the same at every step (training only)",
    )
    output_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="variational dropout on each layer's output: one mask per sequence and feature, "
        "the same at every step (training only)",
    )
    weight_drop: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="DropConnect on each W_hh: a fresh mask over its entries every forward pass, "
        "kept entries scaled by 1/(1-p) (training only; the parameter itself is never modified)",
    )
    forget_bias: float = Field(
        1.0,
        description="initial forget-gate bias b_ih + b_hh: b_ih's forget slice starts at this value and b_hh's "
        "at 0 (no effect with bias=False or after loading weights)",
    )
    self_attention: bool = Field(
        False,
        description="self-attention LSTM: each step attends (scaled dot product) from a query of h_{t-1} over "
        "the previous hidden states and feeds the context into the gates through weight_ch",
    )
    dropout_decay: float = Field(
        0.0,
        ge=0,
        description="lambda of the adaptive schedule: every rate is multiplied by exp(-lambda * epoch), applied by "
        "the trainer at each epoch start",
    )
    time_skip: Literal["none", "residual", "highway"] = Field(
        "none",
        description="a skip through time inside each layer (seed 003's forms; model.stack.skip is the one between "
        "layers): residual h_t = h_(t-1) + LSTM(h_(t-1), x_t); highway h_t = T_t * LSTM(h_(t-1), x_t) + "
        "(1 - T_t) * h_(t-1) with T_t = sigmoid(W_T [x_t; h_(t-1)] + b_T), b_T starting at 1; the cell state is "
        "the plain LSTM's. Not with self_attention; highway not with layer_norm",
    )

    @model_validator(mode="after")
    def _check(self) -> CellConfig:
        if self.time_skip != "none" and self.self_attention:
            raise ValueError(f"time_skip={self.time_skip} does not combine with self_attention=true")
        if self.time_skip == "highway" and self.layer_norm:
            raise ValueError("time_skip=highway does not combine with layer_norm=true (its gate T would go "
                             "un-normalised beside the four normalised ones)")
        return self

    @property
    def rate_c(self) -> float:
        """Effective zoneout rate of the cell state."""
        return self.zoneout if self.zoneout_c is None else self.zoneout_c

    @property
    def rate_h(self) -> float:
        """Effective zoneout rate of the hidden state."""
        return self.zoneout if self.zoneout_h is None else self.zoneout_h


class StackConfig(BaseModel):
    """How the layers of an :class:`LSTM` connect (only matters with ``num_layers > 1``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    skip: Literal["none", "residual", "highway", "dense"] = Field(
        "none",
        description="skip connections from layer 1 on: residual y = LSTM(x) + x; highway y = T*LSTM(x) + (1-T)*x "
        "with T = sigmoid(W_T x + b_T); dense: each layer reads the input and all previous layers' outputs",
    )


# -- from nn/attention.py ----------

Kind = Literal["none", "bahdanau", "dot", "general", "concat", "local_monotonic", "local_predictive"]


class AttentionConfig(BaseModel):
    """Options of a decoder's attention over the encoder outputs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: Kind = Field(
        "bahdanau",
        description="score: none (uniform, masked mean of keys) | bahdanau v^T tanh(W_q q + W_k k) | dot q.k | "
        "general q^T W k | concat v^T tanh(W [q; k]) | local_monotonic / local_predictive (Luong 2015: general "
        "score in a Gaussian window around p_t = step or p_t = (L-1) sigmoid(v_p^T tanh(W_p q)))",
    )
    coverage: bool = Field(
        False,
        description="coverage c_t = sum of past attention weights enters the score through a learned weight "
        "(inside the tanh for additive scores, - w_cov c_s for multiplicative ones); returned as c_t + a_t",
    )
    window: int = Field(5, ge=1, description="D: half-width of local attention; weights are 0 where |s - p_t| > D")
    sigma: float | None = Field(
        None, gt=0, description="std of the Gaussian of local attention, exp(-(s-p_t)^2/(2 sigma^2)); default D/2"
    )
    input_feeding: bool = Field(
        True, description="feed the attentional vector into the next decoder step's input (used by the decoder)"
    )

    @property
    def sigma_value(self) -> float:
        """The Gaussian std in effect."""
        return self.window / 2 if self.sigma is None else self.sigma


# -- from nn/classifier.py ----------

class ClassifierConfig(BaseModel):
    """Architecture of :class:`SequenceClassifier`; ``input_dim`` and ``num_classes`` come from the data."""

    TASKS: ClassVar[tuple[str, ...]] = ("classify", "regress")  # the tasks that read this section (others refuse it)

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    size: Literal["auto", "seed"] = Field(
        "auto", description="auto: a run chooses hidden_dim, num_lstm_layers, num_heads and stem_stride that you "
        "do not set from its training data (small sets get a small model, series over 256 steps a stem; "
        "config.yaml records the values); seed: seed 000's model (256 wide, 4 BiLSTM blocks, 8 heads)"
    )
    hidden_dim: int = Field(
        256, ge=2, description="width of every block; each LSTM direction gets half (all of it when unidirectional)"
    )
    num_lstm_layers: int = Field(4, ge=1, description="BiLSTM blocks")
    num_heads: int = Field(8, ge=1, description="attention heads; must divide hidden_dim")
    dropout: float = Field(0.3, ge=0, lt=1)
    attention_dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout of the attention weights; null = model.dropout. On a CPU it is the "
        "costliest dropout (a [B x heads, T, T] mask per block), so model.size=auto sets 0"
    )
    conv_dilations: list[int] = Field([1, 2, 4], description="one temporal conv block per dilation")
    conv_kernel: int = Field(3, ge=1, description="kernel size of the temporal convolutions; odd unless unidirectional")
    stem_stride: int = Field(
        1, ge=1, description="learned downsampling before the blocks: log2(stem_stride) strided convolutions "
        "(kernel 5, stride 2) shorten the sequence stem_stride times, so long series run the LSTM over "
        "T / stem_stride steps; a power of 2; 1 = none"
    )
    attention_every: int = Field(2, ge=0, description="self-attention after every k-th BiLSTM block; 0 = none")
    positions: bool = Field(
        True, description="add sinusoidal position codes before the blocks (seed 000, model.size=seed); false: "
        "none, which model.size=auto chooses (the convolutions and the LSTM know the order; +0.8 points of test "
        "accuracy on average over the accuracy suite, docs/accuracy.md)"
    )
    lstm_fp32: bool = Field(True, description="run the LSTM in float32 even under bf16/fp16 autocast or FSDP's "
                            "bf16/fp16 parameters (distributed.mixed_precision); false: in the compute dtype")
    cell: CellConfig = Field(CellConfig(), description="LSTM cell variant of every BiLSTM block")
    stack: StackConfig = Field(StackConfig(skip="residual"), description="how the BiLSTM blocks are connected")
    spectral_norm: bool = Field(
        False, description="spectral normalisation of every Linear layer (largest singular value kept at 1)"
    )
    bidirectional: bool = Field(
        True,
        description="false: a causal model (left-padded convolutions, forward-only LSTM blocks of width hidden_dim, "
        "causally masked attention) whose features at step t depend only on steps <= t, so it can be run "
        "step by step on a stream (longshort.deploy.streaming); true: the seed's BiLSTM model",
    )

    @model_validator(mode="after")
    def _check(self) -> ClassifierConfig:
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (two LSTM directions), got {self.hidden_dim}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_dim ({self.hidden_dim})")
        if self.bidirectional and self.conv_kernel % 2 == 0:  # 'same' padding splits (kernel - 1) in two halves
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.stem_stride & (self.stem_stride - 1):
            raise ValueError(f"stem_stride must be a power of 2, got {self.stem_stride}")
        if any(d < 1 for d in self.conv_dilations):
            raise ValueError(f"conv_dilations must be >= 1, got {self.conv_dilations}")
        return self


# -- from nn/seq2seq.py ----------

class Seq2SeqConfig(BaseModel):
    """Sizes and options of :class:`Seq2Seq`."""

    model_config = ConfigDict(extra="forbid")

    emb_dim: int = Field(64, ge=1, description="embedding width of source and target tokens")
    hidden_dim: int = Field(
        128, ge=2, description="encoder output width (two directions of hidden_dim // 2, so even) and decoder width"
    )
    enc_layers: int = Field(1, ge=1, description="encoder LSTM layers")
    dec_layers: int = Field(1, ge=1, description="decoder LSTMCell layers")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on embeddings, between layers and before the output")
    cell: CellConfig = Field(default_factory=CellConfig, description="encoder cell options")
    attention: AttentionConfig = Field(default_factory=AttentionConfig, description="decoder attention")
    attention_query: Literal["current", "previous"] = Field(
        "current", description="the decoder state that queries the attention: current = h_t after the step "
        "(Luong's order; the context then shapes the output); previous = h_(t-1) before it (Bahdanau's order, seed "
        "003's: the context c_t also enters the step's input [emb(y_(t-1)); c_t])")
    bridge: Literal["linear", "zero"] = Field(
        "linear", description="decoder initial (h, c): tanh(W [final fwd; final bwd]) per layer, or zeros"
    )
    hierarchical: bool = Field(
        False, description="the bridge reads the final states of every encoder layer, not only the top one"
    )

    @model_validator(mode="after")
    def _even_hidden(self) -> Seq2SeqConfig:
        if self.hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (two directions of hidden_dim // 2), got {self.hidden_dim}")
        if self.hierarchical and self.bridge == "zero":
            raise ValueError("hierarchical=true needs bridge=linear (the zero bridge reads no encoder state)")
        return self


# -- scheduled sampling's teacher-forcing schedules (pure functions: the seq2seq section's SamplingConfig uses them)


def inverse_sigmoid(step: float, k: float, c: float = 0.0) -> float:
    """Teacher-forcing probability ``eps = k / (k + exp((step - c) / k))`` (Bengio et al. 2015 with a shift ``c``;
    ``k > 0``, larger ``k`` decays later). ``eps = k / (k + 1)`` at ``step = c``; sampling prob is ``1 - eps``."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    z = (step - c) / k
    if z > 700:  # exp would overflow; eps is 0 to double precision
        return 0.0
    return k / (k + math.exp(z))


def linear_with_floor(step: float, slope: float, floor: float, start: float = 1.0) -> float:
    """Teacher-forcing probability ``eps = max(floor, start - slope * step)`` (``slope >= 0``)."""
    if slope < 0:
        raise ValueError(f"slope must be >= 0, got {slope}")
    return max(floor, start - slope * step)


def exponential(step: float, gamma: float) -> float:
    """Teacher-forcing probability ``eps = gamma ** step`` (``0 < gamma <= 1``)."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return gamma**step


SCHEDULES: dict[str, Callable[..., float]] = {
    "inverse_sigmoid": inverse_sigmoid,
    "linear_with_floor": linear_with_floor,
    "exponential": exponential,
}
"""Teacher-forcing probability schedules by name; each takes ``step`` first and returns ``eps``."""


# -- from nn/forecaster.py ----------

class ForecasterConfig(BaseModel):
    """Sizes and options of :class:`~longshort.nn.forecaster.Forecaster` (``forecast.model``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    decoder: Literal["direct", "autoregressive"] = Field(
        "direct", description="direct: all horizon steps at once from the encoding (an MLP, like neuralforecast's "
        "LSTM); autoregressive: an LSTM decoder fed its own previous prediction (teacher forcing / scheduled "
        "sampling while training, sample paths for distribution losses)",
    )
    hidden_dim: int = Field(64, ge=1, description="encoder (and decoder) LSTM width")
    layers: int = Field(2, ge=1, description="encoder LSTM layers (the autoregressive decoder has as many)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout between layers and before the output")
    cell: CellConfig = Field(default_factory=CellConfig, description="encoder cell options")
    stack: StackConfig = Field(default_factory=StackConfig, description="encoder stack options")
    attend: bool = Field(
        False, description="attend over the encoder's outputs (forecast.model.attention): the direct decoder once, "
        "from the final state; the autoregressive decoder at every step"
    )
    attention: AttentionConfig = Field(default_factory=AttentionConfig, description="the attention when attend")
    linear_skip: bool = Field(
        True, description="add a linear map of each target's (scaled) lookback to its H location outputs "
        "(LSTNet's autoregressive component: one map shared by the targets, starting at zero); on the built-in "
        "seasonal AR set it brings the MASE to within 3% of the oracle's (docs/forecast.md)")
