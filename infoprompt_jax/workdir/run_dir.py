"""A workdir is one run: one config, one process at a time.

`check_same_run` compares a resumed run's resolved config with the `config.json` it started
with (read by `config_loading`, so a field added by a later version reads as what the run did),
and refuses a difference in anything that changes what is computed, so steps from two
configs never mix in one directory. `RunLock` keeps a second process out of a workdir while one
trains there.
"""

import fcntl
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from infoprompt_jax import config_loading
from infoprompt_jax.workdir import workdir_files

# Fields that change only what is logged, evaluated or kept, never a trained number: they may
# differ on resume. (The mesh too: the sharded step computes the unsharded one, tested to float
# tolerance, and a preempted pod slice may come back with another shape.)
REPORTING_FIELDS = (
    # Cached or recomputed, the unprompted pass gives the same numbers (tested to float rounding).
    "cache_unprompted",
    "log_prompt_every",
    "mesh.data",
    "mesh.fsdp",
    "train.checkpoint_every_steps",
    "train.eval_batch_size",
    "train.eval_every_epochs",
    "train.eval_every_steps",
    "train.eval_length_buckets",
    "train.keep_checkpoints",
    "train.log_every_steps",
)
LOCK_FILE = ".lock"


def _as_saved(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config's fields as `config.json` reads back (tuples become lists)."""
    return config_loading.flatten(json.loads(config.to_json_best_effort()))


def check_same_run(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError if `workdir` holds a run of another config (reporting fields aside).

    Args:
      workdir: the run's directory; a directory without `config.json` is a new run.
      config: the resolved config about to train there.
    """
    path = epath.Path(workdir) / workdir_files.CONFIG_FILE
    if not path.exists():
        return
    # Through config_loading: a field added since the run started reads as what the run did.
    old = _as_saved(workdir_files.load_config(workdir))
    new = _as_saved(config)
    differing = sorted(
        k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>")
    )
    computed = [k for k in differing if k not in REPORTING_FIELDS]
    if computed:
        changes = "; ".join(
            f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in computed
        )
        raise ValueError(
            f"{workdir} holds a run of another config ({changes}). A workdir is one run: give "
            "this config a new --workdir, or rerun with the saved values to resume. Only "
            f"reporting fields may change on resume: {', '.join(REPORTING_FIELDS)}."
        )
    if differing:
        logging.info(
            "Resuming %s with other reporting fields (%s); the trained numbers are unchanged.",
            workdir,
            ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing),
        )


class RunLock:
    """An exclusive lock on a local workdir, held while a run trains there.

    `flock` on `WORKDIR/.lock`: the kernel drops it when the process exits, however it exits, so a
    crashed run never leaves it stuck. Object stores (gs://) have no such lock; there it is
    skipped, and one process per workdir is the user's to keep.
    """

    def __init__(self, workdir: str | epath.Path):
        self._fd = None
        if jax.process_index() != 0:
            return  # One lock per run: process 0 holds it for every host of a pod.
        if "://" in str(workdir):
            logging.info("%s is on an object store: no lock keeps a second run out.", workdir)
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(str(workdir), LOCK_FILE)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RuntimeError(
                f"Another process is training in {workdir} (it holds {path}); wait for it to "
                "finish or stop it, or give this run another --workdir."
            ) from None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Drops the lock (also dropped when the process exits)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
