"""Flax RoBERTa / BERT encoder (checkpoints are loaded by `pretrained.py`).

The encoder is InfoPrompt's frozen `Phi` (docs/design.md, "The forward pass"): a post-LayerNorm
transformer that also takes `inputs_embeds` (for prompt vectors) and explicit `position_ids`, and
never drops out. Module and parameter names follow the Hugging Face checkpoint names, so loading a
checkpoint is a rename plus a transpose of the PyTorch `Linear` weights.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

_INIT = nn.initializers.normal(stddev=0.02)  # Hugging Face's default `initializer_range`.
ATTENTION_KINDS = ("einsum", "fused")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and flavour of a RoBERTa or BERT encoder."""

    family: str  # "roberta" or "bert": decides the default position ids.
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    hidden_act: str = "gelu"  # Exact (erf) gelu, Hugging Face's "gelu"; the only one supported.
    adapter_size: int = 0  # Width of one bottleneck adapter per layer; 0: no adapters.
    remat: bool = False  # Recompute each layer's activations in the backward pass.
    # "einsum": our two batched matmuls around an fp32 softmax. "fused":
    # jax.nn.dot_product_attention, cuDNN's flash attention on a GPU (bf16/fp16), XLA elsewhere.
    attention: str = "einsum"

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r}; choose one of {ATTENTION_KINDS}.")
        if self.family not in ("roberta", "bert"):
            raise ValueError(f"family must be 'roberta' or 'bert', got {self.family!r}.")
        if self.hidden_act != "gelu":
            raise ValueError(
                f"Unsupported hidden_act {self.hidden_act!r}: only the exact "
                "'gelu' of RoBERTa and BERT is implemented."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}."
            )


def position_ids_from_mask(config: EncoderConfig, attention_mask: jax.Array) -> jax.Array:
    """Position ids the pretrained model expects for a (possibly padded) batch.

    RoBERTa numbers real tokens from `pad + 1` and puts padding at `pad`; BERT uses `0 .. L-1`.
    From `inputs_embeds` the encoder cannot see the padding, so the prompted pass passes these.

    Args:
        config: the encoder config.
        attention_mask: `[B, L]`, 1 on real tokens and 0 on padding.

    Returns:
        `[B, L]` int32 position ids.
    """
    mask = jnp.asarray(attention_mask).astype(jnp.int32)
    if config.family == "roberta":
        return jnp.cumsum(mask, axis=1) * mask + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(mask.shape[1], dtype=jnp.int32), mask.shape)


def _layer_norm(config: EncoderConfig, dtype) -> nn.LayerNorm:
    # Two-pass variance as PyTorch computes it (parity); flax keeps the statistics in fp32.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name="LayerNorm",
    )


def _dense(features: int, dtype, name: str, init=_INIT) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _gelu(x):
    # Exact gelu in PyTorch's own form, x/2 (1 + erf(x/sqrt 2)). jax.nn.gelu's erfc form is the
    # same function, but XLA:CPU evaluates erfc about 2.5 times slower than erf.
    return 0.5 * x * (1.0 + jax.lax.erf(x * 2**-0.5))


def embedding_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """`table[ids]`, also under a mesh with explicit axes (`jax.make_mesh`'s default).

    There a gather must be told its output sharding: that of `ids` (e.g. batch-sharded), with
    the feature axis unsharded. Without a mesh this is a plain gather.

    Args:
        table: `[N, D]` embedding table.
        ids: integer ids of any shape `S`.

    Returns:
        `[*S, D]` rows of `table`.
    """
    sharding = jax.typeof(ids).sharding
    return table.at[ids].get(out_sharding=sharding.update(spec=P(*sharding.spec, None)))


class _Embed(nn.Module):
    """An embedding table (param `embedding`, as `nn.Embed` names it) and its lookup."""

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, ids):
        table = self.param("embedding", _INIT, (self.num_embeddings, self.features), jnp.float32)
        return embedding_lookup(table, jnp.asarray(ids))


class _Embeddings(nn.Module):
    """Word (+ position, + token type) embeddings, then LayerNorm."""

    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, input_ids, inputs_embeds, token_type_ids, position_ids):
        cfg = self.config
        words = _Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")
        if inputs_embeds is None:
            inputs_embeds = words(input_ids)
        elif self.is_initializing():
            words(jnp.zeros((1, 1), jnp.int32))  # The table exists whichever input init sees.
        # Summed in fp32 whatever the compute dtype: a LayerNorm follows at once.
        h = inputs_embeds.astype(jnp.float32)
        h += _Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embeddings")(
            position_ids
        )
        h += _Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(
            token_type_ids
        )
        return _layer_norm(cfg, self.dtype)(h)


class Adapter(nn.Module):
    """Bottleneck adapter `h + up(gelu(down(h)))`; `up` starts at zero, so it starts as identity."""

    adapter_size: int
    dtype: Any

    @nn.compact
    def __call__(self, h):
        z = _gelu(_dense(self.adapter_size, self.dtype, "down")(h))
        return h + _dense(h.shape[-1], self.dtype, "up", init=nn.initializers.zeros)(z)


class _Output(nn.Module):
    """`LayerNorm(residual + dense(h))`, with an optional adapter after the dense layer."""

    config: EncoderConfig
    dtype: Any
    adapter_size: int = 0

    @nn.compact
    def __call__(self, h, residual):
        h = _dense(self.config.hidden_size, self.dtype, "dense")(h)
        if self.adapter_size:
            h = Adapter(self.adapter_size, self.dtype, name="adapter")(h)
        return _layer_norm(self.config, self.dtype)(h + residual)


def gather_rows(h_BxLxD: jax.Array, rows_BxR: jax.Array) -> jax.Array:
    """`h[b, rows[b, r]]` as `[B, R, D]`."""
    return jnp.take_along_axis(h_BxLxD, rows_BxR[..., None], axis=1)


def fused_attention_implementation(dtype) -> str:
    """`jax.nn.dot_product_attention`'s kernel for `attention="fused"`: cuDNN where it runs.

    cuDNN's flash attention needs a CUDA GPU and half-precision inputs; elsewhere (CPU, TPU,
    float32) XLA's own implementation computes the same function.
    """
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


class _SelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask; scores and softmax in fp32."""

    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h_BxLxD, attention_bias, queries_BxQxD):
        """Attention of the `queries` rows (all of `h`, or a few of them) over every row of h."""
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads

        def heads(name, x_BxTxD):  # [B, T, H, d]
            x = _dense(cfg.hidden_size, self.dtype, name)(x_BxTxD)
            return x.reshape(*x.shape[:-1], cfg.num_attention_heads, head_dim)

        q, k, v = heads("query", queries_BxQxD), heads("key", h_BxLxD), heads("value", h_BxLxD)
        # cuDNN's kernel needs an even query count: the last layer's few `output_rows` (one or
        # two, and tiny work) take the einsum path.
        if cfg.attention == "fused" and queries_BxQxD.shape[1] == h_BxLxD.shape[1]:
            context_BxQxHxd = self._fused(q, k, v, attention_bias, head_dim)
        else:
            context_BxQxHxd = self._einsum(q, k, v, attention_bias, head_dim)
        return context_BxQxHxd.reshape(*queries_BxQxD.shape[:-1], cfg.hidden_size)

    def _einsum(self, q_BxQxHxd, k_BxLxHxd, v_BxLxHxd, attention_bias, head_dim):
        """Two batched matmuls around an fp32 softmax, in heads-major [B, H, T, d] layout.

        Heads-major makes both products plain batched matmuls: the token-major layout made
        XLA:CPU transpose inside them, about 15% slower.
        """
        q, k, v = (x.swapaxes(1, 2) for x in (q_BxQxHxd, k_BxLxHxd, v_BxLxHxd))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores * head_dim**-0.5 + attention_bias, axis=-1)
        return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(self.dtype), v).swapaxes(1, 2)

    def _fused(self, q_BxQxHxd, k_BxLxHxd, v_BxLxHxd, attention_bias, head_dim):
        """The same attention through `jax.nn.dot_product_attention` (token-major layout)."""
        # A boolean mask, so each implementation picks a large negative its dtype holds (the fp32
        # minimum of `attention_bias` rounds to -inf in bf16). cuDNN wants it as [B, 1, Q, L].
        batch, num_queries = q_BxQxHxd.shape[:2]
        keep_Bx1xQxL = jnp.broadcast_to(
            attention_bias == 0, (batch, 1, num_queries, k_BxLxHxd.shape[1])
        )
        return jax.nn.dot_product_attention(
            q_BxQxHxd,
            k_BxLxHxd,
            v_BxLxHxd,
            mask=keep_Bx1xQxL,
            scale=head_dim**-0.5,
            implementation=fused_attention_implementation(self.dtype),
        )


class _Attention(nn.Module):
    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, queries):
        context = _SelfAttention(self.config, self.dtype, name="self")(h, attention_bias, queries)
        return _Output(self.config, self.dtype, name="output")(context, queries)


class _Intermediate(nn.Module):
    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h):
        return _gelu(_dense(self.config.intermediate_size, self.dtype, "dense")(h))


class _Layer(nn.Module):
    """One post-LayerNorm transformer layer; with `output_rows`, only those rows' outputs."""

    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, output_rows=None):
        cfg = self.config
        # Every row is still a key and a value; only the queries, the residual and the
        # feed-forward shrink to the rows asked for.
        queries = h if output_rows is None else gather_rows(h, output_rows)
        h = _Attention(cfg, self.dtype, name="attention")(h, attention_bias, queries)
        z = _Intermediate(cfg, self.dtype, name="intermediate")(h)
        return _Output(cfg, self.dtype, cfg.adapter_size, name="output")(z, h)


class _LayerStack(nn.Module):
    """The `encoder/layer` scope: layers named "0", "1", ... as in the checkpoints."""

    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, output_rows=None, layer_hook=None):
        layer_cls = nn.remat(_Layer) if self.config.remat else _Layer
        last = self.config.num_hidden_layers - 1
        for i in range(self.config.num_hidden_layers):
            if layer_hook is not None and i > 0:
                h = layer_hook(i, h)
            h = layer_cls(self.config, self.dtype, name=str(i))(
                h, attention_bias, output_rows if i == last else None
            )
        return h


class _TransformerEncoder(nn.Module):
    """The `encoder` scope, holding `layer`."""

    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, output_rows=None, layer_hook=None):
        return _LayerStack(self.config, self.dtype, name="layer")(
            h, attention_bias, output_rows, layer_hook
        )


class Encoder(nn.Module):
    """RoBERTa / BERT encoder returning the last hidden states; always deterministic.

    Attributes:
        config: the encoder shape.
        dtype: compute dtype; params are always fp32.
    """

    config: EncoderConfig
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
        layer_hook=None,
    ) -> jax.Array:
        """Encodes a batch.

        Args:
            input_ids: `[B, L]` token ids; exactly one of this and `inputs_embeds`.
            attention_mask: `[B, L]`, 1 on tokens to attend to; default all ones.
            token_type_ids: `[B, L]` segment ids; default zeros.
            position_ids: `[B, L]`; default as Hugging Face makes them: RoBERTa from `input_ids`
                `cumsum(ids != pad) * (ids != pad) + pad`, from `inputs_embeds` `pad+1 .. pad+L`;
                BERT `0 .. L-1`.
            inputs_embeds: `[B, L, D]` word embeddings to use instead of looking up `input_ids`.
            output_rows: `[B, R]` positions; when given, only these rows of the last layer are
                computed and returned (the same numbers as `h[b, output_rows[b]]` of the full
                output). A caller that reads a few states (the mask's, the first token's) saves
                most of the last layer's work.
            layer_hook: `hook(i, h) -> h`, called on the input `[B, L, D]` of every layer
                i >= 1 (M-IDPG writes its per-layer prompts there); None leaves the stack as is.

        Returns:
            `[B, L, D]` last-layer hidden states in `self.dtype`, or `[B, R, D]` with
            `output_rows`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        if attention_mask is None:
            attention_mask = jnp.ones(shape, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(shape, jnp.int32)
        if position_ids is None:
            position_ids = self._default_position_ids(input_ids, shape)
        h = _Embeddings(self.config, self.dtype, name="embeddings")(
            input_ids, inputs_embeds, token_type_ids, position_ids
        )
        # [B, 1, 1, L]: the fp32 minimum as Hugging Face uses, since scores are fp32.
        attention_bias = jnp.where(
            jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min
        )
        h = _TransformerEncoder(self.config, self.dtype, name="encoder")(
            h, attention_bias, output_rows, layer_hook
        )
        return h.astype(self.dtype)

    def _default_position_ids(self, input_ids, shape):
        cfg = self.config
        if cfg.family == "bert":
            return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
        if input_ids is not None:
            return position_ids_from_mask(cfg, input_ids != cfg.pad_token_id)
        # Hugging Face cannot see padding in embeddings, so it numbers every slot from pad + 1.
        return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32) + cfg.pad_token_id + 1, shape)
