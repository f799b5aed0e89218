"""The unprompted pass, computed once per example (`config.cache_unprompted`).

The encoder is frozen and deterministic, so the unprompted pass of an example (the prompt
generator's input and Z0) is the same every epoch: caching it saves one of the train step's two
encoder forwards (tested equal to recomputing it every step).
"""

import functools
from collections.abc import Sequence

import jax
import numpy as np

from infoprompt_jax import batching, sharding, steps
from infoprompt_jax import components as components_lib

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


def uses_cached_unprompted_pass(components: components_lib.Components) -> bool:
    """Whether a run precomputes the unprompted pass: asked for, and read (generator methods)."""
    return (
        bool(components.config.cache_unprompted)
        and components.method.model.prompt_source == "generator"
    )
