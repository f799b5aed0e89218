"""The grid and stacked-step benchmarks of tools/: the stacked-step timer runs, the grid table's arithmetic."""

import json
import re

import commands
import sentiment_fixture

from infoprompt_jax.tools import bench_stacked_step, bench_stacking
from infoprompt_jax.train import phase_timer
from infoprompt_jax.workdir import workdir_files


def test_bench_stacked_step_times_every_mode_in_every_round(tiny_roberta_dir, tmp_path, capsys):
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.data.dir = str(sentiment_fixture.write_sst2(tmp_path / "data", 16, 8))
    workdir = tmp_path / "run"
    workdir.mkdir()
    workdir_files.write_config(workdir, config)
    commands.run_in_process(
        bench_stacked_step,
        [f"--workdir={workdir}", "--length=16", "--runs=1,2", "--steps=2", "--rounds=2"],
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round")]
    pattern = r"round (\d)  (plain|stacked R=\d)\s+(\d+) ms per step\s+(\d+) ms per run-step"
    rows = [re.fullmatch(pattern, line).groups() for line in lines]
    assert [(r[0], r[1]) for r in rows] == [
        (str(i), mode) for i in range(2) for mode in ("plain", "stacked R=1", "stacked R=2")
    ]
    for _, mode, per_step, per_run in rows:
        runs = int(mode[-1]) if mode != "plain" else 1
        assert int(per_step) > 0 and abs(int(per_run) - int(per_step) / runs) <= 1


def write_cell(root, name, step, batch_size, seconds, peak):
    cell = root / name
    cell.mkdir(parents=True)
    summary = {"step": step, "seconds": seconds, "peak_device_mem_mb": peak}
    (cell / "summary.json").write_text(json.dumps(summary))
    (cell / "config.json").write_text(json.dumps({"train": {"batch_size": batch_size}}))


def test_bench_stacking_table_sums_phases_examples_and_peaks(tmp_path):
    bench = bench_stacking
    write_cell(tmp_path / "separate", "a/seed0", 10, 8, {"train": 2.0, "eval": 1.0}, None)
    write_cell(tmp_path / "separate", "a/seed1", 10, 8, {"train": 4.0, "eval": 1.0}, None)
    write_cell(tmp_path / "stack_seeds", "a/seed0", 10, 8, {"train": 1.5, "eval": 0.5}, 100.0)
    write_cell(tmp_path / "stack_seeds", "a/seed1", 10, 8, {"train": 1.5, "eval": 0.5}, 300.0)
    figures = bench.grid_figures(tmp_path / "separate")
    assert figures["cell"] == "a/seed0" and figures["first"] == {"train": 2.0, "eval": 1.0}
    assert figures["total"] == {"train": 6.0, "eval": 2.0}
    assert figures["examples"] == 160 and figures["peak_mb"] is None
    assert bench.grid_figures(tmp_path / "stack_seeds")["peak_mb"] == 300.0
    records = {
        "separate": {"processes": 2, "wall_seconds": 10.0},
        "stack_seeds": {"processes": 1, "wall_seconds": 4.0},
    }
    lines = bench.table(tmp_path, records).splitlines()
    columns = [c.strip() for c in lines[-1].strip("|").split("|")]
    train_column = 6 + phase_timer.PHASES.index("train")
    assert columns[:6] == ["stack_seeds, all cells", "1", "4.0", "2.50x", "40.0", "300"]
    assert columns[train_column] == "3.0"
    separate_row = [c.strip() for c in lines[-3].strip("|").split("|")]
    assert separate_row[:6] == ["separate, all cells", "2", "10.0", "1.00x", "16.0", "-"]
