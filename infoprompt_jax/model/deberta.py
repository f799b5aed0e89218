"""Flax DeBERTa-v3 encoder (Hugging Face `model_type` "deberta-v2" with the v3 settings).

DeBERTa keeps BERT's post-LayerNorm layer but drops absolute position embeddings: attention adds
two terms that read a table of relative-position embeddings, content-to-position (`c2p`: a
token's query against the embedding of its distance to each key) and position-to-content (`p2c`:
each key against the embedding of the distance seen from the other side). Distances beyond
`position_buckets / 2` share log-spaced buckets up to `max_relative_positions`. With
`share_att_key` the table goes through the layer's own query and key projections.

Distances are differences of `position_ids` (Hugging Face uses `0 .. L-1`, which is what
`position_ids_from_mask` returns), so a caller may renumber tokens. The module takes the same
arguments as `encoder.Encoder`; parameter names follow the checkpoint (`query_proj`, ...,
`encoder/rel_embeddings`, `encoder/LayerNorm`).
"""

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from infoprompt_jax.model import encoder as encoder_lib

ATTENTION_TERMS = ("c2p", "p2c")


@dataclasses.dataclass(frozen=True)
class DebertaConfig:
    """Shape and options of a DeBERTa-v3 encoder (`pretrained.py` builds it from config.json)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float
    pad_token_id: int
    type_vocab_size: int = 0  # 0 in DeBERTa-v3: no token-type embeddings.
    # Distances below half of it are exact, beyond it log-bucketed; <= 0: no buckets, distances
    # clipped at max_relative_positions.
    position_buckets: int = 256
    max_relative_positions: int = 512
    pos_att_type: tuple[str, ...] = ATTENTION_TERMS
    norm_rel_ebd: bool = True  # LayerNorm over the relative-position table ("layer_norm").
    hidden_act: str = "gelu"
    adapter_size: int = 0
    remat: bool = False
    attention: str = "einsum"  # The only kernel: the relative terms are per (query, key) pair.
    family: str = "deberta"

    def __post_init__(self):
        if self.attention != "einsum":
            raise ValueError(
                f"attention={self.attention!r} is not available for DeBERTa: its disentangled "
                "attention adds a bias per query and key; set config.model.attention=einsum."
            )
        if not set(self.pos_att_type) <= set(ATTENTION_TERMS):
            raise ValueError(
                f"pos_att_type={list(self.pos_att_type)}: only {list(ATTENTION_TERMS)} are "
                "implemented; use a checkpoint whose config.json lists those."
            )
        if self.hidden_act != "gelu":
            raise ValueError(
                f"hidden_act={self.hidden_act!r}: only the exact 'gelu' of DeBERTa is implemented."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}."
            )

    @property
    def attention_span(self) -> int:
        """Half the rows of the relative-position table: distances map into `[0, 2 span)`."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions


# The v3 settings this encoder implements: (config.json key, Hugging Face's default when the key
# is absent, the value we need, what the other value would mean).
_V3_SETTINGS = (
    ("relative_attention", False, True, "DeBERTa without relative attention"),
    ("position_biased_input", True, False, "absolute position embeddings added to the input"),
    ("share_att_key", False, True, "separate projections of the relative positions"),
    ("conv_kernel_size", 0, 0, "DeBERTa-v2's convolution after the first layer"),
)


def config_from_hf(hf: dict[str, Any], **overrides) -> DebertaConfig:
    """A `DebertaConfig` from a DeBERTa-v3 `config.json` ("deberta-v2" with the v3 settings).

    Args:
        hf: the parsed `config.json`.
        **overrides: fields to set on top, e.g. `adapter_size=8`.

    Raises:
        ValueError: a setting of another DeBERTa variant, named with the value we implement.
    """
    for key, default, needed, meaning in _V3_SETTINGS:
        value = hf.get(key, default)
        if value != needed:
            raise ValueError(
                f"DeBERTa {key}={json.dumps(value)} ({meaning}) is not implemented: use a "
                f"DeBERTa-v3 checkpoint, whose config.json has {key}={json.dumps(needed)}."
            )
    if hf.get("embedding_size", hf["hidden_size"]) != hf["hidden_size"]:
        raise ValueError(
            f"DeBERTa embedding_size={hf['embedding_size']} differs from hidden_size="
            f"{hf['hidden_size']}: the embedding projection is not implemented; use a checkpoint "
            "without embedding_size."
        )
    norm_rel_ebd = [x.strip() for x in (hf.get("norm_rel_ebd") or "none").lower().split("|")]
    if set(norm_rel_ebd) - {"none", "layer_norm"}:
        raise ValueError(
            f"DeBERTa norm_rel_ebd={hf['norm_rel_ebd']!r}: only 'layer_norm' and 'none' are "
            "implemented."
        )
    pos_att_type = hf.get("pos_att_type") or []
    if isinstance(pos_att_type, str):
        pos_att_type = [x.strip() for x in pos_att_type.lower().split("|")]
    max_relative = hf.get("max_relative_positions", -1)
    hidden_act = hf.get("hidden_act", "gelu")
    return DebertaConfig(
        **{
            k: hf[k]
            for k in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            )
        },
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-7),
        pad_token_id=hf.get("pad_token_id") or 0,
        type_vocab_size=hf.get("type_vocab_size", 0),
        position_buckets=hf.get("position_buckets", -1),
        max_relative_positions=(
            max_relative if max_relative >= 1 else hf.get("max_position_embeddings", 512)
        ),
        pos_att_type=tuple(pos_att_type),
        norm_rel_ebd="layer_norm" in norm_rel_ebd,
        hidden_act="gelu" if hidden_act == "gelu_python" else hidden_act,
        **overrides,
    )


def position_ids_from_mask(attention_mask: jax.Array) -> jax.Array:
    """`0 .. L-1` on every row, as Hugging Face numbers DeBERTa tokens (padding is at the end)."""
    mask = jnp.asarray(attention_mask)
    return jnp.broadcast_to(jnp.arange(mask.shape[1], dtype=jnp.int32), mask.shape)


def log_bucket(distance: jax.Array, bucket_size: int, max_position: int) -> jax.Array:
    """DeBERTa's bucket of each signed distance: exact below `bucket_size / 2`, log-spaced above.

    The same float32 arithmetic as Hugging Face's `make_log_bucket_position`, so that the
    `ceil` lands on the same bucket.
    """
    mid = bucket_size // 2
    inside = (distance < mid) & (distance > -mid)
    magnitude = jnp.where(inside, mid - 1, jnp.abs(distance)).astype(jnp.float32)
    log_ratio = jnp.log(magnitude / mid) / jnp.log(jnp.float32((max_position - 1) / mid))
    log_position = jnp.ceil(log_ratio * (mid - 1)) + mid
    bucketed = jnp.where(magnitude <= mid, distance, log_position * jnp.sign(distance))
    return bucketed.astype(jnp.int32)


def relative_index(config: DebertaConfig, query_pos_BxQ, key_pos_BxL) -> jax.Array:
    """`[B, Q, L]` rows of the relative-position table for each query and key."""
    distance = query_pos_BxQ[:, :, None] - key_pos_BxL[:, None, :]
    if config.position_buckets > 0 and config.max_relative_positions > 0:
        distance = log_bucket(distance, config.position_buckets, config.max_relative_positions)
    span = config.attention_span
    return jnp.clip(distance + span, 0, 2 * span - 1)


class _DisentangledSelfAttention(nn.Module):
    """Content-to-content plus the c2p and p2c terms, an additive padding mask, fp32 softmax."""

    config: DebertaConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxLxD, attention_bias, queries_BxQxD, index_BxQxL, rel_table_RxD):
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        query_proj = encoder_lib._dense(cfg.hidden_size, self.dtype, "query_proj")
        key_proj = encoder_lib._dense(cfg.hidden_size, self.dtype, "key_proj")

        def split(x):  # [..., T, D] -> [..., T, H, d]
            return x.reshape(*x.shape[:-1], heads, head_dim)

        q = split(query_proj(queries_BxQxD)).swapaxes(1, 2)  # [B, H, Q, d]
        k = split(key_proj(h_BxLxD)).swapaxes(1, 2)  # [B, H, L, d]
        v = split(encoder_lib._dense(cfg.hidden_size, self.dtype, "value_proj")(h_BxLxD))
        scale = (head_dim * (1 + len(cfg.pos_att_type))) ** -0.5
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        rel = rel_table_RxD.astype(self.dtype)
        if "c2p" in cfg.pos_att_type:  # q_i . K_rel[delta(i, j)]
            rel_keys_RxHxd = split(key_proj(rel))
            c2p = jnp.einsum(
                "bhqd,rhd->bhqr", q, rel_keys_RxHxd, preferred_element_type=jnp.float32
            )
            scores += jnp.take_along_axis(c2p, index_BxQxL[:, None], axis=-1)
        if "p2c" in cfg.pos_att_type:  # k_j . Q_rel[delta(i, j)]
            rel_queries_RxHxd = split(query_proj(rel))
            p2c = jnp.einsum(
                "bhkd,rhd->bhkr", k, rel_queries_RxHxd, preferred_element_type=jnp.float32
            )
            index_BxLxQ = index_BxQxL.swapaxes(1, 2)
            scores += jnp.take_along_axis(p2c, index_BxLxQ[:, None], axis=-1).swapaxes(2, 3)
        probs = jax.nn.softmax(scores * scale + attention_bias, axis=-1)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        return context.reshape(*queries_BxQxD.shape[:-1], cfg.hidden_size)


class _Attention(nn.Module):
    config: DebertaConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, queries, index, rel_table):
        context = _DisentangledSelfAttention(self.config, self.dtype, name="self")(
            h, attention_bias, queries, index, rel_table
        )
        return encoder_lib._Output(self.config, self.dtype, name="output")(context, queries)


class _Layer(nn.Module):
    """One post-LayerNorm layer; with `output_rows`, only those rows are queries and outputs."""

    config: DebertaConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, index, rel_table, output_rows=None):
        cfg = self.config
        queries = h if output_rows is None else encoder_lib.gather_rows(h, output_rows)
        h = _Attention(cfg, self.dtype, name="attention")(
            h, attention_bias, queries, index, rel_table
        )
        z = encoder_lib._Intermediate(cfg, self.dtype, name="intermediate")(h)
        return encoder_lib._Output(cfg, self.dtype, cfg.adapter_size, name="output")(z, h)


class _RelativeTable(nn.Module):
    """The relative-position embeddings (param `embedding`, as the checkpoint's `weight`)."""

    rows: int
    features: int

    @nn.compact
    def __call__(self):
        return self.param("embedding", encoder_lib._INIT, (self.rows, self.features), jnp.float32)


class _LayerStack(nn.Module):
    """The `encoder/layer` scope: layers named "0", "1", ... as in the checkpoints."""

    config: DebertaConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, position_ids, rel_table, output_rows=None):
        cfg = self.config
        layer_cls = nn.remat(_Layer) if cfg.remat else _Layer
        index = relative_index(cfg, position_ids, position_ids)
        last = cfg.num_hidden_layers - 1
        for i in range(cfg.num_hidden_layers):
            rows = output_rows if i == last else None
            if rows is not None:  # The last layer's queries are these rows only.
                query_positions = jnp.take_along_axis(position_ids, rows, axis=1)
                index = relative_index(cfg, query_positions, position_ids)
            h = layer_cls(cfg, self.dtype, name=str(i))(h, attention_bias, index, rel_table, rows)
        return h


class _TransformerEncoder(nn.Module):
    """The `encoder` scope: the relative-position table, its LayerNorm and `layer`."""

    config: DebertaConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, position_ids, output_rows=None):
        cfg = self.config
        rel_table = _RelativeTable(2 * cfg.attention_span, cfg.hidden_size, name="rel_embeddings")()
        if cfg.norm_rel_ebd:  # Once for all layers, as Hugging Face does.
            rel_table = encoder_lib._layer_norm(cfg, jnp.float32)(rel_table)
        return _LayerStack(cfg, self.dtype, name="layer")(
            h, attention_bias, position_ids, rel_table, output_rows
        )


class _Embeddings(nn.Module):
    """Word (+ token type) embeddings, LayerNorm, then padding rows zeroed as Hugging Face does."""

    config: DebertaConfig
    dtype: Any

    @nn.compact
    def __call__(self, input_ids, inputs_embeds, token_type_ids, attention_mask):
        cfg = self.config
        words = encoder_lib._Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")
        if inputs_embeds is None:
            inputs_embeds = words(input_ids)
        elif self.is_initializing():
            words(jnp.zeros((1, 1), jnp.int32))
        h = inputs_embeds.astype(jnp.float32)
        if cfg.type_vocab_size > 0:
            h += encoder_lib._Embed(
                cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings"
            )(token_type_ids)
        h = encoder_lib._layer_norm(cfg, self.dtype)(h)
        return h * jnp.asarray(attention_mask)[..., None].astype(h.dtype)


class DebertaEncoder(nn.Module):
    """DeBERTa-v3 encoder returning the last hidden states; always deterministic.

    Attributes:
        config: the encoder shape and options.
        dtype: compute dtype; params are always fp32.
    """

    config: DebertaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_rows=None,
    ) -> jax.Array:
        """Encodes a batch; the arguments and result are those of `encoder.Encoder`.

        `position_ids` only set the relative distances (default `0 .. L-1`); `token_type_ids`
        are read only when the checkpoint has token types.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if attention_mask is None:
            attention_mask = jnp.ones(shape, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(shape, jnp.int32)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        h = _Embeddings(self.config, self.dtype, name="embeddings")(
            input_ids, inputs_embeds, token_type_ids, attention_mask
        )
        attention_bias = jnp.where(
            jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min
        )
        h = _TransformerEncoder(self.config, self.dtype, name="encoder")(
            h, attention_bias, jnp.asarray(position_ids, jnp.int32), output_rows
        )
        return h.astype(self.dtype)
