"""A held-out InfoNCE estimate of I(A; B) from paired samples, with its cap log K.

A critic trained with the objective it is judged by wins trivially when the task is easy: the
trained InfoPrompt critic scores log K on every prompt (its training K is 32), so its estimate
ranks nothing. This estimator fits a fresh bilinear critic `s(a, b) = a^T W b + c^T (b * b)` on
train-split pairs with in-batch candidates, then evaluates it on dev pairs, each dev example's
positive against the other dev examples' B: K_eval candidates, many more than training used. The
result, `log K_eval - NCE`, is a lower bound on I(A; B) (van den Oord et al., 2018, eq. 10 of
arXiv 1807.03748) that cannot exceed log K_eval; both are reported, so an estimate at its cap
reads as "at least this much", not as a value.

The quadratic term in b lets the critic express the log density ratio of Gaussian pairs exactly
(it has a b^2 term the bilinear one lacks).

The fit stops early on a validation fifth of the train pairs: a critic fitted to few pairs
memorises them, and evaluated on new pairs it scores the positive below the candidates, a
negative estimate that reads as information lost. Stopped where the validation InfoNCE is
lowest, it keeps the zero critic (estimate 0: no evidence either way) when no fitted one
generalises.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A held-out InfoNCE estimate (nats) and its cap `log K` for `num_candidates` = K."""

    value: float
    cap: float
    num_candidates: int
    per_example: np.ndarray  # `log K - NCE_i` of each evaluated dev pair; `value` is their mean.


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]


def _project(train: np.ndarray, *others: np.ndarray, max_dims: int) -> list[np.ndarray]:
    """Standardized, then onto the train split's top `max_dims` principal directions.

    A few hundred train pairs cannot fit a D x D critic for D in the hundreds (a prompt or an
    encoder state); the leading directions keep most of the variance with few parameters.
    """
    train, *others = _standardize(train, *others)
    if train.shape[1] <= max_dims:
        return [train, *others]
    _, _, vt = np.linalg.svd(train - train.mean(axis=0), full_matrices=False)
    basis = vt[:max_dims].T
    return [x @ basis for x in (train, *others)]


def _scores(params, a_NxD: jax.Array, b_MxE: jax.Array) -> jax.Array:
    """`[N, M]` critic scores of every a against every b."""
    return (a_NxD @ params["w"]) @ b_MxE.T + (b_MxE * b_MxE) @ params["c"]


def _info_nce(params, a_NxD: jax.Array, b_NxE: jax.Array) -> jax.Array:
    """Mean InfoNCE of N pairs, each positive against the other N - 1 b's."""
    scores = _scores(params, a_NxD, b_NxE)
    return jnp.mean(jax.nn.logsumexp(scores, axis=1) - jnp.diag(scores))


def fit_critic(
    a_train: np.ndarray,
    b_train: np.ndarray,
    *,
    batch_size: int = 64,
    num_steps: int = 800,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-3,
    seed: int = 0,
    validation_fraction: float = 0.2,
    check_every: int = 20,
) -> dict[str, jax.Array]:
    """The critic's params, fitted by Adam on in-batch InfoNCE (K_train = batch_size).

    The first `validation_fraction` of the pairs is held back; every `check_every` steps the
    critic's InfoNCE on it (in groups of the training K) is measured, and the params with the
    lowest are returned, the initial zero critic included.
    """
    num_validation = int(len(a_train) * validation_fraction)
    a_valid, b_valid = jnp.asarray(a_train[:num_validation]), jnp.asarray(b_train[:num_validation])
    a_train, b_train = a_train[num_validation:], b_train[num_validation:]
    num = len(a_train)
    batch_size = min(batch_size, num)
    # Groups of the training K, or one group of them all when fewer (a few-shot run's pairs).
    group = min(batch_size, num_validation)
    valid_groups = (
        [slice(start, start + group) for start in range(0, num_validation - group + 1, group)]
        if group >= 2
        else []
    )
    params = {
        "w": jnp.zeros((a_train.shape[1], b_train.shape[1]), jnp.float32),
        "c": jnp.zeros((b_train.shape[1],), jnp.float32),
    }
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, a, b):
        loss, grads = jax.value_and_grad(_info_nce)(params, a, b)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def validation_nce(params):
        return jnp.mean(
            jnp.stack([_info_nce(params, a_valid[rows], b_valid[rows]) for rows in valid_groups])
        )

    rng = np.random.default_rng(seed)
    a_all, b_all = jnp.asarray(a_train), jnp.asarray(b_train)
    best_nce, best = (validation_nce(params) if valid_groups else None), params
    for done in range(1, num_steps + 1):
        rows = rng.choice(num, size=batch_size, replace=False)
        params, opt_state, _ = step(params, opt_state, a_all[rows], b_all[rows])
        if not valid_groups:
            best = params
        elif done % check_every == 0 and (nce := validation_nce(params)) < best_nce:
            best_nce, best = nce, params
    return best


def evaluate(params, a_dev: np.ndarray, b_dev: np.ndarray, num_candidates: int) -> Estimate:
    """`log K - NCE` over dev pairs in consecutive groups of K = `num_candidates`."""
    groups = len(a_dev) // num_candidates
    if groups == 0:
        raise ValueError(f"{len(a_dev)} dev pairs cannot fill a group of {num_candidates}.")
    cap = math.log(num_candidates)
    per_example = []
    for g in range(groups):
        rows = slice(g * num_candidates, (g + 1) * num_candidates)
        scores = _scores(params, jnp.asarray(a_dev[rows]), jnp.asarray(b_dev[rows]))
        nce = jax.nn.logsumexp(scores, axis=1) - jnp.diag(scores)
        per_example.append(cap - np.asarray(nce))
    values = np.concatenate(per_example)
    return Estimate(float(values.mean()), cap, num_candidates, values)


def held_out_estimate(
    a_train: np.ndarray,
    b_train: np.ndarray,
    a_dev: np.ndarray,
    b_dev: np.ndarray,
    num_candidates: int = 256,
    seed: int = 0,
    max_dims: int = 32,
) -> Estimate:
    """Fits a critic on the train pairs and estimates I(A; B) on the dev pairs.

    Args:
        a_train, b_train: `[N, D]` and `[N, E]` paired train samples (row i with row i).
        a_dev, b_dev: held-out pairs, standardized with the train statistics.
        num_candidates: K_eval, capped at the number of dev pairs.
        seed: the fitting's batch order.
        max_dims: a and b are projected on at most this many principal directions of train.
    """
    a_train, a_dev = _project(np.asarray(a_train), np.asarray(a_dev), max_dims=max_dims)
    b_train, b_dev = _project(np.asarray(b_train), np.asarray(b_dev), max_dims=max_dims)
    params = fit_critic(a_train, b_train, seed=seed)
    return evaluate(params, a_dev, b_dev, min(num_candidates, len(a_dev)))
