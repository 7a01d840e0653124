"""One config dataclass per model family: the architecture's sizes and switches, named as in the papers."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from lmforge.config.fields import Checked, _fraction, _positive
from lmforge.errors import LmforgeError

_STACK_RANGES = {
    "vocab_size": (_positive, "needs at least one token"),
    "n_layer": (_positive, "needs at least one layer"),
    "n_head": (_positive, "needs at least one head"),
    "d_model": (_positive, "must be positive"),
    "max_seq_len": (_positive, "must be positive"),
    "dropout": (_fraction, "a probability in [0, 1)"),
    "layer_norm_eps": (_positive, "must be positive"),
}


def _check_widths(cfg) -> None:
    """The rules every Transformer stack shares: d_ff defaults to 4 * d_model, heads divide d_model."""
    if cfg.d_ff is None:
        cfg.d_ff = 4 * cfg.d_model
    if cfg.d_ff <= 0:
        raise LmforgeError(f"model.d_ff = {cfg.d_ff} is out of range: must be positive")
    if cfg.d_model % cfg.n_head:
        raise LmforgeError(
            f"model.d_model ({cfg.d_model}) must be divisible by model.n_head ({cfg.n_head}); change one of them"
        )


@dataclass
class GPTConfig(Checked):
    """A decoder-only causal language model (GPT-2 shaped by default)."""

    section = "model"
    vocab_size: int = 50257
    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384
    d_ff: int | None = None  # 4 * d_model when left out
    max_seq_len: int = 256
    dropout: float = 0.0
    position: typing.Literal["learned", "sinusoidal", "rotary"] = "learned"
    norm: typing.Literal["pre", "post"] = "pre"
    activation: typing.Literal["gelu", "gelu_exact", "relu"] = "gelu"
    tie_embeddings: bool = True
    bias: bool = True
    layer_norm_eps: float = 1e-5

    _ranges = _STACK_RANGES

    def check(self) -> None:
        _check_widths(self)
        if self.position == "rotary" and (self.d_model // self.n_head) % 2:
            raise LmforgeError("model.position = rotary needs an even head size (d_model / n_head)")


@dataclass
class BertConfig(Checked):
    """A bidirectional encoder pretrained by masked language modelling; BERT-base shaped by default.

    RoBERTa and ALBERT are settings of it: RoBERTa drops the sentence objective (sentence_objective none,
    type_vocab_size 1); ALBERT factorizes the embedding (embedding_size < d_model), shares one layer's weights across
    the stack (share_layers) and predicts sentence order (sentence_objective sop).
    """

    section = "model"
    vocab_size: int = 30522
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # 4 * d_model when left out
    embedding_size: int | None = None  # ALBERT's E; d_model when left out
    max_seq_len: int = 512
    type_vocab_size: int = 2  # segment ids: 0 for sentence A, 1 for sentence B
    dropout: float = 0.1
    norm: typing.Literal["pre", "post"] = "post"
    activation: typing.Literal["gelu", "gelu_exact", "relu"] = "gelu_exact"
    layer_norm_eps: float = 1e-12
    share_layers: bool = False
    sentence_objective: typing.Literal["nsp", "sop", "none"] = "nsp"
    mlm_head: bool = True  # False: a bare encoder (e.g. an imported sentence-embedding model), no MLM head
    position_offset: int = 0  # RoBERTa numbers positions from padding_idx + 1 = 2; the table has that many more rows

    _ranges = {**_STACK_RANGES, "type_vocab_size": (_positive, "needs at least one segment type")}

    def check(self) -> None:
        _check_widths(self)
        if self.embedding_size is None:
            self.embedding_size = self.d_model
        if self.embedding_size <= 0:
            raise LmforgeError(f"model.embedding_size = {self.embedding_size} is out of range: must be positive")
        if self.position_offset < 0:
            raise LmforgeError(f"model.position_offset = {self.position_offset} is out of range: must be >= 0")
        if self.sentence_objective != "none" and self.type_vocab_size < 2:
            raise LmforgeError(
                f"model.sentence_objective = {self.sentence_objective} needs two segment types: "
                "set model.type_vocab_size to 2 or the objective to none"
            )


@dataclass
class T5Config(Checked):
    """An encoder-decoder; T5 (Raffel et al., 2020) by default, t5-small's sizes.

    T5 v1.1 is feed_forward gated-gelu with untied embeddings; tied embeddings rescale the decoder output by
    d_model ** -0.5 before the LM head, as T5 does. The original Transformer (Vaswani et al., 2017) is position
    sinusoidal, norm post, norm_type layer, bias true: sinusoidal positions bring its conventions with them
    (embeddings times sqrt(d_model), attention scaled by 1/sqrt(d_kv), Xavier initialization, no output rescale)."""

    section = "model"
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # the head size; n_head * d_kv need not equal d_model
    d_ff: int = 2048
    n_layer: int = 6
    n_decoder_layer: int | None = None  # n_layer when left out
    n_head: int = 8
    max_seq_len: int = 512  # the length sources and targets are used at; relative positions themselves have no limit
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    feed_forward: typing.Literal["relu", "gated-gelu"] = "relu"
    tie_embeddings: bool = True
    position: typing.Literal["relative", "sinusoidal"] = "relative"
    norm: typing.Literal["pre", "post"] = "pre"
    norm_type: typing.Literal["rms", "layer"] = "rms"
    bias: bool = False
    decoder_start_id: int = 0
    pad_id: int = 0
    eos_id: int = 1

    _ranges = {
        "vocab_size": (_positive, "needs at least one token"),
        "d_model": (_positive, "must be positive"),
        "d_kv": (_positive, "must be positive"),
        "d_ff": (_positive, "must be positive"),
        "n_layer": (_positive, "needs at least one layer"),
        "n_head": (_positive, "needs at least one head"),
        "max_seq_len": (_positive, "must be positive"),
        "relative_attention_num_buckets": (lambda x: x >= 4, "needs at least 4 buckets"),
        "relative_attention_max_distance": (_positive, "must be positive"),
        "dropout": (_fraction, "a probability in [0, 1)"),
        "layer_norm_eps": (_positive, "must be positive"),
    }

    def check(self) -> None:
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.n_decoder_layer <= 0:
            raise LmforgeError(f"model.n_decoder_layer = {self.n_decoder_layer} is out of range: needs at least one")
        for name in ("decoder_start_id", "pad_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise LmforgeError(f"model.{name} = {getattr(self, name)} is out of range: an id below vocab_size")


@dataclass
class XLNetConfig(Checked):
    """XLNet (Yang et al., 2019): a Transformer-XL stack with two-stream attention, pretrained by permutation language
    modelling; xlnet-base-cased's sizes by default.

    The stack: relative sinusoidal positions (clamp_len caps the distance; bi_data runs the second half of a batch
    with positions reversed), segment recurrence that keeps the last mem_len content states of each layer (None:
    all of them; reuse_len: only the first reuse_len positions of a segment are kept), attn_type bi (bidirectional)
    or uni (causal; same_length gives every query the same number of keys). untie_r false shares the attention's
    r_w, r_r and r_s biases across the layers, as the original code can.

    The permutation objective: each sequence gets a random factorization order and the last 1/predict_fraction_k of
    it is predicted (partial prediction, K in the paper); span_prediction predicts spans of up to max_span tokens
    instead of single positions."""

    section = "model"
    vocab_size: int = 32000
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # 4 * d_model when left out (HF's d_inner)
    max_seq_len: int = 512  # the length sequences are trained at; relative positions themselves have no limit
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: typing.Literal["gelu", "gelu_exact", "relu"] = "gelu_exact"  # HF's ff_activation "gelu" is exact
    mem_len: int | None = None
    reuse_len: int | None = None
    bi_data: bool = False
    clamp_len: int = -1  # -1: no clamping
    same_length: bool = False
    attn_type: typing.Literal["bi", "uni"] = "bi"
    untie_r: bool = True
    predict_fraction_k: int = 6
    span_prediction: bool = False
    max_span: int = 5

    _ranges = {
        **_STACK_RANGES,
        "mem_len": (lambda x: x is None or x > 0, "a positive number of states, or null to keep them all"),
        "reuse_len": (lambda x: x is None or x > 0, "a positive number of positions, or null to keep them all"),
        "clamp_len": (lambda x: x == -1 or x > 0, "-1 (no clamping) or a positive distance"),
        "predict_fraction_k": (lambda x: x >= 2, "at least 2: K = 1 would predict every token, leaving no context"),
        "max_span": (_positive, "a span needs at least one token"),
    }

    def check(self) -> None:
        _check_widths(self)
        if self.same_length and self.attn_type != "uni":
            raise LmforgeError("model.same_length applies to causal attention only: set model.attn_type to uni")


FAMILIES = {"gpt": GPTConfig, "bert": BertConfig, "t5": T5Config, "xlnet": XLNetConfig}
