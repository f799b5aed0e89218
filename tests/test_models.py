"""Tests of the model's own sampling helpers (the forward pass is tested in test_steps.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from infoprompt_jax.model import objective


def test_sampled_positions_are_uniform_over_the_allowed_ones_only():
    allowed = jnp.array([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    positions = np.asarray(objective.sample_positions(jax.random.PRNGKey(0), allowed, 30000))
    counts = np.bincount(positions[0], minlength=6)
    assert counts[[0, 3, 5]].sum() == 0 and (positions[1] == 0).all()
    # 10000 expected at each of positions 1, 2, 4; binomial std ~82, so +-400 is ~5 sigma.
    np.testing.assert_allclose(counts[[1, 2, 4]], 10000, atol=400)


def test_sampled_positions_do_not_depend_on_trailing_padding():
    key = jax.random.PRNGKey(3)
    allowed = jnp.array([[1, 1, 0, 1], [0, 1, 1, 1]])
    padded = jnp.pad(allowed, ((0, 0), (0, 12)))
    np.testing.assert_array_equal(
        objective.sample_positions(key, allowed, 31), objective.sample_positions(key, padded, 31)
    )
