"""Batching: an epoch's order, global batches on the mesh, and length buckets.

The training loop, evaluation, prediction, the benchmark and the analyses all batch through
this module, so that each sees the same rows in the same shapes.

Length buckets: tokenized arrays are padded to `max_len` once (the tokenized batch contract,
docs/architecture.md). A batch of short sentences then spends most of its compute on padding:
SST-2 rows need about 30 of 128 slots. Cutting every `[B, L]` array of a batch to the smallest
bucket length at or above its longest row removes only padding, which attention masks out, so
the results are those of the full length up to float rounding; each bucket length compiles the
step once, so a few buckets keep the shapes static.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from infoprompt_jax.train import sharding

Arrays = Mapping[str, np.ndarray]


# The `[N, L]` arrays of the tokenized batch contract; the rest are per-row or index arrays.
SEQUENCE_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "unprompted_input_ids",
    "unprompted_attention_mask",
    "unprompted_token_type_ids",
    "unprompted_context_mask",
)
_MASK_KEYS = ("attention_mask", "unprompted_attention_mask")


def bucket_lengths(
    max_len: int, buckets: Sequence[int], field: str = "config.length_buckets"
) -> tuple[int, ...]:
    """The sorted lengths a batch may be cut to: the `buckets` below `max_len`, then `max_len`.

    Raises:
        ValueError: a bucket that is not a positive integer (it names the config `field`).
    """
    for length in buckets:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(
                f"{field}={tuple(buckets)!r}: every bucket must be a "
                "positive integer, e.g. (32, 64); () uses max_len for every batch."
            )
    return tuple(sorted({int(n) for n in buckets if n < max_len})) + (max_len,)


def row_lengths(arrays: Arrays) -> np.ndarray:
    """`[N]`: per row, one past its last attended position in either input (prompted, unprompted)."""
    lengths = np.zeros(len(arrays["attention_mask"]), np.int64)
    for key in _MASK_KEYS:
        if key in arrays:
            attended = np.asarray(arrays[key]) != 0
            last = attended.shape[1] - np.argmax(attended[:, ::-1], axis=1)
            lengths = np.maximum(lengths, np.where(attended.any(axis=1), last, 0))
    return lengths


def batch_length(arrays: Arrays, lengths: Sequence[int]) -> int:
    """The smallest of `lengths` (ascending, as `bucket_lengths` gives them) holding every row."""
    needed = int(row_lengths(arrays).max(initial=0))
    for length in lengths:
        if length >= needed:
            return length
    raise ValueError(
        f"A row needs {needed} positions, more than the largest bucket "
        f"{lengths[-1]}; the arrays were tokenized for a longer max_len."
    )


def cut(arrays: Arrays, length: int) -> dict[str, np.ndarray]:
    """The arrays with every `[N, L]` one cut to `[N, length]`; the others unchanged."""
    return {
        name: value[:, :length] if name in SEQUENCE_KEYS else value
        for name, value in arrays.items()
    }


def order_by_length(arrays: Arrays) -> np.ndarray:
    """A stable permutation of the rows, shortest first: batches of similar lengths at eval."""
    return np.argsort(row_lengths(arrays), kind="stable")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); at least one, or an error."""
    if num_examples < batch_size:
        raise ValueError(
            f"{num_examples} training examples make no batch of {batch_size}; lower "
            "config.train.batch_size or raise config.data.few_shot."
        )
    return num_examples // batch_size


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """`[steps_per_epoch, batch_size]` example indices of an epoch (the remainder is dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    steps_per_epoch = num_examples // batch_size
    return order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def device_batch(
    arrays: Arrays, indices: np.ndarray, mesh: jax.sharding.Mesh, lengths: Sequence[int] = ()
) -> dict[str, jax.Array]:
    """The global batch `arrays[indices]` as arrays sharded over the mesh.

    Each process contributes only its own rows, so on a pod every host reads its share.

    Args:
        arrays: host arrays of every example (each process holds them all).
        indices: `[B]` rows of the global batch.
        mesh: the device mesh.
        lengths: the bucket lengths (`bucket_lengths`); the batch is cut to the
            shortest that holds its rows, decided from the global batch so that every process
            cuts alike. Empty: no cut.
    """
    rows = {name: value[indices] for name, value in arrays.items()}
    if len(lengths):
        rows = cut(rows, batch_length(rows, lengths))
    per_process = len(indices) // jax.process_count()
    local = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    batch_sharding = sharding.batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(batch_sharding, value[local])
        for name, value in rows.items()
    }


def pad_to_multiple(arrays: Arrays, multiple: int) -> tuple[Arrays, int]:
    """Pads every array's rows (repeating row 0) to a multiple; returns the true row count."""
    count = len(next(iter(arrays.values())))
    padded = -(-count // multiple) * multiple
    rows = np.concatenate([np.arange(count), np.zeros(padded - count, np.int64)])
    return {name: value[rows] for name, value in arrays.items()}, count


def map_in_batches(
    fn: Callable[[dict[str, jax.Array]], Any],
    arrays: Arrays,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    lengths: Sequence[int] = (),
) -> Any:
    """`fn(batch)` over every row of `arrays`, `batch_size` rows at a time; outputs in row order.

    With bucket `lengths`, rows are batched shortest first, so that most batches fit a short
    bucket; the outputs are put back in the rows' order.

    Returns:
        `fn`'s output pytree with `[N, ...]` numpy leaves.
    """
    count = len(arrays["input_ids"])
    order = order_by_length(arrays) if len(lengths) > 1 else np.arange(count)
    padded, _ = pad_to_multiple({name: value[order] for name, value in arrays.items()}, batch_size)
    outputs = [  # Dispatched all before any is fetched, so the host never waits in between.
        fn(device_batch(padded, np.arange(start, start + batch_size), mesh, lengths))
        for start in range(0, len(padded["input_ids"]), batch_size)
    ]
    in_order = np.argsort(order)
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:count][in_order], *jax.device_get(outputs))


def predict_logits(
    eval_fn: Callable,
    trainable: Any,
    frozen: Any,
    arrays: Arrays,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    lengths: Sequence[int] = (),
) -> np.ndarray:
    """Logits `[N, C]` of every row of `arrays`, in order."""
    return map_in_batches(
        functools.partial(eval_fn, trainable, frozen), arrays, batch_size, mesh, lengths
    )


def run_lengths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The bucket lengths of a run's batches (`config.length_buckets`, then `max_len`)."""
    # Configs written before length buckets existed have none: every batch at max_len.
    return bucket_lengths(config.max_len, config.get("length_buckets", ()))
