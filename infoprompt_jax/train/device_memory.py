"""The accelerator memory a process has used: for benchmarks and each run's `summary.json`."""

from collections.abc import Iterable

import jax


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
