"""Times one train step of a run's config: the plain step against the stacked step of R runs.

    python -m infoprompt_jax.tools.bench_stacked_step --workdir=RUN_DIR --length=128 --runs=1,3

RUN_DIR is any run directory (its `config.json` gives the model, task and method; its data and
encoder must be where the config says). The batch is the first 8 train examples (the config's
batch size), cut to `--length`, with the unprompted pass cached when the config asks. Each round
times `--steps` steps of the plain step (`steps.compile_steps`, what a separate run uses), then of
the stacked step (`stacking.compile_stacked_steps`, what `--seeds` uses) for each R in `--runs`,
all runs on the same batch; rounds alternate so that drift of the machine shows in every mode.
Prints milliseconds per step and per run-step.
"""

import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.analysis import runs
from infoprompt_jax.train import batching, run_state, sharding, stacking, steps, unprompted_cache
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.workdir import workdir_files


def seconds_per_step(step: Callable[[], object], num_steps: int) -> float:
    """Mean wall seconds of `step()` over `num_steps` calls, after one untimed call."""
    jax.block_until_ready(step())
    start = time.perf_counter()
    for _ in range(num_steps):
        out = step()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / num_steps


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""

    def define(kind, name, default, help_text):
        kind(name, default, help_text, flag_values=flag_values)

    define(flags.DEFINE_string, "workdir", None, "A run directory (its config.json).")
    define(flags.DEFINE_integer, "length", 128, "The batch's sequence length.")
    define(flags.DEFINE_string, "runs", "1,3", "Comma-separated stack sizes R.")
    define(flags.DEFINE_integer, "steps", 20, "Timed steps per mode and round.")
    define(flags.DEFINE_integer, "rounds", 3, "Rounds of every mode, alternating.")
    flags.mark_flags_as_required(["workdir"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flag_values
    components = components_lib.build_components(workdir_files.load_config(args.workdir))
    batch_size = components.config.train.batch_size
    arrays = runs.encode_examples(components, "train", batch_size)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    # Schedule length only sets the learning rate's decay; a long one keeps it near its peak.
    optimizer = optimizer_lib.from_config(components.config, components.config.optim.lr, 10_000)
    state, frozen = run_state.build_state(components, optimizer, mesh, arrays)
    if unprompted_cache.uses_cached_unprompted_pass(components):
        arrays = unprompted_cache.cache_unprompted_pass(
            components.model,
            frozen,
            arrays,
            batch_size,
            mesh,
            batching.run_lengths(components.config),
        )
    rows = batching.cut(arrays, args.length)
    weights = components.method.loss_weights
    host_state = jax.device_get(state)  # The plain step donates `state`.

    plain_train, _ = steps.compile_steps(components.model, optimizer, weights, mesh, state, frozen)
    plain_batch = batching.device_batch(rows, np.arange(batch_size), mesh)
    plain_state = [state]

    def plain_step():
        plain_state[0], metrics = plain_train(plain_state[0], frozen, plain_batch)
        return metrics

    modes = {"plain": (plain_step, 1)}
    for num_runs in (int(r) for r in args.runs.split(",")):
        stacked = jax.tree.map(lambda x, n=num_runs: np.stack([np.asarray(x)] * n), host_state)
        stacked = stacking.place_states(stacked, mesh, spread=False)
        train, _ = stacking.compile_stacked_steps(
            components.model, optimizer, weights, mesh, stacked, frozen, spread=False
        )
        batch = stacking.stacked_device_batch([rows] * num_runs, mesh, spread=False)
        zeros = np.zeros((num_runs,), np.float32)
        holder = [stacked]

        def stacked_step(train=train, batch=batch, zeros=zeros, holder=holder):
            holder[0], metrics = train(holder[0], frozen, batch, zeros, zeros)
            return metrics

        modes[f"stacked R={num_runs}"] = (stacked_step, num_runs)

    print(f"{args.workdir}: batch {batch_size} x length {args.length}, {args.steps} steps per mode")
    for round_index in range(args.rounds):
        for name, (step, num_runs) in modes.items():
            ms = seconds_per_step(step, args.steps) * 1e3
            print(
                f"round {round_index}  {name:<12} {ms:8.0f} ms per step"
                f" {ms / num_runs:8.0f} ms per run-step",
                flush=True,
            )


if __name__ == "__main__":
    cli.run_command(define_flags, main)
