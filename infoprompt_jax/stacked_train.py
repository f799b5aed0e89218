"""The training loop of several seeds of one config at once: one process, one compiled step.

`train_and_evaluate_stacked(configs, workdirs)` trains configs that differ only in `seed` as one
stacked program (`stacking.py`): the encoder is read once, each batch shape compiles once, and
every evaluation runs all the runs on the same dev batches. Each run still writes its own
workdir exactly as `train.train_and_evaluate` does (config.json with its seed, metrics.jsonl,
checkpoints, summary.json), so reports, export, predict and resume read it unchanged; a run
directory may even be resumed by a separate `main.py` run, and the other way round.

Each run sees what its separate run sees: its own few-shot subset, data order (`epoch_order` of
its seed), initial parameters and critic draws (its RNG key, folded with the step).

A run whose loss or gradients turn non-finite fails alone, by the rules of a separate run
(`steps.raise_if_diverged`): the step stops updating it, it writes nothing more (no summary.json;
its last checkpoint before the divergence stays), and its siblings finish.
"""

import dataclasses
import json
import time
import types
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from infoprompt_jax import (
    batching,
    checkpointing,
    config_validation,
    metric_logging,
    phase_timer,
    prompt_trajectory,
    run_state,
    sharding,
    stacking,
    steps,
    train,
    unprompted_cache,
    workdir_files,
)
from infoprompt_jax import components as components_lib
from infoprompt_jax import metrics as metrics_lib
from infoprompt_jax import optimizer as optimizer_lib
from infoprompt_jax import progress as progress_lib

# Methods whose frozen tree depends on the seed (adapters load with the encoder) or that train
# the encoder itself: nothing would be shared.
UNSTACKABLE_METHODS = ("adapter", "finetune")


def check_stackable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ValueError unless the configs differ only in seed, and their method can stack."""
    if len({int(c.seed) for c in configs}) != len(configs):
        raise ValueError(f"Stacked runs need distinct seeds; got {[c.seed for c in configs]}.")
    first = _without_seed(configs[0])
    for config in configs[1:]:
        other = _without_seed(config)
        if other != first:
            changed = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ValueError(
                f"Stacked runs must differ only in seed; seed {config.seed} also changes {changed}."
            )
    if configs[0].method in UNSTACKABLE_METHODS:
        raise ValueError(
            f"method={configs[0].method} cannot stack seeds (its encoder weights are per "
            f"run); run its seeds separately. Stackable: methods other than {UNSTACKABLE_METHODS}."
        )


def _without_seed(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config.to_dict(), "")
    flat.pop("seed")
    return flat


def seed_config(components: components_lib.Components, seed: int) -> components_lib.Components:
    """`components` for another seed: the same encoder and model, the config's seed changed."""
    config = components.config.copy_and_resolve_references()
    with config.unlocked():
        config.seed = seed
    return dataclasses.replace(components, config=config)


@dataclasses.dataclass
class RunSlot:
    """One run of the stack and what is its own: workdir, data, writer, checkpoints, record."""

    components: components_lib.Components
    workdir: epath.Path
    train_arrays: dict[str, np.ndarray]
    writer: metric_logging.MetricWriter
    manager: ocp.CheckpointManager
    record: dict[str, Any]
    failure: str = ""
    eval_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    trajectory: Any = None

    @property
    def active(self) -> bool:
        return not self.failure


def fail_diverged(states, slots: Sequence[RunSlot], last_saved: int, lr: float) -> None:
    """Marks the runs whose loss or gradients turned non-finite as failed, with the message a
    separate run stops with (`steps.raise_if_diverged`); the step froze their params at the
    last finite ones, and they write nothing more."""
    diverged_at, diverged_loss = jax.device_get((states.diverged_at, states.diverged_loss))
    for i, slot in enumerate(slots):
        if not slot.active or not diverged_at[i]:
            continue
        run = types.SimpleNamespace(diverged_at=diverged_at[i], diverged_loss=diverged_loss[i])
        try:
            steps.raise_if_diverged(run, slot.workdir, last_saved, lr)
        except FloatingPointError as e:
            slot.failure = str(e)
            logging.error("Seed %s failed: %s", slot.components.config.seed, e)


def _drop_steps_after(slot: RunSlot, start_step: int) -> None:
    """Deletes a run's checkpoints after the step the stacked runs resume from together.

    The run trains those steps again, and a save at an existing step is skipped: kept, a stale
    checkpoint could end up as the run's latest.
    """
    later = [step for step in slot.manager.all_steps() if step > start_step]
    if later:
        logging.warning(
            "%s has checkpoints at steps %s, after step %d where the stacked runs resume "
            "together: they are deleted and those steps trained again.",
            slot.workdir,
            sorted(later),
            start_step,
        )
    for step in later:
        slot.manager.delete(step)


def _resume(slots: list[RunSlot], run_states: list[Any], abstract_state: Any) -> int:
    """Restores every run at the newest step all of them reached; returns that step (0: none).

    Each run's newest intact checkpoint is found as for a single run (a damaged one is moved
    aside). Runs ahead of the slowest go back to its step, as the stack trains in lockstep.
    """
    restored = [checkpointing.restore_latest(slot.manager, abstract_state) for slot in slots]
    start_step = min(int(run[1]["step"]) if run else 0 for run in restored)
    for i, (slot, run) in enumerate(zip(slots, restored)):
        _drop_steps_after(slot, start_step)
        if not start_step:
            continue
        if int(run[1]["step"]) != start_step:
            run = _restore_at(slot.manager, start_step, abstract_state)
        run_states[i], slot.record = run
    if start_step:
        logging.info("Resumed %d stacked runs from step %d.", len(slots), start_step)
    return start_step


def _restore_at(manager: ocp.CheckpointManager, step: int, abstract_state: Any):
    """(state, record) of the checkpoint at `step`, an older one than the run's newest."""
    if step not in manager.all_steps():
        raise ValueError(
            f"{manager.directory} has no checkpoint at step {step} (it has "
            f"{sorted(manager.all_steps())}): the stacked runs stopped at different steps and "
            "this one kept too few checkpoints; rerun its seed separately with main.py."
        )
    return checkpointing.restore_step(manager, step, abstract_state)


def train_and_evaluate_stacked(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    timer: phase_timer.PhaseTimer | None = None,
) -> list[dict[str, Any]]:
    """Trains configs that differ only in seed together; run i lives in `workdirs[i]`.

    Runs whose summary.json exists are finished and not trained again. Resuming: every run
    restarts from the latest step all of them have checkpointed.

    Returns:
      Each run's summary, as `train.train_and_evaluate` returns it, plus `stacked_runs` (how many
      trained together) and, for a run that diverged, `failed` (the reason; no summary.json).
    """
    timer = timer or phase_timer.PhaseTimer()
    configs = list(configs)
    for config in configs:
        config_validation.validate(config)
    check_stackable(configs)
    workdirs = [epath.Path(w) for w in workdirs]
    summaries: dict[int, dict[str, Any]] = {}
    for i, workdir in enumerate(workdirs):
        if (workdir / "summary.json").exists():
            logging.info("%s already finished; nothing to do for it.", workdir)
            summaries[i] = json.loads((workdir / "summary.json").read_text())
    todo = [i for i in range(len(configs)) if i not in summaries]
    if todo:
        results = _train_stack([configs[i] for i in todo], [workdirs[i] for i in todo], timer)
        summaries.update(zip(todo, results))
    return [summaries[i] for i in range(len(configs))]


def _train_stack(configs, workdirs, timer: phase_timer.PhaseTimer) -> list[dict[str, Any]]:
    num_runs = len(configs)
    with timer.phase("encoder_load"):
        shared = components_lib.build_components(configs[0])
    run_components = [seed_config(shared, int(c.seed)) for c in configs]
    config, task = shared.config, shared.task
    timer.start("data")
    trains = [
        c.encode(components_lib.load_examples(c.config, task, "train")) for c in run_components
    ]
    dev_arrays = shared.encode(components_lib.load_examples(config, task, "dev"))
    timer.stop("data")
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch_size = config.train.batch_size
    spread = stacking.spreads_runs(batch_size, num_runs, mesh)
    sharding.check_batch_size(config.train.eval_batch_size, mesh)
    num_train = len(trains[0]["label"])
    if any(len(arrays["label"]) != num_train for arrays in trains):
        raise ValueError("Stacked seeds drew training sets of different sizes; run them apart.")
    steps_per_epoch = batching.steps_per_epoch(num_train, batch_size)
    total_steps = steps_per_epoch * config.train.num_epochs
    optimizer = optimizer_lib.from_config(config, shared.method.peak_lr, total_steps)
    timer.start("init")
    samples = [{k: v[:batch_size] for k, v in arrays.items()} for arrays in trains]
    # The first run's frozen tree goes on the mesh and serves every run; the others' are dropped
    # unplaced (the frozen weights are the pretrained ones, the same for every seed).
    first_state, frozen = run_state.build_state(run_components[0], optimizer, mesh, samples[0])
    run_states = [first_state] + [
        run_state.initial_state(components, optimizer, sample)[0]
        for components, sample in zip(run_components[1:], samples[1:])
    ]
    abstract_state = run_state.abstract_like(first_state)
    timer.stop("init")

    slots = []
    for components, workdir, arrays in zip(run_components, workdirs, trains):
        manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
        writer = metric_logging.MetricWriter(workdir)
        record = {"step": 0, "best_step": None, "best_score": None}
        slots.append(RunSlot(components, workdir, arrays, writer, manager, record))
    with timer.phase("checkpoint"):
        start_step = _resume(slots, run_states, abstract_state)
    states = stacking.place_states(stacking.stack(run_states), mesh, spread)
    del run_states
    for slot in slots:
        slot.writer.truncate_after(start_step)
        if jax.process_index() == 0:
            workdir_files.write_config(slot.workdir, slot.components.config)
    lengths = batching.run_lengths(config)
    timer.start("unprompted_cache")
    if unprompted_cache.uses_cached_unprompted_pass(shared):
        for slot in slots:
            slot.train_arrays = unprompted_cache.cache_unprompted_pass(
                shared.model, frozen, slot.train_arrays, batch_size, mesh, lengths
            )
        dev_arrays = unprompted_cache.cache_unprompted_pass(
            shared.model, frozen, dev_arrays, config.train.eval_batch_size, mesh, lengths
        )
    timer.stop("unprompted_cache")
    train_fn, eval_fn = (
        phase_timer.CompileTimed(fn, timer)
        for fn in stacking.compile_stacked_steps(
            shared.model, optimizer, shared.method.loss_weights, mesh, states, frozen, spread=spread
        )
    )
    replicated = sharding.replicated(mesh)
    betas = jax.device_put(
        np.full(num_runs, shared.method.loss_weights.beta, np.float32), replicated
    )
    gammas = jax.device_put(
        np.full(num_runs, shared.method.loss_weights.gamma, np.float32), replicated
    )
    if config.log_prompt_every:
        for i, slot in enumerate(slots):
            first_rows = batching.device_batch(slot.train_arrays, np.arange(batch_size), mesh)
            slot.trajectory = prompt_trajectory.PromptTrajectory(
                slot.workdir, config.log_prompt_every, shared.model, first_rows
            )
            if start_step == 0:
                slot.trajectory.maybe_record(0, stacking.unstack(states.trainable, i), frozen)

    progress = progress_lib.Progress(
        total_steps, steps_per_epoch, batch_size * num_runs, start_step
    )
    preemption = checkpointing.PreemptionFlag()
    main_metric = f"eval_{task.main_metric}"
    interval_metrics = []
    last_saved = start_step
    start_time = time.perf_counter()
    timer.start("train")
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        runs_rows = []
        for slot in slots:
            indices = batching.epoch_order(
                num_train, batch_size, slot.components.config.seed, epoch
            )[index]
            runs_rows.append({name: value[indices] for name, value in slot.train_arrays.items()})
        batches = stacking.stacked_device_batch(runs_rows, mesh, spread, lengths)
        states, step_metrics = train_fn(states, frozen, batches, betas, gammas)
        interval_metrics.append(step_metrics)
        done = step + 1
        for i, slot in enumerate(slots):
            if slot.active and slot.trajectory is not None:
                slot.trajectory.maybe_record(done, stacking.unstack(states.trainable, i), frozen)
        if done % config.train.log_every_steps == 0 or done == total_steps:
            fail_diverged(states, slots, last_saved, config.optim.lr)
            fetched = jax.device_get(interval_metrics)
            for i, slot in enumerate(slots):
                if slot.active:
                    train.log_train_metrics(
                        slot.writer, progress, done, [stacking.unstack(m, i) for m in fetched]
                    )
            interval_metrics = []
        if not any(slot.active for slot in slots):
            break
        epoch_end = done % steps_per_epoch == 0
        if train.is_eval_step(config.train, done, steps_per_epoch, total_steps):
            fail_diverged(states, slots, last_saved, config.optim.lr)
            with timer.phase("eval"):
                logits_NxRxC = batching.predict_logits(
                    eval_fn,
                    states.trainable,
                    frozen,
                    dev_arrays,
                    config.train.eval_batch_size,
                    mesh,
                    lengths,
                )
                for i, slot in enumerate(slots):
                    if not slot.active:
                        continue
                    scores = metrics_lib.compute_metrics(
                        task, logits_NxRxC[:, i].argmax(-1), dev_arrays["label"]
                    )
                    slot.eval_scores = {f"eval_{name}": value for name, value in scores.items()}
                    record = slot.record
                    if (
                        record["best_score"] is None
                        or slot.eval_scores[main_metric] > record["best_score"]
                    ):
                        record.update(best_step=done, best_score=slot.eval_scores[main_metric])
                    slot.writer.write(done, {"epoch": epoch + 1, **slot.eval_scores})
                    logging.info(
                        "seed %s step %d epoch %d: %s",
                        slot.components.config.seed,
                        done,
                        epoch + 1,
                        slot.eval_scores,
                    )
        every = config.train.checkpoint_every_steps
        if (
            (epoch_end if every == 0 else done % every == 0)
            or done == total_steps
            or preemption.raised
        ):
            fail_diverged(states, slots, last_saved, config.optim.lr)
            last_saved = done
            with timer.phase("checkpoint"):
                for i, slot in enumerate(slots):
                    if slot.active:
                        slot.record["step"] = done
                        slot.writer.flush()  # The metrics file holds every record so far.
                        checkpointing.save(
                            slot.manager, done, stacking.unstack(states, i), slot.record
                        )
            logging.info("Saved checkpoint at step %d.", done)
        if preemption.raised:
            logging.warning(
                "SIGTERM: saved step %d of %d stacked runs; rerun the same command to resume.",
                done,
                num_runs,
            )
            break
    jax.block_until_ready(states)
    timer.stop("train")
    progress.close()
    preemption.restore()
    train_seconds = time.perf_counter() - start_time
    summaries = []
    for i, slot in enumerate(slots):
        slot.manager.close()
        slot.writer.close()
        summary = {
            "step": int(np.asarray(jax.device_get(states.step))[i]),
            "preempted": preemption.raised,
            **slot.eval_scores,
            "best_step": slot.record["best_step"],
            f"best_{main_metric}": slot.record["best_score"],
            "train_seconds_this_run": train_seconds,
            # The process's seconds, shared out: summed over a grid they add up to its wall time.
            "seconds": timer.as_dict(scale=1.0 / num_runs),
            "stacked_runs": num_runs,
        }
        if slot.failure:
            summary["failed"] = slot.failure
        elif jax.process_index() == 0 and not preemption.raised:
            (slot.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)
    return summaries
