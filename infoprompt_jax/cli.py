"""What every command does around its `main`: `--help` exits 0, the libraries' INFO chatter is
quiet, and a user's mistake is one line of error, not a traceback.

Every command has one CLI style: its module defines its absl flags in
`define_flags(flag_values)`, reads them in `main(argv, flag_values)`, and ends with
`run_command(define_flags, main)` instead of `absl.app.run(main)`. The flags are defined only
when the module runs as the program, so commands that share a flag name (`--workdir`,
`--output`, `--root`) import each other freely, and tests run a command in-process on fresh
`FlagValues`. `--verbosity=1` brings back the libraries' INFO lines and the
tracebacks of user errors; `INFOPROMPT_TRACEBACK=1` brings back the tracebacks alone.
"""

import logging
import os
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

TRACEBACK_ENV = "INFOPROMPT_TRACEBACK"
_HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull", "--helpxml")
# Our own sources: their log lines always show, and their errors are written for users.
_OWN_DIRS = tuple(
    str(pathlib.Path(__file__).resolve().parents[1] / name) + os.sep
    for name in ("infoprompt_jax", "configs")
)
# Errors our code raises with a message meant for the user (a bad value, a missing file, no
# network); the same types raised inside a library are more likely a bug, and keep their trace.
_OWN_USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, ImportError, FloatingPointError)
# Errors that are the user's wherever they are raised.
_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_command(
    define_flags: Callable[[flags.FlagValues], None],
    main: Callable[[list[str], flags.FlagValues], Any],
) -> None:
    """Defines a command's flags and runs its `main(argv, flags.FLAGS)` through `run`.

    What `main` returns is for in-process callers (the analyses return their figures) and is
    dropped: `absl.app.run` would pass it to `sys.exit`, which prints it and exits 1.
    """
    define_flags(flags.FLAGS)

    def main_without_result(argv: list[str]) -> None:
        main(argv, flags.FLAGS)

    run(main_without_result)


def run(main: Callable[[list[str]], Any]) -> None:
    """`absl.app.run(main)`, with help, logs and user errors as the module docstring says."""
    app.run(lambda argv: _run_main(main, argv), flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        remaining = flags.FLAGS(argv)
    except SystemExit as e:
        # absl exits 1 after printing help; asking for help is no failure.
        if e.code == 1 and any(arg in _HELP_FLAGS for arg in argv):
            raise SystemExit(0) from None
        raise
    except Exception as e:  # A bad flag value, a config file that fails, a misspelt field.
        if not wants_traceback(_verbosity_in(argv)):
            sys.exit(f"Error: {_flag_error_message(e)}")
        if isinstance(e, flags.Error):  # Its message holds the config file's traceback.
            sys.exit(f"Error: {e}")
        raise
    if not wants_traceback(flags.FLAGS["verbosity"].value):
        _exit_on_unloaded_config_files()
    return remaining


def _exit_on_unloaded_config_files() -> None:
    """Says which config file cannot be read, now rather than at its first use.

    ml_collections defers a missing file's error to the config's first use, deep in the run.
    """
    for name in flags.FLAGS:
        value = flags.FLAGS[name].value
        if type(value).__name__ == "_ErrorConfig":  # ml_collections' stand-in for it.
            reason = str(vars(value)["_error"]).strip().splitlines()[-1].strip()
            sys.exit(f"Error: --{name}={flags.FLAGS[name].config_filename}: {reason}")


def _run_main(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    verbosity = flags.FLAGS["verbosity"].value
    if verbosity < 1:
        quiet_library_logs()
    try:
        return main(argv)
    except Exception as e:
        if wants_traceback(verbosity) or not is_user_error(e):
            raise
        sys.exit(f"Error: {error_message(e)}")


def wants_traceback(verbosity: int) -> bool:
    """Whether user errors show their traceback: `--verbosity>=1` or INFOPROMPT_TRACEBACK=1."""
    return verbosity >= 1 or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is a user's mistake: a missing file, or a known error type raised by our
    own code (whose messages name the input at fault and the fix)."""
    if isinstance(error, _FILE_ERRORS):
        return True
    if not isinstance(error, _OWN_USER_ERRORS):
        return False
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_filename.startswith(_OWN_DIRS)


def error_message(error: BaseException) -> str:
    """The error's message on its own (a KeyError's is not quoted)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    return str(error)


def _flag_error_message(error: BaseException) -> str:
    # ml_collections wraps a KeyError("'gama'\nDid you mean ...") in an AttributeError.
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    message = error_message(error)
    if isinstance(error, (AttributeError, KeyError)):
        field, _, hint = message.partition("\n")
        return f"no config field {field}. {hint}".strip()
    # A config file's get_config() that raised: its traceback comes inside the message.
    where = re.match(r"(.*?): Error whilst parsing config file:", message)
    if where:
        return f"{where.group(1)}: {message.strip().splitlines()[-1].strip()}"
    return " ".join(message.split("\n"))


def _verbosity_in(argv: Sequence[str]) -> int:
    """--verbosity (or -v) as given in argv; 0 when absent or unreadable."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?(?:v|verbosity)(?:=(.*))?", arg)
        if match:
            value = match.group(1) if match.group(1) is not None else "".join(argv[i + 1 : i + 2])
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class _OwnLinesAndWarnings(logging.Filter):
    """Passes our own log lines and every warning; drops the libraries' INFO and DEBUG lines.

    Orbax logs through absl like we do, so the logger's name cannot tell them apart; the file
    that logged can.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(_OWN_DIRS)


def quiet_library_logs() -> None:
    """Hides the INFO lines of Orbax, JAX and absl (about 40 per checkpoint save)."""
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _OwnLinesAndWarnings) for f in handler.filters):
        handler.addFilter(_OwnLinesAndWarnings())
