"""Tables of a grid's results: `python -m infoprompt_jax.report --root=DIR`.

The command's flags; `grid/report.py` reads the cells and lays out the tables.
"""

from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.grid import report


def define_flags() -> None:
    """Defines the CLI's flags; at run time only, since experiments.py defines a --root too."""
    flags.DEFINE_string("root", None, "The grid's root directory (experiments.py --root).")
    flags.DEFINE_enum(
        "select",
        "final",
        ["final", "best"],
        "final: last evaluation; best: best evaluation of the main metric.",
    )
    flags.DEFINE_bool(
        "timings",
        False,
        "Print the seconds per phase (start-up, compile, train...) summed over cells.",
    )
    flags.mark_flags_as_required(["root"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    print(report.write_report(flags.FLAGS.root, flags.FLAGS.select))
    if flags.FLAGS.timings:
        print(report.timings_report(flags.FLAGS.root))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
