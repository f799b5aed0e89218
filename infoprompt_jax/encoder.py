"""Flax RoBERTa / BERT encoder and Hugging Face weight loading.

The encoder is InfoPrompt's frozen `Phi` (docs/design.md, "The forward pass"): a post-LayerNorm
transformer that also takes `inputs_embeds` (for prompt vectors) and explicit `position_ids`, and
never drops out. Module and parameter names follow the Hugging Face checkpoint names, so loading a
checkpoint is a rename plus a transpose of the PyTorch `Linear` weights.
"""

import dataclasses
import hashlib
import json
import pathlib
import struct
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util
from jax.sharding import PartitionSpec as P

_INIT = nn.initializers.normal(stddev=0.02)  # Hugging Face's default `initializer_range`.
# model_type -> (family, defaults of the fields a config.json may leave out).
_ROBERTA = ("roberta", {"pad_token_id": 1, "type_vocab_size": 1, "layer_norm_eps": 1e-5})
_BERT = ("bert", {"pad_token_id": 0, "type_vocab_size": 2, "layer_norm_eps": 1e-12})
_MODEL_TYPES = {"roberta": _ROBERTA, "xlm-roberta": _ROBERTA, "camembert": _ROBERTA, "bert": _BERT}
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_FLAX_MSGPACK = "flax_model.msgpack"
_PYTORCH_BIN = "pytorch_model.bin"
_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
]
# Checkpoint keys of the MLM head, the pooler and non-weight buffers: not the encoder's.
_IGNORED_PREFIXES = ("lm_head.", "cls.", "pooler.")
_IGNORED_BUFFERS = ("position_ids", "token_type_ids")
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

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides) -> "EncoderConfig":
        """Builds a config from a Hugging Face `config.json` dict.

        Args:
            hf: the parsed `config.json`.
            **overrides: fields to set on top, e.g. `adapter_size=8`.

        Returns:
            The matching `EncoderConfig`.

        Raises:
            ValueError: a model type or option this encoder does not implement.
        """
        model_type = hf.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"Unsupported model_type {model_type!r}; supported: "
                f"{', '.join(_MODEL_TYPES)} (RoBERTa and BERT encoders)."
            )
        family, defaults = _MODEL_TYPES[model_type]
        if (hf.get("position_embedding_type") or "absolute") != "absolute":
            raise ValueError(
                f"Unsupported position_embedding_type "
                f"{hf['position_embedding_type']!r}: only 'absolute' is implemented."
            )
        hidden_act = hf.get("hidden_act", "gelu")
        optional = {k: default if hf.get(k) is None else hf[k] for k, default in defaults.items()}
        return cls(
            family=family,
            hidden_act="gelu" if hidden_act == "gelu_python" else hidden_act,  # Same function.
            **{
                k: hf[k]
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "max_position_embeddings",
                )
            },
            **optional,
            **overrides,
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


class _Adapter(nn.Module):
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
            h = _Adapter(self.adapter_size, self.dtype, name="adapter")(h)
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
    def __call__(self, h, attention_bias, output_rows=None):
        layer_cls = nn.remat(_Layer) if self.config.remat else _Layer
        last = self.config.num_hidden_layers - 1
        for i in range(self.config.num_hidden_layers):
            h = layer_cls(self.config, self.dtype, name=str(i))(
                h, attention_bias, output_rows if i == last else None
            )
        return h


class _TransformerEncoder(nn.Module):
    """The `encoder` scope, holding `layer`."""

    config: EncoderConfig
    dtype: Any

    @nn.compact
    def __call__(self, h, attention_bias, output_rows=None):
        return _LayerStack(self.config, self.dtype, name="layer")(h, attention_bias, output_rows)


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
            h, attention_bias, output_rows
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


# ------------------------------------------------------------------------------------------------
# Loading Hugging Face checkpoints.


def resolve_model_dir(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A local directory for a local path or a Hugging Face Hub id.

    Args:
        name_or_path: an existing directory (used as is) or a hub id such as "roberta-large".

    Returns:
        The directory holding `config.json`, the weights and the tokenizer files.

    Raises:
        FileNotFoundError: not a directory, and the hub could not be reached or lacks the id.
    """
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    try:
        import huggingface_hub  # pylint: disable=g-import-not-at-top  # Only for hub ids.

        # One weights format at a time, so a repo that ships three is not downloaded thrice.
        for weights in (
            [_SAFETENSORS, "model-*.safetensors", _SAFETENSORS_INDEX],
            [_FLAX_MSGPACK],
            [_PYTORCH_BIN],
        ):
            local = pathlib.Path(
                huggingface_hub.snapshot_download(
                    str(name_or_path), allow_patterns=["config.json", *_TOKENIZER_FILES, *weights]
                )
            )
            if _find_weights(local)[1]:
                break
        return local
    except Exception as e:  # pylint: disable=broad-except  # Offline, unknown or malformed id.
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a local directory, and the Hugging Face Hub could not "
            f"be reached or does not know that id ({type(e).__name__}: {e}). Pass a local "
            "directory containing config.json and model.safetensors, e.g. "
            "--config.model.name=/path/to/dir."
        ) from e


def _find_weights(model_dir: pathlib.Path) -> tuple[str, list[pathlib.Path]]:
    """The first weights format present, and its files (shards in sorted order)."""
    if (model_dir / _SAFETENSORS).is_file():
        return _SAFETENSORS, [model_dir / _SAFETENSORS]
    if (model_dir / _SAFETENSORS_INDEX).is_file():
        shards = json.loads((model_dir / _SAFETENSORS_INDEX).read_text())["weight_map"].values()
        return _SAFETENSORS_INDEX, [model_dir / f for f in sorted(set(shards))]
    for name in (_FLAX_MSGPACK, _PYTORCH_BIN):
        if (model_dir / name).is_file():
            return name, [model_dir / name]
    return "", []


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    # Parsed by hand because safetensors.numpy cannot hold bf16, which many checkpoints use.
    # The format: 8-byte little-endian header size, a JSON header, then the raw tensors.
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    header.pop("__metadata__", None)
    return {
        name: np.asarray(data[slice(*info["data_offsets"])])
        .view(_SAFETENSORS_DTYPES[info["dtype"]])
        .reshape(info["shape"])
        for name, info in header.items()
    }


def _read_pytorch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch  # pylint: disable=g-import-not-at-top  # Optional dependency.
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch checkpoint: `pip install torch` to read it, or "
            "convert it to model.safetensors."
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    # numpy has no bf16, so floating tensors come out as fp32.
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def read_state_dict(model_dir: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a checkpoint's tensors as `{dotted Hugging Face name: array}`.

    Looks for, in order: `model.safetensors`, `model.safetensors.index.json` (sharded),
    `flax_model.msgpack` (nested names joined with dots, Flax layouts), `pytorch_model.bin`.

    Args:
        model_dir: the checkpoint directory.

    Returns:
        The tensors, with the checkpoint's own names, layouts and dtypes.

    Raises:
        FileNotFoundError: none of those files is there.
    """
    model_dir = pathlib.Path(model_dir)
    kind, files = _find_weights(model_dir)
    if kind in (_SAFETENSORS, _SAFETENSORS_INDEX):
        return {k: v for f in files for k, v in _read_safetensors(f).items()}
    if kind == _FLAX_MSGPACK:
        tree = serialization.msgpack_restore(files[0].read_bytes())
        return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep=".").items()}
    if kind == _PYTORCH_BIN:
        return _read_pytorch_bin(files[0])
    raise FileNotFoundError(
        f"No weights in {model_dir}: looked for {_SAFETENSORS}, "
        f"{_SAFETENSORS_INDEX}, {_FLAX_MSGPACK} and {_PYTORCH_BIN}."
    )


def _read_config(model_dir: pathlib.Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No config.json in {model_dir}: a model directory needs the "
            "Hugging Face config.json next to its weights."
        )
    return json.loads(path.read_text())


def _strip_model_prefix(name: str) -> str:
    for prefix in ("roberta.", "bert.", "model."):  # Task-model checkpoints nest the encoder.
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _to_flax(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """A dotted checkpoint name as a "/" param path, with PyTorch Linear weights transposed."""
    *module, leaf = name.split(".")
    if module and module[-1] in ("LayerNorm", "layer_norm"):
        leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
    elif module and module[-1].endswith("embeddings"):
        leaf = {"weight": "embedding"}.get(leaf, leaf)
    elif leaf == "weight":
        leaf, value = "kernel", value.T  # torch Linear is [out, in]; Flax Dense is [in, out].
    return "/".join([*module, leaf]), value


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") + f" ({len(names)})"


def _init_adapters(encoder: Encoder, rng: jax.Array) -> dict[str, jax.Array]:
    """The adapters' params alone: the whole model's `init` would allocate every weight."""
    cfg, flat = encoder.config, {}
    for i in range(cfg.num_hidden_layers):
        variables = _Adapter(cfg.adapter_size, encoder.dtype).init(
            jax.random.fold_in(rng, i), jnp.zeros((1, 1, cfg.hidden_size))
        )
        for path, value in traverse_util.flatten_dict(variables["params"], sep="/").items():
            flat[f"encoder/layer/{i}/output/adapter/{path}"] = value
    return flat


def load_pretrained(
    name_or_path: str | pathlib.Path,
    dtype=jnp.float32,
    *,
    adapter_size: int = 0,
    remat: bool = False,
    attention: str = "einsum",
    rng: jax.Array | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """Loads a pretrained RoBERTa / BERT encoder.

    Args:
        name_or_path: a local directory or a Hugging Face Hub id.
        dtype: the encoder's compute dtype (params stay fp32).
        adapter_size: when > 0, adds adapters of this width, freshly initialised.
        remat: recompute layer activations in the backward pass.
        attention: "einsum" or "fused" (`EncoderConfig.attention`).
        rng: key for the adapters' initialisation; default `PRNGKey(0)`.

    Returns:
        `(encoder, params)`: the module, and fp32 params as a nested dict without the
        "params" collection level (apply with `encoder.apply({"params": params}, ...)`).

    Raises:
        ValueError: unexpected or missing checkpoint keys, or shapes that differ from the model's.
    """
    model_dir = resolve_model_dir(name_or_path)
    config = EncoderConfig.from_hf_config(
        _read_config(model_dir), adapter_size=adapter_size, remat=remat, attention=attention
    )
    encoder = Encoder(config, dtype=dtype)
    expected = traverse_util.flatten_dict(
        jax.eval_shape(encoder.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"],
        sep="/",
    )

    flat, unexpected = {}, []
    for name, value in read_state_dict(model_dir).items():
        name = _strip_model_prefix(name)
        if name.startswith(_IGNORED_PREFIXES) or name.split(".")[-1] in _IGNORED_BUFFERS:
            continue
        path, value = _to_flax(name, value)
        if path in expected and path not in flat:
            flat[path] = value
        else:
            unexpected.append(name)
    missing = [p for p in expected if p not in flat and "/adapter/" not in p]
    if unexpected:
        raise ValueError(
            f"Unexpected keys in the checkpoint in {model_dir}: {_listing(unexpected)}"
        )
    if missing:
        raise ValueError(f"Params missing from the checkpoint in {model_dir}: {_listing(missing)}")

    params = {p: jnp.asarray(np.asarray(v, dtype=np.float32)) for p, v in flat.items()}
    if adapter_size:
        params.update(_init_adapters(encoder, jax.random.PRNGKey(0) if rng is None else rng))
    for path, value in params.items():  # The tree must be exactly the one `init` makes.
        if value.shape != expected[path].shape:
            raise ValueError(
                f"Shape mismatch at {path}: checkpoint {value.shape}, model {expected[path].shape}."
            )
    assert params.keys() == expected.keys(), sorted(params.keys() ^ expected.keys())
    return encoder, traverse_util.unflatten_dict(params, sep="/")


def load_mlm_transform(name_or_path: str | pathlib.Path) -> dict[str, Any] | None:
    """The pretrained MLM head's transform (dense, gelu, LayerNorm), or None without a head.

    Args:
        name_or_path: a local directory or a Hugging Face Hub id.

    Returns:
        `{"dense": {"kernel": [D, D], "bias": [D]}, "layer_norm": {"scale": [D], "bias": [D]}}`
        as fp32 arrays, from RoBERTa's `lm_head` or BERT's `cls.predictions.transform`.
    """
    state = read_state_dict(resolve_model_dir(name_or_path))
    state = {_strip_model_prefix(k): v for k, v in state.items()}
    for head in ("lm_head.", "cls.predictions.transform."):
        flat = dict(
            _to_flax(k.removeprefix(head), v)
            for k, v in state.items()
            if k.startswith(head + "dense.")
            or k.startswith(head + "LayerNorm.")
            or k.startswith(head + "layer_norm.")
        )
        if "dense/kernel" in flat:
            return traverse_util.unflatten_dict(
                {
                    p.replace("LayerNorm/", "layer_norm/"): jnp.asarray(np.asarray(v, np.float32))
                    for p, v in flat.items()
                },
                sep="/",
            )
    return None


def weights_checksum(name_or_path: str | pathlib.Path) -> str:
    """sha256 hex digest of the weights file(s), shards in sorted order.

    Used to check that an exported prompt is loaded against the encoder it was trained with.
    """
    model_dir = resolve_model_dir(name_or_path)
    _, files = _find_weights(model_dir)
    if not files:
        raise FileNotFoundError(f"No weights in {model_dir} to checksum.")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
