"""Faults and bad input: each class fails with one message naming what and how to fix it."""

import json

import commands
import sentiment_fixture


def test_divergence_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    tiny_roberta_dir, tmp_path
):
    data_dir = sentiment_fixture.write_sst2(tmp_path / "data", 32, 16)
    workdir = tmp_path / "run"
    args = commands.tiny_run_args(
        tiny_roberta_dir,
        data_dir,
        workdir,
        "--config.optim.lr=1e9",
        "--config.train.log_every_steps=10",
        "--config.train.checkpoint_every_steps=1",
    )
    first = commands.run("main", *args)
    assert first.returncode == 1, first.stderr
    error = first.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: Training diverged at step "), error
    step = int(error.split("at step ")[1].split(":")[0])
    assert f"keeps the checkpoint of step {step - 1}" in error
    assert "start a new --workdir with a lower config.optim.lr (now 1e+09)" in error
    # Nothing non-finite was saved, logged or summarised.
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == step - 1
    assert not (workdir / "summary.json").exists()
    metrics = workdir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        record = json.loads(line)  # Bare NaN would not be valid JSON to a strict reader.
        assert all(v == v for v in record.values() if isinstance(v, float)), record
    # The rerun resumes from the last good step and stops at the same step, not silently.
    second = commands.run("main", *args)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == error
