"""Length buckets: each batch is cut to the shortest of a few fixed lengths that holds its rows.

Tokenized arrays are padded to `max_len` once (the tokenized batch contract,
docs/architecture.md). A batch of short sentences then spends most of its compute on padding:
SST-2 rows need about 30 of 128 slots. Cutting every `[B, L]` array of a batch to the smallest
bucket length at or above its longest row removes only padding, which attention masks out, so
the results are those of the full length up to float rounding; each bucket length compiles the
step once, so a few buckets keep the shapes static.
"""

from collections.abc import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]

# The `[N, L]` arrays of the tokenized batch contract; the rest are per-row or index arrays.
SEQUENCE_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "plain_input_ids",
    "plain_attention_mask",
    "plain_token_type_ids",
    "plain_context_mask",
)
_MASK_KEYS = ("attention_mask", "plain_attention_mask")


def bucket_lengths(max_len: int, buckets: Sequence[int]) -> tuple[int, ...]:
    """The sorted lengths a batch may be cut to: the `buckets` below `max_len`, then `max_len`.

    Raises:
        ValueError: a bucket that is not a positive integer (it names `config.length_buckets`).
    """
    for length in buckets:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(
                f"config.length_buckets={tuple(buckets)!r}: every bucket must be a "
                "positive integer, e.g. (32, 64); () uses max_len for every batch."
            )
    return tuple(sorted({int(n) for n in buckets if n < max_len})) + (max_len,)


def row_lengths(arrays: Arrays) -> np.ndarray:
    """`[N]`: per row, one past its last attended position in either input (prompted, plain)."""
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
