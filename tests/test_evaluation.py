"""Evaluation at its floor: the dev set placed once, bucketed, and the cached unprompted pass."""

import jax
import numpy as np
import pytest
import sentiment_fixture

from infoprompt_jax.data import sources as data
from infoprompt_jax.train import batching, evaluation, run_state, sharding, steps, unprompted_cache
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import optimizer as optimizer_lib

NUM_DEV = 11  # Not a multiple of the eval batch: the last batch is padded.
EVAL_BATCH = 4


def dev_examples() -> list[data.Example]:
    """Sentences of 1 to 11 words, in no length order, so the rows fill several buckets."""
    words = "a quietly moving and often very funny film about two brothers".split()
    sizes = [(5 * i) % NUM_DEV + 1 for i in range(NUM_DEV)]
    return [
        data.Example({"sentence": " ".join(words[:n])}, i % 2, f"d{i}") for i, n in enumerate(sizes)
    ]


@pytest.fixture(scope="module")
def built(tiny_roberta_dir):
    """(config, components, state, frozen, eval_fn, mesh, dev arrays) of a tiny InfoPrompt run."""
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.train.eval_batch_size = EVAL_BATCH
    config.train.eval_length_buckets = (8, 12, 16)
    components = components_lib.build_components(config)
    config = components.config
    dev = components.encode(dev_examples())
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    optimizer = optimizer_lib.make_optimizer(components.method.peak_lr, 10)
    sample = {name: value[:8] for name, value in components.encode(dev_examples()[:8]).items()}
    state, frozen = run_state.build_state(components, optimizer, mesh, sample)
    _, eval_fn = steps.compile_steps(
        components.model, optimizer, components.method.loss_weights, mesh, state, frozen
    )
    return config, components, state, frozen, eval_fn, mesh, dev


def test_evaluator_logits_are_each_rows_own_at_max_len_cached_or_not(built):
    config, components, state, frozen, eval_fn, mesh, dev = built
    # Each row alone at max_len: no bucket, no sort, no neighbour, no cache.
    reference = batching.predict_logits(eval_fn, state.trainable, frozen, dev, 1, mesh)
    (_,), cached_dev = unprompted_cache.with_cached_unprompted_pass(
        components, frozen, [dev], dev, mesh
    )
    assert "cached_z0" in cached_dev
    for arrays in (dev, cached_dev):
        evaluator = evaluation.Evaluator(eval_fn, arrays, config, mesh, components.task)
        cut = [batch["input_ids"].shape[1] for batch in evaluator.dev.batches]
        assert cut == sorted(cut) and len(set(cut)) > 1, cut  # Shortest first, several buckets.
        np.testing.assert_allclose(
            evaluator.logits(state.trainable, frozen), reference, rtol=1e-5, atol=1e-6
        )
        assert evaluator.metrics(state.trainable, frozen) == evaluator.scores(reference)


def test_the_dev_set_is_placed_once_and_cached_batches_carry_only_the_prompted_pass(
    built, monkeypatch
):
    config, components, state, frozen, eval_fn, mesh, dev = built
    (_,), cached_dev = unprompted_cache.with_cached_unprompted_pass(
        components, frozen, [dev], dev, mesh
    )
    evaluator = evaluation.Evaluator(eval_fn, cached_dev, config, mesh, components.task)
    assert len(evaluator.dev.batches) == -(-NUM_DEV // EVAL_BATCH)
    for batch in evaluator.dev.batches:
        assert sorted(batch) == sorted(evaluation.PROMPTED_KEYS)
        assert all(isinstance(value, jax.Array) for value in batch.values())
    placed = []
    monkeypatch.setattr(batching, "device_batch", lambda *args: placed.append(args))
    monkeypatch.setattr(jax, "device_get", _counting(jax.device_get, fetches := []))
    evaluator.metrics(state.trainable, frozen)
    evaluator.metrics(state.trainable, frozen)
    assert not placed, "an evaluation placed dev rows on the devices again"
    assert len(fetches) == 2, "one transfer to the host per evaluation"
    assert evaluator.dev.padded_tokens() < NUM_DEV * config.max_len


def _counting(fn, calls: list):
    def counted(*args):
        calls.append(args)
        return fn(*args)

    return counted


def test_stacked_metrics_are_each_runs_metrics(built):
    config, components, state, frozen, eval_fn, mesh, dev = built
    evaluator = evaluation.Evaluator(eval_fn, dev, config, mesh, components.task)
    single = evaluator.logits(state.trainable, frozen)

    def two_runs(trainables, frozen, batch):  # Run 1's logits are run 0's, classes swapped.
        logits_BxC = eval_fn(trainables, frozen, batch)
        return jax.numpy.stack([logits_BxC, logits_BxC[:, ::-1]], axis=1)

    stacked = evaluation.Evaluator(two_runs, dev, config, mesh, components.task)
    runs = stacked.stacked_metrics(state.trainable, frozen)
    assert runs[0] == evaluator.scores(single)
    assert runs[1] == evaluator.scores(single[:, ::-1])
    assert runs[0] != runs[1]


def test_a_cache_too_big_for_the_host_is_skipped(built, monkeypatch):
    _, components, _, frozen, _, mesh, dev = built
    monkeypatch.setattr(unprompted_cache, "available_host_memory", lambda: 1000)
    (train,), same_dev = unprompted_cache.with_cached_unprompted_pass(
        components, frozen, [dev], dev, mesh
    )
    assert train is dev and same_dev is dev
    size = unprompted_cache.cache_bytes(2 * NUM_DEV, 32)
    assert size == 2 * 2 * NUM_DEV * 32 * 4
    assert unprompted_cache.cache_fits(2 * NUM_DEV, 32, available=2 * size)
    assert not unprompted_cache.cache_fits(2 * NUM_DEV, 32, available=2 * size - 1)
    assert unprompted_cache.cache_fits(2 * NUM_DEV, 32, available=None)
