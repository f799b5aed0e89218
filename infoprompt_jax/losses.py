"""Losses of the InfoPrompt objective, as pure functions of arrays.

The objective (docs/design.md, "The objective") is

        L = L_pred + beta * NCE_rep + gamma * NCE_head,

where each NCE term is an InfoNCE loss whose negation bounds a conditional mutual information
from below: I >= log K - NCE (van den Oord et al., 2018, eq. 10 of arXiv 1807.03748).
Every function here returns per-example values `[B]` so that callers decide how to reduce.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp


def info_nce(scores_BxK: jax.Array, positive_index: int = 0) -> jax.Array:
    """InfoNCE loss per example: `-log softmax(scores)[positive]`.

    Args:
        scores_BxK: critic scores of K candidates for each of B examples.
        positive_index: which candidate is the positive one.

    Returns:
        `[B]` losses in float32. Computed with `logsumexp`, so scores of any magnitude are stable.
    """
    scores_BxK = scores_BxK.astype(jnp.float32)
    log_normaliser_B = jax.nn.logsumexp(scores_BxK, axis=-1)
    return log_normaliser_B - scores_BxK[:, positive_index]


def mutual_information_bound(nce_B: jax.Array, num_candidates: int) -> jax.Array:
    """The InfoNCE lower bound on mutual information: `log K - NCE`, never above `log K`."""
    return jnp.log(float(num_candidates)) - nce_B


def cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Softmax cross entropy per example, in float32."""
    log_probs_BxC = jax.nn.log_softmax(logits_BxC.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs_BxC, labels_B[:, None], axis=-1)[:, 0]


def gaussian_kl_to_standard_normal(mu_BxZ: jax.Array, sigma_BxZ: jax.Array) -> jax.Array:
    """KL(N(mu, sigma^2) || N(0, 1)) per example, summed over the latent dimensions."""
    mu_BxZ = mu_BxZ.astype(jnp.float32)
    var_BxZ = jnp.square(sigma_BxZ.astype(jnp.float32))
    return 0.5 * jnp.sum(var_BxZ + jnp.square(mu_BxZ) - 1.0 - jnp.log(var_BxZ), axis=-1)


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
        + weights.beta * nce_rep_B
        + weights.gamma * nce_head_B
        + weights.kl_weight * terms["kl"]
    )
    return jnp.mean(total_B)
