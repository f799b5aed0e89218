"""Export a trained run as a small, self-contained directory that `predict.py` loads.

`python -m infoprompt_jax.export --workdir=W --output=E [--step=N]` restores the trainable
params of W's latest (or step N's) checkpoint and writes E:

* `params.safetensors`: the TRAINABLE params only (prompt generator or prompt, task head,
  critics; the adapters or the whole encoder for method=adapter / finetune), float32, keyed by
  '/'-joined parameter paths (`task_head/class_vectors`). The frozen encoder and MLM transform
  are not copied: they are rebuilt from the pretrained checkpoint, which `export.json` names and
  checksums so that a different encoder is refused at load time.
* `config.json`: the run config.
* `export.json`: format version, task and labels, method, step, the encoder's identity, the best
  dev score of the run and the dev scores at the exported step when the workdir has them.
* `tokenizer/`: the tokenizer files, so prediction tokenizes exactly as training did.

The workdir is only read: the export can run while training still writes to it.
"""

import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from etils import epath

from infoprompt_jax import cli, partition, sharding, steps
from infoprompt_jax import components as components_lib
from infoprompt_jax import encoder as encoder_lib
from infoprompt_jax import optimizer as optimizer_lib

FORMAT_VERSION = 1
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
EXPORT_FILE = "export.json"
TOKENIZER_DIR = "tokenizer"


def load_run_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
    """The run config that training wrote to `WORKDIR/config.json`."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: --workdir must be the directory a training run wrote "
            "(python -m infoprompt_jax.main --workdir=...), which holds config.json."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def read_only_manager(workdir: str | epath.Path) -> ocp.CheckpointManager:
    """A manager of `WORKDIR/checkpoints` that never writes, creates or cleans up anything.

    `checkpointing.make_manager` removes temporary directories at start-up, which would delete
    the save in progress of a run that is still training.
    """
    directory = epath.Path(workdir) / "checkpoints"
    if "://" not in str(directory):
        directory = directory.absolute()  # Orbax wants absolute local paths.
    if not directory.exists():
        raise FileNotFoundError(
            f"No checkpoint in {workdir}: {directory} does not exist. Export the workdir of a "
            "run that has saved a checkpoint (one is saved at the end of every epoch)."
        )
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "record"))


def choose_step(manager: ocp.CheckpointManager, workdir: Any, step: int | None) -> int:
    """`step` if the workdir has it, else the latest step when `step` is None."""
    available = sorted(manager.all_steps())
    if not available:
        raise FileNotFoundError(
            f"No checkpoint in {workdir}: {manager.directory} holds no complete step. Export "
            "the workdir of a run that has saved a checkpoint (one is saved every epoch)."
        )
    if step is None:
        return available[-1]
    if step not in available:
        raise ValueError(
            f"--step={step}: {workdir} has checkpoints at steps {available}; "
            "pick one of them or leave --step out for the latest."
        )
    return step


def abstract_train_state(
    comps: components_lib.Components, mesh: jax.sharding.Mesh
) -> steps.TrainState:
    """The train state's shapes, dtypes and shardings: the restore target, built without compute.

    Mirrors `train.build_state`. The optimizer's state has the same structure for any number of
    steps and any learning rate, so a one-step schedule stands in for the run's own.
    """
    sample = sample_batch(comps)
    optimizer = optimizer_lib.make_optimizer(
        comps.method.peak_lr,
        1,
        warmup_fraction=comps.config.optim.warmup_fraction,
        weight_decay=comps.config.optim.weight_decay,
        clip_norm=comps.config.optim.clip_norm,
    )

    def initial_state():
        trainable, _ = partition.split_params(comps.init_params(sample), comps.method.name)
        rng = jax.random.fold_in(jax.random.PRNGKey(comps.config.seed), 1)
        return steps.create_train_state(trainable, optimizer, rng)

    # Replicated, as training keeps the state, on whatever devices this process has.
    replicated = sharding.replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(initial_state),
    )


def sample_batch(comps: components_lib.Components) -> dict[str, np.ndarray]:
    """A one-row batch of the model's input shapes (with a label), for tracing `init`."""
    fields = {name: "a" for name in comps.template_tokenizer.template.fields}
    arrays = comps.template_tokenizer.encode_batch([fields])
    arrays["label"] = np.zeros((1,), np.int32)
    return arrays


def restore_trainable(
    workdir: str | epath.Path, comps: components_lib.Components, step: int | None = None
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(trainable params, checkpoint record, step) of a workdir's checkpoint.

    Args:
        workdir: the training run's directory (local or gs://).
        comps: the run's components (`build_components` of its config).
        step: the checkpoint step; None takes the latest.
    """
    manager = read_only_manager(workdir)
    try:
        step = choose_step(manager, workdir, step)
        target = abstract_train_state(comps, sharding.make_mesh())
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
            ),
        )
    finally:
        manager.close()
    return restored["state"].trainable, dict(restored["record"]), step


def flat_float32(trainable: dict[str, Any]) -> dict[str, np.ndarray]:
    """{'a/b/c': float32 numpy array} of a params tree, on the host."""
    # addressable_data(0): the state is replicated, and on a pod no process can address all of
    # a global array, so each reads its own copy.
    return {
        path: np.ascontiguousarray(
            np.asarray(
                leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf, np.float32
            )
        )
        for path, leaf in partition.flatten(trainable).items()
    }


def eval_metrics_at(workdir: str | epath.Path, step: int) -> dict[str, float] | None:
    """The dev scores logged at `step` in `WORKDIR/metrics.jsonl`, or None."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        record = json.loads(line) if line.strip() else {}
        scores = {k: v for k, v in record.items() if k.startswith("eval_")}
        if record.get("step") == step and scores:
            return scores
    return None


def export_info(
    comps: components_lib.Components,
    step: int,
    num_parameters: int,
    record: dict[str, Any] | None = None,
    eval_metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The contents of `export.json`."""
    best = None
    if record and record.get("best_score") is not None:
        best = {
            "metric": f"eval_{comps.task.main_metric}",
            "score": record["best_score"],
            "step": record["best_step"],
        }
    return {
        "format_version": FORMAT_VERSION,
        "task": {
            "name": comps.task.name,
            "label_names": list(comps.task.label_names),
            "text_fields": list(comps.template_tokenizer.template.fields),
        },
        "method": comps.method.name,
        "step": int(step),
        "encoder": {
            "name": comps.config.model.name,
            "model_dir": str(comps.model_dir.absolute()),
            "weights_checksum": encoder_lib.weights_checksum(comps.model_dir),
        },
        "params": {"file": PARAMS_FILE, "num_parameters": int(num_parameters)},
        "best": best,
        "eval_metrics_at_step": eval_metrics,
    }


def write_export(
    output_dir: str | pathlib.Path,
    comps: components_lib.Components,
    trainable: dict[str, Any],
    step: int,
    record: dict[str, Any] | None = None,
    eval_metrics: dict[str, float] | None = None,
) -> pathlib.Path:
    """Writes the export directory (call it on one process only).

    Args:
        output_dir: a local directory; created if needed, its export files overwritten.
        comps: the run's components.
        trainable: the trainable params (`partition.split_params(...)[0]`).
        step: the training step the params are from.
        record: the checkpoint record (`best_step`, `best_score`), if known.
        eval_metrics: the dev scores at `step`, if known.

    Returns:
        The export directory.
    """
    import safetensors.numpy  # Deferred: only exporting and loading need it.

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tensors = flat_float32(trainable)
    # save() and a plain write, not save_file(): that writes through a private temporary file,
    # so the export would be mode 0600, unreadable to the other users of a shared machine.
    (output_dir / PARAMS_FILE).write_bytes(
        safetensors.numpy.save(
            tensors,
            metadata={"format": "infoprompt_jax", "format_version": str(FORMAT_VERSION)},
        )
    )
    (output_dir / CONFIG_FILE).write_text(comps.config.to_json_best_effort(indent=2) + "\n")
    info = export_info(comps, step, sum(t.size for t in tensors.values()), record, eval_metrics)
    (output_dir / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    comps.tokenizer.save_pretrained(str(output_dir / TOKENIZER_DIR))
    return output_dir


def export_checkpoint(workdir: str, output_dir: str, step: int | None = None) -> pathlib.Path:
    """Exports a workdir's latest (or `step`'s) checkpoint to `output_dir`.

    Every process restores (Orbax reads collectively on a pod); only process 0 writes.

    Raises:
        FileNotFoundError: the workdir has no config.json or no checkpoint.
        ValueError: `step` is not one of the workdir's checkpoints.
    """
    workdir = epath.Path(workdir)
    manager = read_only_manager(workdir)
    try:  # "No checkpoint" or a bad --step fail here, before the (slow) encoder load.
        step = choose_step(manager, workdir, step)
    finally:
        manager.close()
    comps = components_lib.build_components(load_run_config(workdir))
    trainable, record, step = restore_trainable(workdir, comps, step)
    if jax.process_index() == 0:
        write_export(output_dir, comps, trainable, step, record, eval_metrics_at(workdir, step))
        logging.info("Exported step %d of %s to %s.", step, workdir, output_dir)
    return pathlib.Path(output_dir)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, flags.FlagHolder]:
    """Defines the command line's flags in `flag_values`; returns their holders by name.

    Called only when run as a program: predict.py has an --output flag too, and absl refuses a
    flag name that two modules imported into one process both define at import time.
    """
    holders = {
        "workdir": flags.DEFINE_string(
            "workdir", None, "The training run's directory.", flag_values=flag_values
        ),
        "output": flags.DEFINE_string(
            "output", None, "Local directory to write the export to.", flag_values=flag_values
        ),
        "step": flags.DEFINE_integer(
            "step", None, "Checkpoint step (default: the latest).", flag_values=flag_values
        ),
    }
    flags.mark_flags_as_required(["workdir", "output"], flag_values=flag_values)
    return holders


def main(argv: list[str], holders: dict[str, flags.FlagHolder]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    export_checkpoint(holders["workdir"].value, holders["output"].value, holders["step"].value)


if __name__ == "__main__":
    _HOLDERS = define_flags()
    cli.run(lambda argv: main(argv, _HOLDERS))
