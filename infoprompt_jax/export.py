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
import numpy as np
from absl import app, flags, logging
from etils import epath

from infoprompt_jax import cli
from infoprompt_jax.model import pretrained, safetensors_file
from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import run_state, sharding
from infoprompt_jax.workdir import checkpointing, workdir_files

FORMAT_VERSION = 1
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
EXPORT_FILE = "export.json"
TOKENIZER_DIR = "tokenizer"


def choose_step(manager: checkpointing.Manager, workdir: Any, step: int | None) -> int:
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


def restore_trainable(
    workdir: str | epath.Path, components: components_lib.Components, step: int | None = None
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(trainable params, checkpoint record, step) of a workdir's checkpoint.

    Args:
        workdir: the training run's directory (local or gs://).
        components: the run's components (`build_components` of its config).
        step: the checkpoint step; None takes the latest.
    """
    # Replicated, as training keeps the state, on whatever devices this process has.
    replicated = sharding.replicated(sharding.make_mesh())
    target = run_state.abstract_state(components, run_state.sample_batch(components), replicated)
    manager = checkpointing.open_reader(workdir)
    try:
        step = choose_step(manager, workdir, step)
        # Also a checkpoint written before the state's latest fields (checkpointing.restore_step).
        state, record = checkpointing.restore_at(manager, step, target)
    finally:
        manager.close()
    return state.trainable, record, step


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
        for path, leaf in trainable_lib.flatten(trainable).items()
    }


def eval_metrics_at(workdir: str | epath.Path, step: int) -> dict[str, float] | None:
    """The dev scores logged at `step` in `WORKDIR/metrics.jsonl`, or None."""
    record = workdir_files.eval_record_at(workdir, step)
    return {k: v for k, v in record.items() if k.startswith("eval_")} or None


def export_info(
    components: components_lib.Components,
    step: int,
    num_parameters: int,
    record: dict[str, Any] | None = None,
    eval_metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The contents of `export.json`."""
    best = None
    if record and record.get("best_score") is not None:
        best = {
            "metric": f"eval_{components.task.main_metric}",
            "score": record["best_score"],
            "step": record["best_step"],
        }
    return {
        "format_version": FORMAT_VERSION,
        "task": {
            "name": components.task.name,
            "label_names": list(components.task.label_names),
            "text_fields": list(components.template_tokenizer.template.fields),
        },
        "method": components.method.name,
        "step": int(step),
        "encoder": {
            "name": components.config.model.name,
            "model_dir": str(components.model_dir.absolute()),
            "weights_checksum": pretrained.weights_checksum(components.model_dir),
        },
        "params": {"file": PARAMS_FILE, "num_parameters": int(num_parameters)},
        "best": best,
        "eval_metrics_at_step": eval_metrics,
    }


def write_export(
    output_dir: str | pathlib.Path,
    components: components_lib.Components,
    trainable: dict[str, Any],
    step: int,
    record: dict[str, Any] | None = None,
    eval_metrics: dict[str, float] | None = None,
) -> pathlib.Path:
    """Writes the export directory (call it on one process only).

    Args:
        output_dir: a local directory; created if needed, its export files overwritten.
        components: the run's components.
        trainable: the trainable params (`trainable_lib.split_params(...)[0]`).
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
    safetensors_file.check_finite(
        tensors, f"step {step}'s params", "Export an earlier checkpoint (--step) of the run."
    )
    # save() and a plain write, not save_file(): that writes through a private temporary file,
    # so the export would be mode 0600, unreadable to the other users of a shared machine.
    (output_dir / PARAMS_FILE).write_bytes(
        safetensors.numpy.save(
            tensors,
            metadata={"format": "infoprompt_jax", "format_version": str(FORMAT_VERSION)},
        )
    )
    (output_dir / CONFIG_FILE).write_text(components.config.to_json_best_effort(indent=2) + "\n")
    info = export_info(
        components, step, sum(t.size for t in tensors.values()), record, eval_metrics
    )
    info["params"]["sha256"] = safetensors_file.sha256(output_dir / PARAMS_FILE)
    (output_dir / EXPORT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    components.tokenizer.save_pretrained(str(output_dir / TOKENIZER_DIR))
    return output_dir


def export_checkpoint(workdir: str, output_dir: str, step: int | None = None) -> pathlib.Path:
    """Exports a workdir's latest (or `step`'s) checkpoint to `output_dir`.

    Every process restores (Orbax reads collectively on a pod); only process 0 writes.

    Raises:
        FileNotFoundError: the workdir has no config.json or no checkpoint.
        ValueError: `step` is not one of the workdir's checkpoints.
    """
    workdir = epath.Path(workdir)
    manager = checkpointing.open_reader(workdir)
    try:  # "No checkpoint" or a bad --step fail here, before the (slow) encoder load.
        step = choose_step(manager, workdir, step)
    finally:
        manager.close()
    components = components_lib.build_components(workdir_files.load_config(workdir))
    trainable, record, step = restore_trainable(workdir, components, step)
    if jax.process_index() == 0:
        write_export(
            output_dir, components, trainable, step, record, eval_metrics_at(workdir, step)
        )
        logging.info("Exported step %d of %s to %s.", step, workdir, output_dir)
    return pathlib.Path(output_dir)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string("workdir", None, "The training run's directory.", flag_values=flag_values)
    flags.DEFINE_string(
        "output", None, "Local directory to write the export to.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "step", None, "Checkpoint step (default: the latest).", flag_values=flag_values
    )
    flags.mark_flags_as_required(["workdir", "output"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    export_checkpoint(flag_values.workdir, flag_values.output, flag_values.step)


if __name__ == "__main__":
    cli.run_command(define_flags, main)
