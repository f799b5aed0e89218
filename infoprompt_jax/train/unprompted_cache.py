"""The unprompted pass, computed once per example (`config.cache_unprompted`).

The encoder is frozen and deterministic, so the unprompted pass of an example (the prompt
generator's input and Z0) is the same every epoch: caching it saves one of the train step's two
encoder forwards (tested equal to recomputing it every step).
"""

import functools
from collections.abc import Sequence

import jax
import numpy as np

from infoprompt_jax.train import batching, sharding, steps
from infoprompt_jax.train import components as components_lib

Arrays = dict[str, np.ndarray]


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
