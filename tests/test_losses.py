"""Tests of the InfoNCE terms and the objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infoprompt_jax.model import losses, objective


def test_info_nce_equals_hand_computed_value():
    scores = jnp.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.5]])
    # Row 0: log(e^2 + e^0 + e^-1) - 2 = log(7.389056 + 1 + 0.367879) - 2 = 0.169846.
    # Row 1: log(e^0.5 + e^1.5 + e^0.5) - 0.5 = log(1.648721 * 2 + 4.481689) - 0.5 = 1.551445.
    np.testing.assert_allclose(losses.info_nce(scores), [0.1698460, 1.5514447], rtol=1e-6)


def test_info_nce_positive_index_selects_the_candidate():
    scores = jnp.array([[2.0, 0.0, -1.0]])
    expected = np.log(np.exp([2.0, 0.0, -1.0]).sum()) - 0.0
    np.testing.assert_allclose(losses.info_nce(scores, positive_index=1), [expected], rtol=1e-6)


def test_info_nce_is_stable_for_huge_scores():
    scores = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    nce = losses.info_nce(scores)
    assert np.all(np.isfinite(np.asarray(nce)))
    np.testing.assert_allclose(nce, [0.0, 2e4 + np.log(2.0)], rtol=1e-6)
    grads = jax.grad(lambda s: losses.info_nce(s).sum())(scores)
    assert np.all(np.isfinite(np.asarray(grads)))


@pytest.mark.parametrize("seed", range(5))
def test_mutual_information_bound_never_exceeds_log_k(seed):
    k = 32
    scores = jax.random.normal(jax.random.PRNGKey(seed), (64, k)) * 10.0 ** (seed - 2)
    bound = losses.mutual_information_bound(losses.info_nce(scores), k)
    assert np.all(np.asarray(bound) <= np.log(k) + 1e-6)
    # A perfectly separated positive reaches the bound's ceiling.
    separated = jnp.zeros((1, k)).at[0, 0].set(1e4)
    np.testing.assert_allclose(
        losses.mutual_information_bound(losses.info_nce(separated), k), [np.log(k)], atol=1e-6
    )


def test_cross_entropy_matches_log_softmax():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([2, 1])
    expected = [np.log(np.exp([1, 2, 3]).sum()) - 3.0, np.log(3.0)]
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_gaussian_kl_is_zero_for_standard_normal_and_matches_formula():
    np.testing.assert_allclose(
        losses.gaussian_kl_to_standard_normal(jnp.zeros((1, 3)), jnp.ones((1, 3))), [0.0], atol=1e-7
    )
    # 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2) with mu = 1, sigma = 2: 0.5 * (4 + 1 - 1 - log 4).
    np.testing.assert_allclose(
        losses.gaussian_kl_to_standard_normal(jnp.ones((1, 1)), 2 * jnp.ones((1, 1))),
        [0.5 * (4.0 - np.log(4.0))],
        rtol=1e-6,
    )


def test_objective_weights_and_clamp():
    terms = {
        "ce": jnp.array([1.0, 3.0]),
        "nce_rep": jnp.array([4.0, 0.5]),
        "nce_head": jnp.array([10.0, 1.0]),
        "kl": jnp.array([2.0, 2.0]),
    }
    paper = objective.infoprompt_objective(terms, objective.ObjectiveWeights(beta=0.1, gamma=0.05))
    # mean(1 + 0.4 + 0.5, 3 + 0.05 + 0.05) = mean(1.9, 3.1) = 2.5.
    np.testing.assert_allclose(paper, 2.5, rtol=1e-6)
    released = objective.infoprompt_objective(
        terms, objective.ObjectiveWeights(beta=0.2, gamma=0.1, nce_clamp=2.0, kl_weight=0.1)
    )
    # Row 0: 1 + 0.2 * 2 + 0.1 * 2 + 0.2 = 1.8; row 1: 3 + 0.1 + 0.1 + 0.2 = 3.4; mean 2.6.
    np.testing.assert_allclose(released, 2.6, rtol=1e-6)
