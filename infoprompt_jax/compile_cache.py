"""JAX's persistent compilation cache, on by default: a second process with the same shapes (the
next cell of a grid, a resumed run) loads its compiled steps from disk instead of compiling.

Where it lives, first match wins: main.py's `--compile_cache=DIR` (`off` disables it), the
`INFOPROMPT_JAX_COMPILE_CACHE` environment variable (experiments.py sets it to `ROOT/.jax_cache`
for its cells unless it is set already), then `$XDG_CACHE_HOME/infoprompt_jax/jax` (by default
`~/.cache/infoprompt_jax/jax`). Entries are keyed by the program, the compiler version and the
device kind, so a stale entry is never used; the directory may be deleted at any time.
"""

import os
import pathlib

import jax
from absl import logging

ENV_VAR = "INFOPROMPT_JAX_COMPILE_CACHE"
OFF = "off"
GRID_DIR = ".jax_cache"  # Under a grid's root.
# Programs that compile in less time than this are not written: small helper jits would fill
# the directory with entries that save nothing. Our train and eval steps take longer, even tiny.
MIN_COMPILE_SECONDS = 0.05


def default_directory() -> str:
    """The cache directory when neither the flag nor the environment names one."""
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return str(pathlib.Path(base) / "infoprompt_jax" / "jax")


def resolve_directory(flag_value: str | None) -> str | None:
    """The directory to use (None: off) from the flag, the environment, then the default."""
    value = flag_value or os.environ.get(ENV_VAR) or default_directory()
    return None if value.strip().lower() == OFF else value


def enable(directory: str | None) -> None:
    """Points JAX's persistent compilation cache at `directory` (None: leaves it off)."""
    if directory is None:
        logging.info("Persistent compilation cache off.")
        return
    if "://" not in directory:
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("Persistent compilation cache: %s", directory)
