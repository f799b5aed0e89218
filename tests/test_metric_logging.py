"""Tests of the metrics writer: appends locally, buffers for object stores, agrees with the
latest checkpoint after a crash, writes TensorBoard events or says once why not."""

import json
import logging
import sys

import pytest

from infoprompt_jax.workdir import metric_logging


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_local_file_is_appended_to_never_rewritten(tmp_path, monkeypatch):
    writer = metric_logging.MetricWriter(tmp_path, tensorboard=False)
    monkeypatch.setattr(writer, "_rewrite", lambda records: pytest.fail("rewrote the file"))
    for step in (1, 2, 3):
        writer.write(step, {"train_loss": step / 10})
    assert lines(tmp_path / "metrics.jsonl") == [
        {"step": 1, "train_loss": 0.1},
        {"step": 2, "train_loss": 0.2},
        {"step": 3, "train_loss": 0.3},
    ]


def test_resume_drops_records_past_the_checkpoint_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "tr')
    writer = metric_logging.MetricWriter(tmp_path, tensorboard=False)
    writer.truncate_after(2)
    writer.write(3, {"eval_accuracy": 0.5})
    assert lines(path) == [{"step": 1}, {"step": 2}, {"step": 3, "eval_accuracy": 0.5}]


def test_a_buffered_file_is_flushed_at_checkpoints_and_agrees_with_them_after_a_crash(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = metric_logging.MetricWriter(tmp_path, tensorboard=False, buffered=True)
    for step in (1, 2):
        writer.write(step, {"train_loss": 1.0})
    assert not path.exists()  # Nothing uploaded between flushes.
    writer.flush()  # The loop flushes before saving the checkpoint of step 2.
    writer.write(3, {"train_loss": 1.0})
    # A crash now: the file has every record up to the checkpoint, none after.
    assert [r["step"] for r in lines(path)] == [1, 2]
    resumed = metric_logging.MetricWriter(tmp_path, tensorboard=False, buffered=True)
    resumed.truncate_after(2)
    resumed.write(3, {"train_loss": 0.5})
    resumed.close()
    assert lines(path) == [
        {"step": 1, "train_loss": 1.0},
        {"step": 2, "train_loss": 1.0},
        {"step": 3, "train_loss": 0.5},
    ]


def test_a_buffered_file_is_flushed_on_its_cadence(tmp_path):
    writer = metric_logging.MetricWriter(
        tmp_path, tensorboard=False, buffered=True, flush_seconds=0
    )
    writer.write(1, {"train_loss": 1.0})
    assert lines(tmp_path / "metrics.jsonl") == [{"step": 1, "train_loss": 1.0}]


def test_tensorboard_events_are_written(tmp_path):
    writer = metric_logging.MetricWriter(tmp_path)
    writer.write(1, {"train_loss": 1.0, "note": "text is skipped"})
    writer.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_without_a_tensorboard_writer_the_run_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # As if not installed.
    writer = metric_logging.MetricWriter(tmp_path)
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            writer.write(step, {"train_loss": 1.0})
    said = [r.getMessage() for r in caplog.records if "TensorBoard is off" in r.getMessage()]
    assert len(said) == 1 and "tensorboardX" in said[0]
    assert len(lines(tmp_path / "metrics.jsonl")) == 3
