"""The training loop: train, evaluate every epoch, checkpoint, resume.

`train_and_evaluate(config, workdir)` is the product's main job. The data position is the step
itself (epoch e's order is a permutation drawn from (seed, e)), so a run resumed from a
checkpoint at step s continues exactly where an unbroken run would be.
"""

import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from infoprompt_jax import config_validation
from infoprompt_jax.train import (
    batching,
    device_memory,
    evaluation,
    phase_timer,
    prompt_trajectory,
    run_state,
    sharding,
    steps,
    unprompted_cache,
)
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.train import progress as progress_lib
from infoprompt_jax.workdir import checkpointing, metric_logging, run_dir, workdir_files

Arrays = dict[str, np.ndarray]


def evaluate(
    eval_fn, trainable, frozen, components: components_lib.Components, arrays: Arrays, mesh
) -> dict[str, float]:
    """The task's dev metrics, as `eval_<name>` keys (a one-off `evaluation.Evaluator`)."""
    return evaluation.Evaluator(eval_fn, arrays, components.config, mesh, components.task).metrics(
        trainable, frozen
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, timer: phase_timer.PhaseTimer | None = None
) -> dict[str, Any]:
    """Trains and evaluates a config in `workdir`, resuming from its latest checkpoint.

    Args:
      config: the run config.
      workdir: the run directory.
      timer: where the phases' seconds go (main.py's has the process start-up); None: a new one.

    Returns:
      The run summary (also written to `WORKDIR/summary.json`): final and best dev metrics, and
      `seconds` per phase (`phase_timer.PHASES`).
    """
    config_validation.validate(config)
    with run_dir.RunLock(workdir):
        return _train(config, epath.Path(workdir), timer or phase_timer.PhaseTimer())


def _train(config, workdir_path: epath.Path, timer: phase_timer.PhaseTimer) -> dict[str, Any]:
    # epath: local directories and gs:// buckets alike (every TPU host must see the workdir).
    logging.info("Loading the %s encoder and the %s data.", config.model.name, config.task)
    with timer.phase("encoder_load"):
        components = components_lib.build_components(config)
    config, task = components.config, components.task
    run_dir.check_same_run(workdir_path, config)
    timer.start("data")
    train_arrays = components.encode(components_lib.load_examples(config, task, "train"))
    dev_arrays = components.encode(components_lib.load_examples(config, task, "dev"))
    timer.stop("data")
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch_size = config.train.batch_size
    sharding.check_batch_size(batch_size, mesh)
    sharding.check_batch_size(config.train.eval_batch_size, mesh)
    num_train = len(train_arrays["label"])
    steps_per_epoch = batching.steps_per_epoch(num_train, batch_size)
    total_steps = steps_per_epoch * config.train.num_epochs
    if (finished := run_dir.finished_summary(workdir_path, total_steps)) is not None:
        logging.info("%s already finished at step %d; nothing to do.", workdir_path, total_steps)
        return finished
    optimizer = optimizer_lib.from_config(config, components.method.peak_lr, total_steps)
    sample = {k: v[:batch_size] for k, v in train_arrays.items()}
    timer.start("init")
    state, frozen = run_state.build_state(components, optimizer, mesh, sample)
    timer.stop("init")
    manager = checkpointing.make_manager(workdir_path, config.train.keep_checkpoints)
    record = {"step": 0, "best_step": None, "best_score": None}
    with timer.phase("checkpoint"):
        restored = checkpointing.restore_latest(manager, run_state.abstract_like(state))
    writer = metric_logging.MetricWriter(workdir_path)
    if restored is not None:
        state, record = restored
        logging.info("Resumed from step %d in %s.", record["step"], workdir_path)
    summary_path = workdir_path / "summary.json"
    writer.truncate_after(record["step"])
    if jax.process_index() == 0:
        workdir_files.write_config(workdir_path, config)
    lengths = batching.run_lengths(config)
    timer.start("unprompted_cache")
    (train_arrays,), dev_arrays = unprompted_cache.with_cached_unprompted_pass(
        components, frozen, [train_arrays], dev_arrays, mesh
    )
    timer.stop("unprompted_cache")
    train_fn, eval_fn = (
        phase_timer.CompileTimed(fn, timer)
        for fn in steps.compile_steps(
            components.model, optimizer, components.method.loss_weights, mesh, state, frozen
        )
    )
    evaluator = evaluation.Evaluator(eval_fn, dev_arrays, config, mesh, task)
    logging.info("Compiling the train step (the first step takes longest).")
    progress = progress_lib.Progress(total_steps, steps_per_epoch, batch_size, int(record["step"]))
    preemption = checkpointing.PreemptionFlag()
    trajectory = prompt_trajectory.PromptTrajectory(
        workdir_path,
        config.log_prompt_every,
        components.model,
        batching.device_batch(train_arrays, np.arange(batch_size), mesh),
    )
    if int(record["step"]) == 0:
        trajectory.maybe_record(0, state.trainable, frozen)
    main_metric = f"eval_{task.main_metric}"
    interval_metrics, eval_scores = [], {}
    start_step, start_time = int(record["step"]), time.perf_counter()
    last_saved = start_step

    def stop_if_diverged():  # Where the loop logs, evaluates or saves: never on NaN params.
        steps.raise_if_diverged(state, workdir_path, last_saved, config.optim.lr)

    timer.start("train")
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        indices = batching.epoch_order(num_train, batch_size, config.seed, epoch)[index]
        batch = batching.device_batch(train_arrays, indices, mesh, lengths)
        state, step_metrics = train_fn(state, frozen, batch)
        interval_metrics.append(step_metrics)
        done = step + 1
        trajectory.maybe_record(done, state.trainable, frozen)
        if done % config.train.log_every_steps == 0 or done == total_steps:
            stop_if_diverged()
            log_train_metrics(writer, progress, done, interval_metrics)
            interval_metrics = []
        epoch_end = done % steps_per_epoch == 0
        if is_eval_step(config.train, done, steps_per_epoch, total_steps):
            stop_if_diverged()
            with timer.phase("eval"):
                eval_scores = evaluator.metrics(state.trainable, frozen)
            if record["best_score"] is None or eval_scores[main_metric] > record["best_score"]:
                record.update(best_step=done, best_score=eval_scores[main_metric])
            writer.write(done, {"epoch": epoch + 1, **eval_scores})
            logging.info("step %d epoch %d: %s", done, epoch + 1, eval_scores)
        every = config.train.checkpoint_every_steps
        if (
            (epoch_end if every == 0 else done % every == 0)
            or done == total_steps
            or preemption.raised
        ):
            stop_if_diverged()
            record["step"] = last_saved = done
            with timer.phase("checkpoint"):
                writer.flush()  # The metrics file holds every record up to the checkpoint.
                checkpointing.save(manager, done, state, record)
            logging.info("Saved checkpoint at step %d.", done)
        if preemption.raised:
            logging.warning(
                "SIGTERM: saved step %d to %s; rerun the same command to resume.",
                done,
                workdir_path,
            )
            break
    jax.block_until_ready(state)
    timer.stop("train")
    progress.close()
    writer.close()
    preemption.restore()
    manager.close()
    summary = {
        "step": int(state.step),
        "preempted": preemption.raised,
        **eval_scores,
        "best_step": record["best_step"],
        f"best_{main_metric}": record["best_score"],
        "train_seconds_this_run": time.perf_counter() - start_time,
        "seconds": timer.as_dict(),
        "peak_device_mem_mb": device_memory.peak_device_memory_mb(),
    }
    if jax.process_index() == 0 and not preemption.raised:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def is_eval_step(train_config, done: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Whether the run evaluates after `done` steps: every `eval_every_steps` steps when that is
    set (a few-shot run's learning curve), else at every `eval_every_epochs`-th epoch end; always
    after the last step."""
    if done == total_steps:
        return True
    if train_config.eval_every_steps:
        return done % train_config.eval_every_steps == 0
    return done % (steps_per_epoch * train_config.eval_every_epochs) == 0


def log_train_metrics(writer, progress, step: int, interval: list) -> None:
    """Writes the mean of the interval's train metrics (finite: the loop checked)."""
    fetched = jax.device_get(interval)
    means = {f"train_{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    writer.write(step, means)
    progress.update(step, fetched[-1])
