"""Trains a config: `python -m infoprompt_jax.main --config=configs/rte.py --workdir=DIR`.

Rerunning the same command resumes from the latest checkpoint in the workdir. Override any config
field with `--config.FIELD=VALUE`; `--config=configs/rte.py --show_config` lists every field with
its value and comment. `--verbosity=1` shows the libraries' INFO logs and the traceback of a user
error (INFOPROMPT_TRACEBACK=1: the traceback alone).
"""

import os
import pathlib
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from infoprompt_jax import cli, config_listing, train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config",
    False,
    "Print the resolved config (every field, its value and its comment) and exit.",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    None,
    "Call jax.distributed.initialize() (default: when env variables say the run spans hosts).",
)
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/rte.py or configs/rte.py:tiny.", lock_config=True
)
flags.mark_flags_as_required(["config"])
flags.register_multi_flags_validator(
    ["workdir", "show_config"],
    lambda values: values["workdir"] is not None or values["show_config"],
    message="--workdir is required (except with --show_config).",
)


def _is_multihost() -> bool:
    if _MULTIHOST.value is not None:
        return _MULTIHOST.value
    return any(
        name in os.environ
        for name in (
            "JAX_COORDINATOR_ADDRESS",
            "TPU_WORKER_HOSTNAMES",
            "MEGASCALE_COORDINATOR_ADDRESS",
        )
    )


def _distributed_args_from_env() -> dict[str, int]:
    """Process count and id from JAX_NUM_PROCESSES / JAX_PROCESS_ID (multi-host GPU launches).

    jax.distributed.initialize() reads the coordinator address from the environment but not these
    two; on TPU VMs neither is set and JAX finds the slice layout itself.
    """
    args = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        args["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        args["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    return args


def show_config() -> str:
    """The resolved --config, with the comments of the default.py beside its file."""
    config_file = pathlib.Path(flags.FLAGS["config"].config_filename)
    default_file = config_file.parent / "default.py"
    comments = config_listing.field_comments(default_file) if default_file.exists() else {}
    header = f"# {flags.FLAGS['config'].value.task} config from {config_file}; "
    header += "override a field with --config.FIELD=VALUE.\n"
    return header + config_listing.listing(flags.FLAGS.config, comments)


def closing_line(summary: dict, workdir: str, wall_seconds: float) -> str:
    """What a finished run says last: its scores, its time and where its outputs are."""
    scores = ""
    best_key = next((key for key in summary if key.startswith("best_eval_")), None)
    if best_key is not None:
        main_metric, best = best_key[len("best_") :], summary[best_key]
        final = summary.get(main_metric)
        scores = f": {main_metric} " + ("not evaluated" if final is None else f"{final:.4f}")
        scores += " (best " + (
            "none)" if best is None else f"{best:.4f} at step {summary['best_step']})"
        )
    return (
        f"Finished at step {summary.get('step')}{scores} in {wall_seconds:.0f} s."
        f" Outputs in {workdir}: metrics.jsonl, summary.json, checkpoints/, tensorboard/."
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _SHOW_CONFIG.value:
        print(show_config(), end="")
        return
    start = time.perf_counter()
    if _is_multihost():
        # Collectives between processes on the CPU backend (tests, CPU clusters); TPU and GPU
        # backends bring their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**_distributed_args_from_env())
    logging.info(
        "JAX process %d/%d, %d local devices of %d: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )
    summary = train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
    if summary["preempted"]:
        sys.exit(143)  # The conventional status of a SIGTERM'd process: schedulers rerun it.
    logging.info(closing_line(summary, _WORKDIR.value, time.perf_counter() - start))


if __name__ == "__main__":
    cli.run(main)
