"""Which grid cells train together under `experiments --stack_seeds / --stack_rows`, and how.

Cells that differ only in seed (same task, setting, n_p and row) live in sibling directories
`.../<row>/seed<s>`; main.py's `--seeds=s1,s2 --workdir=.../<row>` trains them as one stacked
process that writes exactly those directories. With `--stack_rows`, rows whose configs differ
only in `loss.beta` and `loss.gamma` (InfoPrompt and its ablations) and that hold the same seeds
join them: `--rows=<row>:BETA:GAMMA,... --seeds=... --workdir=...` on their common parent
(docs/stacking.md).
"""

import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from infoprompt_jax.train import stack_rules


def group_by_seeds(cells: Sequence[Any], method_of: Callable[[Any], str]) -> list[list[Any]]:
    """The cells in groups that train together, in order of each group's first cell.

    Args:
        cells: grid cells (`experiments.Cell`).
        method_of: a cell's config.method; cells of methods that cannot stack run alone.
    """
    groups: dict[str, list[Any]] = {}
    for cell in cells:
        parent = cell.name.rsplit("/", 1)[0]
        stackable = method_of(cell) not in stack_rules.UNSTACKABLE_METHODS
        key = parent if stackable else cell.name
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def group_by_rows(cells: Sequence[Any], config_of: Callable[[Any], Any]) -> list[list[Any]]:
    """`group_by_seeds`'s groups, with the rows that can train together merged into one group.

    Rows merge when their cells sit in one directory (task, setting, n_p), hold the same seeds,
    and their configs differ only in loss weights (`stack_rules.check_stackable`), so that
    `--rows x --seeds` trains exactly the group's cells.

    Args:
        cells: grid cells (`experiments.Cell`).
        config_of: a cell's resolved config.
    """
    configs = {cell.name: config_of(cell) for cell in cells}
    groups: dict[Any, list[Any]] = {}
    for group in group_by_seeds(cells, lambda cell: configs[cell.name].method):
        config = configs[group[0].name]
        key: Any = group[0].name
        if stack_rules.rows_can_stack(config):
            shared = stack_rules.shared_fields(config)
            parent = group[0].name.rsplit("/", 2)[0]
            seeds = tuple(cell.seed for cell in group)
            key = (parent, seeds, json.dumps(shared, sort_keys=True, default=str))
        groups.setdefault(key, []).extend(group)
    return list(groups.values())


def stacked_command(command: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """A cell's main.py command changed to train `seeds` stacked in its directory's parent.

    `--workdir=.../<row>/seed<s>` becomes `--workdir=.../<row>`, `--config.seed=` is dropped and
    `--seeds=` added.
    """
    return _restack(command, 1, ("--config.seed=",)) + [_seeds_flag(seeds)]


def rows_command(
    command: Sequence[str], rows: Sequence[tuple[str, float, float]], seeds: Sequence[int]
) -> list[str]:
    """A cell's main.py command changed to train `rows` (name, beta, gamma) x `seeds` stacked.

    `--workdir=.../<row>/seed<s>` becomes `--workdir=...`; the seed and loss-weight overrides
    are dropped, `--rows=` and `--seeds=` added.
    """
    dropped = ("--config.seed=", "--config.loss.beta=", "--config.loss.gamma=")
    rows_flag = "--rows=" + ",".join(f"{name}:{beta!r}:{gamma!r}" for name, beta, gamma in rows)
    return _restack(command, 2, dropped) + [rows_flag, _seeds_flag(seeds)]


def _restack(command: Sequence[str], levels_up: int, dropped: tuple[str, ...]) -> list[str]:
    restacked = []
    for arg in command:
        if arg.startswith("--workdir="):
            workdir = pathlib.PurePath(arg.split("=", 1)[1])
            restacked.append(f"--workdir={workdir.parents[levels_up - 1]}")
        elif not arg.startswith(dropped):
            restacked.append(arg)
    return restacked


def _seeds_flag(seeds: Sequence[int]) -> str:
    return "--seeds=" + ",".join(str(seed) for seed in seeds)
