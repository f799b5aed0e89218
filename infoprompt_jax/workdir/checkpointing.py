"""Orbax checkpoints of the train state: never the frozen encoder, always resumable.

A checkpoint holds the `TrainState` (trainable params, optimizer state, step, RNG key) and a small
JSON record (data position, best dev score so far). Orbax writes each step into a temporary
directory and renames it when complete, so a half-written checkpoint is never taken as latest.
`PreemptionFlag` tells the loop when to save and stop.

This is the only module that imports Orbax: training, resume, the stacked resume, export, predict
and the analyses all read and write checkpoints through it. Writers use `make_manager`; readers
(`open_reader`, `read`) never write, create or clean up anything, so they may read a workdir while
its run still trains.
"""

import dataclasses
import functools
import logging as std_logging
import signal
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers

# The type callers annotate a manager with, without importing Orbax themselves.
Manager = ocp.CheckpointManager


def _checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
    directory = epath.Path(workdir) / "checkpoints"
    if "://" not in str(directory):
        directory = directory.absolute()  # Orbax wants absolute local paths.
    return directory


def make_manager(workdir: str | epath.Path, keep: int = 2) -> ocp.CheckpointManager:
    """A manager of `WORKDIR/checkpoints` keeping the latest `keep` steps (for the run that
    trains there: it removes leftover temporary directories at start-up)."""
    directory = _checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(n=keep),
        # Synchronous saves: on preemption the save has finished when `save` returns.
        enable_async_checkpointing=False,
        # Leftover temporary directories of a crashed save are removed at start-up.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "record"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, record: dict[str, Any]) -> None:
    """Saves `state` and the JSON `record` at `step` (a no-op when that step already exists)."""
    if step in manager.all_steps():
        return
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
        ),
        force=True,
    )
    manager.wait_until_finished()


def open_reader(workdir: str | epath.Path) -> ocp.CheckpointManager:
    """A manager of `WORKDIR/checkpoints` that never writes, creates or cleans up anything.

    `make_manager` removes temporary directories at start-up, which would delete the save in
    progress of a run that is still training; readers (export, the analyses) use this one.

    Raises:
      FileNotFoundError: the workdir has no checkpoints directory.
    """
    directory = _checkpoint_dir(workdir)
    if not directory.exists():
        raise FileNotFoundError(
            f"No checkpoint in {workdir}: {directory} does not exist. Give the workdir of a "
            "run that has saved a checkpoint (one is saved at the end of every epoch)."
        )
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "record"))


def read(
    workdir: str | epath.Path, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict[str, Any], int]:
    """(state, record, step) of a workdir's checkpoint at `step` (None: the newest), read-only.

    A checkpoint written before the state's latest fields reads as `restore_step` says.

    Raises:
      FileNotFoundError: the workdir has no complete checkpoint.
      ValueError: it has none at `step`.
    """
    manager = open_reader(workdir)
    try:
        available = sorted(manager.all_steps())
        if not available:
            raise FileNotFoundError(
                f"No checkpoint in {workdir}: {manager.directory} holds no complete step. Give "
                "the workdir of a run that has saved a checkpoint (one is saved every epoch)."
            )
        step = available[-1] if step is None else step
        state, record = restore_at(manager, step, abstract_state)
    finally:
        manager.close()
    return state, record, step


def restore_at(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, hint: str = ""
) -> tuple[Any, dict[str, Any]]:
    """(state, record) of the checkpoint at `step`, which need not be the newest.

    Args:
      manager: the checkpoint manager (a writer's or `open_reader`'s).
      step: the step to restore.
      abstract_state: the state's structure, as for `restore_latest`.
      hint: what the user should do when there is no checkpoint at `step`, ending the error.

    Raises:
      ValueError: there is no checkpoint at `step`.
      CheckpointError: the checkpoint is intact but holds another layout than `abstract_state`.
    """
    available = sorted(manager.all_steps())
    if step not in available:
        raise ValueError(
            f"{manager.directory} has no checkpoint at step {step} (it has {available})"
            + (f": {hint}" if hint else ".")
        )
    return restore_step(manager, step, abstract_state)


def delete_steps_after(manager: ocp.CheckpointManager, step: int) -> list[int]:
    """Deletes the checkpoints after `step`; returns their steps, in order.

    For a run that trains those steps again: a save at an existing step is skipped, so a stale
    checkpoint kept there could end up as the run's latest.
    """
    later = sorted(s for s in manager.all_steps() if s > step)
    for later_step in later:
        manager.delete(later_step)
    return later


# Beside WORKDIR/checkpoints: where damaged steps are moved, kept for inspection.
DAMAGED_DIR = "damaged_checkpoints"
# Orbax's words for a checkpoint whose tree is not the restore target's: intact, not damaged.
_LAYOUT_MISMATCH = "tree structures do not match"


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
    """(state, record) of the newest intact checkpoint, or None when there is none.

    A checkpoint that cannot be read (truncated array data, missing metadata) is skipped with a
    warning that names its directory, and the next older one is tried.

    Args:
      manager: the checkpoint manager.
      abstract_state: the state's structure with shapes, dtypes and shardings
        (`jax.ShapeDtypeStruct`s), which the restored arrays take.

    Raises:
      CheckpointError: there are checkpoints, and none of them can be read.
    """
    saved = sorted(manager.all_steps(), reverse=True)
    # Before the first read: a damaged step's abandoned reads report as soon as its error is raised.
    _silence_abandoned_reads()
    for step in saved:
        try:
            restored = restore_step(manager, step, abstract_state)
        except CheckpointError:
            raise
        except Exception as error:  # Orbax and TensorStore raise many types for a bad file.
            # Moved aside, not left: the rerun saves this step again, and a save at an existing
            # step is skipped, which would leave the damaged one as the run's final checkpoint.
            aside = manager.directory.parent / DAMAGED_DIR / str(step)
            aside.parent.mkdir(parents=True, exist_ok=True)
            (manager.directory / str(step)).rename(aside)
            logging.warning(
                "Checkpoint %s is damaged, moved to %s (%s: %s).",
                manager.directory / str(step),
                aside,
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
            )
            continue
        if step != saved[0]:
            manager.reload()  # It forgets the steps moved aside.
            logging.warning("Resuming from step %d, the newest intact checkpoint.", step)
        return restored
    if saved:
        manager.reload()
        manager.close()  # Its background threads would otherwise fail at interpreter exit.
        raise CheckpointError(
            f"No checkpoint in {manager.directory} can be read (steps {sorted(saved)} are all "
            f"damaged; moved to {manager.directory.parent / DAMAGED_DIR}). Rerun to train this "
            "run from the start, or restore its checkpoints from a copy."
        )
    return None


def restore_step(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict[str, Any]]:
    """(state, record) of the checkpoint at `step`, also one written before the state's latest
    fields (`_restore_older_layout`).

    Raises:
      CheckpointError: the checkpoint is intact but holds another layout than `abstract_state`.
      Exception: whatever Orbax or TensorStore raise for a damaged checkpoint.
    """
    try:
        return _restore(manager, step, abstract_state)
    except Exception as error:
        if _LAYOUT_MISMATCH not in str(error):
            raise
    restored = _restore_older_layout(manager, step, abstract_state)
    if restored is None:
        # Intact, but not this run's state: another version or config wrote it. Never moved
        # aside (it is not damaged); the user decides.
        raise CheckpointError(
            f"{manager.directory / str(step)} holds a train state of another layout than this "
            "run's: it was written by another version of infoprompt_jax or for another config. "
            "Use the version and config that wrote it, or give this run a new --workdir."
        ) from None
    return restored


def _restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict[str, Any]]:
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["record"])


def _restore_older_layout(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any
) -> tuple[Any, dict[str, Any]] | None:
    """(state, record) of a checkpoint written before the state gained fields; None otherwise.

    The state's class names, in `ZERO_IF_ABSENT`, the fields that older checkpoints lack and
    whose zero is right for them (a run that never diverged). Such a checkpoint is restored
    without them and they are filled with zeros, so an upgrade keeps a grid's finished and
    preempted runs readable and resumable.
    """
    absent = getattr(type(abstract_state), "ZERO_IF_ABSENT", ())
    if not absent:
        return None
    older = {
        field.name: getattr(abstract_state, field.name)
        for field in dataclasses.fields(abstract_state)
        if field.name not in absent
    }
    try:
        state, record = _restore(manager, step, older)
    except Exception as error:
        if _LAYOUT_MISMATCH in str(error):
            return None
        raise
    # Orbax returns plain containers; the target's tree types (optax's states) are put back.
    fields = {
        name: jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(state[name]))
        for name, target in older.items()
    }
    fields.update({name: _zeros(getattr(abstract_state, name)) for name in absent})
    logging.info(
        "%s predates the train state's %s: restored with them at 0.",
        manager.directory / str(step),
        ", ".join(absent),
    )
    return abstract_state.replace(**fields), record


def _zeros(abstract: jax.ShapeDtypeStruct) -> jax.Array:
    """Zeros of `abstract`'s shape and dtype, placed with its sharding (on every host)."""
    zeros = np.zeros(abstract.shape, abstract.dtype)
    if abstract.sharding is None:
        return jax.numpy.asarray(zeros)
    return jax.make_array_from_callback(
        abstract.shape, abstract.sharding, lambda index: zeros[index]
    )


@functools.cache  # Once per process: the hook and the filter are process-wide.
def _silence_abandoned_reads() -> None:
    """Drops the noise of a failed restore's abandoned reads, which outlive the error.

    When one array of a checkpoint cannot be read, Orbax raises at once and closes its event
    loop, while TensorStore still finishes the step's other reads: each then fails to report
    to the closed loop ("Event loop is closed", printed as an unraisable exception) and asyncio
    logs its unretrieved error at garbage collection. Both come from threads, at any time up to
    interpreter exit, so they would bury the one line that names the damaged checkpoint. Other
    unraisable exceptions and asyncio messages still go to their usual handlers.
    """
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        if not (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            previous_hook(unraisable)

    sys.unraisablehook = hook
    std_logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage()
    )


class CheckpointError(RuntimeError):
    """The checkpoints of a workdir exist but none can be restored."""


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
