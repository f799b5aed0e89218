"""The model's task and representation terms for a prompt of our choosing.

Training always evaluates the run's own prompts (generated or free). The analyses also need the
same terms for prompts given from outside: one `[n_p, D]` matrix for every example (a random or
hand-written prompt in the CMI figure, a point of the loss landscape) or `[B, n_p, D]`.
`prompt_terms` is that forward pass, run through `model.apply(..., method=prompt_terms)`, so it
is built from the model's own steps 1, 3, 4 and 6 (docs/design.md, "The forward pass") and
cannot drift from them.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from infoprompt_jax.model import losses, models, objective

Batch = Mapping[str, jax.Array]


def prompt_terms(
    module: models.InfoPromptModel, batch: Batch, key: jax.Array, prompts: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Per-example task and representation terms, for the run's prompts or given ones.

    Args:
        module: the bound model (this is a `method=` of `InfoPromptModel.apply`).
        batch: a tokenized batch with `label`.
        key: randomness of the representation critic's positive and negatives, used as
            `objective.representation_nce` uses its key (the third split of a training
            step's key).
        prompts: `[n_p, D]` (one prompt for every example) or `[B, n_p, D]`, placed at the
            prompt slots instead of the run's own prompts (a generator's output is
            overridden); None keeps the run's.

    Returns:
        `ce` [B] (deterministic head), `prompts` [B, n_p, D], and `nce_rep` [B] when the model
        has a representation critic. Its negatives come from the unprompted pass, as in training.
    """
    config = module.config
    unprompted = None
    if config.use_representation_critic or (
        prompts is None and config.prompt_source == "generator"
    ):
        unprompted = module.unprompted_pass(batch)
    if prompts is None:
        prompts_BxNxD = module.prompts(
            batch, unprompted["generator_input"] if unprompted is not None else None
        )
    else:
        shape = (
            batch["input_ids"].shape[0],
            config.num_prompt_tokens,
            module.encoder_config.hidden_size,
        )
        if tuple(prompts.shape) not in (shape[1:], shape):
            raise ValueError(
                f"Prompts of shape {tuple(prompts.shape)}; this model and batch "
                f"take [n_p, D] = {list(shape[1:])} or [B, n_p, D] = {list(shape)}."
            )
        prompts_BxNxD = jnp.broadcast_to(prompts.astype(jnp.float32), shape)
    z_BxD = module.prompted_pass(batch, prompts_BxNxD)
    logits_BxC, _ = module.task_head(z_BxD, None)
    terms = {"ce": losses.cross_entropy(logits_BxC, batch["label"]), "prompts": prompts_BxNxD}
    if config.use_representation_critic:
        terms["nce_rep"] = objective.representation_nce(
            module, batch, prompts_BxNxD, z_BxD, unprompted["z0"], key
        )
    return terms


def _is_representation_critic_call(module: Any, method_name: str) -> bool:
    return isinstance(module, models.RepresentationCritic) and method_name == "__call__"


@functools.partial(jax.jit, static_argnums=(0,))
def representation_scores(
    model: models.InfoPromptModel,
    params: Any,
    batch: Batch,
    key: jax.Array,
    prompts: jax.Array | None = None,
) -> jax.Array:
    """The representation critic's scores `[B, K]` (positive first) in `prompt_terms`.

    The scores are captured from the critic's own call, so the sampling of the positive and
    the negatives is exactly the model's. Compiled once per model (a hashable static argument)
    and shape of `prompts`.
    """
    if not model.config.use_representation_critic:
        raise ValueError("The model has no representation critic (it trained with beta = 0).")
    _, state = model.apply(
        {"params": params},
        batch,
        key,
        prompts,
        method=prompt_terms,
        capture_intermediates=_is_representation_critic_call,
        mutable=["intermediates"],
    )
    (scores_BxK,) = state["intermediates"]["representation_critic"]["__call__"]
    return scores_BxK


def own_prompts(module: models.InfoPromptModel, batch: Batch) -> jax.Array:
    """The run's own prompts `[B, n_p, D]` (generated from each example, or the free ones)."""
    generator_input = None
    if module.config.prompt_source == "generator":
        generator_input = module.unprompted_pass(batch)["generator_input"]
    return module.prompts(batch, generator_input)


@functools.partial(jax.jit, static_argnums=(0,))
def own_prompts_fn(model: models.InfoPromptModel, params: Any, batch: Batch) -> jax.Array:
    """`own_prompts`, compiled once per model (a hashable static argument) and batch shape."""
    return model.apply({"params": params}, batch, method=own_prompts)
