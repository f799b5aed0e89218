"""Tests of training progress: a bar that log lines never glue onto, log lines off a terminal."""

import io
import logging
import re

import pytest
from absl import flags
from absl import logging as absl_logging

from infoprompt_jax.train import progress as progress_lib

METRICS = {"loss": 0.5, "accuracy": 0.75}


def test_off_a_terminal_one_line_every_n_steps_with_epochs_from_1(caplog):
    progress = progress_lib.Progress(
        total_steps=40, steps_per_epoch=10, batch_size=8, interactive=False
    )
    assert progress.log_every == 2  # 40 steps / 20 lines.
    with caplog.at_level(logging.INFO):
        for step in range(1, 41):
            progress.update(step, METRICS)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert len(logged) == 20
    assert logged[0].startswith("epoch 1/4:   5% 16/320 [")
    assert logged[4].startswith("epoch 1/4:  25% 80/320 [")  # Step 10 ends epoch 1.
    assert logged[5].startswith("epoch 2/4:  30% 96/320 [")
    assert re.search(r"ex/s, loss=0\.5000, acc=0\.750\]$", logged[-1])


def test_a_resumed_run_counts_from_its_step(caplog):
    progress = progress_lib.Progress(40, 10, 8, start_step=30, interactive=False, log_every=5)
    with caplog.at_level(logging.INFO):
        for step in range(31, 41):
            progress.update(step, METRICS)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch")]
    assert [line.split(" [")[0] for line in logged] == [
        "epoch 4/4:  88% 280/320",
        "epoch 4/4: 100% 320/320",
    ]


@pytest.fixture
def absl_logging_to(monkeypatch):
    """A terminal stand-in that absl's log lines go to, as in a run under app.run (the test sets
    it as sys.stderr too: pytest resets sys.stderr between fixtures and test)."""
    terminal = io.StringIO()
    handler = absl_logging.get_absl_handler()
    monkeypatch.setattr(handler.python_handler, "stream", terminal)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    # Before flags are parsed absl writes to sys.stderr itself, past any stream it was given.
    was_parsed = flags.FLAGS.is_parsed()
    flags.FLAGS.mark_as_parsed()
    yield terminal
    if not was_parsed:
        flags.FLAGS.unparse_flags()


def test_log_lines_print_above_the_bar(absl_logging_to, monkeypatch):
    terminal = absl_logging_to
    monkeypatch.setattr("sys.stderr", terminal)
    handler = absl_logging.get_absl_handler().python_handler
    progress = progress_lib.Progress(20, 10, 4, interactive=True)
    progress.update(5, METRICS)
    absl_logging.warning("Saved checkpoint at step 5.")
    progress.update(10, METRICS)
    progress.close()
    assert handler.stream is terminal  # Given back.
    shown = [segment.strip() for segment in re.split(r"[\r\n]", terminal.getvalue())]
    log_line = next(s for s in shown if "Saved checkpoint" in s)
    # Its own line, from its prefix on: the bar was cleared before it and drawn again after.
    assert re.fullmatch(r"W\d{4} [^\]]+\] Saved checkpoint at step 5\.", log_line), log_line
    bars = [s for s in shown if s.startswith("epoch")]
    assert any(s.startswith("epoch 1/2:  25%|") and "ex/s, loss=0.5000" in s for s in bars)
    assert bars[-1].startswith("epoch 1/2:  50%|")
