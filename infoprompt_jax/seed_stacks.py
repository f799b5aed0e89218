"""Which grid cells train together under `experiments --stack_seeds`, and their command.

Cells that differ only in seed (same task, setting, n_p and row) live in sibling directories
`.../<row>/seed<s>`; main.py's `--seeds=s1,s2 --workdir=.../<row>` trains them as one stacked
process that writes exactly those directories (docs/stacking.md).
"""

from collections.abc import Callable, Sequence
from typing import Any

from infoprompt_jax import stacked_train


def group_by_seeds(cells: Sequence[Any], method_of: Callable[[Any], str]) -> list[list[Any]]:
    """The cells in groups that train together, in order of each group's first cell.

    Args:
        cells: grid cells (`experiments.Cell`).
        method_of: a cell's config.method; cells of methods that cannot stack run alone.
    """
    groups: dict[str, list[Any]] = {}
    for cell in cells:
        parent = cell.name.rsplit("/", 1)[0]
        stackable = method_of(cell) not in stacked_train.UNSTACKABLE_METHODS
        key = parent if stackable else cell.name
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def stacked_command(command: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """A cell's main.py command changed to train `seeds` stacked in its directory's parent.

    `--workdir=.../<row>/seed<s>` becomes `--workdir=.../<row>`, `--config.seed=` is dropped and
    `--seeds=` added.
    """
    stacked = []
    for arg in command:
        if arg.startswith("--workdir="):
            workdir = arg.split("=", 1)[1]
            stacked.append("--workdir=" + workdir.rsplit("/", 1)[0])
        elif not arg.startswith("--config.seed="):
            stacked.append(arg)
    return stacked + ["--seeds=" + ",".join(str(seed) for seed in seeds)]
