"""The objective's building blocks, as pure functions of arrays.

InfoNCE (whose negation bounds a mutual information from below: I >= log K - NCE, van den Oord
et al., 2018, eq. 10 of arXiv 1807.03748), cross entropy and the Gaussian KL. `objective.py`
builds the terms from them and weighs them. Every function here returns per-example values
`[B]` so that callers decide how to reduce.
"""

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
