"""Where the train step's device time goes: a trace of a few steps, summed per kernel.

    python -m infoprompt_jax.tools.profile_step --config=configs/sst2.py --config.model.name=DIR \
        --batch_size=32 --seq_len=128 --steps=5 --top=25 [--trace_dir=DIR] [--config.x=y ...]

Compiles the step as `bench.py` does (same synthetic batch, same mesh), runs warm-up steps, then
traces `--steps` steps with `jax.profiler.trace` and reads the trace back with
`jax.profiler.ProfileData`: no TensorBoard needed. It prints, per device timeline (on a GPU the
"XLA Ops" line of `/device:GPU:0`; on a CPU the host threads XLA runs on), the busy time per step
against the wall time per step (the rest is launch gaps and host work), and the `--top` ops by
time with their share and count per step. The last line is JSON with the same figures.
"""

import collections
import json
import pathlib
import tempfile
import time
from collections.abc import Iterable

import jax
from absl import app, flags

from infoprompt_jax import cli
from infoprompt_jax.tools import bench


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values`: bench.py's (--steps: here the traced
    steps), `--top` and `--trace_dir`."""
    bench.define_flags(flag_values)
    flags.DEFINE_integer("top", 25, "Ops to list per timeline.", flag_values=flag_values)
    flags.DEFINE_string(
        "trace_dir", "", "Keep the trace here (default: a temp dir).", flag_values=flag_values
    )


# Timelines that hold one event per executed op or kernel: on a GPU the device plane's stream
# lines ("Stream #13(...)"; "XLA Ops" where the trace derives one). On a CPU XLA's ops run on host
# threads ("tf_XLA..."), whose lines also hold wrappers around the ops, skipped by name.
_DEVICE_OP_LINES = ("Stream", "XLA Ops")
_HOST_WRAPPERS = ("ThunkExecutor", "ThreadPool")


def op_times(planes: Iterable, device_plane_prefix: str = "/device:") -> dict[str, dict]:
    """Per timeline: total duration in ns and count of each event name.

    Args:
        planes: `ProfileData.planes`.
        device_plane_prefix: planes whose names start with this are devices.

    Returns:
        {"plane/line": {"busy_ns": total, "ops": {name: [ns, count]}}} for each device timeline
        that holds ops taking time (a GPU's streams), or for the host's XLA threads where no
        device timeline exists (CPU).
    """
    timelines = {}
    host_lines = {}
    for plane in planes:
        on_device = plane.name.startswith(device_plane_prefix)
        for line in plane.lines:
            if on_device and not line.name.startswith(_DEVICE_OP_LINES):
                continue
            if not on_device and not (
                plane.name.startswith("/host:") and "xla" in line.name.lower()
            ):
                continue
            ops = collections.defaultdict(lambda: [0, 0])
            for event in line.events:
                if not on_device and any(w in event.name for w in _HOST_WRAPPERS):
                    continue
                ops[event.name][0] += event.duration_ns
                ops[event.name][1] += 1
            busy_ns = sum(ns for ns, _ in ops.values())
            if busy_ns:  # A line of instant (0 ns) events alone measures nothing.
                entry = {"busy_ns": busy_ns, "ops": dict(ops)}
                (timelines if on_device else host_lines)[f"{plane.name}/{line.name}"] = entry
    return timelines or host_lines


def inventory(planes: Iterable) -> list[str]:
    """'plane / line: events' for every timeline of the trace (to see what it recorded)."""
    return [
        f"{plane.name} / {line.name}: {sum(1 for _ in line.events)} events"
        for plane in planes
        for line in plane.lines
    ]


def summary(timelines: dict[str, dict], steps: int, wall_s: float, top: int) -> dict:
    """Per-step figures of each timeline: busy ms, its share of the wall time, the top ops."""
    result = {"steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps, "timelines": {}}
    for name, entry in timelines.items():
        ranked = sorted(entry["ops"].items(), key=lambda item: -item[1][0])[:top]
        busy_ms = entry["busy_ns"] / 1e6 / steps
        result["timelines"][name] = {
            "busy_ms_per_step": busy_ms,
            "busy_share_of_wall": busy_ms / result["wall_ms_per_step"],
            "distinct_ops": len(entry["ops"]),
            "ops_per_step": sum(count for _, count in entry["ops"].values()) / steps,
            "top": [
                {
                    "op": op,
                    "ms_per_step": ns / 1e6 / steps,
                    "share": ns / entry["busy_ns"],
                    "count_per_step": count / steps,
                }
                for op, (ns, count) in ranked
            ],
        }
    return result


def print_table(result: dict) -> None:
    """The summary as text, one block per timeline."""
    print(f"wall {result['wall_ms_per_step']:.2f} ms/step over {result['steps']} steps")
    for name, line in result["timelines"].items():
        print(
            f"\n{name}: busy {line['busy_ms_per_step']:.2f} ms/step "
            f"({100 * line['busy_share_of_wall']:.0f}% of wall), "
            f"{line['ops_per_step']:.0f} ops/step, {line['distinct_ops']} distinct"
        )
        print(f"{'ms/step':>9} {'share':>6} {'n/step':>7}  op")
        for op in line["top"]:
            print(
                f"{op['ms_per_step']:9.3f} {100 * op['share']:5.1f}% "
                f"{op['count_per_step']:7.1f}  {op['op'][:100]}"
            )


def profile(
    config, batch_size: int, seq_len: int, steps: int, warmup_steps: int, top: int, trace_dir: str
) -> dict:
    """Traces `steps` train steps of `config` and returns `summary`'s figures."""
    components, arrays = bench.components_with_batch(config, batch_size, seq_len)
    step = bench.compile_train_step(components, arrays, warmup_steps + steps)
    state = step.state
    for _ in range(warmup_steps):
        state, _ = step.compiled(state, step.frozen, step.batch)
    jax.block_until_ready(state)
    with jax.profiler.trace(trace_dir):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step.compiled(state, step.frozen, step.batch)
        jax.block_until_ready((state, metrics))
        wall_s = time.perf_counter() - start
    traces = sorted(pathlib.Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"jax.profiler.trace wrote no *.xplane.pb under {trace_dir}.")
    data = jax.profiler.ProfileData.from_file(str(traces[-1]))
    bench.progress("trace timelines:\n  " + "\n  ".join(inventory(data.planes)))
    return summary(op_times(data.planes), steps, wall_s, top)


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    with tempfile.TemporaryDirectory() as tmp:
        result = profile(
            flag_values.config,
            flag_values.batch_size,
            flag_values.seq_len,
            flag_values.steps,
            flag_values.warmup_steps,
            flag_values.top,
            flag_values.trace_dir or tmp,
        )
    print_table(result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run_command(define_flags, main)
