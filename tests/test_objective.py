"""Tests of the representation term's negatives (objective.representation_nce)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentiment_fixture

from infoprompt_jax.analysis import prompt_eval
from infoprompt_jax.train import components as components_lib

BATCH = 8
K = 4  # The :tiny config's num_candidates.


def critic_scores(model_dir, negatives: str, same_prompt_for_all: bool):
    """The representation critic's scores [B, K] (positive first) with a posterior of zero width.

    f_sigma's bias of -100 makes every sample its posterior mean (softplus(-100) ~ 4e-44), so
    two candidates score alike exactly when their representations are alike.
    """
    config = sentiment_fixture.tiny_config(model_dir)
    config.loss.representation_negatives = negatives
    assert config.loss.num_candidates == K
    components = components_lib.build_components(config)
    arrays = components.encode(sentiment_fixture.examples(BATCH))
    params = components.init_params(arrays)
    f_sigma = params["representation_critic"]["f_sigma"]
    params["representation_critic"]["f_sigma"] = {
        "kernel": jnp.zeros_like(f_sigma["kernel"]),
        "bias": jnp.full_like(f_sigma["bias"], -100.0),
    }
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    prompts = None
    if same_prompt_for_all:  # One prompt for every example: it says nothing about any of them.
        hidden = components.model.encoder_config.hidden_size
        shape = (config.prompt.num_tokens, hidden)
        prompts = 0.05 * jax.random.normal(jax.random.PRNGKey(3), shape)
    key = jax.random.PRNGKey(0)
    return np.asarray(
        prompt_eval.representation_scores(components.model, params, batch, key, prompts)
    )


def test_other_prompts_cannot_separate_a_prompt_that_carries_nothing(tiny_roberta_dir):
    # Only the prompt differs among other_prompts' candidates: one prompt for all examples makes
    # every candidate the positive's twin, so no critic can do better than chance, log K.
    scores = critic_scores(tiny_roberta_dir, "other_prompts", same_prompt_for_all=True)
    assert scores.shape == (BATCH, K)  # min(K - 1, B - 1) negatives.
    np.testing.assert_allclose(scores, scores[:, :1].repeat(K, axis=1), rtol=1e-6, atol=1e-6)


def test_unprompted_negatives_separate_even_a_prompt_that_carries_nothing(tiny_roberta_dir):
    # The paper's negatives: "prompted or not" alone tells the positive apart.
    scores = critic_scores(tiny_roberta_dir, "unprompted", same_prompt_for_all=True)
    assert scores.shape == (BATCH, K)
    gaps = np.abs(scores[:, 0] - scores[:, 1:].mean(axis=1))
    assert gaps.min() > 1e-3, gaps
    np.testing.assert_allclose(scores[:, 1:], scores[:, 1:2].repeat(K - 1, axis=1), rtol=1e-6)


@pytest.mark.parametrize("negatives", ["other_examples", "other_prompts"])
def test_prompted_negatives_come_from_the_batch(tiny_roberta_dir, negatives):
    scores = critic_scores(tiny_roberta_dir, negatives, same_prompt_for_all=False)
    # other_examples: every other example (B - 1); other_prompts: min(K - 1, B - 1).
    assert scores.shape == (BATCH, BATCH if negatives == "other_examples" else K)
    assert np.all(np.isfinite(scores))
    # Each example's own generated prompt: the negatives differ from the positive.
    assert np.abs(scores[:, 1:] - scores[:, :1]).min() > 0


def test_a_one_row_batch_has_no_in_batch_negatives_and_a_zero_term(tiny_roberta_dir):
    # The model's init and restore trace one row: the term is 0 there instead of an error.
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.loss.representation_negatives = "other_examples"
    components = components_lib.build_components(config)
    arrays = components.encode(sentiment_fixture.examples(1))
    params = components.init_params(arrays)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    terms = components.model.apply({"params": params}, batch, jax.random.PRNGKey(0))
    assert terms["nce_rep"].shape == (1,) and float(terms["nce_rep"][0]) == 0.0
