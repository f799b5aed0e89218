"""Where metrics go: JSON lines in the workdir, and TensorBoard events. Only process 0 writes."""

import json
import time
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging
from etils import epath

from infoprompt_jax.workdir import workdir_files


def _tensorboard_writer(logdir: epath.Path, purge_step: int | None):
    """A tensorboardX SummaryWriter, or None (said once) when one cannot be made."""
    try:
        import tensorboardX  # Deferred: only a training run writes events.

        # purge_step: events a killed run wrote past its last checkpoint are dropped on resume.
        return tensorboardX.SummaryWriter(str(logdir), purge_step=purge_step)
    except Exception as e:  # Not installed, or the logdir cannot be written.
        logging.warning("TensorBoard is off: no event writer for %s (%s).", logdir, e)
        return None


class MetricWriter:
    """Keeps `WORKDIR/metrics.jsonl` (one `{"step": ..., **metrics}` record per line) and
    `WORKDIR/tensorboard/`.

    A local file is appended to, a line at a time. Object stores (gs://) cannot append, so there
    the records are buffered and the file is rewritten whole every `flush_seconds` and at every
    `flush()`; the training loop flushes before each checkpoint, so after a crash the file holds
    at least every record up to the latest checkpoint, and `truncate_after` drops the rest.

    Args:
        workdir: the run's directory (local or gs://).
        tensorboard: also write TensorBoard events, to `WORKDIR/tensorboard`.
        buffered: rewrite the file on a cadence instead of appending (default: for paths with a
            scheme, such as gs://).
        flush_seconds: the cadence of a buffered writer.
    """

    def __init__(
        self,
        workdir: str | epath.Path,
        tensorboard: bool = True,
        buffered: bool | None = None,
        flush_seconds: float = 120.0,
    ):
        self.active = jax.process_index() == 0
        self.path = epath.Path(workdir) / workdir_files.METRICS_FILE
        self.buffered = "://" in str(workdir) if buffered is None else buffered
        self.flush_seconds = flush_seconds
        self._records: list[dict[str, Any]] = []  # All of them, when buffered.
        self._last_flush = time.monotonic()
        self._tensorboard_wanted, self._tensorboard = tensorboard, None
        self._purge_step = None
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.buffered and self.path.exists():
                self._records = workdir_files.read_metrics(self.path.parent, missing_ok=True)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record; values are converted to Python floats."""
        if not self.active:
            return
        record = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
        if self.buffered:
            self._records.append(record)
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self.flush()
        else:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self._write_tensorboard(record)

    def flush(self) -> None:
        """Puts every record written so far in the file (and the events on disk)."""
        if not self.active:
            return
        if self.buffered:
            self._rewrite(self._records)
            self._last_flush = time.monotonic()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`: a resumed run rewrites what the killed run wrote after its
        last checkpoint, so the file reads as if the run had never stopped."""
        if not self.active:
            return
        self._purge_step = step + 1
        if not self.path.exists():
            return
        text = self.path.read_text()
        kept = [
            r
            for r in workdir_files.read_metrics(self.path.parent, missing_ok=True)
            if r["step"] <= step
        ]
        if self.buffered:
            self._records = kept
        if "".join(json.dumps(r) + "\n" for r in kept) != text:
            self._rewrite(kept)

    def close(self) -> None:
        """Flushes, and closes the TensorBoard writer."""
        self.flush()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def _write_tensorboard(self, record: dict[str, Any]) -> None:
        if self._tensorboard_wanted and self._tensorboard is None:
            self._tensorboard_wanted = False  # One try: a failure is said once.
            self._tensorboard = _tensorboard_writer(
                self.path.parent / "tensorboard", self._purge_step
            )
        if self._tensorboard is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(name, value, record["step"])


def _to_python(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
