"""Trains a config: `python -m infoprompt_jax.main --config=configs/rte.py --workdir=DIR`.

Rerunning the same command resumes from the latest checkpoint in the workdir. Override any config
field with `--config.FIELD=VALUE`; `--config=configs/rte.py --show_config` lists every field with
its value and comment. `--verbosity=1` shows the libraries' INFO logs and the traceback of a user
error (INFOPROMPT_TRACEBACK=1: the traceback alone).

`--seeds=0,1,2` trains those seeds of the config together in one process, one compiled step
(`train/loop.py`, docs/stacking.md): seed s writes `WORKDIR/seed<s>`, the same directory a
separate run with `--config.seed=s --workdir=WORKDIR/seed<s>` writes. `--rows=NAME:BETA:GAMMA,...`
adds InfoPrompt's loss-weight rows to the stack: row NAME, seed s writes `WORKDIR/NAME/seed<s>`,
the directory of `--config.loss.beta=BETA --config.loss.gamma=GAMMA --config.seed=s`.
"""

import math
import os
import pathlib
import re
import sys
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from infoprompt_jax import cli, compile_cache, config_listing, config_loading
from infoprompt_jax.train import loop, phase_timer, stack_rules


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string(
        "workdir",
        None,
        "Directory for checkpoints, metrics and logs.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "seeds",
        None,
        "Train several seeds of --config together, as one stacked program (docs/stacking.md): "
        "comma-separated distinct non-negative ints, e.g. 0,1,2, in place of config.seed. Seed "
        "s writes WORKDIR/seed<s>, a complete run directory like a separate run's.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "rows",
        None,
        "Also stack InfoPrompt rows that differ only in loss weights (docs/stacking.md): "
        "comma-separated NAME:BETA:GAMMA, e.g. infoprompt:0.1:0.05,beta-gamma-0:0:0, each NAME "
        "a directory name. Row NAME of seed s (--seeds, else config.seed) writes "
        "WORKDIR/NAME/seed<s>, with config.loss.beta=BETA and config.loss.gamma=GAMMA.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "show_config",
        False,
        "Print the resolved config (every field, its value and its comment) and exit.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "multihost",
        None,
        "Call jax.distributed.initialize() (default: when env variables say the run spans hosts).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "compile_cache",
        None,
        "Directory of JAX's persistent compilation cache, shared by runs with the same shapes; "
        f"'off' disables it. Default: ${compile_cache.ENV_VAR}, else "
        "~/.cache/infoprompt_jax/jax.",
        flag_values=flag_values,
    )
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file, e.g. configs/rte.py or configs/rte.py:tiny.",
        flag_values=flag_values,
        lock_config=True,
    )
    flags.mark_flags_as_required(["config"], flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["workdir", "show_config"],
        lambda values: values["workdir"] is not None or values["show_config"],
        message="--workdir is required (except with --show_config).",
        flag_values=flag_values,
    )


def _is_multihost(flag: bool | None) -> bool:
    """`--multihost`, else whether env variables say the run spans hosts."""
    if flag is not None:
        return flag
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


def show_config(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The resolved --config, with the comments of the default.py beside its file."""
    config_file = pathlib.Path(flag_values["config"].config_filename)
    default_file = config_file.parent / "default.py"
    comments = config_listing.field_comments(default_file) if default_file.exists() else {}
    header = f"# {flag_values.config.task} config from {config_file}; "
    header += "override a field with --config.FIELD=VALUE.\n"
    return header + config_listing.listing(flag_values.config, comments)


def parse_seeds(values: list[str]) -> list[int]:
    """`--seeds` as ints, checked: distinct and non-negative."""
    try:
        seeds = [int(v) for v in values]
    except ValueError as e:
        raise app.UsageError(
            f"--seeds={','.join(values)}: give comma-separated ints, e.g. 0,1,2."
        ) from e
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise app.UsageError(
            f"--seeds={','.join(values)}: give distinct non-negative ints, e.g. 0,1,2."
        )
    return seeds


ROW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def parse_rows(values: list[str]) -> list[tuple[str, float, float]]:
    """`--rows` as (name, beta, gamma), checked: directory names, distinct rows, weights >= 0."""
    example = "e.g. infoprompt:0.1:0.05,beta-gamma-0:0:0"
    rows = []
    for value in values:
        try:
            name, beta, gamma = value.split(":")
            beta, gamma = float(beta), float(gamma)
        except ValueError:  # Not three parts, or not numbers.
            raise app.UsageError(
                f"--rows: {value!r} is not NAME:BETA:GAMMA with two numbers; {example}."
            ) from None
        if not ROW_NAME.match(name):
            raise app.UsageError(
                f"--rows: row name {name!r} must be a directory name of letters, digits, "
                f"'_', '-' and '.'; {example}."
            )
        if not (math.isfinite(beta) and math.isfinite(gamma) and beta >= 0 and gamma >= 0):
            raise app.UsageError(f"--rows: {value!r} needs finite weights >= 0; {example}.")
        rows.append((name, beta, gamma))
    names, weights = [row[0] for row in rows], [row[1:] for row in rows]
    if not rows or len(set(names)) != len(names) or len(set(weights)) != len(weights):
        raise app.UsageError(
            f"--rows={','.join(values)}: give rows with distinct names and distinct "
            f"(beta, gamma); {example}."
        )
    return rows


def stacked_runs(
    config: ml_collections.ConfigDict,
    workdir: str,
    seeds: Sequence[int],
    rows: Sequence[tuple[str, float, float]] | None,
) -> tuple[list[ml_collections.ConfigDict], list[str]]:
    """The configs and workdirs of `seeds` of `config`, in `workdir/seed<s>`; with `rows` (name,
    beta, gamma), of every row of every seed, in `workdir/<name>/seed<s>`."""
    configs, workdirs = [], []
    for name, beta, gamma in rows or [(None, None, None)]:
        for seed in seeds:
            run_config = config.copy_and_resolve_references()
            run_config.seed = seed
            if name is not None:
                run_config.loss.beta, run_config.loss.gamma = beta, gamma
            configs.append(run_config)
            workdirs.append(os.path.join(workdir, *([name] if name else []), f"seed{seed}"))
    return configs, workdirs


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


def start_jax(flag_values: flags.FlagValues) -> None:
    """Joins the other hosts of a multi-host run, turns the compilation cache on, logs devices."""
    if _is_multihost(flag_values.multihost):
        # Collectives between processes on the CPU backend (tests, CPU clusters); TPU and GPU
        # backends bring their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**_distributed_args_from_env())
    compile_cache.enable(compile_cache.resolve_directory(flag_values.compile_cache))
    logging.info(
        "JAX process %d/%d, %d local devices of %d: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if flag_values.show_config:
        print(show_config(flag_values), end="")
        return
    # Every field checked before any work: no workdir is created, no encoder loaded.
    config = config_loading.load(flag_values.config)
    start = time.perf_counter()
    start_jax(flag_values)
    timer = phase_timer.PhaseTimer()
    timer.record_startup()
    workdir, seeds_flag, rows_flag = flag_values.workdir, flag_values.seeds, flag_values.rows
    if rows_flag is not None and not stack_rules.rows_can_stack(config):
        raise app.UsageError(
            f"--rows sets InfoPrompt's loss weights; it needs --config.method=infoprompt and "
            f"--config.variant=paper (got {config.method}, {config.variant})."
        )
    stacked = seeds_flag is not None or rows_flag is not None
    if stacked:
        seeds = [int(config.seed)]
        if seeds_flag is not None:
            seeds = parse_seeds(seeds_flag)
        rows = parse_rows(rows_flag) if rows_flag is not None else None
        configs, workdirs = stacked_runs(config, workdir, seeds, rows)
        summaries = loop.train_and_evaluate_stacked(configs, workdirs, timer)
    else:
        summaries = [loop.train_and_evaluate(config, workdir, timer)]
    if any(summary.get("preempted") for summary in summaries):
        sys.exit(143)  # The conventional status of a SIGTERM'd process: schedulers rerun it.
    failed = [s for s in summaries if s.get("failed")]
    if failed:
        sys.exit(f"{len(failed)} of {len(summaries)} stacked runs failed: {failed[0]['failed']}")
    if not stacked:
        logging.info(closing_line(summaries[0], workdir, time.perf_counter() - start))


if __name__ == "__main__":
    cli.run_command(define_flags, main)
