"""Where a run's time goes (wall seconds per phase) and its peak accelerator memory:
seconds per phase are recorded in the run's summary (`workdir/summary.py`) under `seconds`.

Phases (`PHASES`): `startup` (process start to the training job: Python and JAX imports, flag
parsing), `encoder_load` (checkpoint and tokenizer), `data` (reading and tokenizing the splits),
`init` (parameters and optimizer state), `compile` (the train and eval steps, each shape once),
`unprompted_cache` (the cached unprompted pass, its compile included), `train` (the steps),
`eval` and `checkpoint`. A resumed run records the seconds of its last process only.

JAX dispatches asynchronously, so `train` also holds the device time of steps whose results an
evaluation or a checkpoint waits for; the split is a wall-clock one, good for where a cell's
minutes go, not for per-kernel profiles (`infoprompt_jax.profile_step`).
"""

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax

PHASES = (
    "startup",
    "encoder_load",
    "data",
    "init",
    "compile",
    "unprompted_cache",
    "train",
    "eval",
    "checkpoint",
)

_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """The epoch time this process started (Linux: from /proc), else when this module loaded."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22, counted after the parenthesised command name, which may hold spaces.
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


class PhaseTimer:
    """Accumulates wall seconds per phase name; a phase inside another is not counted twice.

    Phases nest: the seconds of an inner phase (a compile inside an evaluation) count for it
    alone, and the outer phase gets the rest.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []  # [name, start, seconds of inner phases]

    def add(self, phase: str, seconds: float) -> None:
        """Adds `seconds` to `phase`."""
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def start(self, name: str) -> None:
        """Opens phase `name`; `stop(name)` closes it."""
        self._open.append([name, time.perf_counter(), 0.0])

    def stop(self, name: str) -> None:
        """Closes the innermost phase, which must be `name`."""
        opened, start, inner = self._open.pop()
        if opened != name:
            raise RuntimeError(f"PhaseTimer: stop({name!r}) while {opened!r} is open.")
        elapsed = time.perf_counter() - start
        self.add(name, elapsed - inner)
        if self._open:
            self._open[-1][2] += elapsed

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the `with` block as `name`."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def record_startup(self) -> None:
        """Sets `startup` to the seconds from process start to now (call it once, first)."""
        self.seconds["startup"] = max(0.0, time.time() - process_start_time())

    def total(self, phases: Iterable[str]) -> float:
        """The sum of some phases' seconds so far."""
        return sum(self.seconds.get(name, 0.0) for name in phases)

    def as_dict(self, scale: float = 1.0) -> dict[str, float]:
        """Every phase of `PHASES` (0 when it took no time), then any other, times `scale`."""
        names = list(PHASES) + [name for name in self.seconds if name not in PHASES]
        return {name: round(self.seconds.get(name, 0.0) * scale, 4) for name in names}


class CompileTimed:
    """A jitted function compiled ahead of time, once per input shape, timed as `compile`.

    Calls run the compiled executable of the arguments' shapes, so compile seconds are apart from
    run seconds (a plain jit compiles inside its first call). Static arguments are not supported:
    bind them with functools.partial before jitting.
    """

    def __init__(self, jitted: Callable, timer: PhaseTimer):
        self.jitted, self.timer = jitted, timer
        self._compiled: dict[Any, Callable] = {}

    def __call__(self, *args):
        leaves, structure = jax.tree.flatten(args)
        key = (structure, tuple((x.shape, x.dtype, getattr(x, "sharding", None)) for x in leaves))
        compiled = self._compiled.get(key)
        if compiled is None:
            with self.timer.phase("compile"):
                compiled = self.jitted.lower(*args).compile()
            self._compiled[key] = compiled
        return compiled(*args)


def sum_timings(summaries: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], int]:
    """Per phase, the seconds summed over runs' summaries; and how many summaries had timings."""
    totals: dict[str, float] = {}
    count = 0
    for summary in summaries:
        seconds = summary.get("seconds")
        if not seconds:
            continue  # Written before timings existed.
        count += 1
        for name, value in seconds.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals, count


def format_timings(totals: Mapping[str, float], count: int) -> str:
    """A table: phase, total seconds, mean seconds per run, share of the total."""
    if not count:
        return "No run summary with timings (`seconds`) found."
    grand = sum(totals.values()) or 1.0
    lines = [
        f"Seconds per phase, summed over {count} run{'s' if count != 1 else ''}:",
        f"{'phase':<18}{'total':>12}{'per run':>12}{'share':>8}",
    ]
    for name, value in totals.items():
        lines.append(f"{name:<18}{value:>12.1f}{value / count:>12.2f}{value / grand:>8.1%}")
    lines.append(f"{'all':<18}{sum(totals.values()):>12.1f}{sum(totals.values()) / count:>12.2f}")
    return "\n".join(lines)


def peak_device_memory_mb(devices: Iterable[jax.Device] | None = None) -> float | None:
    """The largest `peak_bytes_in_use` among `devices` (default: the local ones), in MiB.

    None where no device reports it: a CPU backend keeps no such statistics.
    """
    peaks = []
    for device in jax.local_devices() if devices is None else devices:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return max(peaks) / 2**20 if peaks else None
