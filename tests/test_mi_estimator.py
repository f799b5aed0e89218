"""The held-out MI estimator on correlated Gaussians, whose MI is known in closed form."""

import math

import numpy as np
import pytest

from infoprompt_jax.analysis import mi_estimator


def gaussian_pairs(num: int, dims: int, rho: float, seed: int):
    """(a, b) with b_j = rho a_j + sqrt(1 - rho^2) e_j: I(a; b) = -dims/2 log(1 - rho^2)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((num, dims))
    b = rho * a + math.sqrt(1 - rho**2) * rng.standard_normal((num, dims))
    return a, b


def estimate(dims: int, rho: float) -> mi_estimator.Estimate:
    a_train, b_train = gaussian_pairs(4096, dims, rho, seed=0)
    a_dev, b_dev = gaussian_pairs(2048, dims, rho, seed=1)
    return mi_estimator.held_out_estimate(a_train, b_train, a_dev, b_dev, num_candidates=256)


@pytest.mark.parametrize("dims, rho", [(4, 0.5), (2, 0.8)])
def test_recovers_the_true_mi_well_under_the_cap(dims, rho):
    true_mi = -dims / 2 * math.log(1 - rho**2)  # 0.575 and 1.022 nats; the cap is 5.545.
    result = estimate(dims, rho)
    assert result.cap == pytest.approx(math.log(256))
    assert result.value == pytest.approx(true_mi, abs=0.05)


def test_saturates_at_log_k_when_the_true_mi_is_far_above():
    result = estimate(20, 0.99)  # I = 39.2 nats, far above log 256 = 5.545.
    assert result.cap - 0.1 < result.value <= result.cap


def test_independent_pairs_estimate_about_zero():
    result = estimate(4, 0.0)
    assert abs(result.value) < 0.05


def test_a_fit_on_few_pairs_stops_before_it_memorises_them():
    """64 pairs of 32-dim independent Gaussians: a critic fitted to the end memorises them and
    scores new pairs far below 0; the early-stopped one keeps (about) the zero critic."""
    a_train, b_train = gaussian_pairs(64, 32, 0.0, seed=0)
    a_dev, b_dev = gaussian_pairs(256, 32, 0.0, seed=1)
    memorised = mi_estimator.evaluate(
        mi_estimator.fit_critic(a_train, b_train, validation_fraction=0.0), a_dev, b_dev, 256
    )
    stopped = mi_estimator.held_out_estimate(a_train, b_train, a_dev, b_dev, num_candidates=256)
    assert memorised.value < -1.0
    assert abs(stopped.value) < 0.05
