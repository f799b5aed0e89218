"""Initial parameters: random where the method is new, pretrained where the checkpoint has them.

The encoder comes from the checkpoint, the head's MLM transform from the checkpoint's MLM head,
the class vectors from the verbalizer words' embeddings (WARP), the prompt generator and the
critics from random initialisers.
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from infoprompt_jax.model import models

Params = dict[str, Any]


def init_params(
    model: models.InfoPromptModel,
    rng: jax.Array,
    sample_batch: Mapping[str, Any],
    encoder_params: Params,
    *,
    mlm_transform: Params | None = None,
    verbalizer_ids: Sequence[Sequence[int]] | None = None,
    prompt_init: np.ndarray | None = None,
) -> Params:
    """The model's full parameter tree.

    Args:
        model: the model.
        rng: key of the random initialisers.
        sample_batch: a batch of the training shapes (with `label`).
        encoder_params: pretrained encoder params (`pretrained.load_pretrained`).
        mlm_transform: the checkpoint's MLM transform (`pretrained.load_mlm_transform`), required
            when the model config says the head has one.
        verbalizer_ids: per class, the token ids of its verbalizer; each class vector starts as
            the mean of their word embeddings. None keeps the random class vectors.
        prompt_init: `[n_p, D]` initial free prompt (WARP); None keeps the random one.
    """
    params = _init_without_encoder(model, rng, dict(sample_batch))
    params["encoder"] = encoder_params
    head = dict(params["task_head"])
    if model.config.has_mlm_transform:
        if mlm_transform is None:
            raise ValueError(
                "The model config has an MLM transform in its head but the checkpoint "
                "has no MLM head; set has_mlm_transform=False."
            )
        head["mlm_transform"] = jax.tree.map(jnp.asarray, mlm_transform)
    if verbalizer_ids is not None:
        head["class_vectors"] = class_vectors_from_verbalizers(encoder_params, verbalizer_ids)
    params["task_head"] = head
    if prompt_init is not None:
        expected = params["prompt"].shape
        if tuple(prompt_init.shape) != expected:
            raise ValueError(f"prompt_init has shape {prompt_init.shape}; expected {expected}.")
        params["prompt"] = jnp.asarray(prompt_init, jnp.float32)
    return params


@functools.partial(jax.jit, static_argnums=0)
def _init_without_encoder(model: models.InfoPromptModel, key: jax.Array, sample_batch) -> Params:
    """Every param but the encoder's. One jit for all calls (the model is static, equal models
    hash equal): each seed of a stacked run, or a second run in one process, reuses the compiled
    init instead of compiling its own."""
    params = model.init(key, sample_batch, key)["params"]
    # Dropped here so XLA never materialises a random copy of the (large) encoder.
    return {name: value for name, value in params.items() if name != "encoder"}


def word_embedding_table(encoder_params: Params) -> jax.Array:
    """The encoder's word-embedding matrix `[V, D]`."""
    return encoder_params["embeddings"]["word_embeddings"]["embedding"]


def class_vectors_from_verbalizers(
    encoder_params: Params, verbalizer_ids: Sequence[Sequence[int]]
) -> jax.Array:
    """`[C, D]`: each class's verbalizer token embeddings, averaged."""
    table = word_embedding_table(encoder_params)
    return jnp.stack([jnp.mean(table[jnp.asarray(ids)], axis=0) for ids in verbalizer_ids])
