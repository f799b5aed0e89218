"""The training loop. Every run trains in a stack: a separate run is a stack of one.

`train_and_evaluate_stacked(configs, workdirs)` trains configs that differ only in `seed` and
InfoPrompt's loss weights (`stack_rules`) as one compiled program (`stacking`): the encoder is
read once, each batch shape compiles once, and every evaluation runs all the runs on the same dev
batches. `train_and_evaluate(config, workdir)` is the stack of one that `main` runs without
`--seeds`; its step is the plain train step (`stacking.over_runs`), so its numbers are a
separate run's to the bit.

Each run sees what its separate run sees: its own few-shot subset, data order (`epoch_order` of
its seed), initial parameters and critic draws (its RNG key, folded with the step), and writes
its own workdir (`run_slots`). Runs with other loss weights share one model that has every
critic some run uses (the union model); a weight of 0 leaves a run's numbers its ablation's.
"""

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from infoprompt_jax import config_loading
from infoprompt_jax.train import (
    batching,
    phase_timer,
    run_slots,
    stack_rules,
    stack_setup,
    stacking,
)
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import progress as progress_lib
from infoprompt_jax.train import schedule as schedule_lib
from infoprompt_jax.workdir import checkpointing, run_dir
from infoprompt_jax.workdir import summary as summary_lib

Arrays = dict[str, np.ndarray]


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, timer: phase_timer.PhaseTimer | None = None
) -> dict[str, Any]:
    """Trains and evaluates one config in `workdir`, resuming from its latest checkpoint.

    Returns:
      The run summary (also written to the workdir, `workdir/summary.py`): final and best dev
      metrics, and `seconds` per phase (`phase_timer.PHASES`).

    Raises:
      FloatingPointError: the loss or a gradient turned non-finite (`steps.raise_if_diverged`).
    """
    summary = train_and_evaluate_stacked([config], [workdir], timer)[0]
    if "failed" in summary:
        raise FloatingPointError(summary["failed"])
    return summary


def train_and_evaluate_stacked(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    timer: phase_timer.PhaseTimer | None = None,
) -> list[dict[str, Any]]:
    """Trains configs that differ only in seed and loss weights together; run i in `workdirs[i]`.

    Finished runs (`summary.finished`) are not trained again. Resuming: every run restarts from
    the latest step all of them have checkpointed. A workdir that holds a run of another config is
    refused (`run_dir.check_same_run`), and each workdir is locked while the stack trains.

    Returns:
      Each run's summary, plus `stacked_runs` (how many trained together, when more than one)
      and, for a run that diverged, `failed` (the reason; it writes no summary).
    """
    timer = timer or phase_timer.PhaseTimer()
    configs = list(configs)
    configs = [config_loading.load(config) for config in configs]
    stack_rules.check_stackable(configs)
    workdirs = [epath.Path(w) for w in workdirs]
    if len(set(workdirs)) != len(workdirs):
        raise ValueError(f"Stacked runs need distinct workdirs; got {[str(w) for w in workdirs]}.")
    summaries: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as locks:
        for config, workdir in zip(configs, workdirs):
            locks.enter_context(run_dir.RunLock(workdir))
            run_dir.check_same_run(workdir, components_lib.resolve_config(config))
        for i, workdir in enumerate(workdirs):
            if (finished := summary_lib.finished(workdir)) is not None:
                logging.info("%s already finished; nothing to do.", workdir)
                summaries[i] = finished
        todo = [i for i in range(len(configs)) if i not in summaries]
        if todo:
            stack = stack_setup.build_stack(
                [configs[i] for i in todo], [workdirs[i] for i in todo], timer
            )
            summaries.update(zip(todo, train(stack, timer)))
    return [summaries[i] for i in range(len(configs))]


def train(stack: stack_setup.Stack, timer: phase_timer.PhaseTimer) -> list[dict[str, Any]]:
    """Steps the stack to its end (or a SIGTERM), logging, evaluating and saving as scheduled;
    returns each run's summary."""
    slots, schedule, config = stack.slots, stack.schedule, stack.shared.config
    batch_size = config.train.batch_size
    progress = progress_lib.Progress(
        schedule.total_steps, schedule.steps_per_epoch, batch_size * len(slots), stack.start_step
    )
    preemption = checkpointing.PreemptionFlag()
    interval, last_saved, start_time = [], stack.start_step, time.perf_counter()
    logging.info("Compiling the train step (the first step takes longest).")
    timer.start("train")
    for step in range(stack.start_step, schedule.total_steps):
        epoch, done = step // schedule.steps_per_epoch + 1, step + 1
        batches = train_batches(stack, step)
        stack.states, metrics = stack.train_fn(
            stack.states, stack.frozen, batches, stack.betas_R, stack.gammas_R
        )
        interval.append(metrics)
        record_trajectories(stack, done)
        due = schedule.due(done, preemption.raised)
        if due:  # Where the loop logs, evaluates or saves: never on non-finite params.
            run_slots.fail_diverged(stack.states, slots, last_saved, config.optim.lr)
            if not any(slot.active for slot in slots):
                break
        if schedule_lib.LOG in due:
            log_interval(slots, progress, done, interval)
            interval = []
        if schedule_lib.EVAL in due:
            with timer.phase("eval"):
                evaluate(stack, done, epoch)
        if schedule_lib.SAVE in due:
            last_saved = done
            with timer.phase("checkpoint"):
                run_slots.save(slots, stack.states, done)
        if preemption.raised:
            where = slots[0].workdir if len(slots) == 1 else f"{len(slots)} stacked runs"
            logging.warning(
                "SIGTERM: saved step %d of %s; rerun the same command to resume.", done, where
            )
            break
    jax.block_until_ready(stack.states)
    timer.stop("train")
    progress.close()
    preemption.restore()
    train_seconds = time.perf_counter() - start_time
    return run_slots.finish(
        slots, stack.states, stack.frozen, timer, preemption.raised, train_seconds
    )


def train_batches(stack: stack_setup.Stack, step: int) -> dict[str, jax.Array]:
    """Every run's batch of `step`, in its own seed's epoch order, as one `[R, B, ...]` batch."""
    schedule, batch_size = stack.schedule, stack.shared.config.train.batch_size
    epoch, index = divmod(step, schedule.steps_per_epoch)
    runs_rows = []
    for slot in stack.slots:
        arrays = slot.train_arrays
        num_train = len(arrays["label"])
        seed = slot.components.config.seed
        indices = batching.epoch_order(num_train, batch_size, seed, epoch)[index]
        runs_rows.append({name: value[indices] for name, value in arrays.items()})
    return stacking.stacked_device_batch(runs_rows, stack.mesh, stack.spread, stack.lengths)


def log_interval(slots, progress, done: int, interval: list) -> None:
    """Each active run's mean train metrics over the interval since the last log."""
    fetched = jax.device_get(interval)
    for i, slot in enumerate(slots):
        if slot.active:
            run_metrics = [stacking.unstack(metrics, i) for metrics in fetched]
            run_slots.log_train_metrics(slot.writer, progress, done, run_metrics)


def evaluate(stack: stack_setup.Stack, done: int, epoch: int) -> None:
    """Every run's dev metrics on the same dev batches, recorded in its workdir."""
    runs_scores = stack.evaluator.stacked_metrics(stack.states.trainable, stack.frozen)
    run_slots.record_eval(stack.slots, runs_scores, stack.shared.task, done, epoch)


def record_trajectories(stack: stack_setup.Stack, done: int) -> None:
    """The first example's prompt of each run, every `log_prompt_every` steps."""
    for i, slot in enumerate(stack.slots):
        if slot.active and slot.trajectory is not None:
            slot.trajectory.maybe_record(
                done, stacking.unstack(stack.states.trainable, i), stack.frozen
            )
