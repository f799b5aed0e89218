"""Batching: batches cut to a length bucket compute what the full-length batches compute."""

import json

import jax
import numpy as np
import pytest
import sentiment_fixture

from infoprompt_jax.train import batching, sharding
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import loop as train

# Two rows of length 3 and 5 in an L = 8 batch; the unprompted input is one shorter (no prompt).
ARRAYS = {
    "input_ids": np.arange(16).reshape(2, 8),
    "attention_mask": np.array([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]),
    "unprompted_attention_mask": np.array([[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]),
    "mask_position": np.array([2, 4]),
    "prompt_positions": np.array([[1], [3]]),
    "label": np.array([0, 1]),
}


def test_bucket_lengths_sorted_below_max_len_then_max_len():
    assert batching.bucket_lengths(128, (64, 32, 256, 128)) == (32, 64, 128)
    assert batching.bucket_lengths(128, ()) == (128,)
    for bad in [(0,), (16.5,), ("32",), (True,)]:
        with pytest.raises(ValueError, match="config.length_buckets"):
            batching.bucket_lengths(128, bad)


def test_a_batch_is_cut_to_the_shortest_bucket_holding_its_longest_row():
    np.testing.assert_array_equal(batching.row_lengths(ARRAYS), [3, 5])
    assert batching.batch_length(ARRAYS, (4, 6, 8)) == 6
    assert batching.batch_length({k: v[:1] for k, v in ARRAYS.items()}, (4, 6, 8)) == 4
    cut = batching.cut(ARRAYS, 6)
    assert cut["input_ids"].shape == (2, 6) and cut["unprompted_attention_mask"].shape == (2, 6)
    for per_row in ("mask_position", "prompt_positions", "label"):
        np.testing.assert_array_equal(cut[per_row], ARRAYS[per_row])
    with pytest.raises(ValueError, match="needs 5 positions"):
        batching.batch_length(ARRAYS, (4,))


def test_a_row_padded_in_the_middle_counts_to_its_last_attended_position():
    arrays = {"attention_mask": np.array([[1, 0, 1, 0], [0, 0, 0, 0]])}
    np.testing.assert_array_equal(batching.row_lengths(arrays), [3, 0])


def test_map_in_batches_returns_rows_in_order_and_cuts_each_batch():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    seen_lengths = []

    def fn(batch):
        seen_lengths.append(batch["input_ids"].shape[1])
        return {"first": batch["input_ids"][:, 0], "label": batch["label"]}

    rows = np.array([1, 0, 1, 1, 0])  # Long, short, long, long, short.
    arrays = {name: value[rows] for name, value in ARRAYS.items()}
    out = batching.map_in_batches(fn, arrays, 2, mesh, (4, 6, 8))
    np.testing.assert_array_equal(out["first"], arrays["input_ids"][:, 0])
    np.testing.assert_array_equal(out["label"], arrays["label"])
    # Shortest first: [short, short], [long, long], [long, pad]: one batch fits bucket 4.
    assert seen_lengths == [4, 6, 6]


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory):
    return sentiment_fixture.write_sst2(tmp_path_factory.mktemp("sst2"), 24, 12)


def run_metrics(model_dir, data_dir, workdir, buckets, cache_unprompted=False) -> list[dict]:
    config = sentiment_fixture.tiny_config(model_dir)
    config.data.dir = str(data_dir)
    config.length_buckets = buckets
    config.train.eval_length_buckets = buckets
    config.cache_unprompted = cache_unprompted
    train.train_and_evaluate(config, str(workdir))
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_training_with_buckets_logs_what_training_at_max_len_logs(
    tiny_roberta_dir, sst2_dir, tmp_path
):
    """Bucketed runs, with and without the cached unprompted pass, log the max_len run's metrics."""
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.data.dir = str(sst2_dir)
    components = components_lib.build_components(config)
    dev = components.encode(sentiment_fixture.examples(12))
    assert batching.row_lengths(dev).max() <= 16 < config.max_len  # The cut is real.
    full = run_metrics(tiny_roberta_dir, sst2_dir, tmp_path / "full", ())
    assert any("eval_accuracy" in m for m in full)
    for cache_unprompted in (False, True):
        cut = run_metrics(
            tiny_roberta_dir, sst2_dir, tmp_path / f"cut{cache_unprompted}", (16,), cache_unprompted
        )
        assert [sorted(m) for m in cut] == [sorted(m) for m in full]
        for bucketed, reference in zip(cut, full):
            for name, value in reference.items():
                np.testing.assert_allclose(
                    bucketed[name],
                    value,
                    rtol=2e-5,
                    atol=1e-6,
                    err_msg=f"{name} {cache_unprompted=}",
                )
