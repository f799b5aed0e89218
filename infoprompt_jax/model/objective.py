"""The InfoPrompt objective, whole: each term's positives and negatives, and their weighted sum.

The objective (docs/design.md) is

        L = L_pred + beta * NCE_rep + gamma * NCE_head   (+ kl_weight * KL, the released code's)

where each NCE term is an InfoNCE loss whose negation bounds a conditional mutual information
from below: I >= log K - NCE (van den Oord et al., 2018, eq. 10 of arXiv 1807.03748).

* NCE_head (step 5): the mean prompt P_bar is the positive among word embeddings of the
  example's own context tokens, scored by the head critic against the pooled class vector.
* NCE_rep (step 6): a posterior sample of the prompted representation Z is the positive among
  samples of the unprompted one Z0 (the paper; `representation_negatives` offers negatives
  that are prompted too), scored by the representation critic against P_bar.

The critics are Flax modules of `models.py`; the functions here take the bound
`InfoPromptModel` (inside its `apply`) and read its critics, task head and word embeddings.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from infoprompt_jax.model import losses

Batch = Mapping[str, jax.Array]


def sample_positions(key: jax.Array, allowed_BxL: jax.Array, count: int) -> jax.Array:
    """`[B, count]` positions drawn uniformly, with replacement, from each row's allowed ones.

    Draw j of row b is the `floor(u * n_b)`-th allowed position of the row, `u ~ U[0, 1)` of
    shape `[B, count]`: the random numbers do not depend on the row length L, so a batch cut to
    a shorter length bucket (only padding removed) draws the same positions.
    """
    allowed_BxL = allowed_BxL.astype(jnp.int32)
    cumulative_BxL = jnp.cumsum(allowed_BxL, axis=1)
    uniform_BxN = jax.random.uniform(key, (allowed_BxL.shape[0], count))
    ranks_BxN = jnp.floor(uniform_BxN * cumulative_BxL[:, -1:]).astype(jnp.int32)
    # The rank-r allowed position is the first whose running count exceeds r.
    return jnp.argmax(cumulative_BxL[:, None, :] > ranks_BxN[:, :, None], axis=-1)


def head_nce(model: Any, batch: Batch, prompt_mean_BxD: jax.Array, key: jax.Array) -> jax.Array:
    """Step 5: InfoNCE of P_bar against word embeddings of the example's context tokens."""
    context_BxL = batch["unprompted_context_mask"].astype(bool)
    # An example whose text was truncated away still has its non-padding tokens to draw from.
    fallback_BxL = batch["unprompted_attention_mask"].astype(bool)
    context_BxL = jnp.where(context_BxL.any(axis=1, keepdims=True), context_BxL, fallback_BxL)
    theta_D = model.task_head.pooled_class_vector()
    if model.config.head_negatives == "all_context":
        negatives_BxLxD = model.word_embeddings(batch["unprompted_input_ids"])
        candidates = jnp.concatenate([prompt_mean_BxD[:, None], negatives_BxLxD], axis=1)
        scores_BxK = model.head_critic(candidates, theta_D)
        valid_BxK = jnp.concatenate([jnp.ones_like(context_BxL[:, :1]), context_BxL], axis=1)
        return losses.info_nce(jnp.where(valid_BxK, scores_BxK, -1e30))
    positions_BxN = sample_positions(key, context_BxL, model.config.num_candidates - 1)
    token_ids_BxN = jnp.take_along_axis(batch["unprompted_input_ids"], positions_BxN, axis=1)
    negatives_BxNxD = model.word_embeddings(token_ids_BxN)
    candidates_BxKxD = jnp.concatenate([prompt_mean_BxD[:, None], negatives_BxNxD], axis=1)
    return losses.info_nce(model.head_critic(candidates_BxKxD, theta_D))


def representation_nce(
    model: Any,
    batch: Batch,
    prompts_BxNxD: jax.Array,
    z_BxD: jax.Array,
    z0_BxD: jax.Array | None,
    key: jax.Array,
) -> jax.Array:
    """Step 6: InfoNCE of a posterior sample of Z against negatives scored against P_bar.

    The positive is a sample of q(z | Z), Z the prompted representation of this example. The
    negatives (`model.config.representation_negatives`) are samples of q around:
      unprompted: the unprompted Z0 of the same example, K-1 draws (the paper). A critic that
        tells prompted from unprompted representations wins without reading the prompt.
      other_examples: the prompted Z of the batch's other examples, one draw each (B-1
        negatives, no extra pass). Every candidate is prompted; this bounds I(P_bar; Z).
      other_prompts: Z(X, P_j), this example's input under the prompts of other examples j
        (j = i+1, ..., i+M mod B, M = min(K-1, B-1)). Only the prompt differs among the
        candidates, so the term bounds I(P; Z | X) itself; it costs M more prompted passes.
    """
    critic = model.representation_critic
    prompt_mean_BxD = jnp.mean(prompts_BxNxD, axis=1)
    positive_key, negative_key = jax.random.split(key)
    mu_BxZ, sigma_BxZ = critic.posterior(z_BxD)
    positive_BxZ = mu_BxZ + sigma_BxZ * jax.random.normal(positive_key, mu_BxZ.shape)
    scheme = model.config.representation_negatives
    if scheme == "unprompted":
        mu0_BxZ, sigma0_BxZ = critic.posterior(z0_BxD)
        num_negatives = model.config.num_candidates - 1
        noise_BxNxZ = jax.random.normal(
            negative_key, (mu0_BxZ.shape[0], num_negatives, mu0_BxZ.shape[1])
        )
        negatives_BxNxZ = mu0_BxZ[:, None] + sigma0_BxZ[:, None] * noise_BxNxZ
    else:
        batch_size = z_BxD.shape[0]
        if scheme == "other_examples":
            num_negatives = batch_size - 1
            shifted = [jnp.roll(mu_BxZ, -s, axis=0) for s in range(1, num_negatives + 1)]
            shifted_sigma = [jnp.roll(sigma_BxZ, -s, axis=0) for s in range(1, num_negatives + 1)]
        else:  # other_prompts
            num_negatives = min(model.config.num_candidates - 1, batch_size - 1)
            shifted, shifted_sigma = [], []
            for s in range(1, num_negatives + 1):
                z_s_BxD = model.prompted_pass(batch, jnp.roll(prompts_BxNxD, -s, axis=0))
                mu_s, sigma_s = critic.posterior(z_s_BxD)
                shifted.append(mu_s)
                shifted_sigma.append(sigma_s)
        if num_negatives < 1:
            # A one-row batch (the model's init traces one): no other example, and InfoNCE over
            # the positive alone is 0. Training refuses batch_size < 2 for these schemes.
            return jnp.zeros(z_BxD.shape[:1], jnp.float32)
        mu_BxNxZ, sigma_BxNxZ = jnp.stack(shifted, axis=1), jnp.stack(shifted_sigma, axis=1)
        noise_BxNxZ = jax.random.normal(negative_key, mu_BxNxZ.shape)
        negatives_BxNxZ = mu_BxNxZ + sigma_BxNxZ * noise_BxNxZ
    candidates_BxKxZ = jnp.concatenate([positive_BxZ[:, None], negatives_BxNxZ], axis=1)
    return losses.info_nce(critic(prompt_mean_BxD, candidates_BxKxZ))


def per_example_terms(
    model: Any,
    batch: Batch,
    prompts_BxNxD: jax.Array,
    z_BxD: jax.Array,
    z0_BxD: jax.Array | None,
    logits_BxC: jax.Array,
    kl_B: jax.Array,
    keys: tuple[jax.Array, jax.Array],
) -> dict[str, jax.Array]:
    """The per-example terms `ce`, `kl`, `nce_head`, `nce_rep` `[B]` (zeros where omitted).

    Args:
        model: the bound `InfoPromptModel`.
        batch: the tokenized batch, with `label`.
        prompts_BxNxD: the prompts placed at the prompt slots.
        z_BxD, z0_BxD: the prompted and unprompted representations (Z0: None when unused).
        logits_BxC, kl_B: the task head's outputs.
        keys: the head and representation terms' randomness.
    """
    cfg = model.config
    zeros_B = jnp.zeros(z_BxD.shape[:1], jnp.float32)
    prompt_mean_BxD = jnp.mean(prompts_BxNxD, axis=1)
    terms = {
        "ce": losses.cross_entropy(logits_BxC, batch["label"]),
        "kl": kl_B,
        "nce_head": zeros_B,
        "nce_rep": zeros_B,
    }
    if cfg.use_head_critic:
        terms["nce_head"] = head_nce(model, batch, prompt_mean_BxD, keys[0])
    if cfg.use_representation_critic:
        terms["nce_rep"] = representation_nce(model, batch, prompts_BxNxD, z_BxD, z0_BxD, keys[1])
    return terms


@dataclasses.dataclass(frozen=True)
class ObjectiveWeights:
    """Weights of the objective's terms.

    Attributes:
        beta: weight of the representation term NCE_rep (paper: 0.1; released code: 0.2).
        gamma: weight of the head term NCE_head (paper: 0.05; released code: 0.1).
        nce_clamp: the released code clamps each InfoNCE term at this value per example (2.0);
            None, the paper's form, leaves them unclamped.
        kl_weight: weight of the released code's variational-head KL term (0.1 there).
    """

    beta: float = 0.1
    gamma: float = 0.05
    nce_clamp: float | None = None
    kl_weight: float = 0.0


def infoprompt_objective(terms: Mapping[str, jax.Array], weights: ObjectiveWeights) -> jax.Array:
    """The batch-mean objective `L_pred + beta * NCE_rep + gamma * NCE_head` (+ released KL).

    Args:
        terms: per-example `ce` (L_pred), `nce_rep` (-I(P; Z | X) up to a constant),
            `nce_head` (-I(P; theta | X) up to a constant) and `kl`, each `[B]`.
        weights: the terms' weights.

    Returns:
        The scalar loss.
    """
    nce_rep_B, nce_head_B = terms["nce_rep"], terms["nce_head"]
    if weights.nce_clamp is not None:
        nce_rep_B = jnp.minimum(nce_rep_B, weights.nce_clamp)
        nce_head_B = jnp.minimum(nce_head_B, weights.nce_clamp)
    total_B = (
        terms["ce"]
        + _weighted(weights.beta, nce_rep_B)
        + _weighted(weights.gamma, nce_head_B)
        + weights.kl_weight * terms["kl"]
    )
    return jnp.mean(total_B)


def _weighted(weight: float | jax.Array, term_B: jax.Array) -> jax.Array:
    """`weight * term`, and exactly 0 for a weight of 0 even where the term is not finite.

    A weight may be traced (stacked rows, `stacking.stacked_train_step`): a row with weight 0 then
    still computes the term, and 0 * inf would turn its loss into NaN where its separate run,
    which never computes the term, has a finite one.
    """
    return jnp.where(weight > 0, weight * term_B, 0.0)
