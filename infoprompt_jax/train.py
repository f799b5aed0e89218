"""The training loop: train, evaluate every epoch, checkpoint, resume.

`train_and_evaluate(config, workdir)` is the product's main job. The data position is the step
itself (epoch e's order is a permutation drawn from (seed, e)), so a run resumed from a
checkpoint at step s continues exactly where an unbroken run would be.
"""

import functools
import json
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from infoprompt_jax import checkpointing, length_buckets, metric_logging, partition, sharding, steps
from infoprompt_jax import components as components_lib
from infoprompt_jax import metrics as metrics_lib
from infoprompt_jax import optimizer as optimizer_lib
from infoprompt_jax import progress as progress_lib

Arrays = dict[str, np.ndarray]


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """`[steps_per_epoch, batch_size]` example indices of an epoch (the remainder is dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    steps_per_epoch = num_examples // batch_size
    return order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def device_batch(
    arrays: Arrays, indices: np.ndarray, mesh: jax.sharding.Mesh, lengths: Sequence[int] = ()
) -> dict[str, jax.Array]:
    """The global batch `arrays[indices]` as arrays sharded over the mesh.

    Each process contributes only its own rows, so on a pod every host reads its share.

    Args:
        arrays: host arrays of every example (each process holds them all).
        indices: `[B]` rows of the global batch.
        mesh: the device mesh.
        lengths: the bucket lengths (`length_buckets.bucket_lengths`); the batch is cut to the
            shortest that holds its rows, decided from the global batch so that every process
            cuts alike. Empty: no cut.
    """
    rows = {name: value[indices] for name, value in arrays.items()}
    if len(lengths):
        rows = length_buckets.cut(rows, length_buckets.batch_length(rows, lengths))
    per_process = len(indices) // jax.process_count()
    local = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    batch_sharding = sharding.batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(batch_sharding, value[local])
        for name, value in rows.items()
    }


def pad_to_multiple(arrays: Arrays, multiple: int) -> tuple[Arrays, int]:
    """Pads every array's rows (repeating row 0) to a multiple; returns the true row count."""
    count = len(next(iter(arrays.values())))
    padded = -(-count // multiple) * multiple
    rows = np.concatenate([np.arange(count), np.zeros(padded - count, np.int64)])
    return {name: value[rows] for name, value in arrays.items()}, count


def map_in_batches(
    fn: Callable[[dict[str, jax.Array]], Any],
    arrays: Arrays,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    lengths: Sequence[int] = (),
) -> Any:
    """`fn(batch)` over every row of `arrays`, `batch_size` rows at a time; outputs in row order.

    With bucket `lengths`, rows are batched shortest first, so that most batches fit a short
    bucket; the outputs are put back in the rows' order.

    Returns:
        `fn`'s output pytree with `[N, ...]` numpy leaves.
    """
    count = len(arrays["input_ids"])
    order = length_buckets.order_by_length(arrays) if len(lengths) > 1 else np.arange(count)
    padded, _ = pad_to_multiple({name: value[order] for name, value in arrays.items()}, batch_size)
    outputs = [  # Dispatched all before any is fetched, so the host never waits in between.
        fn(device_batch(padded, np.arange(start, start + batch_size), mesh, lengths))
        for start in range(0, len(padded["input_ids"]), batch_size)
    ]
    in_order = np.argsort(order)
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:count][in_order], *jax.device_get(outputs))


def predict_logits(
    eval_fn: Callable,
    trainable: Any,
    frozen: Any,
    arrays: Arrays,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    lengths: Sequence[int] = (),
) -> np.ndarray:
    """Logits `[N, C]` of every row of `arrays`, in order."""
    return map_in_batches(
        functools.partial(eval_fn, trainable, frozen), arrays, batch_size, mesh, lengths
    )


def run_lengths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The bucket lengths of a run's batches (`config.length_buckets`, then `max_len`)."""
    # Configs written before length buckets existed have none: every batch at max_len.
    return length_buckets.bucket_lengths(config.max_len, config.get("length_buckets", ()))


def evaluate(
    eval_fn, trainable, frozen, comps: components_lib.Components, arrays: Arrays, mesh
) -> dict[str, float]:
    """The task's dev metrics, as `eval_<name>` keys."""
    config = comps.config
    logits = predict_logits(
        eval_fn, trainable, frozen, arrays, config.train.eval_batch_size, mesh, run_lengths(config)
    )
    scores = metrics_lib.compute_metrics(comps.task, logits.argmax(-1), arrays["label"])
    return {f"eval_{name}": value for name, value in scores.items()}


def cache_unprompted_pass(
    model, frozen, arrays: Arrays, batch_size: int, mesh, lengths: Sequence[int] = ()
) -> Arrays:
    """`arrays` plus `cached_source` and `cached_z0`: the unprompted pass of every example.

    The encoder is frozen and deterministic, so this pass gives the same numbers every epoch;
    computing it once saves one of the step's two encoder forwards.
    """
    unprompted = jax.jit(
        functools.partial(steps.unprompted_step, model=model),
        out_shardings=sharding.replicated(mesh),
    )
    outputs = map_in_batches(
        functools.partial(unprompted, frozen), arrays, batch_size, mesh, lengths
    )
    return {**arrays, "cached_source": outputs["source"], "cached_z0": outputs["z0"]}


def uses_cached_unprompted_pass(comps: components_lib.Components) -> bool:
    """Whether a run precomputes the unprompted pass: asked for, and read (generator methods)."""
    return bool(comps.config.cache_unprompted) and comps.method.model.prompt_source == "generator"


class PromptTrajectory:
    """The prompt of one fixed training example every k steps: `WORKDIR/prompt_trajectory.npz`
    with `steps [T]` and `prompts [T, n_p, D]`, for the loss-landscape figure."""

    def __init__(self, workdir: epath.Path, every: int, model, batch: dict[str, jax.Array]):
        self.path, self.every, self.batch = workdir / "prompt_trajectory.npz", every, batch
        self._prompts_fn = jax.jit(functools.partial(steps.prompt_step, model=model))
        self.steps, self.prompts = [], []
        if self.path.exists():
            with self.path.open("rb") as f:
                saved = np.load(f)
                self.steps, self.prompts = list(saved["steps"]), list(saved["prompts"])

    def maybe_record(self, step: int, trainable, frozen) -> None:
        """Records the prompt at `step` if it is a multiple of k (step 0 included)."""
        if not self.every or step % self.every or jax.process_index() != 0:
            return
        keep = [i for i, s in enumerate(self.steps) if s < step]  # A resumed run redraws the rest.
        self.steps = [self.steps[i] for i in keep] + [step]
        self.prompts = [self.prompts[i] for i in keep] + [
            np.asarray(self._prompts_fn(trainable, frozen, self.batch))[0]
        ]
        with self.path.open("wb") as f:
            np.savez(f, steps=np.asarray(self.steps), prompts=np.stack(self.prompts))


class PreemptionFlag:
    """Set by SIGTERM (TPU preemption, `kill`): the loop saves and stops at the next step."""

    def __init__(self):
        self.raised = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def build_state(comps: components_lib.Components, optimizer, mesh, sample_batch: Arrays):
    """(state, frozen) at step 0, placed on the mesh."""
    params = comps.init_params(sample_batch)
    trainable, frozen = partition.split_params(params, comps.method.name)
    rng = jax.random.fold_in(jax.random.PRNGKey(comps.config.seed), 1)
    state = steps.create_train_state(trainable, optimizer, rng)
    state = jax.device_put(state, steps.state_shardings(mesh, state))
    frozen = jax.device_put(frozen, sharding.param_shardings(mesh, frozen))
    return state, frozen


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays: Orbax's restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates a config in `workdir`, resuming from its latest checkpoint.

    Returns:
      The run summary (also written to `WORKDIR/summary.json`): final and best dev metrics.
    """
    # epath: local directories and gs:// buckets alike (every TPU host must see the workdir).
    workdir_path = epath.Path(workdir)
    logging.info("Loading the %s encoder and the %s data.", config.model.name, config.task)
    comps = components_lib.build_components(config)
    config, task = comps.config, comps.task
    train_arrays = comps.encode(components_lib.load_examples(config, task, "train"))
    dev_arrays = comps.encode(components_lib.load_examples(config, task, "dev"))
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch_size = config.train.batch_size
    sharding.check_batch_size(batch_size, mesh)
    sharding.check_batch_size(config.train.eval_batch_size, mesh)
    num_train = len(train_arrays["label"])
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{num_train} training examples make no batch of {batch_size}; lower "
            "config.train.batch_size or raise config.data.few_shot."
        )
    total_steps = steps_per_epoch * config.train.num_epochs
    optimizer = optimizer_lib.make_optimizer(
        comps.method.peak_lr,
        total_steps,
        warmup_fraction=config.optim.warmup_fraction,
        weight_decay=config.optim.weight_decay,
        clip_norm=config.optim.clip_norm,
    )
    sample = {k: v[:batch_size] for k, v in train_arrays.items()}
    state, frozen = build_state(comps, optimizer, mesh, sample)
    manager = checkpointing.make_manager(workdir_path, config.train.keep_checkpoints)
    record = {"step": 0, "best_step": None, "best_score": None}
    restored = checkpointing.restore_latest(manager, abstract_like(state))
    writer = metric_logging.MetricWriter(workdir_path)
    if restored is not None:
        state, record = restored
        logging.info("Resumed from step %d in %s.", record["step"], workdir_path)
    summary_path = workdir_path / "summary.json"
    if record["step"] >= total_steps and summary_path.exists():
        logging.info("%s already finished at step %d; nothing to do.", workdir_path, record["step"])
        return json.loads(summary_path.read_text())
    writer.truncate_after(record["step"])
    if jax.process_index() == 0:
        (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=2))
    lengths = run_lengths(config)
    if uses_cached_unprompted_pass(comps):
        logging.info(
            "Caching the unprompted pass of %d train and %d dev examples.",
            num_train,
            len(dev_arrays["label"]),
        )
        train_arrays = cache_unprompted_pass(
            comps.model, frozen, train_arrays, batch_size, mesh, lengths
        )
        dev_arrays = cache_unprompted_pass(
            comps.model, frozen, dev_arrays, config.train.eval_batch_size, mesh, lengths
        )
    train_fn, eval_fn = steps.compile_steps(
        comps.model, optimizer, comps.method.weights, mesh, state, frozen
    )
    logging.info("Compiling the train step (the first step takes longest).")
    progress = progress_lib.Progress(total_steps, steps_per_epoch, batch_size, int(record["step"]))
    preemption = PreemptionFlag()
    trajectory = PromptTrajectory(
        workdir_path,
        config.log_prompt_every,
        comps.model,
        device_batch(train_arrays, np.arange(batch_size), mesh),
    )
    if int(record["step"]) == 0:
        trajectory.maybe_record(0, state.trainable, frozen)
    main_metric = f"eval_{task.main_metric}"
    interval_metrics, eval_scores = [], {}
    start_step, start_time = int(record["step"]), time.perf_counter()
    for step in range(start_step, total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        indices = epoch_order(num_train, batch_size, config.seed, epoch)[index]
        batch = device_batch(train_arrays, indices, mesh, lengths)
        state, step_metrics = train_fn(state, frozen, batch)
        interval_metrics.append(step_metrics)
        done = step + 1
        trajectory.maybe_record(done, state.trainable, frozen)
        if done % config.train.log_every_steps == 0 or done == total_steps:
            log_train_metrics(writer, progress, done, interval_metrics)
            interval_metrics = []
        epoch_end = done % steps_per_epoch == 0
        if epoch_end and ((epoch + 1) % config.train.eval_every_epochs == 0 or done == total_steps):
            eval_scores = evaluate(eval_fn, state.trainable, frozen, comps, dev_arrays, mesh)
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
            record["step"] = done
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
    }
    if jax.process_index() == 0 and not preemption.raised:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def log_train_metrics(writer, progress, step: int, interval: list) -> dict[str, float]:
    """Writes the mean of the interval's train metrics; a non-finite loss stops the run."""
    fetched = jax.device_get(interval)
    means = {f"train_{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    if not np.isfinite(means["train_loss"]):
        raise FloatingPointError(
            f"Non-finite train loss {means['train_loss']} at step {step}; "
            "lower config.optim.lr or check the data."
        )
    writer.write(step, means)
    progress.update(step, fetched[-1])
    return means
