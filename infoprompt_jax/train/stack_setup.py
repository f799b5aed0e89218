"""Everything a stack needs before its first step: components, data, state, resume, steps.

`build_stack` reads the encoder once for all the runs, tokenizes each run's data, initialises
each run's state with its own seed, resumes the runs together, caches the unprompted pass and
compiles the stacked steps. A stack of one is a separate run.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from infoprompt_jax.train import (
    batching,
    evaluation,
    phase_timer,
    prompt_trajectory,
    run_slots,
    run_state,
    sharding,
    stack_rules,
    stacking,
    unprompted_cache,
)
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.train import schedule as schedule_lib
from infoprompt_jax.workdir import checkpointing, metric_logging, workdir_files

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass
class Stack:
    """What the loop reads and updates: the runs, their stacked state and the compiled steps."""

    shared: components_lib.Components
    slots: list[run_slots.RunSlot]
    states: Any  # steps.TrainState with a leading run axis
    frozen: Any
    train_fn: Any
    evaluator: evaluation.Evaluator
    mesh: Any
    spread: bool
    lengths: tuple[int, ...]
    betas_R: jax.Array
    gammas_R: jax.Array
    schedule: schedule_lib.Schedule
    start_step: int


def build_stack(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[epath.Path],
    timer: phase_timer.PhaseTimer,
) -> Stack:
    """The stack of `configs` (checked stackable) writing to `workdirs`, resumed and compiled."""
    shared, runs, trains, dev_arrays = load_runs(configs, timer)
    config = shared.config
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch_size = config.train.batch_size
    if len(runs) == 1:  # A separate run's batch splits over the devices.
        sharding.check_batch_size(batch_size, mesh)
    spread = stacking.spreads_runs(batch_size, len(runs), mesh)
    sharding.check_batch_size(config.train.eval_batch_size, mesh)
    steps_per_epoch = batching.steps_per_epoch(len(trains[0]["label"]), batch_size)
    schedule = schedule_lib.Schedule(
        config.train, steps_per_epoch, steps_per_epoch * config.train.num_epochs
    )
    optimizer = optimizer_lib.from_config(config, shared.method.peak_lr, schedule.total_steps)
    timer.start("init")
    samples = [{k: v[:batch_size] for k, v in arrays.items()} for arrays in trains]
    run_states, frozen, union_abstract = init_states(shared, runs, samples, optimizer, mesh)
    timer.stop("init")
    slots = open_slots(runs, samples, workdirs, trains, shared, union_abstract, mesh)
    with timer.phase("checkpoint"):
        start_step = run_slots.resume(slots, run_states)
    states = stacking.place_states(stacking.stack(run_states), mesh, spread)
    del run_states
    for slot in slots:
        slot.writer.truncate_after(start_step)
        if jax.process_index() == 0:
            workdir_files.write_config(slot.workdir, slot.components.config)
    lengths = batching.run_lengths(config)
    with timer.phase("unprompted_cache"):
        trains, dev_arrays = unprompted_cache.with_cached_unprompted_pass(
            shared, frozen, [slot.train_arrays for slot in slots], dev_arrays, mesh
        )
        for slot, arrays in zip(slots, trains):
            slot.train_arrays = arrays
    weights = [slot.components.method.loss_weights for slot in slots]
    train_fn, eval_fn = (
        phase_timer.CompileTimed(fn, timer)
        for fn in stacking.compile_stacked_steps(
            shared.model,
            optimizer,
            shared.method.loss_weights,
            mesh,
            states,
            frozen,
            spread=spread,
            per_run_weights=len({(w.beta, w.gamma) for w in weights}) > 1,
        )
    )
    replicated = sharding.replicated(mesh)
    betas_R, gammas_R = (
        jax.device_put(np.asarray([getattr(w, name) for w in weights], np.float32), replicated)
        for name in ("beta", "gamma")
    )
    evaluator = evaluation.Evaluator(eval_fn, dev_arrays, config, mesh, shared.task)
    stack = Stack(
        shared,
        slots,
        states,
        frozen,
        train_fn,
        evaluator,
        mesh,
        spread,
        lengths,
        betas_R,
        gammas_R,
        schedule,
        start_step,
    )
    start_trajectories(stack)
    return stack


def load_runs(configs, timer: phase_timer.PhaseTimer):
    """(shared components, each run's components, each run's train arrays, the dev arrays)."""
    logging.info("Loading the %s encoder and the %s data.", configs[0].model.name, configs[0].task)
    with timer.phase("encoder_load"):
        shared = components_lib.build_components(stack_rules.union_config(configs))
    runs = [run_slots.run_components(shared, config) for config in configs]
    task = shared.task
    with timer.phase("data"):
        trains = [r.encode(components_lib.load_examples(r.config, task, "train")) for r in runs]
        dev_arrays = shared.encode(components_lib.load_examples(shared.config, task, "dev"))
    if any(len(arrays["label"]) != len(trains[0]["label"]) for arrays in trains):
        raise ValueError("Stacked seeds drew training sets of different sizes; run them apart.")
    return shared, runs, trains, dev_arrays


def init_states(shared, runs, samples, optimizer, mesh):
    """Each run's initial state (its seed) under the union model, and the one frozen tree.

    The first run's frozen tree goes on the mesh and serves every run; the others' are dropped
    unplaced (the frozen weights are the pretrained ones, the same for every seed).
    """
    union_runs = [
        dataclasses.replace(run, model=shared.model, method=shared.method) for run in runs
    ]
    first_state, frozen = run_state.build_state(union_runs[0], optimizer, mesh, samples[0])
    run_states = [first_state] + [
        run_state.initial_state(components, optimizer, sample)[0]
        for components, sample in zip(union_runs[1:], samples[1:])
    ]
    return run_states, frozen, run_state.abstract_like(first_state)


def open_slots(runs, samples, workdirs, trains, shared, union_abstract, mesh):
    """A slot per run: its checkpoints, metric writer and own state's structure."""
    config = shared.config
    slots = []
    for run, sample, workdir, arrays in zip(runs, samples, workdirs, trains):
        own_abstract = union_abstract
        if run.model != shared.model:  # A run without a critic of the union model.
            own_abstract = run_state.abstract_state(run, sample, sharding.replicated(mesh))
        manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
        writer = metric_logging.MetricWriter(workdir)
        slots.append(run_slots.RunSlot(run, own_abstract, workdir, arrays, writer, manager))
    return slots


def start_trajectories(stack: Stack) -> None:
    """Each run's prompt trajectory (`log_prompt_every`), its step-0 prompt on a fresh start."""
    config = stack.shared.config
    if not config.log_prompt_every:
        return
    for i, slot in enumerate(stack.slots):
        first_rows = batching.device_batch(
            slot.train_arrays, np.arange(config.train.batch_size), stack.mesh
        )
        slot.trajectory = prompt_trajectory.PromptTrajectory(
            slot.workdir, config.log_prompt_every, stack.shared.model, first_rows
        )
        if stack.start_step == 0:
            slot.trajectory.maybe_record(
                0, stacking.unstack(stack.states.trainable, i), stack.frozen
            )
