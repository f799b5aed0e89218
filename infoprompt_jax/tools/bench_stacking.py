"""Times a grid three ways: every cell its own process, `--stack_seeds`, and `--stack_rows`.

    python -m infoprompt_jax.tools.bench_stacking --grid=configs/grids/minilm_stack_slice.py \
        --out=runs/bench_stacking

Run from the repository root (grid files import `configs/`). Mode M runs the whole grid in
`OUT/M` with a compilation cache of its own (`OUT/M/.jax_cache`), so each mode pays for its
first compiles as a fresh grid would. A finished mode records its wall time in `OUT/M/bench.json`
and is not run again: rerunning the command runs the modes still missing, then prints the table.
A mode interrupted part-way starts over, since a resumed grid's wall time is not one run's.

Printed per mode: processes, wall time, speed-up over separate processes, train examples per
wall second, the peak accelerator memory of any process (none on a CPU), and the seconds per
phase (the run summaries) of one cell and summed over the grid (a stacked process's seconds are
shared out over its runs).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.train import phase_timer
from infoprompt_jax.workdir import summary as summary_lib

MODES = {"separate": [], "stack_seeds": ["--stack_seeds"], "stack_rows": ["--stack_rows"]}


def experiments_command(grid: str, root: pathlib.Path, flags: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "infoprompt_jax.experiments",
        f"--grid={grid}",
        f"--root={root}",
        *flags,
    ]


def run_mode(grid: str, root: pathlib.Path, flags: list[str]) -> dict:
    """Runs the grid in `root` from scratch; returns its record (also written to bench.json)."""
    if root.exists():
        print(f"{root} holds an unfinished timing run; starting it over.", flush=True)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    env = {**os.environ, "INFOPROMPT_JAX_COMPILE_CACHE": str(root.absolute() / ".jax_cache")}
    dry = subprocess.run(
        experiments_command(grid, root, flags + ["--dry_run"]),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    processes = len(dry.stdout.strip().splitlines())
    print(f"== {root.name}: {processes} processes", flush=True)
    start = time.perf_counter()
    subprocess.run(experiments_command(grid, root, flags), env=env, check=True)
    record = {"processes": processes, "wall_seconds": time.perf_counter() - start}
    (root / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def grid_figures(root: pathlib.Path) -> dict:
    """A mode's figures from its cells' summaries and config.json.

    Returns: `cell` (the first cell's name), `first` (its seconds per phase), `total` (the seconds
    summed over every cell), `examples` (train examples stepped over, every cell: step x batch)
    and `peak_mb` (the largest peak_device_mem_mb of a cell; None on a CPU).
    """
    paths = sorted(root.rglob(summary_lib.FILE))
    summaries = [json.loads(path.read_text()) for path in paths]
    total, _ = phase_timer.sum_timings(summaries)
    examples = 0
    for path, summary in zip(paths, summaries):
        config = json.loads((path.parent / "config.json").read_text())
        examples += summary["step"] * config["train"]["batch_size"]
    peaks = [s["peak_device_mem_mb"] for s in summaries if s.get("peak_device_mem_mb") is not None]
    return {
        "cell": str(paths[0].parent.relative_to(root)),
        "first": summaries[0]["seconds"],
        "total": total,
        "examples": examples,
        "peak_mb": max(peaks) if peaks else None,
    }


def table(out: pathlib.Path, records: dict[str, dict]) -> str:
    """The markdown table: per mode, one cell's phases, then the grid's (wall, ex/s, peak)."""
    separate = records.get("separate", {}).get("wall_seconds")
    lines = [
        "| mode | processes | wall s | speed-up | train ex/s | peak MiB | "
        + " | ".join(phase_timer.PHASES)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(phase_timer.PHASES),
    ]
    cell = ""
    for mode, record in records.items():
        figures = grid_figures(out / mode)
        cell = figures["cell"]
        wall = record["wall_seconds"]
        grid_columns = (
            record["processes"],
            f"{wall:.1f}",
            f"{separate / wall:.2f}x" if separate else "-",
            f"{figures['examples'] / wall:.1f}",
            "-" if figures["peak_mb"] is None else f"{figures['peak_mb']:.0f}",
        )
        for label, seconds, columns in (
            (f"{mode}, one cell", figures["first"], ("",) * len(grid_columns)),
            (f"{mode}, all cells", figures["total"], grid_columns),
        ):
            shown = [f"{seconds.get(phase, 0.0):.1f}" for phase in phase_timer.PHASES]
            lines.append(f"| {label} | " + " | ".join(map(str, (*columns, *shown))) + " |")
    return (
        f"One cell: {cell}. train ex/s: train examples stepped over by all cells per wall "
        "second of the mode.\n\n" + "\n".join(lines)
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`)."""
    flags.DEFINE_string(
        "grid", "configs/grids/minilm_stack_slice.py", "The grid file.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "out", "runs/bench_stacking", "Directory of the modes' grids.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "modes", ",".join(MODES), "Comma-separated subset of the modes.", flag_values=flag_values
    )


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = pathlib.Path(flag_values.out)
    records = {}
    for mode in flag_values.modes.split(","):
        if mode not in MODES:
            raise ValueError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}.")
        done = out / mode / "bench.json"
        if done.exists():
            records[mode] = json.loads(done.read_text())
        else:
            records[mode] = run_mode(flag_values.grid, out / mode, MODES[mode])
    print(table(out, records))


if __name__ == "__main__":
    cli.run_command(define_flags, main)
