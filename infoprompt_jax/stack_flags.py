"""main.py's `--seeds` and `--rows`: their parsing, and the runs of the stack they name.

Kept apart from main.py, whose flags are defined at import: tests and other commands use these
without defining them twice.
"""

import math
import os
import re
from collections.abc import Sequence

import ml_collections
from absl import app


def parse_seeds(values: list[str]) -> list[int]:
    """`--seeds` as ints, checked: distinct and non-negative."""
    try:
        seeds = [int(v) for v in values]
    except ValueError as e:
        raise app.UsageError(
            f"--seeds={','.join(values)}: give comma-separated ints, e.g. 0,1,2."
        ) from e
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise app.UsageError(
            f"--seeds={','.join(values)}: give distinct non-negative ints, e.g. 0,1,2."
        )
    return seeds


ROW_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def parse_rows(values: list[str]) -> list[tuple[str, float, float]]:
    """`--rows` as (name, beta, gamma), checked: directory names, distinct rows, weights >= 0."""
    example = "e.g. infoprompt:0.1:0.05,beta-gamma-0:0:0"
    rows = []
    for value in values:
        try:
            name, beta, gamma = value.split(":")
            beta, gamma = float(beta), float(gamma)
        except ValueError:  # Not three parts, or not numbers.
            raise app.UsageError(
                f"--rows: {value!r} is not NAME:BETA:GAMMA with two numbers; {example}."
            ) from None
        if not ROW_NAME.match(name):
            raise app.UsageError(
                f"--rows: row name {name!r} must be a directory name of letters, digits, "
                f"'_', '-' and '.'; {example}."
            )
        if not (math.isfinite(beta) and math.isfinite(gamma) and beta >= 0 and gamma >= 0):
            raise app.UsageError(f"--rows: {value!r} needs finite weights >= 0; {example}.")
        rows.append((name, beta, gamma))
    names, weights = [row[0] for row in rows], [row[1:] for row in rows]
    if not rows or len(set(names)) != len(names) or len(set(weights)) != len(weights):
        raise app.UsageError(
            f"--rows={','.join(values)}: give rows with distinct names and distinct "
            f"(beta, gamma); {example}."
        )
    return rows


def stacked_runs(
    config: ml_collections.ConfigDict,
    workdir: str,
    seeds: Sequence[int],
    rows: Sequence[tuple[str, float, float]] | None,
) -> tuple[list[ml_collections.ConfigDict], list[str]]:
    """The configs and workdirs of `seeds` of `config`, in `workdir/seed<s>`; with `rows` (name,
    beta, gamma), of every row of every seed, in `workdir/<name>/seed<s>`."""
    configs, workdirs = [], []
    for name, beta, gamma in rows or [(None, None, None)]:
        for seed in seeds:
            run_config = config.copy_and_resolve_references()
            run_config.seed = seed
            if name is not None:
                run_config.loss.beta, run_config.loss.gamma = beta, gamma
            configs.append(run_config)
            workdirs.append(os.path.join(workdir, *([name] if name else []), f"seed{seed}"))
    return configs, workdirs
