"""Running the project's commands as a user does: `python -m infoprompt_jax.X ARGS` in a child."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# The tests' programs are tiny: XLA's CPU backend spends most of a run compiling them, and
# without LLVM's optimisations it compiles them in about half the time (measured: a tiny run's
# compile 33 s -> 15 s, init 12 s -> 4 s). What a program computes does not change; only how
# fast the machine code runs, which for these programs is a fraction of a second either way.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with `devices` fake CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}"


def env(devices: int = 1, **extra: str) -> dict[str, str]:
    """`devices` CPU devices and this checkout's package (not an installed one) in the child."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(devices),
        PYTHONPATH=str(REPO),
        **extra,
    )


def argv(module: str, *args: str) -> list[str]:
    """The command line `python -m infoprompt_jax.MODULE ARGS`."""
    return [sys.executable, "-m", f"infoprompt_jax.{module}", *args]


def run(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m infoprompt_jax.MODULE ARGS` from the repository root; output captured."""
    return subprocess.run(
        argv(module, *args),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_run_args(model_dir, data_dir, workdir, *overrides: str) -> list[str]:
    """main.py's flags for the `:tiny` SST-2 run on a local checkpoint and local files."""
    return [
        "--config=configs/sst2.py:tiny",
        f"--workdir={workdir}",
        f"--config.model.name={model_dir}",
        "--config.data.source=local",
        f"--config.data.dir={data_dir}",
        *overrides,
    ]


def run_in_process(module, args: list[str]):
    """`python -m MODULE ARGS` run in this process on fresh flags; returns what its main returns.

    A child process would spend some 15 s importing transformers and torch again; every command
    defines its flags in `define_flags(flag_values)` and reads them in `main(argv, flag_values)`
    (`cli.run_command`), which is all that `python -m` adds to what runs here.
    """
    from absl import flags  # Here, not at the top: conftest sets XLA_FLAGS before jax loads.

    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    return module.main(flag_values([module.__name__, *args]), flag_values)
