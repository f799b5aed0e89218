"""The training loop of several runs of one config at once: one process, one compiled step.

`train_and_evaluate_stacked(configs, workdirs)` trains configs that differ only in `seed` and the
loss weights `loss.beta` and `loss.gamma` (InfoPrompt and its ablations) as one stacked program
(`stacking.py`): the encoder is read once, each batch shape compiles once, and every evaluation
runs all the runs on the same dev batches. Each run still writes its own
workdir exactly as `train.train_and_evaluate` does (config.json with its seed, metrics.jsonl,
checkpoints, summary.json), so reports, export, predict and resume read it unchanged; a run
directory may even be resumed by a separate `main.py` run, and the other way round.

Each run sees what its separate run sees: its own few-shot subset, data order (`epoch_order` of
its seed), initial parameters and critic draws (its RNG key, folded with the step). Runs with
other loss weights share one model that has every critic some run uses (the union model); a
run's weights are per-run arrays of the step, a weight of 0 leaves the run's numbers those of
its ablation, and the run saves only its own model's part of the state.

A run whose loss or gradients turn non-finite fails alone, by the rules of a separate run
(`steps.raise_if_diverged`): the step stops updating it, it writes nothing more (no summary.json;
its last checkpoint before the divergence stays), and its siblings finish.
"""

import contextlib
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

from infoprompt_jax import config_validation
from infoprompt_jax.model import methods, models
from infoprompt_jax.train import (
    batching,
    device_memory,
    evaluation,
    phase_timer,
    prompt_trajectory,
    run_state,
    sharding,
    stacking,
    steps,
    unprompted_cache,
)
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import loop as train
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.train import progress as progress_lib
from infoprompt_jax.workdir import checkpointing, metric_logging, run_dir, workdir_files

# Methods whose frozen tree depends on the seed (adapters load with the encoder) or that train
# the encoder itself: nothing would be shared.
UNSTACKABLE_METHODS = ("adapter", "finetune")
# The config fields stacked runs may differ in: per-run arrays of the one compiled step.
PER_RUN_FIELDS = ("seed", "loss.beta", "loss.gamma")


def run_identity(config: ml_collections.ConfigDict) -> tuple[int, float, float]:
    """(seed, beta, gamma): what tells the runs of a stack apart."""
    return int(config.seed), float(config.loss.beta), float(config.loss.gamma)


def rows_can_stack(config: ml_collections.ConfigDict) -> bool:
    """Whether runs of this config may differ in loss.beta / loss.gamma within a stack: only
    InfoPrompt's paper variant reads them (other methods ignore them, the released variant sets
    its own)."""
    return config.method == "infoprompt" and config.variant == "paper"


def check_stackable(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Raises ValueError unless the configs differ only in `PER_RUN_FIELDS` and can stack."""
    identities = [run_identity(c) for c in configs]
    repeated = sorted({i for i in identities if identities.count(i) > 1})
    if repeated:
        raise ValueError(
            f"Stacked runs must be distinct runs; (seed, beta, gamma) {repeated} appear more "
            "than once."
        )
    first = shared_fields(configs[0])
    for config in configs[1:]:
        other = shared_fields(config)
        if other != first:
            changed = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ValueError(
                f"Stacked runs must differ only in {', '.join(PER_RUN_FIELDS)}; the run "
                f"(seed, beta, gamma) = {run_identity(config)} also changes {changed}."
            )
    method, variant = configs[0].method, configs[0].variant
    if method in UNSTACKABLE_METHODS:
        raise ValueError(
            f"method={method} cannot stack seeds (its encoder weights are per "
            f"run); run its seeds separately. Stackable: methods other than {UNSTACKABLE_METHODS}."
        )
    weights = {identity[1:] for identity in identities}
    if len(weights) > 1 and not rows_can_stack(configs[0]):
        raise ValueError(
            f"Runs stacked with different loss.beta / loss.gamma {sorted(weights)} must be "
            f"method=infoprompt, variant=paper (got method={method}, variant={variant}): other "
            "methods ignore the weights and the released variant sets its own."
        )


def shared_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's fields, flattened to dotted keys, less the ones stacked runs may differ in."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config.to_dict(), "")
    for field in PER_RUN_FIELDS:
        flat.pop(field)
    return flat


def union_config(configs: Sequence[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
    """The first config with the runs' largest beta and gamma: its model has every critic that a
    stacked run uses (`methods.resolve` builds a critic when its weight is > 0)."""
    config = configs[0].copy_and_resolve_references()
    config.loss.beta = max(float(c.loss.beta) for c in configs)
    config.loss.gamma = max(float(c.loss.gamma) for c in configs)
    return config


def run_components(
    shared: components_lib.Components, config: ml_collections.ConfigDict
) -> components_lib.Components:
    """One stacked run's components: the shared encoder, tokenizer and task, with the run's own
    config, method (loss weights) and model (only the critics its weights use)."""
    config = components_lib.resolve_config(config)
    method = methods.resolve(
        config, shared.task.num_labels, has_mlm_transform=shared.mlm_transform is not None
    )
    model = models.InfoPromptModel(method.model, shared.model.encoder_config, shared.model.dtype)
    return dataclasses.replace(shared, config=config, method=method, model=model)


@dataclasses.dataclass
class RunSlot:
    """One run of the stack and what is its own: workdir, data, writer, checkpoints, record.

    `abstract_state` is the run's own train state (its own model's params), what it saves.
    """

    components: components_lib.Components
    abstract_state: Any
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

    @property
    def label(self) -> str:
        """The run in log lines: its workdir's last two parts, e.g. `gamma-0/seed3`."""
        return f"{self.workdir.parent.name}/{self.workdir.name}"


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
            logging.error("%s failed: %s", slot.label, e)


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


def _resume(slots: list[RunSlot], run_states: list[Any]) -> int:
    """Restores every run at the newest step all of them reached; returns that step (0: none).

    Each run's newest intact checkpoint is found as for a single run (a damaged one is moved
    aside). Runs ahead of the slowest go back to its step, as the stack trains in lockstep. A
    run's own state goes into its stacked one; the critics it does not use keep their init.
    """
    restored = [checkpointing.restore_latest(slot.manager, slot.abstract_state) for slot in slots]
    start_step = min(int(run[1]["step"]) if run else 0 for run in restored)
    for i, (slot, run) in enumerate(zip(slots, restored)):
        _drop_steps_after(slot, start_step)
        if not start_step:
            continue
        if int(run[1]["step"]) != start_step:
            run = _restore_at(slot.manager, start_step, slot.abstract_state)
        own_state, slot.record = run
        run_states[i] = stacking.embed(own_state, run_states[i])
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
    """Trains configs that differ only in seed and loss weights together; run i in `workdirs[i]`.

    Runs whose summary.json exists are finished and not trained again. Resuming: every run
    restarts from the latest step all of them have checkpointed. A workdir that holds a run of
    another config is refused, as by a separate run (`run_dir.check_same_run`), and each workdir
    is locked while the stack trains.

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
    if len(set(workdirs)) != len(workdirs):
        raise ValueError(f"Stacked runs need distinct workdirs; got {[str(w) for w in workdirs]}.")
    summaries: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as locks:
        for config, workdir in zip(configs, workdirs):
            locks.enter_context(run_dir.RunLock(workdir))
            run_dir.check_same_run(workdir, components_lib.resolve_config(config))
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
        shared = components_lib.build_components(union_config(configs))
    runs = [run_components(shared, c) for c in configs]
    # Each run initialised, trained and evaluated with the union model (its seed, its weights).
    union_runs = [
        dataclasses.replace(run, model=shared.model, method=shared.method) for run in runs
    ]
    run_weights = [run.method.loss_weights for run in runs]
    per_run_weights = len({(w.beta, w.gamma) for w in run_weights}) > 1
    config, task = shared.config, shared.task
    timer.start("data")
    trains = [c.encode(components_lib.load_examples(c.config, task, "train")) for c in runs]
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
    first_state, frozen = run_state.build_state(union_runs[0], optimizer, mesh, samples[0])
    run_states = [first_state] + [
        run_state.initial_state(components, optimizer, sample)[0]
        for components, sample in zip(union_runs[1:], samples[1:])
    ]
    union_abstract = run_state.abstract_like(first_state)
    timer.stop("init")

    slots = []
    for run, sample, workdir, arrays in zip(runs, samples, workdirs, trains):
        own_abstract = union_abstract
        if run.model != shared.model:  # A run without a critic of the union model.
            own_abstract = run_state.abstract_state(run, sample, sharding.replicated(mesh))
        manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
        writer = metric_logging.MetricWriter(workdir)
        record = {"step": 0, "best_step": None, "best_score": None}
        slots.append(RunSlot(run, own_abstract, workdir, arrays, writer, manager, record))
    with timer.phase("checkpoint"):
        start_step = _resume(slots, run_states)
    states = stacking.place_states(stacking.stack(run_states), mesh, spread)
    del run_states
    for slot in slots:
        slot.writer.truncate_after(start_step)
        if jax.process_index() == 0:
            workdir_files.write_config(slot.workdir, slot.components.config)
    lengths = batching.run_lengths(config)
    timer.start("unprompted_cache")
    cached_trains, dev_arrays = unprompted_cache.with_cached_unprompted_pass(
        shared, frozen, [slot.train_arrays for slot in slots], dev_arrays, mesh
    )
    for slot, arrays in zip(slots, cached_trains):
        slot.train_arrays = arrays
    timer.stop("unprompted_cache")
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
            per_run_weights=per_run_weights,
        )
    )
    evaluator = evaluation.Evaluator(eval_fn, dev_arrays, config, mesh, task)
    replicated = sharding.replicated(mesh)
    betas = jax.device_put(np.asarray([w.beta for w in run_weights], np.float32), replicated)
    gammas = jax.device_put(np.asarray([w.gamma for w in run_weights], np.float32), replicated)
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
                runs_scores = evaluator.stacked_metrics(states.trainable, frozen)
                for i, slot in enumerate(slots):
                    if not slot.active:
                        continue
                    slot.eval_scores = runs_scores[i]
                    record = slot.record
                    if (
                        record["best_score"] is None
                        or slot.eval_scores[main_metric] > record["best_score"]
                    ):
                        record.update(best_step=done, best_score=slot.eval_scores[main_metric])
                    slot.writer.write(done, {"epoch": epoch + 1, **slot.eval_scores})
                    logging.info(
                        "%s step %d epoch %d: %s",
                        slot.label,
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
                        own_state = stacking.restrict(
                            stacking.unstack(states, i), slot.abstract_state
                        )
                        checkpointing.save(slot.manager, done, own_state, slot.record)
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
    # The process's peak, shared by the stacked runs (None on a CPU).
    peak_mb = device_memory.peak_device_memory_mb()
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
            "peak_device_mem_mb": peak_mb,
        }
        if slot.failure:
            summary["failed"] = slot.failure
        elif jax.process_index() == 0 and not preemption.raised:
            (slot.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)
    return summaries
