"""The unprompted pass, computed once per example (`config.cache_unprompted`).

The encoder is frozen and deterministic, so the unprompted pass of an example (the prompt
generator's input and Z0) is the same every epoch: caching it saves one of the train step's two
encoder forwards (tested equal to recomputing it every step).
"""

import functools
import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging

from infoprompt_jax.train import batching, sharding, steps
from infoprompt_jax.train import components as components_lib

Arrays = dict[str, np.ndarray]

# The cache may take at most this share of the host memory available when the run starts: the
# rest is for the arrays, the encoder and whatever else the host runs.
MAX_SHARE_OF_AVAILABLE_MEMORY = 0.5


def cache_unprompted_pass(
    model, frozen, arrays: Arrays, batch_size: int, mesh, lengths: Sequence[int] = ()
) -> Arrays:
    """`arrays` plus `cached_generator_input` and `cached_z0`: the unprompted pass of every example.

    The encoder is frozen and deterministic, so this pass gives the same numbers every epoch;
    computing it once saves one of the step's two encoder forwards.
    """
    unprompted = jax.jit(
        functools.partial(steps.unprompted_step, model=model),
        out_shardings=sharding.replicated(mesh),
    )
    outputs = batching.map_in_batches(
        functools.partial(unprompted, frozen), arrays, batch_size, mesh, lengths
    )
    return {
        **arrays,
        "cached_generator_input": outputs["generator_input"],
        "cached_z0": outputs["z0"],
    }


def cache_unprompted_passes(
    model, frozen, runs_arrays: Sequence[Arrays], batch_size: int, mesh, lengths: Sequence[int] = ()
) -> list[Arrays]:
    """`cache_unprompted_pass` of several runs' arrays, each distinct example computed once.

    Stacked runs draw overlapping training sets (rows of one seed draw the same few-shot subset),
    and an example's unprompted pass depends on its `unprompted_*` arrays alone, so the union of
    their examples is passed through the encoder once and every run reads its rows from it.
    """
    fields = sorted(name for name in runs_arrays[0] if name.startswith("unprompted_"))
    union_rows: dict[bytes, int] = {}
    runs_rows = []  # Per run, the union row of each of its examples.
    sources = []  # Per union row, (run, row) of its first occurrence.
    for run, arrays in enumerate(runs_arrays):
        rows = []
        for row in range(len(arrays["label"])):
            key = b"".join(arrays[name][row].tobytes() for name in fields)
            if key not in union_rows:
                union_rows[key] = len(sources)
                sources.append((run, row))
            rows.append(union_rows[key])
        runs_rows.append(np.asarray(rows, np.int64))
    union = {
        name: np.stack([runs_arrays[run][name][row] for run, row in sources])
        for name in runs_arrays[0]
    }
    cached = cache_unprompted_pass(model, frozen, union, batch_size, mesh, lengths)
    return [
        {
            **arrays,
            "cached_generator_input": cached["cached_generator_input"][rows],
            "cached_z0": cached["cached_z0"][rows],
        }
        for arrays, rows in zip(runs_arrays, runs_rows)
    ]


def uses_cached_unprompted_pass(components: components_lib.Components) -> bool:
    """Whether a run precomputes the unprompted pass: asked for, and read (generator methods)."""
    return (
        bool(components.config.cache_unprompted)
        and components.method.model.prompt_source == "generator"
    )


def cache_bytes(num_examples: int, hidden_size: int) -> int:
    """Host bytes of the cache of `num_examples`: P_src and Z0, `[N, D]` float32 each."""
    return 2 * num_examples * hidden_size * np.dtype(np.float32).itemsize


def available_host_memory() -> int | None:
    """Bytes of host memory free now (Linux `sysconf`), or None where the OS does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def cache_fits(num_examples: int, hidden_size: int, available: int | None) -> bool:
    """Whether the cache of `num_examples` fits the host (`available` bytes; None: assumed so).

    Logs the cache's size, or one line saying the run goes without it.
    """
    size_mb = cache_bytes(num_examples, hidden_size) / 2**20
    if available is not None and size_mb * 2**20 > MAX_SHARE_OF_AVAILABLE_MEMORY * available:
        logging.warning(
            "The unprompted-pass cache of %d examples would take %.1f MB, more than %d%% of the "
            "host's %.1f MB available: this run recomputes the pass every step instead "
            "(config.cache_unprompted off).",
            num_examples,
            size_mb,
            round(100 * MAX_SHARE_OF_AVAILABLE_MEMORY),
            available / 2**20,
        )
        return False
    logging.info("Caching the unprompted pass of %d examples: %.1f MB.", num_examples, size_mb)
    return True


def with_cached_unprompted_pass(
    components: components_lib.Components,
    frozen,
    runs_train_arrays: Sequence[Arrays],
    dev_arrays: Arrays,
    mesh,
) -> tuple[list[Arrays], Arrays]:
    """Every run's train arrays and the dev arrays, with the cached unprompted pass when the run
    uses it (`uses_cached_unprompted_pass`) and it fits the host's memory; else unchanged.

    One run, or the R runs of a stack: each distinct example, train or dev, is passed through the
    encoder once (`cache_unprompted_passes`), in batches of `config.train.eval_batch_size` (a
    forward pass, like evaluation) cut to the run's length buckets.
    """
    runs_train_arrays = list(runs_train_arrays)
    if not uses_cached_unprompted_pass(components):
        return runs_train_arrays, dev_arrays
    config = components.config
    num_examples = sum(len(arrays["label"]) for arrays in runs_train_arrays)
    num_examples += len(dev_arrays["label"])
    hidden_size = components.model.encoder_config.hidden_size
    if not cache_fits(num_examples, hidden_size, available_host_memory()):
        return runs_train_arrays, dev_arrays
    *cached_trains, cached_dev = cache_unprompted_passes(
        components.model,
        frozen,
        [*runs_train_arrays, dev_arrays],
        config.train.eval_batch_size,
        mesh,
        batching.run_lengths(config),
    )
    return cached_trains, cached_dev
