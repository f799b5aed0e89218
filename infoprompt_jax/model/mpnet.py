"""Flax MPNet encoder (e.g. all-mpnet-base-v2), loaded by `pretrained.py` like RoBERTa and BERT.

MPNet is a post-LayerNorm BERT layer stack with RoBERTa's positions (real tokens numbered from
pad + 1 = 2, padding at 1), no token-type embeddings, and a T5-style relative attention bias: one
`[32 buckets, heads]` table, shared by every layer, added to the attention scores according to
the bucket of each query-key distance. Hugging Face's `MPNetModel` takes that distance from the
sequence index (`key index - query index`), never from the position ids, so for the prompted pass
the prompt slots count like any token at their place in the templated sequence
(docs/design.md, "MPNet's relative positions").

Module and parameter names follow the checkpoint (`attention/attn/q`, `attention/LayerNorm`,
`encoder/relative_attention_bias`), so loading stays a rename plus a transpose.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from infoprompt_jax.model import encoder as encoder_lib

# Hugging Face computes the buckets with these two numbers whatever config.json says.
NUM_BUCKETS = 32
MAX_DISTANCE = 128
# MPNetEmbeddings numbers positions from padding index 1, whatever the config's pad_token_id.
PAD_POSITION = 1


@dataclasses.dataclass(frozen=True)
class MPNetConfig(encoder_lib.EncoderConfig):
    """An `EncoderConfig` with MPNet's relative attention bias.

    `family` is "roberta" (it decides the position ids, and MPNet numbers them as RoBERTa does)
    and `type_vocab_size` is 0 (MPNet has no token-type table).
    """

    relative_attention_num_buckets: int = NUM_BUCKETS

    def __post_init__(self):
        super().__post_init__()
        if self.relative_attention_num_buckets != NUM_BUCKETS or self.pad_token_id != PAD_POSITION:
            raise ValueError(
                f"MPNet with relative_attention_num_buckets={self.relative_attention_num_buckets}"
                f" and pad_token_id={self.pad_token_id}: Hugging Face's MPNetModel fixes them at "
                f"{NUM_BUCKETS} and {PAD_POSITION}; use a checkpoint whose config.json says so."
            )


def config_from_hf(hf: dict[str, Any], **overrides) -> MPNetConfig:
    """An `MPNetConfig` from a Hugging Face MPNet `config.json` dict (plus field overrides)."""
    shape = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
    )
    hidden_act = hf.get("hidden_act", "gelu")
    return MPNetConfig(
        family="roberta",
        type_vocab_size=0,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_token_id=hf.get("pad_token_id", PAD_POSITION),
        hidden_act="gelu" if hidden_act == "gelu_python" else hidden_act,  # Same function.
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", NUM_BUCKETS),
        **{k: hf[k] for k in shape},
        **overrides,
    )


def relative_position_buckets(length: int) -> np.ndarray:
    """`[L, L]` bucket of each (query i, key j) pair, as `MPNetEncoder.relative_position_bucket`.

    Distances under 8 get a bucket each, longer ones share log-spaced buckets up to 128, and
    the sign of `j - i` picks one half of the 32. The log is taken in float32, as in PyTorch, so
    that the distances at bucket edges fall on the same side.

    Args:
        length: the sequence length L (static).

    Returns:
        int32 buckets in `[0, 32)`.
    """
    index = np.arange(length)
    n = index[:, None] - index[None, :]  # -(key - query), Hugging Face's `n`.
    half = NUM_BUCKETS // 2
    buckets = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    ratio = np.maximum(n, 1).astype(np.float32) / np.float32(max_exact)
    scaled = (
        np.log(ratio)
        / np.float32(math.log(MAX_DISTANCE / max_exact))
        * np.float32(half - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return (buckets + np.where(n < max_exact, n, large)).astype(np.int32)


class _MPNetEmbeddings(nn.Module):
    """Word + position embeddings, then LayerNorm (no token types)."""

    config: MPNetConfig
    dtype: Any

    @nn.compact
    def __call__(self, input_ids, inputs_embeds, position_ids):
        cfg = self.config
        words = encoder_lib._Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")
        if inputs_embeds is None:
            inputs_embeds = words(input_ids)
        elif self.is_initializing():
            words(jnp.zeros((1, 1), jnp.int32))  # The table exists whichever input init sees.
        h = inputs_embeds.astype(jnp.float32)  # Summed in fp32: a LayerNorm follows at once.
        h += encoder_lib._Embed(
            cfg.max_position_embeddings, cfg.hidden_size, name="position_embeddings"
        )(position_ids)
        return encoder_lib._layer_norm(cfg, self.dtype)(h)


class _MPNetSelfAttention(nn.Module):
    """`o(softmax(q k^T / sqrt(d) + relative bias + mask) v)`; scores and softmax in fp32."""

    config: MPNetConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxLxD, mask_bias, position_bias, queries_BxQxD):
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads

        def heads(name, x_BxTxD):  # [B, T, H, d]
            x = encoder_lib._dense(cfg.hidden_size, self.dtype, name)(x_BxTxD)
            return x.reshape(*x.shape[:-1], cfg.num_attention_heads, head_dim)

        q, k, v = heads("q", queries_BxQxD), heads("k", h_BxLxD), heads("v", h_BxLxD)
        if cfg.attention == "fused" and queries_BxQxD.shape[1] == h_BxLxD.shape[1]:
            batch, num_queries = q.shape[:2]
            keep_Bx1xQxL = jnp.broadcast_to(mask_bias == 0, (batch, 1, num_queries, k.shape[1]))
            context = jax.nn.dot_product_attention(
                q,
                k,
                v,
                bias=position_bias.astype(self.dtype),
                mask=keep_Bx1xQxL,
                scale=head_dim**-0.5,
                implementation=encoder_lib.fused_attention_implementation(self.dtype),
            )
        else:  # Heads-major batched matmuls, as encoder.py's einsum path.
            q, k, v = (x.swapaxes(1, 2) for x in (q, k, v))
            scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
            scores = scores * head_dim**-0.5 + position_bias + mask_bias
            probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            context = jnp.einsum("bhqk,bhkd->bhqd", probs, v).swapaxes(1, 2)
        context = context.reshape(*queries_BxQxD.shape[:-1], cfg.hidden_size)
        return encoder_lib._dense(cfg.hidden_size, self.dtype, "o")(context)


class _MPNetAttention(nn.Module):
    config: MPNetConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, mask_bias, position_bias, queries):
        out = _MPNetSelfAttention(self.config, self.dtype, name="attn")(
            h, mask_bias, position_bias, queries
        )
        return encoder_lib._layer_norm(self.config, self.dtype)(out + queries)


class _MPNetLayer(nn.Module):
    """One post-LayerNorm layer; with `output_rows`, only those rows' outputs."""

    config: MPNetConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, mask_bias, position_bias, output_rows=None):
        cfg = self.config
        queries = h
        if output_rows is not None:  # Every row stays a key and a value.
            queries = encoder_lib.gather_rows(h, output_rows)
            # [B, H, R, L]: the bias rows of the queries kept.
            position_bias = jnp.take_along_axis(
                jnp.broadcast_to(position_bias, (h.shape[0], *position_bias.shape[1:])),
                output_rows[:, None, :, None],
                axis=2,
            )
        h = _MPNetAttention(cfg, self.dtype, name="attention")(h, mask_bias, position_bias, queries)
        z = encoder_lib._Intermediate(cfg, self.dtype, name="intermediate")(h)
        return encoder_lib._Output(cfg, self.dtype, cfg.adapter_size, name="output")(z, h)


class _MPNetLayerStack(nn.Module):
    """The `encoder/layer` scope: layers named "0", "1", ... as in the checkpoints."""

    config: MPNetConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, mask_bias, position_bias, output_rows=None):
        layer_cls = nn.remat(_MPNetLayer) if self.config.remat else _MPNetLayer
        last = self.config.num_hidden_layers - 1
        for i in range(self.config.num_hidden_layers):
            h = layer_cls(self.config, self.dtype, name=str(i))(
                h, mask_bias, position_bias, output_rows if i == last else None
            )
        return h


class _MPNetTransformer(nn.Module):
    """The `encoder` scope: the shared `relative_attention_bias` table and `layer`."""

    config: MPNetConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxLxD, mask_bias, output_rows=None):
        cfg = self.config
        table = encoder_lib._Embed(
            cfg.relative_attention_num_buckets,
            cfg.num_attention_heads,
            name="relative_attention_bias",
        )
        buckets_LxL = jnp.asarray(relative_position_buckets(h_BxLxD.shape[1]))
        # [1, H, L, L] in fp32, like the scores it is added to; the same for every example.
        position_bias = table(buckets_LxL).transpose(2, 0, 1)[None]
        return _MPNetLayerStack(cfg, self.dtype, name="layer")(
            h_BxLxD, mask_bias, position_bias, output_rows
        )


class MPNetEncoder(nn.Module):
    """MPNet encoder returning the last hidden states; always deterministic.

    Same call as `encoder_lib.Encoder` (`token_type_ids` is accepted and ignored: MPNet has no
    token types), so the model and the steps use either.

    Attributes:
        config: the encoder shape.
        dtype: compute dtype; params are always fp32.
    """

    config: MPNetConfig
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
        """Encodes a batch; the arguments are those of `encoder_lib.Encoder.__call__`."""
        del token_type_ids
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if attention_mask is None:
            attention_mask = jnp.ones(shape, jnp.int32)
        if position_ids is None:
            position_ids = self._default_position_ids(input_ids, shape)
        h = _MPNetEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, inputs_embeds, position_ids
        )
        mask_bias = jnp.where(
            jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min
        )
        h = _MPNetTransformer(self.config, self.dtype, name="encoder")(h, mask_bias, output_rows)
        return h.astype(self.dtype)

    def _default_position_ids(self, input_ids, shape):
        if input_ids is not None:
            return encoder_lib.position_ids_from_mask(self.config, input_ids != PAD_POSITION)
        # As Hugging Face, which cannot see padding in embeddings: every slot from pad + 1.
        return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32) + PAD_POSITION + 1, shape)
