"""The grid and stacked-step benchmarks of tools/: the stacked-step timer runs, the grid table's arithmetic."""

import json
import re

import commands
import ml_collections
import numpy as np
import sentiment_fixture
import torch

from infoprompt_jax.tools import (
    bench_end_to_end,
    bench_stacked_step,
    bench_stacking,
    torch_end_to_end,
)
from infoprompt_jax.train import optimizer as optimizer_lib
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


def test_bench_end_to_end_table_speedups_and_phases():
    results = [
        {
            "run": "torch",
            "wall_s": 200.0,
            "seconds": {"train": 100.0, "jax_setup": 5.0},
            "cpu_s": 300.0,
            "eval_accuracy": 0.8,
        },
        {
            "run": "default",
            "wall_s": 80.0,
            "seconds": {"train": 40.0, "eval": 30.0},
            "cpu_s": 100.0,
            "eval_accuracy": 0.81,
        },
    ]
    lines = bench_end_to_end.table(results).splitlines()
    torch_row, default_row = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    phases = bench_end_to_end.PHASES
    assert torch_row[0] == "torch" and torch_row[-3] == "1.00x" and torch_row[-1] == "1.00x"
    assert torch_row[2 + phases.index("data")] == "5.0"  # JAX-only setup shown as data.
    assert torch_row[-5] == "95.0"  # Wall seconds outside every phase.
    assert default_row[1] == "80.0" and default_row[-3] == "2.50x"
    assert default_row[2 + phases.index("eval")] == "30.0" and default_row[-4] == "0.8100"
    assert default_row[-2:] == ["100.0", "3.00x"]


def test_torch_end_to_end_trains_and_evaluates_every_epoch(tiny_roberta_dir, tmp_path):
    config = sentiment_fixture.tiny_config(tiny_roberta_dir)
    config.data.dir = str(sentiment_fixture.write_sst2(tmp_path / "data", 16, 8))
    summary = torch_end_to_end.run(config)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and np.isfinite(summary["train_loss"])
    assert {"startup", "data", "encoder_load", "train", "eval"} <= set(summary["seconds"])


def test_torch_end_to_end_pads_each_batch_to_its_longest_row_and_follows_the_schedule():
    arrays = {
        "attention_mask": np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]),
        "input_ids": np.arange(15).reshape(3, 5),
        "label": np.array([0, 1, 0]),
    }
    batch = torch_end_to_end.dynamic_batch(arrays, np.array([0, 2]))
    assert tuple(batch["input_ids"].shape) == (2, 2) and batch["label"].tolist() == [0, 0]
    config = ml_collections.ConfigDict({"optim": {"warmup_fraction": 0.1}})
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = torch_end_to_end.linear_schedule(optimizer, config, 20)
    expected = optimizer_lib.learning_rate_schedule(2.0, 20, 0.1)
    for step in range(20):
        np.testing.assert_allclose(optimizer.param_groups[0]["lr"], expected(step), rtol=1e-6)
        optimizer.step()
        scheduler.step()
