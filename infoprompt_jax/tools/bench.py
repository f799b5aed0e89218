"""Throughput of the compiled train step, optionally against the same step in PyTorch eager.

    python -m infoprompt_jax.tools.bench --config=configs/sst2.py --config.model.name=DIR \
        --batch_size=8 --seq_len=128 --steps=20 [--compare_torch] [--config.x=y ...]

Builds the run the config describes (`components.build_components`, state on a mesh over all
devices), feeds it one synthetic batch of the exact training shapes, compiles the train step
(timed: `compile_s`), runs warm-up steps and then `--steps` timed steps, blocking on each, and
prints ONE JSON line on stdout (progress goes to stderr):

- `examples_per_s` (batch size / median step time), `step_ms_median`, `step_ms_min`;
- `compile_s`: `jax.jit(...).lower(...).compile()` of the train step;
- `flops_per_step`: the step's matmul FLOPs, 2·M·N·K summed over every `dot_general` of its
  jaxpr (the whole global step, gradients included; `matmul_flops`). XLA's cost analysis of the
  compiled step cannot serve: it skips library calls, and on a GPU most GEMMs become cuBLAS
  calls (it counted 3.6 of a roberta-large step's 7.4 TFLOP on an H100). Attention that JAX
  hands to cuDNN whole (`config.model.attention=fused` on a GPU) is not counted: about 2% of
  a roberta-large step;
- `achieved_tflops`, and `mfu` against the chips' bf16 dense peak where the device is in
  `PEAK_BF16_TFLOPS` (null elsewhere, e.g. on CPU);
- `peak_device_mem_mb`: the largest `peak_bytes_in_use` of a local device (null where the
  backend reports no memory stats, e.g. CPU);
- with `--compare_torch`: `torch_examples_per_s`, `jax_over_torch`, `torch_peak_device_mem_mb`
  (on CUDA) and the PyTorch settings (`torch_reference.py` runs the same step eagerly on the
  Hugging Face model, on the GPU when JAX runs on one).
"""

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.extend as jex
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from infoprompt_jax import cli
from infoprompt_jax.train import batching, phase_timer, run_state, sharding, unprompted_cache
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import optimizer as optimizer_lib
from infoprompt_jax.train import steps as steps_lib

# bf16 dense peak TFLOP/s per chip, from the vendors' spec sheets: Google Cloud TPU system
# architecture pages (v4 275, v5e 197, v5p 459, v6e/Trillium 918) and the NVIDIA A100, H100 and
# H200 datasheets (A100 312, H100 SXM 989, H100 PCIe 756, H200 989; the sheets print the
# 2:4-sparsity figure, twice these). Keys are `device_kind` as JAX reports it, lower-cased.
PEAK_BF16_TFLOPS = {
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,
    "tpu v5e": 197.0,
    "tpu v5": 459.0,
    "tpu v5p": 459.0,
    "tpu v6 lite": 918.0,
    "tpu v6e": 918.0,
}
# GPU kinds carry the memory size and form factor ("NVIDIA H100 80GB HBM3"), so they match by
# substring, first match wins: the PCIe H100 must be tested before the SXM one.
_GPU_PEAK_BF16_TFLOPS = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("a100", 312.0),
)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the command's flags in `flag_values` (every command: `cli.run_command`);
    profile_step.py takes them too."""

    def define(kind, name, default, help_text):
        kind(name, default, help_text, flag_values=flag_values)

    define(flags.DEFINE_integer, "batch_size", 8, "Global batch size (config.train.batch_size).")
    define(flags.DEFINE_integer, "seq_len", 128, "Sequence length (config.max_len).")
    define(flags.DEFINE_integer, "steps", 20, "Timed train steps.")
    define(flags.DEFINE_integer, "warmup_steps", 3, "Untimed steps run after compilation.")
    define(
        flags.DEFINE_bool,
        "compare_torch",
        False,
        "Also time the same step in PyTorch eager (torch_reference.py).",
    )
    define(
        flags.DEFINE_integer,
        "torch_threads",
        0,
        "torch.set_num_threads for --compare_torch; 0: every core available.",
    )
    define(
        flags.DEFINE_string,
        "torch_device",
        "",
        "Torch device for --compare_torch (cpu, cuda, cuda:1); empty: cuda when JAX runs on a "
        "GPU, else cpu.",
    )
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file, e.g. configs/sst2.py.",
        flag_values=flag_values,
        lock_config=True,
    )
    flags.mark_flags_as_required(["config"], flag_values=flag_values)


def progress(message: str) -> None:
    """A progress line on stderr: stdout carries only the result."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def peak_tflops(device_kind: str) -> float | None:
    """The bf16 dense peak TFLOP/s of one chip of `device_kind`, or None when unknown."""
    kind = device_kind.strip().lower()
    if kind in PEAK_BF16_TFLOPS:
        return PEAK_BF16_TFLOPS[kind]
    if "nvidia" in kind:
        for name, peak in _GPU_PEAK_BF16_TFLOPS:
            if name in kind:
                return peak
    return None


def matmul_flops(jaxpr: jex.core.Jaxpr) -> float:
    """FLOPs of every `dot_general` in `jaxpr` and the jaxprs nested in it, 2·M·N·K each.

    A scan's body counts `length` times; a `cond` counts its costliest branch; a while loop's
    body counts once (its trip count is not static).
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), (batch, _) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            contracted = math.prod(lhs[i] for i in contract)
            batched = math.prod(lhs[i] for i in batch)
            lhs_free = math.prod(lhs) // (contracted * batched)  # M
            rhs_free = math.prod(rhs) // (contracted * batched)  # N
            total += 2.0 * batched * lhs_free * rhs_free * contracted
            continue
        inner = [
            matmul_flops(getattr(sub, "jaxpr", sub))
            for sub in jex.core.jaxprs_in_params(eqn.params)
        ]
        if not inner:
            continue
        if eqn.primitive.name == "cond":
            total += max(inner)
        elif eqn.primitive.name == "scan":
            total += sum(inner) * eqn.params["length"]
        else:
            total += sum(inner)
    return total


def synthetic_batch(
    components: components_lib.Components, batch_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A training batch of the run's exact shapes: random words, no padding in the prompted input.

    Each row's text fields are random vocabulary tokens, decoded to text and encoded through the
    task's template, so the prompt slots, the mask and the special tokens sit where real data puts
    them; the text is longer than `max_len`, so truncation fills every row (full attention).

    Args:
        components: the run's components (tokenizer, template, task).
        batch_size: rows.
        seed: seed of the words and labels.

    Returns:
        The tokenized batch contract (docs/architecture.md) with `label`.
    """
    rng = np.random.default_rng(seed)
    tokenizer, template = components.tokenizer, components.template_tokenizer
    special = set(tokenizer.all_special_ids)
    words = np.asarray([i for i in range(tokenizer.vocab_size) if i not in special])
    length = 2 * template.max_len  # Words re-tokenise to at least as many tokens, mostly more.
    examples = [
        {
            field: tokenizer.decode(rng.choice(words, length).tolist())
            for field in template.template.fields
        }
        for _ in range(batch_size)
    ]
    arrays = template.encode_batch(examples)
    arrays["label"] = rng.integers(0, components.task.num_labels, batch_size).astype(np.int32)
    return arrays


def components_with_batch(
    config: ml_collections.ConfigDict, batch_size: int, seq_len: int
) -> tuple[components_lib.Components, dict[str, np.ndarray]]:
    """The config's components at `batch_size` and `max_len=seq_len`, and a synthetic batch."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.train.batch_size = batch_size
        config.max_len = seq_len
    components = components_lib.build_components(config)
    return components, synthetic_batch(components, batch_size, config.seed)


def time_steps(run_step: Callable[[], Any], warmup_steps: int, num_steps: int) -> list[float]:
    """Seconds of each of `num_steps` calls of `run_step`, after `warmup_steps` untimed calls.

    `run_step` must block until its step has finished, so that each time is that step's alone.
    """
    for _ in range(warmup_steps):
        run_step()
    seconds = []
    for _ in range(num_steps):
        start = time.perf_counter()
        run_step()
        seconds.append(time.perf_counter() - start)
    return seconds


def timing_summary(seconds: list[float], batch_size: int, prefix: str = "") -> dict[str, float]:
    """Throughput from the median step (robust to a noisy host), and the median and best step."""
    median = statistics.median(seconds)
    return {
        f"{prefix}examples_per_s": batch_size / median,
        f"{prefix}step_ms_median": 1e3 * median,
        f"{prefix}step_ms_min": 1e3 * min(seconds),
    }


@dataclasses.dataclass
class CompiledStep:
    """The train step compiled for one batch, with what it runs on.

    Attributes:
        compiled: `(state, frozen, batch) -> (state, metrics)`; it donates `state`.
        state: the initial train state on the mesh.
        frozen: the frozen params on the mesh.
        batch: the device batch every step is fed.
        arrays: the host batch: the input with the cached unprompted pass when the config
            caches it (what the PyTorch reference must read too).
        initial_trainable: the initial trainable params on the host.
        compile_s: seconds of `lower(...).compile()`.
        flops: the step's matmul FLOPs (`matmul_flops` of its jaxpr).
    """

    compiled: Any
    state: Any
    frozen: Any
    batch: Any
    arrays: dict[str, Any]
    initial_trainable: Any
    compile_s: float
    flops: float


def compile_train_step(
    components: components_lib.Components, arrays: Mapping[str, np.ndarray], total_steps: int
) -> CompiledStep:
    """Builds the run's state on a mesh over all devices and compiles its train step (timed).

    Args:
        components: the run's components.
        arrays: the host batch (`synthetic_batch`), fed to every step.
        total_steps: steps of the optimizer's schedule.
    """
    config = components.config
    batch_size = len(arrays["label"])
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_batch_size(batch_size, mesh)
    optimizer = optimizer_lib.from_config(config, components.method.peak_lr, total_steps)
    state, frozen = run_state.build_state(components, optimizer, mesh, arrays)
    initial_trainable = jax.device_get(state.trainable)  # Before the first step donates `state`.
    if unprompted_cache.uses_cached_unprompted_pass(
        components
    ):  # As training does: the step then skips that pass.
        arrays = unprompted_cache.cache_unprompted_pass(
            components.model, frozen, arrays, batch_size, mesh
        )
    batch = batching.device_batch(arrays, np.arange(batch_size), mesh)
    train_fn, _ = steps_lib.compile_steps(
        components.model, optimizer, components.method.loss_weights, mesh, state, frozen
    )
    progress(
        f"compiling the train step on {mesh.devices.size} {jax.devices()[0].device_kind} device(s)"
    )
    start = time.perf_counter()
    traced = train_fn.trace(state, frozen, batch)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    progress(f"compiled in {compile_s:.1f} s")
    flops = matmul_flops(traced.jaxpr.jaxpr)
    return CompiledStep(
        compiled, state, frozen, batch, dict(arrays), initial_trainable, compile_s, flops
    )


def benchmark_jax(
    components: components_lib.Components,
    arrays: Mapping[str, np.ndarray],
    warmup_steps: int,
    num_steps: int,
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Compiles and times the train step on a mesh over all devices.

    Args:
        components: the run's components.
        arrays: the host batch (`synthetic_batch`), fed to every step.
        warmup_steps: untimed steps after compilation.
        num_steps: timed steps.

    Returns:
        (results, the initial trainable params on the host, the host batch the step was fed:
        `arrays` with the cached unprompted pass when `config.cache_unprompted` asks for it).
        The PyTorch reference starts from the same params and batch.
    """
    step = compile_train_step(components, arrays, warmup_steps + num_steps)
    state = step.state
    history = []  # The first step's metrics are those of the initial params.

    def run_step():
        nonlocal state
        state, metrics = step.compiled(state, step.frozen, step.batch)
        history.append(jax.block_until_ready((state, metrics))[1])

    progress(f"{warmup_steps} warm-up + {num_steps} timed steps")
    seconds = time_steps(run_step, warmup_steps, num_steps)
    loss = float(history[-1]["loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(
            f"The benchmarked step's loss is {loss}: the timing is of a "
            "diverged run; lower config.optim.lr."
        )
    results = {
        **timing_summary(seconds, len(arrays["label"])),
        "compile_s": step.compile_s,
        "flops_per_step": step.flops,
        "initial_loss": float(history[0]["loss"]),
        "initial_ce": float(history[0]["ce"]),
        "final_loss": loss,
    }
    return results, step.initial_trainable, step.arrays


def utilisation(results: Mapping[str, Any], device_kind: str, device_count: int) -> dict[str, Any]:
    """Achieved TFLOP/s of the median step, and MFU against the devices' bf16 peak."""
    flops = results["flops_per_step"]
    if flops is None:
        return {"achieved_tflops": None, "mfu": None}
    achieved = flops / (results["step_ms_median"] / 1e3) / 1e12
    peak = peak_tflops(device_kind)
    return {
        "achieved_tflops": achieved,
        "mfu": None if peak is None else achieved / (peak * device_count),
    }


def torch_device_for(jax_platform: str, requested: str = "") -> str:
    """The torch device of the comparison: `requested`, else the GPU when JAX runs on one.

    Raises:
        RuntimeError: a CUDA device is requested (or implied by JAX on a GPU) that torch cannot
            use, e.g. a CPU-only torch build.
    """
    import torch

    device = requested or ("cuda" if jax_platform == "gpu" else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"--compare_torch on {device!r}, but torch {torch.__version__} sees no "
            "CUDA device: install a CUDA build of torch, or pass "
            "--torch_device=cpu to compare against the CPU."
        )
    return device


def benchmark_torch(
    components: components_lib.Components,
    arrays: Mapping[str, np.ndarray],
    initial_trainable: Mapping[str, Any],
    warmup_steps: int,
    num_steps: int,
    threads: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Times `torch_reference.TorchReferenceStep` on the same batch and initial parameters.

    Each timed step ends in `.item()` reads of its metrics, which wait for the device.
    """
    import torch  # Optional dependency: only --compare_torch needs it.

    from infoprompt_jax.tools import torch_reference

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    reference = torch_reference.TorchReferenceStep.from_components(
        components, initial_trainable, device
    )
    batch = torch_reference.to_torch(arrays, device)
    on_cuda = reference.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(reference.device)
    history = []
    progress(
        f"PyTorch eager on {device}: {warmup_steps} warm-up + {num_steps} timed steps"
        + ("" if on_cuda else f" on {torch.get_num_threads()} threads")
    )
    seconds = time_steps(lambda: history.append(reference.step(batch)), warmup_steps, num_steps)
    return {
        **timing_summary(seconds, len(arrays["label"]), prefix="torch_"),
        "torch_initial_loss": history[0]["loss"],
        "torch_initial_ce": history[0]["ce"],
        "torch_final_loss": history[-1]["loss"],
        "torch_device": device,
        "torch_threads": torch.get_num_threads(),
        "torch_peak_device_mem_mb": (
            torch.cuda.max_memory_allocated(reference.device) / 2**20 if on_cuda else None
        ),
        "torch_attention": reference.attention_implementation,
        "torch_version": torch.__version__,
    }


def run_benchmark(
    config: ml_collections.ConfigDict,
    batch_size: int,
    seq_len: int,
    num_steps: int,
    warmup_steps: int = 3,
    compare_torch: bool = False,
    torch_threads: int = 0,
    torch_device: str = "",
) -> dict[str, Any]:
    """Benchmarks the config's train step; returns the result line as a dict.

    Args:
        config: the run config; its batch size and `max_len` are overridden by the arguments.
        batch_size: global batch size.
        seq_len: sequence length.
        num_steps: timed steps.
        warmup_steps: untimed steps after compilation.
        compare_torch: also time the PyTorch eager reference (`torch_reference.py`).
        torch_threads: PyTorch intra-op threads; 0 uses every core available.
        torch_device: PyTorch's device; empty: `torch_device_for` JAX's platform.

    Returns:
        The result keys of the module docstring.
    """
    components, arrays = components_with_batch(config, batch_size, seq_len)
    devices = jax.devices()
    load_1m = os.getloadavg()[0]  # Before the run: other work on the host skews its timings.
    results, initial_trainable, arrays = benchmark_jax(components, arrays, warmup_steps, num_steps)
    results.update(utilisation(results, devices[0].device_kind, len(devices)))
    results.update(
        peak_device_mem_mb=phase_timer.peak_device_memory_mb(),
        device_kind=devices[0].device_kind,
        device_count=len(devices),
        batch_size=batch_size,
        seq_len=seq_len,
        num_prompt_tokens=components.method.model.num_prompt_tokens,
        dtype=components.config.model.dtype,
        method=components.method.name,
        steps=num_steps,
        cache_unprompted=unprompted_cache.uses_cached_unprompted_pass(components),
        jax_version=jax.__version__,
        host_load_1m=load_1m,
    )
    if compare_torch:
        device = torch_device_for(devices[0].platform, torch_device)
        results.update(
            benchmark_torch(
                components,
                arrays,
                initial_trainable,
                warmup_steps,
                num_steps,
                torch_threads,
                device,
            )
        )
        results["jax_over_torch"] = results["examples_per_s"] / results["torch_examples_per_s"]
    return results


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    results = run_benchmark(
        flag_values.config,
        flag_values.batch_size,
        flag_values.seq_len,
        flag_values.steps,
        flag_values.warmup_steps,
        flag_values.compare_torch,
        flag_values.torch_threads,
        flag_values.torch_device,
    )
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    cli.run_command(define_flags, main)
