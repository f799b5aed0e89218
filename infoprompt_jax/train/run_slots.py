"""The runs of a stack, each with what is its own: workdir, data, writer, checkpoints, record.

Every run writes its own workdir exactly as a separate run does (config.json with its seed,
metrics.jsonl, checkpoints, its summary), whatever stack it trained in, so reports, export,
predict and resume read it unchanged; a run directory may be resumed by a stack of another size.
A run whose loss or gradients turn non-finite fails alone, by the rules of a separate run
(`steps.raise_if_diverged`): it writes nothing more, and its siblings finish.
"""

import dataclasses
import types
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from infoprompt_jax.model import methods, models
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import phase_timer, run_state, stacking, steps
from infoprompt_jax.workdir import checkpointing, metric_logging
from infoprompt_jax.workdir import summary as summary_lib


@dataclasses.dataclass
class RunSlot:
    """One run of the stack. `abstract_state` is the run's own train state (its own model's
    params): what it saves and restores."""

    components: components_lib.Components
    abstract_state: Any
    workdir: epath.Path
    train_arrays: dict[str, np.ndarray]
    writer: metric_logging.MetricWriter
    manager: checkpointing.Manager
    record: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"step": 0, "best_step": None, "best_score": None}
    )
    failure: str = ""
    eval_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    trajectory: Any = None

    @property
    def active(self) -> bool:
        return not self.failure

    @property
    def label(self) -> str:
        """The run in log lines: its workdir's last two parts, e.g. `gamma-0/seed3`."""
        return f"{self.workdir.parent.name}/{self.workdir.name}"


def run_components(
    shared: components_lib.Components, config: ml_collections.ConfigDict
) -> components_lib.Components:
    """One run's components: the shared encoder, tokenizer and task, with the run's own config,
    method (loss weights) and model (only the critics its weights use)."""
    config = components_lib.resolve_config(config)
    method = methods.resolve(
        config, shared.task.num_labels, has_mlm_transform=shared.mlm_transform is not None
    )
    model = models.InfoPromptModel(method.model, shared.model.encoder_config, shared.model.dtype)
    return dataclasses.replace(shared, config=config, method=method, model=model)


def fail_diverged(states, slots: Sequence[RunSlot], last_saved: int, lr: float) -> None:
    """Marks the runs whose loss or gradients turned non-finite as failed, with the message a
    separate run stops with; the step froze their params at the last finite ones."""
    diverged_at, diverged_loss = jax.device_get((states.diverged_at, states.diverged_loss))
    for i, slot in enumerate(slots):
        if not slot.active or not diverged_at[i]:
            continue
        run = types.SimpleNamespace(diverged_at=diverged_at[i], diverged_loss=diverged_loss[i])
        try:
            steps.raise_if_diverged(run, slot.workdir, last_saved, lr)
        except FloatingPointError as e:
            slot.failure = str(e)
            if len(slots) > 1:
                logging.error("%s failed: %s", slot.label, e)


def resume(slots: list[RunSlot], run_states: list[Any]) -> int:
    """Restores every run at the newest step all of them reached; returns that step (0: none).

    Each run's newest intact checkpoint is found as for a single run (a damaged one is moved
    aside). Runs ahead of the slowest go back to its step, as the stack trains in lockstep; their
    later checkpoints are deleted, since those steps train again. A run's own state goes into its
    stacked one; the critics it does not use keep their init.
    """
    restored = [checkpointing.restore_latest(slot.manager, slot.abstract_state) for slot in slots]
    start_step = min(int(run[1]["step"]) if run else 0 for run in restored)
    for i, (slot, run) in enumerate(zip(slots, restored)):
        later = checkpointing.delete_steps_after(slot.manager, start_step)
        if later:
            logging.warning(
                "%s had checkpoints at steps %s, after step %d where the stacked runs resume "
                "together: they are deleted and those steps trained again.",
                slot.workdir,
                later,
                start_step,
            )
        if not start_step:
            continue
        if int(run[1]["step"]) != start_step:
            run = checkpointing.restore_at(
                slot.manager,
                start_step,
                slot.abstract_state,
                hint="the stacked runs stopped at different steps and this one kept too few "
                "checkpoints; rerun its seed separately with main.py.",
            )
        own_state, slot.record = run
        run_states[i] = stacking.embed(own_state, run_states[i])
    if start_step and len(slots) == 1:
        logging.info("Resumed from step %d in %s.", start_step, slots[0].workdir)
    elif start_step:
        logging.info("Resumed %d stacked runs from step %d.", len(slots), start_step)
    return start_step


def record_eval(slots: Sequence[RunSlot], runs_scores, task, done: int, epoch: int) -> None:
    """Keeps each active run's dev scores and its best, and writes the scores."""
    main_metric = f"eval_{task.main_metric}"
    for slot, scores in zip(slots, runs_scores):
        if not slot.active:
            continue
        slot.eval_scores = scores
        best = slot.record["best_score"]
        if best is None or slot.eval_scores[main_metric] > best:
            slot.record.update(best_step=done, best_score=slot.eval_scores[main_metric])
        slot.writer.write(done, {"epoch": epoch, **slot.eval_scores})
        prefix = f"{slot.label} " if len(slots) > 1 else ""
        logging.info("%sstep %d epoch %d: %s", prefix, done, epoch, slot.eval_scores)


def save(slots: Sequence[RunSlot], states, done: int) -> None:
    """Checkpoints each active run's own part of the stacked state at step `done`."""
    for i, slot in enumerate(slots):
        if slot.active:
            slot.record["step"] = done
            slot.writer.flush()  # The metrics file holds every record up to the checkpoint.
            own_state = stacking.restrict(stacking.unstack(states, i), slot.abstract_state)
            checkpointing.save(slot.manager, done, own_state, slot.record)
    logging.info("Saved checkpoint at step %d.", done)


def log_train_metrics(writer, progress, step: int, interval: list) -> None:
    """Writes the mean of the interval's train metrics (finite: the loop checked)."""
    fetched = jax.device_get(interval)
    means = {f"train_{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    writer.write(step, means)
    progress.update(step, fetched[-1])


def finish(
    slots, states, frozen, timer: phase_timer.PhaseTimer, preempted: bool, train_seconds: float
):
    """Closes each run's files and returns its summary, written for the runs that finished."""
    peak_mb = phase_timer.peak_device_memory_mb()  # The process's, shared (None on a CPU).
    step_R = np.asarray(jax.device_get(states.step))
    main_metric = f"eval_{slots[0].components.task.main_metric}"
    summaries = []
    for i, slot in enumerate(slots):
        slot.manager.close()
        slot.writer.close()
        summary = {
            "step": int(step_R[i]),
            "preempted": preempted,
            **slot.eval_scores,
            "best_step": slot.record["best_step"],
            f"best_{main_metric}": slot.record["best_score"],
            "train_seconds_this_run": train_seconds,
            # The process's seconds, shared out: summed over a grid they add up to its wall time.
            "seconds": timer.as_dict(scale=1.0 / len(slots)),
            "peak_device_mem_mb": peak_mb,
            # Counted on the run's own state: a stacked row has only the critics it uses.
            "trainable_params": run_state.param_counts(slot.abstract_state.trainable, frozen),
        }
        if len(slots) > 1:
            summary["stacked_runs"] = len(slots)
        if slot.failure:
            summary["failed"] = slot.failure
        elif not preempted and jax.process_index() == 0:
            summary_lib.write(slot.workdir, summary)
        summaries.append(summary)
    return summaries
