"""Where metrics go: JSON lines in the workdir, TensorBoard when a writer is installed, and a
progress line with examples/s on interactive runs. Only process 0 writes."""

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from infoprompt_jax import workdir_files


def _tensorboard_writer(logdir: epath.Path):
    """A SummaryWriter from tensorboardX or torch, or None when neither is installed."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            writer_module = __import__(module, fromlist=["SummaryWriter"])
            return writer_module.SummaryWriter(str(logdir))
        except Exception:  # Not installed, or installed without its own dependencies.
            continue
    return None


class MetricWriter:
    """Keeps `WORKDIR/metrics.jsonl`: one `{"step": ..., **metrics}` record per line.

    The file is rewritten whole on each write (it holds a few hundred lines) because object stores
    such as gs:// cannot append.
    """

    def __init__(self, workdir: str | epath.Path, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = epath.Path(workdir) / workdir_files.METRICS_FILE
        self._records: list[dict[str, Any]] = []
        self._tensorboard = None
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._records = workdir_files.read_metrics(workdir, missing_ok=True)
            if tensorboard:
                self._tensorboard = _tensorboard_writer(self.path.parent / "tensorboard")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record; values are converted to Python floats."""
        if not self.active:
            return
        record = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
        self._records.append(record)
        self._flush()
        if self._tensorboard is not None:
            for name, value in record.items():
                if name != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()

    def truncate_after(self, step: int) -> None:
        """Drops records past `step`: a resumed run rewrites what the killed run wrote after its
        last checkpoint, so the file reads as if the run had never stopped."""
        if not self.active:
            return
        self._records = [r for r in self._records if r["step"] <= step]
        self._flush()

    def _flush(self) -> None:
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self._records))


def _to_python(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class Progress:
    """One self-overwriting line on a terminal: step, epoch, loss and examples/s."""

    def __init__(self, total_steps: int, batch_size: int, enabled: bool | None = None):
        self.total_steps, self.batch_size = total_steps, batch_size
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.enabled = self.enabled and jax.process_index() == 0
        self._last_time, self._last_step = time.perf_counter(), None

    def update(self, step: int, epoch: int, metrics: Mapping[str, Any]) -> str:
        """Updates the line; returns it (for logs)."""
        now = time.perf_counter()
        rate = ""
        if self._last_step is not None and step > self._last_step:
            examples = (step - self._last_step) * self.batch_size
            rate = f" | {examples / (now - self._last_time):.1f} ex/s"
        self._last_time, self._last_step = now, step
        line = (
            f"step {step}/{self.total_steps} epoch {epoch} | loss {float(metrics['loss']):.4f}"
            f" | acc {float(metrics['accuracy']):.3f}{rate}"
        )
        if self.enabled:
            sys.stderr.write("\r" + line + " " * 8)
            sys.stderr.flush()
        return line

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
