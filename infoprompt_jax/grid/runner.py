"""Runs an experiment grid: every (row, task, n_p, few-shot k, seed) cell as one training run.

Usage (from the repository root, where `configs/` is importable, as for `main.py`):

    python -m infoprompt_jax.experiments --grid=configs/grids/minilm_smoke.py --root=DIR \
        [--shard=i/n] [--dry_run] [--max_parallel=1] [--stack_seeds | --stack_rows]

then `python -m infoprompt_jax.report --root=DIR` for the tables. The grid file format, the
cells and their directories are `grids.py`'s; this module runs the cells: one process per cell,
logs, SIGTERM forwarding, parallelism, and the summary of what is left to run.

`--stack_seeds` trains the cells that differ only in seed in one process, one compiled step for
all of them (main.py `--seeds`, docs/stacking.md); each still writes its own cell directory,
and the group's output goes to `log.txt` beside them. `--stack_rows` also puts InfoPrompt's rows
that differ only in loss weights in that process (main.py `--rows`); their log is the `log.txt`
beside the rows' directories. Every cell shares JAX's persistent compilation cache in
`ROOT/.jax_cache`, so cells with the same shapes compile once.
"""

import concurrent.futures
import dataclasses
import datetime
import os
import pathlib
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from infoprompt_jax import compile_cache
from infoprompt_jax.grid import cell_stacks, grids
from infoprompt_jax.workdir import summary as summary_lib

# main.py's exit status after SIGTERM: checkpoint saved, rerun to resume.
PREEMPTED_STATUS = 143


# Processes started by `run_command`, so that a SIGTERM to the grid reaches them.
_RUNNING: set[subprocess.Popen] = set()
_RUNNING_LOCK = threading.Lock()
_STOP = threading.Event()


def run_command(command: Sequence[str], log_path: pathlib.Path) -> int:
    """Runs a command with stdout and stderr appended to `log_path`; returns its exit status."""
    with log_path.open("a") as log:
        log.write(
            f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n"
        )
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            return process.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)


def forward_sigterm(signum, frame) -> None:
    """Stops launching cells and passes SIGTERM on: main.py checkpoints and exits 143."""
    del signum, frame
    _STOP.set()
    with _RUNNING_LOCK:
        for process in _RUNNING:
            process.terminate()


@dataclasses.dataclass
class Outcome:
    """How a cell's run ended."""

    cell: grids.Cell
    status: str  # ok | failed | preempted | stopped
    seconds: float
    detail: str = ""


def run_cell(cell: grids.Cell, root: str | pathlib.Path) -> Outcome:
    """Runs one cell to completion (or failure); its output goes to `<cell dir>/log.txt`."""
    if _STOP.is_set():
        return Outcome(cell, "stopped", 0.0, "not started: the grid got SIGTERM")
    grids.write_cell_json(cell, root)
    start = time.perf_counter()
    status = run_command(cell.command(root), cell.workdir(root) / "log.txt")
    seconds = time.perf_counter() - start
    if grids.is_finished(cell, root):
        return Outcome(cell, "ok", seconds)
    if status == PREEMPTED_STATUS:
        return Outcome(cell, "preempted", seconds, "checkpoint saved; rerun the grid to resume")
    detail = f"exit status {status}" if status else f"exit status 0 but no {summary_lib.FILE}"
    return Outcome(cell, "failed", seconds, detail)


def stack_command(cells: Sequence[grids.Cell], root: str | pathlib.Path) -> list[str]:
    """The main.py command that trains a group of `stack_groups` as one process."""
    command = cells[0].command(root)
    if len(cells) == 1:
        return command
    row_cells = {cell.workdir(root).parent.name: cell for cell in cells}
    seeds = sorted({cell.seed for cell in cells})
    if len(row_cells) == 1:
        return cell_stacks.stacked_command(command, seeds)
    rows = []
    for name, cell in row_cells.items():
        config = grids.parse_command(cell.command(root))[0]
        rows.append((name, float(config.loss.beta), float(config.loss.gamma)))
    return cell_stacks.rows_command(command, rows, seeds)


def run_stack(cells: Sequence[grids.Cell], root: str | pathlib.Path) -> list[Outcome]:
    """Runs a group of cells (seeds, and with `--stack_rows` rows) as one main.py process.

    Its output goes to `log.txt` beside the cells' directories (beside the rows' directories for
    several rows); each cell's outcome is read from its own directory, so one diverging run fails
    alone.
    """
    if len(cells) == 1:
        return [run_cell(cells[0], root)]
    if _STOP.is_set():
        return [
            Outcome(cell, "stopped", 0.0, "not started: the grid got SIGTERM") for cell in cells
        ]
    for cell in cells:
        grids.write_cell_json(cell, root)
    command = stack_command(cells, root)
    rows = {cell.workdir(root).parent for cell in cells}
    log_path = (rows.pop() if len(rows) == 1 else cells[0].workdir(root).parent.parent) / "log.txt"
    start = time.perf_counter()
    status = run_command(command, log_path)
    seconds = (time.perf_counter() - start) / len(cells)
    outcomes = []
    for cell in cells:
        if grids.is_finished(cell, root):
            outcomes.append(Outcome(cell, "ok", seconds))
        elif status == PREEMPTED_STATUS:
            outcomes.append(Outcome(cell, "preempted", seconds, "rerun the grid to resume"))
        else:
            outcomes.append(Outcome(cell, "failed", seconds, f"exit status {status}; {log_path}"))
    return outcomes


def stack_groups(
    cells: Sequence[grids.Cell], root: str | pathlib.Path, stack_rows: bool = False
) -> list[list[grids.Cell]]:
    """The cells in the groups `--stack_seeds` (or `--stack_rows`) runs together."""

    def config_of(cell):
        return grids.parse_command(cell.command(root))[0]

    if stack_rows:
        return cell_stacks.group_by_rows(cells, config_of)
    return cell_stacks.group_by_seeds(cells, lambda cell: config_of(cell).method)


def format_seconds(seconds: float) -> str:
    """`h:mm:ss`."""
    return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLog:
    """One line per finished cell: done/total, elapsed and an ETA from the cells' durations."""

    def __init__(self, total: int, done: int, parallel: int, out: Callable[[str], None]):
        self.total, self.done, self.parallel, self.out = total, done, parallel, out
        self.start = time.perf_counter()
        self.durations = []

    def finished(self, outcome: Outcome) -> None:
        """Logs one outcome."""
        self.done += 1
        if outcome.status == "ok":
            self.durations.append(outcome.seconds)
        elapsed = time.perf_counter() - self.start
        eta = "?"
        if self.durations:
            # Cells still to run, at the mean duration so far, `parallel` at a time.
            mean = sum(self.durations) / len(self.durations)
            eta = format_seconds(mean * (self.total - self.done) / self.parallel)
        note = f" ({outcome.detail})" if outcome.detail else ""
        self.out(
            f"[{self.done}/{self.total}] {outcome.status} {outcome.cell.name} in "
            f"{format_seconds(outcome.seconds)}{note} | elapsed {format_seconds(elapsed)} | "
            f"ETA {eta}"
        )


def run_cells(
    cells: Sequence[grids.Cell],
    root: str | pathlib.Path,
    max_parallel: int = 1,
    out: Callable[[str], None] = print,
    stack_seeds: bool = False,
    stack_rows: bool = False,
) -> list[Outcome]:
    """Runs the unfinished cells, `max_parallel` at a time; returns the ones that did not finish.

    With `stack_seeds`, the cells that differ only in seed run as one process; with `stack_rows`,
    also the rows that differ only in loss weights.
    """
    todo = [cell for cell in cells if not grids.is_finished(cell, root)]
    out(
        f"{plural(len(cells), 'cell')}, {len(cells) - len(todo)} finished already, "
        f"{len(todo)} to run."
    )
    progress = ProgressLog(len(cells), len(cells) - len(todo), max_parallel, out)
    unfinished = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_parallel) as pool:
        if stack_seeds or stack_rows:
            groups = stack_groups(todo, root, stack_rows)
            futures = [pool.submit(run_stack, group, root) for group in groups]
        else:
            futures = [pool.submit(lambda c: [run_cell(c, root)], cell) for cell in todo]
        for future in concurrent.futures.as_completed(futures):
            for outcome in future.result():
                progress.finished(outcome)
                if outcome.status != "ok":
                    unfinished.append(outcome)
    return sorted(unfinished, key=lambda o: o.cell.index)


def plural(count: int, noun: str) -> str:
    """ "1 cell", "2 cells"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def report_unfinished(
    unfinished: Sequence[Outcome], root: str | pathlib.Path, out: Callable[[str], None] = print
) -> None:
    """Lists the cells that failed or were preempted, with their logs; counts the unstarted."""
    if not unfinished:
        out("All cells finished.")
        return
    stopped = [o for o in unfinished if o.status == "stopped"]
    ended = [o for o in unfinished if o.status != "stopped"]
    if ended:
        out(f"{plural(len(ended), 'cell')} did not finish:")
    for outcome in ended:
        out(
            f"  {outcome.status}: {outcome.cell.name} ({outcome.detail}); log: "
            f"{outcome.cell.workdir(root) / 'log.txt'}"
        )
    if stopped:
        out(f"{plural(len(stopped), 'cell')} not started (SIGTERM); rerun the grid to run them.")


def run(
    grid_path: str,
    root: str,
    shard: str = "0/1",
    dry_run: bool = False,
    max_parallel: int = 1,
    out: Callable[[str], None] = print,
    stack_seeds: bool = False,
    stack_rows: bool = False,
) -> int:
    """Expands, checks and runs (or prints) a grid's shard; returns the exit status.

    `stack_seeds`: cells that differ only in seed train together in one process
    (docs/stacking.md); a shard stacks the seeds it holds. `stack_rows`: so do the rows of those
    cells that differ only in loss weights (it implies `stack_seeds`).

    Returns:
      0 when every cell of the shard has its summary; 1 when any failed or was preempted.
    """
    if max_parallel < 1:
        raise grids.GridError(f"--max_parallel={max_parallel}; give 1 or more.")
    cells = grids.select_shard(grids.expand(grids.load_grid(grid_path)), shard)
    grids.validate(cells, root)
    if dry_run:
        todo = [cell for cell in cells if not grids.is_finished(cell, root)]
        stacked = stack_seeds or stack_rows
        for group in stack_groups(todo, root, stack_rows) if stacked else [[c] for c in todo]:
            out(shlex.join(stack_command(group, root)))
        return 0
    # Cells with the same shapes compile once between them (compile_cache.py).
    os.environ.setdefault(
        compile_cache.ENV_VAR, str(pathlib.Path(root).absolute() / compile_cache.GRID_DIR)
    )
    if max_parallel > 1:
        # JAX preallocates 75% of accelerator memory per process; concurrent cells must share it.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    unfinished = run_cells(cells, root, max_parallel, out, stack_seeds, stack_rows)
    report_unfinished(unfinished, root, out)
    return 1 if unfinished else 0


def stop_requested() -> bool:
    """Whether a SIGTERM asked the grid to stop (its exit status is then PREEMPTED_STATUS)."""
    return _STOP.is_set()
