"""Trains a config: `python -m infoprompt_jax.main --config=configs/rte.py --workdir=DIR`.

Rerunning the same command resumes from the latest checkpoint in the workdir. Override any config
field with `--config.FIELD=VALUE`; `--config=configs/rte.py --show_config` lists every field with
its value and comment. `--verbosity=1` shows the libraries' INFO logs and the traceback of a user
error (INFOPROMPT_TRACEBACK=1: the traceback alone).

`--seeds=0,1,2` trains those seeds of the config together in one process, one compiled step
(`stacked_train.py`, docs/stacking.md): seed s writes `WORKDIR/seed<s>`, the same directory a
separate run with `--config.seed=s --workdir=WORKDIR/seed<s>` writes. `--rows=NAME:BETA:GAMMA,...`
adds InfoPrompt's loss-weight rows to the stack: row NAME, seed s writes `WORKDIR/NAME/seed<s>`,
the directory of `--config.loss.beta=BETA --config.loss.gamma=GAMMA --config.seed=s`.
"""

import os
import pathlib
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from infoprompt_jax import cli, compile_cache, config_listing, config_loading, stack_flags
from infoprompt_jax.train import loop as train
from infoprompt_jax.train import phase_timer, stacked_train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_SEEDS = flags.DEFINE_list(
    "seeds",
    None,
    "Train several seeds of --config together, as one stacked program (docs/stacking.md): "
    "comma-separated distinct non-negative ints, e.g. 0,1,2, in place of config.seed. Seed s "
    "writes WORKDIR/seed<s>, a complete run directory like a separate run's.",
)
_ROWS = flags.DEFINE_list(
    "rows",
    None,
    "Also stack InfoPrompt rows that differ only in loss weights (docs/stacking.md): "
    "comma-separated NAME:BETA:GAMMA, e.g. infoprompt:0.1:0.05,beta-gamma-0:0:0, each NAME a "
    "directory name. Row NAME of seed s (--seeds, else config.seed) writes WORKDIR/NAME/seed<s>, "
    "with config.loss.beta=BETA and config.loss.gamma=GAMMA.",
)
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
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache",
    None,
    "Directory of JAX's persistent compilation cache, shared by runs with the same shapes; "
    f"'off' disables it. Default: ${compile_cache.ENV_VAR}, else ~/.cache/infoprompt_jax/jax.",
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
    # Every field checked before any work: no workdir is created, no encoder loaded.
    config = config_loading.load(flags.FLAGS.config)
    start = time.perf_counter()
    if _is_multihost():
        # Collectives between processes on the CPU backend (tests, CPU clusters); TPU and GPU
        # backends bring their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**_distributed_args_from_env())
    compile_cache.enable(compile_cache.resolve_directory(_COMPILE_CACHE.value))
    logging.info(
        "JAX process %d/%d, %d local devices of %d: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )
    timer = phase_timer.PhaseTimer()
    timer.record_startup()
    if _ROWS.value is not None and not stacked_train.rows_can_stack(config):
        raise app.UsageError(
            f"--rows sets InfoPrompt's loss weights; it needs --config.method=infoprompt and "
            f"--config.variant=paper (got {config.method}, {config.variant})."
        )
    stacked = _SEEDS.value is not None or _ROWS.value is not None
    if stacked:
        seeds = [int(config.seed)]
        if _SEEDS.value is not None:
            seeds = stack_flags.parse_seeds(_SEEDS.value)
        rows = stack_flags.parse_rows(_ROWS.value) if _ROWS.value is not None else None
        configs, workdirs = stack_flags.stacked_runs(config, _WORKDIR.value, seeds, rows)
        summaries = stacked_train.train_and_evaluate_stacked(configs, workdirs, timer)
    else:
        summaries = [train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value, timer)]
    if any(summary.get("preempted") for summary in summaries):
        sys.exit(143)  # The conventional status of a SIGTERM'd process: schedulers rerun it.
    failed = [s for s in summaries if s.get("failed")]
    if failed:
        sys.exit(f"{len(failed)} of {len(summaries)} stacked runs failed: {failed[0]['failed']}")
    if not stacked:
        logging.info(closing_line(summaries[0], _WORKDIR.value, time.perf_counter() - start))


if __name__ == "__main__":
    cli.run(main)
