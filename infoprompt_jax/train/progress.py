"""Training progress: a tqdm bar (examples/s, ETA) on a terminal; in a log file, one line every
few steps. Only process 0 shows it."""

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging
from tqdm import tqdm

LINES_PER_RUN = 20  # Non-interactive runs log progress about this many times.
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)


class _AboveTheBar:
    """A stream that writes through `tqdm.write`, which clears the bar, writes and redraws it,
    so that log lines are never glued onto the bar."""

    def write(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr, end="")

    def flush(self) -> None:
        sys.stderr.flush()


class Progress:
    """Shows training progress in examples (a step is `batch_size` examples), epochs from 1.

    Args:
        total_steps: the run's last step.
        steps_per_epoch: steps of one epoch.
        batch_size: examples per step.
        start_step: the step the run starts (or resumes) from.
        interactive: a bar (True) or log lines (False); default: a bar when stderr is a terminal.
        log_every: steps between log lines (default: `total_steps / LINES_PER_RUN`).
    """

    def __init__(
        self,
        total_steps: int,
        steps_per_epoch: int,
        batch_size: int,
        start_step: int = 0,
        interactive: bool | None = None,
        log_every: int | None = None,
    ):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.batch_size, self.start_step = batch_size, start_step
        self.active = jax.process_index() == 0
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.log_every = log_every or max(1, math.ceil(total_steps / LINES_PER_RUN))
        self._start_time = time.perf_counter()
        self._first = None  # (step, time) of the first update: the rate leaves compiling out.
        self._last_logged_step = start_step
        self._bar, self._log_stream = None, None
        if self.active and self.interactive:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="ex",
                unit_scale=batch_size,
                bar_format=_BAR_FORMAT,
                desc=self._epoch_text(start_step + 1),
                file=sys.stderr,
                dynamic_ncols=True,
            )
            python_handler = logging.get_absl_handler().python_handler
            self._log_stream = python_handler.stream
            python_handler.stream = _AboveTheBar()

    def update(self, step: int, metrics: Mapping[str, Any]) -> str:
        """Shows the progress after `step` steps with the step's metrics; returns its line."""
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        postfix = f"loss={float(metrics['loss']):.4f}, acc={float(metrics['accuracy']):.3f}"
        if self._bar is not None:
            self._bar.set_description_str(self._epoch_text(step), refresh=False)
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(step - self._bar.n)
            return str(self._bar)
        first_step, first_time = self._first
        line = tqdm.format_meter(
            step,
            self.total_steps,
            now - self._start_time,
            prefix=self._epoch_text(step),
            unit="ex",
            unit_scale=self.batch_size,
            postfix=postfix,
            rate=(step - first_step) / (now - first_time)
            if step > first_step
            else (step - self.start_step) / (now - self._start_time),
            initial=self.start_step,
            bar_format=_LINE_FORMAT,
        )
        crossed = step // self.log_every > self._last_logged_step // self.log_every
        if self.active and (crossed or step == self.total_steps):
            self._last_logged_step = step
            logging.info(line)
        return line

    def close(self) -> None:
        """Ends the bar and gives the log lines their stream back."""
        if self._bar is not None:
            self._bar.close()
            logging.get_absl_handler().python_handler.stream = self._log_stream
            self._bar = None

    def _epoch_text(self, step: int) -> str:
        epoch = max(1, math.ceil(step / self.steps_per_epoch))
        return f"epoch {epoch}/{self.total_steps // self.steps_per_epoch}"
