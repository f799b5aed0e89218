"""The files a training run keeps in its workdir besides checkpoints: `config.json`, the resolved
run config, written when the run starts, and `metrics.jsonl`, one `{"step": s, ...}` record a
line. Training, export, the report and the analyses all read them through this module.
"""

import json
from typing import Any

import ml_collections
from etils import epath

from infoprompt_jax import config_loading

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


def write_config(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> None:
    """Writes the resolved run config to `WORKDIR/config.json`."""
    (epath.Path(workdir) / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))


def load_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
    """The run config that training wrote to `WORKDIR/config.json`, as `config_loading.load`
    reads it: a field added since the run was written reads as what that run did.

    Raises:
        FileNotFoundError: the directory is not a training workdir.
        ValueError: the saved config has a field outside its range or choices.
    """
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {workdir} is not a training workdir (a run started with "
            "python -m infoprompt_jax.main --workdir=... writes config.json there)."
        )
    return config_loading.load_file(path)


def read_metrics(workdir: str | epath.Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The records of `WORKDIR/metrics.jsonl`, in file order; a torn last line is skipped.

    Args:
        workdir: the run's workdir.
        missing_ok: an absent file reads as no records instead of raising FileNotFoundError.
    """
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        if missing_ok:
            return []
        raise FileNotFoundError(f"{path} not found: the run has logged no metrics yet.")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # A line cut short by a crash mid-write (the writer appends).
    return records


def eval_record_at(workdir: str | epath.Path, step: int) -> dict[str, Any]:
    """The last record of `step` with dev scores (`eval_*` keys), or {} when there is none."""
    for record in reversed(read_metrics(workdir, missing_ok=True)):
        if record.get("step") == step and any(name.startswith("eval_") for name in record):
            return record
    return {}
