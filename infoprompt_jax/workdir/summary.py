"""`summary.json`, a finished run's last word: its scores, its seconds per phase, its counts.

This module is its only writer and reader. The loop writes the file once, after a run's last
step (never for a preempted or diverged run), so a run is finished exactly when the file exists:
the one rule every command (main, a stack, the grid runner, reports) asks through `finished`.
"""

import json
from typing import Any

from etils import epath

FILE = "summary.json"


def path(workdir: str | epath.Path) -> epath.Path:
    """Where a run's summary lives."""
    return epath.Path(workdir) / FILE


def write(workdir: str | epath.Path, summary: dict[str, Any]) -> None:
    """Writes a finished run's summary (on a pod, process 0 writes: every host holds the same
    numbers)."""
    path(workdir).write_text(json.dumps(summary, indent=2) + "\n")


def read(workdir: str | epath.Path) -> dict[str, Any]:
    """A run's summary.

    Raises:
      FileNotFoundError: the run has not finished (no summary yet).
      ValueError: the file is damaged (not JSON); the message says to delete it and rerun.
    """
    file = path(workdir)
    if not file.exists():
        raise FileNotFoundError(
            f"{workdir} has no {FILE}: the run has not finished (rerun its command to resume)."
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{file} is not valid JSON ({e}); delete it and rerun the run's command (or the "
            "grid) to evaluate the run again."
        ) from e


def finished(workdir: str | epath.Path) -> dict[str, Any] | None:
    """The summary of a run that trained all its steps, else None (the one "finished" rule)."""
    return read(workdir) if path(workdir).exists() else None


def read_all(workdirs) -> list[dict[str, Any]]:
    """The summaries of the finished runs among `workdirs`, in order."""
    return [summary for workdir in workdirs if (summary := finished(workdir)) is not None]
