"""Experiment grids: the grid file format, its cells and their directories, and validation.

`experiments.py` schedules the cells this module defines and checks.

Usage (from the repository root, where `configs/` is importable, as for `main.py`):

    python -m infoprompt_jax.experiments --grid=configs/grids/minilm_smoke.py --root=DIR \
        [--shard=i/n] [--dry_run] [--max_parallel=1]

then `python -m infoprompt_jax.report --root=DIR` for the tables.

Grid files
----------
A grid file (`configs/grids/*.py`) defines `get_grid()` returning a plain dict:

    {
        # Task name (tasks.TASKS) -> its config file, or a dict with the config file and
        # overrides for that task only (e.g. where its local data lives).
        "tasks": {
            "sst2": "configs/sst2.py",
            "rte": {"config": "configs/rte.py", "overrides": {"data.dir": "/data/RTE"}},
        },
        # Row label (a line of the paper's table) -> config overrides; dict order = table order.
        "rows": {
            "InfoPrompt": {"method": "infoprompt"},
            "beta=gamma=0": {"method": "infoprompt", "loss.beta": 0.0, "loss.gamma": 0.0},
            "WARP": {"method": "warp"},
        },
        "num_tokens": [4],          # values of config.prompt.num_tokens (n_p)
        "few_shot": [256],          # values of config.data.few_shot (0: the full training set)
        "seeds": [0, 1, 2],         # values of config.seed
        "overrides": {"train.num_epochs": 10},  # optional; shared by every cell
    }

Override keys are config paths without the `config.` prefix, exactly as after `--config.` on
main.py's command line; values are Python scalars of the field's type. Precedence, lowest first:
the grid's `overrides`, the task's `overrides`, the row's overrides. The axes (`seed`,
`prompt.num_tokens`, `data.few_shot`) come from their lists only. Relative config paths are
relative to the working directory, as for main.py's `--config`.

Cells and their directories
---------------------------
A grid expands to `len(seeds) * len(few_shot) * len(num_tokens) * len(tasks) * len(rows)` cells,
indexed with the seed outermost, so appending seeds keeps every existing cell's index and shard.
Each cell runs in
`ROOT/<task>/<full|fs<k>>/np<n>/<row-slug>/seed<s>`, which holds main.py's outputs plus
`cell.json` (what the report reads: row label and position, task, setting, overrides, command)
and `log.txt` (the run's stdout and stderr). A cell whose run is finished (its summary, `workdir/summary.py`) is skipped;
an unfinished one resumes from its checkpoint. `--shard=i/n` runs the cells with
`index % n == i`, so n hosts sharing ROOT (or copying their cells into one) split a grid.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
from ml_collections import config_flags

from infoprompt_jax.workdir import summary as summary_lib

# Set by the grid's axes, never by overrides: a cell's directory name must say its value.
AXIS_KEYS = {"seed": "seeds", "prompt.num_tokens": "num_tokens", "data.few_shot": "few_shot"}
REQUIRED_KEYS = ("tasks", "rows", "num_tokens", "few_shot", "seeds")
OPTIONAL_KEYS = ("overrides",)
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class GridError(ValueError):
    """A grid file, or a cell directory, that cannot be run as asked."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of a grid.

    Attributes:
      index: position in the grid's expansion (what `--shard` splits on).
      grid: the grid's name (its file stem).
      row: the row label, e.g. "beta=gamma=0".
      row_index: the row's position in the grid (the report's row order).
      task: the task name.
      task_index: the task's position in the grid (the report's column order).
      task_config: the task's config file, as given in the grid.
      num_tokens: n_p.
      few_shot: k (0: the full training set).
      setting_index: position of (few_shot, num_tokens) in the grid (the report's table order).
      seed: the run's seed.
      num_seeds: how many seeds the grid asks for (the report flags cells with fewer).
      overrides: every `--config.` override of the run, merged, axes last.
    """

    index: int
    grid: str
    row: str
    row_index: int
    task: str
    task_index: int
    task_config: str
    num_tokens: int
    few_shot: int
    setting_index: int
    seed: int
    num_seeds: int
    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        """The cell's directory relative to ROOT, e.g. `rte/fs256/np4/infoprompt/seed0`."""
        data = "full" if self.few_shot == 0 else f"fs{self.few_shot}"
        return f"{self.task}/{data}/np{self.num_tokens}/{slugify(self.row)}/seed{self.seed}"

    def workdir(self, root: str | pathlib.Path) -> pathlib.Path:
        """The cell's workdir under `root`."""
        return pathlib.Path(root).absolute() / self.name

    def command(self, root: str | pathlib.Path) -> list[str]:
        """The main.py command line that runs this cell."""
        return [
            sys.executable,
            "-m",
            "infoprompt_jax.main",
            f"--config={self.task_config}",
            f"--workdir={self.workdir(root)}",
        ] + [f"--config.{key}={format_value(value)}" for key, value in self.overrides.items()]

    def to_json(self, root: str | pathlib.Path) -> dict[str, Any]:
        """What `cell.json` holds."""
        record = dataclasses.asdict(self)
        record["name"] = self.name
        record["command"] = self.command(root)
        return record


def slugify(label: str) -> str:
    """A directory-safe name for a row label: "beta=gamma=0" -> "beta-gamma-0"."""
    slug = re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")
    return slug or "row"


def format_value(value: Any) -> str:
    """An override value as main.py's config flags parse it back."""
    if isinstance(value, bool):
        return "true" if value else "false"  # absl's boolean parser; "True" would also work.
    if isinstance(value, float):
        return repr(value)  # Round-trips exactly, and keeps "0.0" a float for float fields.
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return repr(tuple(value))  # config_flags parses tuple fields with literal_eval.
    raise GridError(
        f"Override value {value!r} has type {type(value).__name__}; use a bool, int, "
        "float, str or tuple."
    )


def load_grid(path: str | pathlib.Path) -> dict[str, Any]:
    """Imports a grid file, calls its `get_grid()` and checks the result.

    Returns:
      The grid, normalized: every task as {"config": ..., "overrides": {...}}, axes as lists,
      and "name" (the file stem) added.

    Raises:
      GridError: a missing file, a missing or malformed key (the message names it).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise GridError(
            f"--grid={path}: no such file; give a grid file such as configs/grids/minilm_smoke.py."
        )
    spec = importlib.util.spec_from_file_location(f"_infoprompt_grid_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_grid"):
        raise GridError(
            f"{path} defines no get_grid(); see infoprompt_jax/grid/grids.py for the format."
        )
    return normalize_grid(module.get_grid(), name=path.stem, where=str(path))


def normalize_grid(grid: Mapping[str, Any], name: str, where: str = "grid") -> dict[str, Any]:
    """Checks a grid dict (format in the module docstring) and normalizes it."""
    unknown = set(grid) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS) - {"name"}
    missing = [key for key in REQUIRED_KEYS if not grid.get(key)]
    if unknown or missing:
        raise GridError(
            f"{where}: get_grid() has unknown keys {sorted(unknown)} and missing or empty "
            f"keys {missing}; it needs {list(REQUIRED_KEYS)} (optional: overrides)."
        )
    tasks = {task: _normalize_task(task, entry, where) for task, entry in grid["tasks"].items()}
    rows = {label: dict(overrides) for label, overrides in grid["rows"].items()}
    shared = dict(grid.get("overrides", {}))
    for scope, overrides in (
        [("overrides", shared)]
        + [(f"tasks[{t!r}]", e["overrides"]) for t, e in tasks.items()]
        + [(f"rows[{r!r}]", o) for r, o in rows.items()]
    ):
        _check_overrides(overrides, f"{where}: {scope}")
    _check_unique_slugs(rows, where)
    normalized = {"name": grid.get("name", name), "tasks": tasks, "rows": rows, "overrides": shared}
    for axis in ("num_tokens", "few_shot", "seeds"):
        values = list(grid[axis])
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise GridError(f"{where}: {axis}={values}; give a list of ints.")
        if len(set(values)) != len(values):
            raise GridError(f"{where}: {axis}={values} repeats a value; list each once.")
        normalized[axis] = values
    return normalized


def _normalize_task(task: str, entry: Any, where: str) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"config": entry, "overrides": {}}
    if isinstance(entry, Mapping) and set(entry) <= {"config", "overrides"} and "config" in entry:
        return {"config": str(entry["config"]), "overrides": dict(entry.get("overrides", {}))}
    raise GridError(
        f"{where}: tasks[{task!r}]={entry!r}; give a config file path or "
        "{'config': path, 'overrides': {...}}."
    )


def _check_overrides(overrides: Mapping[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if not isinstance(key, str) or not _OVERRIDE_KEY.match(key) or key.startswith("config."):
            raise GridError(
                f"{where}: override key {key!r} is not a config path; write it as after "
                "`--config.`, e.g. 'loss.gamma'."
            )
        if key in AXIS_KEYS:
            raise GridError(
                f"{where}: override {key!r} is a grid axis; set it with the grid's "
                f"{AXIS_KEYS[key]!r} list instead."
            )
        format_value(value)


def _check_unique_slugs(rows: Mapping[str, Any], where: str) -> None:
    seen = {}
    for label in rows:
        slug = slugify(label)
        if slug in seen:
            raise GridError(
                f"{where}: rows {seen[slug]!r} and {label!r} share the directory name "
                f"{slug!r}; rename one."
            )
        seen[slug] = label


def expand(grid: Mapping[str, Any]) -> list[Cell]:
    """The grid's cells in index order (seed outermost, then few_shot, num_tokens, task, row)."""
    settings = [(k, n) for k in grid["few_shot"] for n in grid["num_tokens"]]
    cells = []
    for seed in grid["seeds"]:
        for setting_index, (few_shot, num_tokens) in enumerate(settings):
            for task_index, (task, entry) in enumerate(grid["tasks"].items()):
                for row_index, (row, row_overrides) in enumerate(grid["rows"].items()):
                    overrides = {
                        **grid["overrides"],
                        **entry["overrides"],
                        **row_overrides,
                        "prompt.num_tokens": num_tokens,
                        "data.few_shot": few_shot,
                        "seed": seed,
                    }
                    cells.append(
                        Cell(
                            index=len(cells),
                            grid=grid["name"],
                            row=row,
                            row_index=row_index,
                            task=task,
                            task_index=task_index,
                            task_config=entry["config"],
                            num_tokens=num_tokens,
                            few_shot=few_shot,
                            setting_index=setting_index,
                            seed=seed,
                            num_seeds=len(grid["seeds"]),
                            overrides=overrides,
                        )
                    )
    return cells


def parse_shard(shard: str) -> tuple[int, int]:
    """`"i/n"` -> (i, n), checked."""
    match = re.fullmatch(r"(\d+)/(\d+)", shard.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise GridError(f"--shard={shard!r}; write i/n with 0 <= i < n, e.g. --shard=0/4.")
    return int(match[1]), int(match[2])


def select_shard(cells: Sequence[Cell], shard: str) -> list[Cell]:
    """The cells of shard `i/n`: those with `index % n == i`."""
    i, n = parse_shard(shard)
    return [cell for cell in cells if cell.index % n == i]


def is_finished(cell: Cell, root: str | pathlib.Path) -> bool:
    """Whether the cell's run wrote its summary (main.py writes it last)."""
    return summary_lib.finished(cell.workdir(root)) is not None


def parse_command(command: Sequence[str]):
    """Parses a cell command's flags as main.py defines them; returns (config, workdir).

    Loading the config file needs its imports (`from configs import default`) to resolve, i.e. the
    working directory must be the repository root, as for main.py itself.
    """
    argv = ["main.py"] + list(command[3:])
    flag_values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    # config_flags defines one flag per `--config.x=` it finds in argv, so pass ours.
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values["config"].value, flag_values["workdir"].value


def validate(cells: Sequence[Cell], root: str | pathlib.Path) -> None:
    """Checks every cell before any runs: its flags parse, its task matches, its dir is its own.

    Raises:
      GridError: the first bad cell, with what to fix.
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # Config files import `configs`, as under `python -m`.
    for cell in cells:
        if not pathlib.Path(cell.task_config).is_file():
            raise GridError(
                f"Task {cell.task!r}: config file {cell.task_config} not found from "
                f"{os.getcwd()}; run from the repository root or give an absolute path."
            )
        try:
            config, _ = parse_command(cell.command(root))
        except (flags.Error, ValueError, TypeError, KeyError, AttributeError) as e:
            reason = _exception_text(e)
            raise GridError(
                f"Cell {cell.name}: main.py rejects its flags ({reason}); fix the override "
                "in the grid."
            ) from e
        if _canonical_task(config.task) != _canonical_task(cell.task):
            raise GridError(
                f"Cell {cell.name}: {cell.task_config} runs task {config.task!r}, not "
                f"{cell.task!r}; fix the grid's tasks entry (or add a 'task' override)."
            )
        _check_cell_dir(cell, root)


def _exception_text(error: BaseException) -> str:
    """One line of text; config_flags nests a KeyError (whose str() is a repr) in its errors."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return str(text).replace("\n", " ")


def _canonical_task(name: str) -> str:
    return name.strip().lower().replace("-", "")  # As tasks.get_task matches names.


def _check_cell_dir(cell: Cell, root: str | pathlib.Path) -> None:
    """A cell dir made with other overrides would mix two experiments' checkpoints and results."""
    path = cell.workdir(root) / "cell.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(cell.to_json(root)))  # Tuples read back as lists.
    changed = {
        k
        for k in set(old["overrides"]) | set(new["overrides"])
        if old["overrides"].get(k) != new["overrides"].get(k)
    }
    if changed or old["task_config"] != new["task_config"]:
        details = (
            ", ".join(
                f"{k}: {old['overrides'].get(k)!r} -> {new['overrides'].get(k)!r}"
                for k in sorted(changed)
            )
            or f"task_config -> {cell.task_config}"
        )
        raise GridError(
            f"{cell.workdir(root)} was run with different settings ({details}); use a new "
            "--root, or delete that directory to rerun the cell."
        )


def write_cell_json(cell: Cell, root: str | pathlib.Path) -> None:
    """Writes `cell.json`, so the report needs no grid file (rewritten: row order may change)."""
    workdir = cell.workdir(root)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cell.json").write_text(json.dumps(cell.to_json(root), indent=2) + "\n")
