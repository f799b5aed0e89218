"""A run's train state and frozen tree, built one way for training, the benchmark, export,
prediction and analysis.

`build_state` makes the state at step 0 on the mesh; `abstract_state` describes it (shapes,
dtypes, shardings) without computing it, as Orbax's restore target; `pretrained_frozen` rebuilds
the frozen tree from the pretrained checkpoint alone, since checkpoints never hold it.
"""

from typing import Any

import jax
import numpy as np
from absl import logging

from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.train import sharding, steps

Arrays = dict[str, np.ndarray]


def initial_state(
    components: components_lib.Components, optimizer, sample_batch: Arrays
) -> tuple[steps.TrainState, dict[str, Any]]:
    """(state, frozen) at step 0, unplaced: the model's init split by the method's rules."""
    params = components.init_params(sample_batch)
    trainable, frozen = trainable_lib.split_params(params, components.method.name)
    rng = jax.random.fold_in(jax.random.PRNGKey(components.config.seed), 1)
    return steps.create_train_state(trainable, optimizer, rng), frozen


def build_state(components: components_lib.Components, optimizer, mesh, sample_batch: Arrays):
    """(state, frozen) at step 0, placed on the mesh."""
    state, frozen = initial_state(components, optimizer, sample_batch)
    logging.info(trainable_lib.describe_trainable(param_counts(state.trainable, frozen)))
    state = jax.device_put(state, steps.state_shardings(mesh, state))
    frozen = jax.device_put(frozen, sharding.param_shardings(mesh, frozen))
    return state, frozen


def param_counts(trainable: Any, frozen: Any) -> dict[str, int]:
    """Trainable parameters per group, trainable and total (`trainable_param_counts`); for
    the run summary's `trainable_params`."""
    return trainable_lib.trainable_param_counts(trainable, frozen)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays: Orbax's restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def abstract_state(
    components: components_lib.Components,
    sample_batch: Arrays,
    state_sharding: jax.sharding.Sharding,
) -> steps.TrainState:
    """The train state's shapes and dtypes, every leaf on `state_sharding`, built without compute.

    `jax.eval_shape` traces the init: nothing is compiled, and no random trainable tree or
    optimizer moments are allocated only to be overwritten by a checkpoint. The optimizer's state
    has the same structure for any number of steps, so a one-step schedule stands in for the
    run's own.
    """
    optimizer = optimizer_lib.from_config(components.config, components.method.peak_lr, 1)
    shapes = jax.eval_shape(lambda: initial_state(components, optimizer, sample_batch)[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=state_sharding), shapes
    )


def sample_batch(components: components_lib.Components) -> Arrays:
    """A one-row batch of the model's input shapes (with a label), for tracing `init`."""
    fields = {name: "a" for name in components.template_tokenizer.template.fields}
    arrays = components.template_tokenizer.encode_batch([fields])
    arrays["label"] = np.zeros((1,), np.int32)
    return arrays


def pretrained_frozen(components: components_lib.Components) -> dict[str, Any]:
    """The frozen params exactly as training had them, from the pretrained checkpoint alone.

    Only the encoder and the MLM transform come from the checkpoint (`model_init.init_params`);
    everything else is trainable, so splitting these two alone gives training's frozen tree
    without initialising (or allocating) the rest of the model.
    """
    pretrained = {"encoder": components.encoder_params}
    if components.method.model.has_mlm_transform:
        pretrained["task_head"] = {"mlm_transform": components.mlm_transform}
    return trainable_lib.split_params(pretrained, components.method.name)[1]


def check_params(
    components: components_lib.Components, params: Any, where: Any, hint: str = ""
) -> None:
    """Raises if `params` (arrays or ShapeDtypeStructs) is not the model's tree (names, shapes).

    Args:
        components: the run's components.
        params: the full tree, trainable and frozen merged.
        where: what the params came from, for the message.
        hint: what to do about a mismatch, for the message.
    """
    sample = sample_batch(components)
    expected = trainable_lib.flatten(jax.eval_shape(lambda: components.init_params(sample)))
    found = trainable_lib.flatten(params)
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = [
        f"{p}: {tuple(found[p].shape)} (model: {tuple(expected[p].shape)})"
        for p in sorted(expected.keys() & found.keys())
        if tuple(found[p].shape) != tuple(expected[p].shape)
    ]
    if missing or extra or wrong:
        raise ValueError(
            f"{where} does not fit its config's model: missing {missing}, "
            f"unexpected {extra}, wrong shapes {wrong}. {hint}".rstrip()
        )
