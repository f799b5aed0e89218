"""Runs an experiment grid: `python -m infoprompt_jax.experiments --grid=FILE --root=DIR`.

    python -m infoprompt_jax.experiments --grid=configs/grids/minilm_smoke.py --root=DIR \
        [--shard=i/n] [--dry_run] [--max_parallel=1] [--stack_seeds | --stack_rows]

The command's flags; `grid/runner.py` runs the cells and `grid/grids.py` defines the format.
"""

import signal
import sys

from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.grid import runner


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string(
        "grid", None, "Grid file, e.g. configs/grids/minilm_smoke.py.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "root", None, "Directory that holds one subdirectory per cell.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "shard", "0/1", "i/n: run only the cells with index % n == i.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Print the commands of unfinished cells; run none.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "max_parallel",
        1,
        "Cells run at once (on one accelerator, only if they fit in its memory together).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "stack_seeds",
        False,
        "Train the cells that differ only in seed together: one process and one compiled step "
        "per group (main.py --seeds; docs/stacking.md). Each cell keeps its own directory.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "stack_rows",
        False,
        "As --stack_seeds, and the InfoPrompt rows that differ only in loss.beta / loss.gamma "
        "(its ablations) join one group (main.py --rows; docs/stacking.md).",
        flag_values=flag_values,
    )
    flags.mark_flags_as_required(["grid", "root"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    signal.signal(signal.SIGTERM, runner.forward_sigterm)
    status = runner.run(
        flag_values.grid,
        flag_values.root,
        flag_values.shard,
        flag_values.dry_run,
        flag_values.max_parallel,
        out=lambda line: print(line, flush=True),
        stack_seeds=flag_values.stack_seeds,
        stack_rows=flag_values.stack_rows,
    )
    sys.exit(runner.PREEMPTED_STATUS if runner.stop_requested() else status)


if __name__ == "__main__":
    cli.run_command(define_flags, main)
