"""Tables of a grid's results: `python -m infoprompt_jax.report --root=DIR`.

The command's flags; `grid/report.py` reads the cells and lays out the tables.
"""

from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.grid import report


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string(
        "root",
        None,
        "The grid's root directory (experiments.py --root).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "select",
        "final",
        ["final", "best"],
        "final: last evaluation; best: best evaluation of the main metric.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "timings",
        False,
        "Print the seconds per phase (start-up, compile, train...) summed over cells.",
        flag_values=flag_values,
    )
    flags.mark_flags_as_required(["root"], flag_values=flag_values)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(report.write_report(flag_values.root, flag_values.select))
    if flag_values.timings:
        print(report.timings_report(flag_values.root))


if __name__ == "__main__":
    cli.run_command(define_flags, main)
