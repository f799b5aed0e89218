"""Tests of what every command does around its main: help, quiet logs, user errors in one line."""

import logging
import os
import subprocess
import sys

import commands
import pytest

from infoprompt_jax import cli
from infoprompt_jax.data import tasks

REPO = commands.REPO


def run_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository root, on the CPU."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **env),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_misspelt_config_field_is_one_line_and_the_trace_is_one_switch_away(tmp_path):
    command = (
        "infoprompt_jax.main",
        "--config=configs/rte.py:tiny",
        f"--workdir={tmp_path}",
        "--config.loss.gama=0",
    )
    result = run_command(*command)
    assert result.returncode == 1
    assert result.stderr == (
        'Error: no config field \'gama\'. Did you mean "gamma" instead of "gama"?\n'
    )
    traced = run_command(*command, INFOPROMPT_TRACEBACK="1")
    assert traced.returncode == 1
    assert "Traceback (most recent call last)" in traced.stderr


def test_an_offline_hub_id_is_one_error_line(tmp_path):
    result = run_command(
        "infoprompt_jax.main",
        "--config=configs/rte.py:tiny",
        f"--workdir={tmp_path}",
        "--config.model.name=roberta-base",
        HF_HUB_OFFLINE="1",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "Error: 'roberta-base' is not a local directory"
    )
    assert result.stderr.endswith(errors[0] + "\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("infoprompt_jax.main", "--config=configs/nope.py", "--workdir=w"),
            "Error: --config=configs/nope.py: [Errno 2] No such file or directory: 'configs/nope.py'",
        ),
        (
            ("infoprompt_jax.main", "--config=configs/rte.py:huge", "--show_config"),
            "Error: flag --config=configs/rte.py:huge: ValueError: Unknown config variant 'huge'; known: tiny.",
        ),
        (
            ("infoprompt_jax.main", "--config=configs/rte.py"),
            "Error: flags workdir=None, show_config=False: --workdir is required (except with --show_config).",
        ),
        (
            ("infoprompt_jax.export", "--workdir=/no/such/run", "--output=out"),
            "Error: No checkpoint in /no/such/run",
        ),
        (
            ("infoprompt_jax.predict", "--export_dir=/no/such/export", "--input=x", "--output=y"),
            "Error: /no/such/export/export.json not found",
        ),
        (("infoprompt_jax.report", "--root=/no/such/grid"), "Error: --root=/no/such/grid"),
        (
            ("infoprompt_jax.experiments", "--grid=/no/such/grid.py", "--root=r", "--dry_run"),
            "Error: --grid=/no/such/grid.py: no such file",
        ),
        (
            ("infoprompt_jax.analysis.cmi", "--workdirs=/no/such/run", "--output=o"),
            "Error: /no/such/run/config.json not found",
        ),
        (("infoprompt_jax.analysis.curves", "--output=o.png"), "Error: flag --workdirs=None"),
        (
            ("infoprompt_jax.analysis.landscape", "--workdir=w", "--output=o", "--grid_size=x"),
            "Error: flag --grid_size=x: invalid literal for int()",
        ),
    ],
)
def test_user_errors_of_every_command_are_one_line(args, message):
    result = run_command(*args)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr


# Every command: one CLI style (cli.run_command), the analyses and tools included.
COMMANDS = [
    "main",
    "export",
    "predict",
    "experiments",
    "report",
    "analysis.cmi",
    "analysis.curves",
    "analysis.landscape",
    "tools.bench",
    "tools.profile_step",
    "tools.bench_stacking",
    "tools.bench_stacked_step",
    "tools.random_encoder",
]


@pytest.mark.parametrize("module", COMMANDS, ids=lambda m: m)
def test_help_exits_0_and_lists_the_flags(module):
    result = run_command(f"infoprompt_jax.{module}", "--help")
    assert result.returncode == 0, result.stderr
    assert "--" in result.stdout and "Try --helpfull" in result.stdout
    if module == "main":
        assert "--show_config" in result.stdout and "--config.FIELD=VALUE" in result.stdout


def test_a_command_whose_main_returns_figures_exits_0_and_prints_nothing_else():
    """The analyses' mains return their figures for in-process callers; absl.app.run would
    print a returned value and exit 1."""
    program = (
        "from absl import flags\n"
        "from infoprompt_jax import cli\n"
        "def define_flags(flag_values):\n"
        "    flags.DEFINE_integer('n', 0, 'a number', flag_values=flag_values)\n"
        "def main(argv, flag_values):\n"
        "    print('n =', flag_values.n)\n"
        "    return {'figure': 1.0}\n"
        "cli.run_command(define_flags, main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, "--n=3"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "n = 3\n", "")


def test_user_errors_are_known_types_raised_by_our_code():
    def caught(fn):
        try:
            fn()
        except Exception as e:
            return e

    unknown_task = caught(lambda: tasks.get_task("nope"))
    assert cli.is_user_error(unknown_task)
    assert cli.error_message(unknown_task).startswith("unknown task 'nope'; known tasks: ")
    assert cli.is_user_error(caught(lambda: open("/no/such/file")))
    # The same types raised inside a library are more likely a bug: their trace stays.
    assert not cli.is_user_error(caught(lambda: int("x")))
    assert not cli.is_user_error(caught(lambda: {}["key"]))


def test_library_info_lines_are_dropped_but_ours_and_warnings_pass():
    def record(path: str, level: int) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "msg", (), None)

    keep = cli._OwnLinesAndWarnings().filter
    assert keep(record(str(REPO / "infoprompt_jax/train/loop.py"), logging.INFO))
    assert not keep(record("/site-packages/orbax/checkpoint/future.py", logging.INFO))
    assert keep(record("/site-packages/orbax/checkpoint/future.py", logging.WARNING))
