"""Entry point: `python -m infoprompt_jax.main --config=configs/rte.py --workdir=DIR`.

Parses flags, sets up the platform (the distributed runtime on multi-host TPU/GPU), then calls
`train.train_and_evaluate(config, workdir)`. Rerunning the same command resumes from the latest
checkpoint in the workdir.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from infoprompt_jax import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    None,
    "Call jax.distributed.initialize() (default: when env variables say the run spans hosts).",
)
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/rte.py or configs/rte.py:tiny.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
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


if __name__ == "__main__":
    app.run(main)
