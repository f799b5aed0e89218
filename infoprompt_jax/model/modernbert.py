"""Flax ModernBERT encoder (Hugging Face `model_type` "modernbert").

A pre-LayerNorm transformer without absolute positions: token embeddings and their LayerNorm,
then layers that rotate queries and keys by their positions (RoPE, with one theta for the global
layers and another for the local ones), attend either to every token (`full_attention`) or to the
tokens within `local_attention / 2` of the query (`sliding_attention`, every layer but each
`global_attn_every_n_layers`-th), and end in a gated-GELU MLP; a final LayerNorm closes the stack.
The layers have no biases unless the checkpoint says so.

The module takes the same arguments as `encoder.Encoder`. Parameter names follow the checkpoint
(`layers/{i}/attn/Wqkv`, `layers/{i}/mlp/Wi`, `final_norm`, ...), except that the token table
`embeddings.tok_embeddings` is loaded as `embeddings/word_embeddings`, the name every other part
of the project reads the word embeddings by.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from infoprompt_jax.model import encoder as encoder_lib

FULL, SLIDING = "full_attention", "sliding_attention"


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    """Shape and options of a ModernBERT encoder (`pretrained.py` builds it from config.json)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float  # config.json's norm_eps.
    pad_token_id: int
    layer_types: tuple[str, ...]  # FULL or SLIDING per layer.
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    local_attention: int = 128  # The whole window: a query sees keys within half of it.
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "gelu"
    adapter_size: int = 0
    remat: bool = False
    attention: str = "einsum"  # "fused": the global layers (and local ones whose window is moot).
    type_vocab_size: int = 0  # No token types.
    family: str = "modernbert"

    def __post_init__(self):
        if self.attention not in encoder_lib.ATTENTION_KINDS:
            raise ValueError(
                f"attention={self.attention!r}; choose one of {encoder_lib.ATTENTION_KINDS}."
            )
        if self.hidden_act != "gelu":
            raise ValueError(
                f"hidden_activation={self.hidden_act!r}: only ModernBERT's exact 'gelu' is "
                "implemented."
            )
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {
            FULL,
            SLIDING,
        }:
            raise ValueError(
                f"layer_types={list(self.layer_types)}: give one of {FULL!r}, {SLIDING!r} for "
                f"each of the {self.num_hidden_layers} layers."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}."
            )

    @property
    def half_window(self) -> int:
        """A local layer's query sees keys at most this many rows away."""
        return self.local_attention // 2


def _rope_thetas(hf: dict[str, Any]) -> tuple[float, float]:
    """(global, local) RoPE theta from transformers-5 `rope_parameters` or the older keys."""
    params = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling"):
        params = {FULL: hf["rope_scaling"], SLIDING: hf["rope_scaling"]}
    for kind in (FULL, SLIDING):
        rope_type = (params.get(kind) or {}).get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(
                f"ModernBERT rope_type={rope_type!r} for {kind} layers: only the default RoPE "
                "is implemented; use a checkpoint without RoPE scaling."
            )
    global_theta = (params.get(FULL) or {}).get(
        "rope_theta", hf.get("global_rope_theta", 160_000.0)
    )
    local_theta = (params.get(SLIDING) or {}).get(
        "rope_theta", hf.get("local_rope_theta", 10_000.0)
    )
    return float(global_theta), float(local_theta)


def config_from_hf(hf: dict[str, Any], **overrides) -> ModernBertConfig:
    """A `ModernBertConfig` from a ModernBERT `config.json` (transformers 4 or 5 keys).

    The PyTorch-only execution options (`reference_compile`, `deterministic_flash_attn`, the
    attention implementation) do not change the function and are ignored.

    Args:
        hf: the parsed `config.json`.
        **overrides: fields to set on top, e.g. `adapter_size=8`.

    Raises:
        ValueError: a setting this encoder does not implement, named with the fix.
    """
    layers = hf["num_hidden_layers"]
    every = hf.get("global_attn_every_n_layers", 3)
    layer_types = hf.get("layer_types") or [SLIDING if i % every else FULL for i in range(layers)]
    head_dim = hf.get("head_dim")
    if head_dim not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        raise ValueError(
            f"ModernBERT head_dim={head_dim} differs from hidden_size / num_attention_heads: "
            "not implemented; use a checkpoint without head_dim."
        )
    global_theta, local_theta = _rope_thetas(hf)
    return ModernBertConfig(
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
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        layer_norm_eps=hf.get("norm_eps", 1e-5),
        pad_token_id=hf.get("pad_token_id", 50283),
        layer_types=tuple(layer_types),
        global_rope_theta=global_theta,
        local_rope_theta=local_theta,
        local_attention=hf.get("local_attention", 128),
        norm_bias=hf.get("norm_bias", False),
        attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        hidden_act=hf.get("hidden_activation", "gelu"),
        **overrides,
    )


def position_ids_from_mask(attention_mask: jax.Array) -> jax.Array:
    """`0 .. L-1` on every row, as Hugging Face numbers ModernBERT tokens (padding is at the end)."""
    mask = jnp.asarray(attention_mask)
    return jnp.broadcast_to(jnp.arange(mask.shape[1], dtype=jnp.int32), mask.shape)


def _rope_cos_sin(position_ids_BxT, head_dim: int, theta: float, dtype):
    """`[B, T, d]` cos and sin of RoPE's angles, computed in fp32 as Hugging Face does."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(theta), exponents)).astype(np.float32)
    angles = position_ids_BxT.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def _rotate(x_BxTxHxd, cos_BxTxd, sin_BxTxd):
    """`x cos + rotate_half(x) sin` in fp32, back in x's dtype."""
    x = x_BxTxHxd.astype(jnp.float32)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    cos, sin = (t.astype(jnp.float32)[:, :, None, :] for t in (cos_BxTxd, sin_BxTxd))
    return (x * cos + rotated * sin).astype(x_BxTxHxd.dtype)


def _dense(features: int, dtype, name: str, use_bias: bool) -> nn.Dense:
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=encoder_lib._INIT,
        name=name,
    )


def _norm(config: ModernBertConfig, dtype, name: str) -> nn.LayerNorm:
    # Two-pass variance as PyTorch computes it; bias only where the checkpoint has one.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        use_bias=config.norm_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name=name,
    )


class _Attention(nn.Module):
    """RoPE self-attention over every row, global or within the window."""

    config: ModernBertConfig
    dtype: Any
    sliding: bool

    @nn.compact
    def __call__(self, h_BxLxD, key_bias, position_ids_BxL, query_rows_BxQ=None):
        """Attention of every row, or of the `query_rows` only, over every row of `h`."""
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        batch, length = h_BxLxD.shape[:2]
        qkv = _dense(3 * cfg.hidden_size, self.dtype, "Wqkv", cfg.attention_bias)(h_BxLxD)
        q, k, v = (
            x[:, :, 0] for x in jnp.split(qkv.reshape(batch, length, 3, heads, head_dim), 3, 2)
        )
        if query_rows_BxQ is None:
            query_rows_BxQ = jnp.broadcast_to(jnp.arange(length), (batch, length))
        else:  # One fused projection for all rows; the few query rows are picked from it.
            q = jnp.take_along_axis(q, query_rows_BxQ[:, :, None, None], axis=1)
        theta = cfg.local_rope_theta if self.sliding else cfg.global_rope_theta
        query_positions = jnp.take_along_axis(position_ids_BxL, query_rows_BxQ, axis=1)
        q = _rotate(q, *_rope_cos_sin(query_positions, head_dim, theta, self.dtype))
        k = _rotate(k, *_rope_cos_sin(position_ids_BxL, head_dim, theta, self.dtype))
        # A window wider than the sequence masks nothing: the layer is then a global one.
        windowed = self.sliding and length - 1 > cfg.half_window
        # cuDNN's kernel takes no two-sided window, and needs an even query count (the last
        # layer's few output rows take the einsum path, as in `encoder.py`).
        if cfg.attention == "fused" and not windowed and q.shape[1] == length:
            context = self._fused(q, k, v, key_bias, head_dim)
        else:
            bias = key_bias
            if windowed:  # Rows, not position ids, as Hugging Face counts the window.
                distance = jnp.abs(query_rows_BxQ[:, :, None] - jnp.arange(length))
                far_Bx1xQxL = (distance > cfg.half_window)[:, None]
                bias = jnp.where(far_Bx1xQxL, jnp.finfo(jnp.float32).min, key_bias)
            context = self._einsum(q, k, v, bias, head_dim)
        out = context.reshape(*context.shape[:2], cfg.hidden_size)
        return _dense(cfg.hidden_size, self.dtype, "Wo", cfg.attention_bias)(out)

    def _einsum(self, q, k, v, bias, head_dim):
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores * head_dim**-0.5 + bias, axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)

    def _fused(self, q, k, v, key_bias, head_dim):
        batch, length = q.shape[:2]
        keep_Bx1xLxL = jnp.broadcast_to(key_bias == 0, (batch, 1, length, length))
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            mask=keep_Bx1xLxL,
            scale=head_dim**-0.5,
            implementation=encoder_lib.fused_attention_implementation(self.dtype),
        )


class _Mlp(nn.Module):
    """Gated GELU: `Wo(gelu(input) * gate)` with `[input, gate] = Wi(h)`; then the adapter."""

    config: ModernBertConfig
    dtype: Any

    @nn.compact
    def __call__(self, h):
        cfg = self.config
        up, gate = jnp.split(
            _dense(2 * cfg.intermediate_size, self.dtype, "Wi", cfg.mlp_bias)(h), 2, -1
        )
        out = _dense(cfg.hidden_size, self.dtype, "Wo", cfg.mlp_bias)(encoder_lib._gelu(up) * gate)
        if cfg.adapter_size:
            out = encoder_lib.Adapter(cfg.adapter_size, self.dtype, name="adapter")(out)
        return out


class _Layer(nn.Module):
    """`h + attn(attn_norm(h))`, then `+ mlp(mlp_norm(.))`; layer 0 has no attn_norm."""

    config: ModernBertConfig
    dtype: Any
    index: int

    @nn.compact
    def __call__(self, h, key_bias, position_ids, output_rows=None):
        cfg = self.config
        normed = h if self.index == 0 else _norm(cfg, self.dtype, "attn_norm")(h)
        # Every row is still a key and a value; with `output_rows` only those rows are queries,
        # residuals and outputs.
        residual = h if output_rows is None else encoder_lib.gather_rows(h, output_rows)
        sliding = cfg.layer_types[self.index] == SLIDING
        h = residual + _Attention(cfg, self.dtype, sliding, name="attn")(
            normed, key_bias, position_ids, output_rows
        )
        return h + _Mlp(cfg, self.dtype, name="mlp")(_norm(cfg, self.dtype, "mlp_norm")(h))


class _LayerStack(nn.Module):
    """The `layers` scope: layers named "0", "1", ... as in the checkpoints."""

    config: ModernBertConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, key_bias, position_ids, output_rows=None):
        layer_cls = nn.remat(_Layer) if self.config.remat else _Layer
        last = self.config.num_hidden_layers - 1
        for i in range(self.config.num_hidden_layers):
            h = layer_cls(self.config, self.dtype, i, name=str(i))(
                h, key_bias, position_ids, output_rows if i == last else None
            )
        return h


class _Embeddings(nn.Module):
    """The token embeddings (or `inputs_embeds`) and their LayerNorm."""

    config: ModernBertConfig
    dtype: Any

    @nn.compact
    def __call__(self, input_ids, inputs_embeds):
        cfg = self.config
        words = encoder_lib._Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")
        if inputs_embeds is None:
            inputs_embeds = words(input_ids)
        elif self.is_initializing():
            words(jnp.zeros((1, 1), jnp.int32))
        return _norm(cfg, self.dtype, "norm")(inputs_embeds.astype(jnp.float32))


class ModernBertEncoder(nn.Module):
    """ModernBERT encoder returning the final-norm hidden states; always deterministic.

    Attributes:
        config: the encoder shape and options.
        dtype: compute dtype; params are always fp32.
    """

    config: ModernBertConfig
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

        `position_ids` (default `0 .. L-1`) set the RoPE angles; the local window is counted in
        rows, as Hugging Face counts it. `token_type_ids` are accepted and unused: ModernBERT has
        no token types.
        """
        del token_type_ids
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if attention_mask is None:
            attention_mask = jnp.ones(shape, jnp.int32)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        h = _Embeddings(self.config, self.dtype, name="embeddings")(input_ids, inputs_embeds)
        key_bias = jnp.where(
            jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min
        )
        h = _LayerStack(self.config, self.dtype, name="layers")(
            h, key_bias, jnp.asarray(position_ids, jnp.int32), output_rows
        )
        return _norm(self.config, self.dtype, "final_norm")(h).astype(self.dtype)
