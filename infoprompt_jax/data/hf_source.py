"""Reading a task split through Hugging Face `datasets`: a hub id or a local copy of a hub repo.

`data.hf_path` replaces the task's dataset id (`nyu-mll/glue` for GLUE). It is either a hub id or
a directory in the hub repo's own layout, as `hf download ID --repo-type dataset --local-dir DIR`
writes it (`huggingface-cli download` before huggingface_hub 1.0): parquet files per config
(`sst2/train-00000-of-00001.parquet`, ...) and a README.md whose YAML header names each config's
`data_files` and, under `dataset_info`, its features, the label column's ClassLabel names among
them. A local directory is checked for the
task's config, split and columns before anything is read, and never touches the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infoprompt_jax.data.tasks import TaskSpec


def local_help(task: TaskSpec) -> str:
    """The local-files fix, for messages: the flags and the files DIR must hold."""
    files = " and ".join(f for _, f in task.local_files)
    return f"--config.data.source=local --config.data.dir=DIR with the files {files} directly inside DIR"


def needed_columns(task: TaskSpec) -> tuple[str, ...]:
    """The columns a hub or TFDS row must have: the template's text fields and the label."""
    text = ("sentence",) if task.file_format == "semeval" else task.text_fields
    return (*text, task.hf_label_column)


def read_split(task: TaskSpec, split: str, hf_path: str | None) -> tuple[Any, list | None, str]:
    """The rows of one split, the label column's ClassLabel names (None without) and a uid prefix.

    Args:
        task: the task (its `hf_path` is the default dataset id, `hf_name` the config).
        split: "train" or "dev".
        hf_path: a hub id or a local directory in the hub layout replacing `task.hf_path`;
            None or "" keeps the task's.

    Raises:
        ValueError: a local directory without the config, the split or a needed column.
        RuntimeError: the dataset could not be loaded (offline and not cached, unknown id).
    """
    dataset_id = hf_path or task.hf_path
    if dataset_id is None:
        raise ValueError(
            f"task {task.name!r} has no Hugging Face dataset; read local files: {local_help(task)}"
        )
    import datasets  # Lazy: only this source needs it.

    hub_split = task.hf_split(split)
    local = Path(dataset_id).expanduser()
    if dataset_id.startswith(("/", ".", "~")) and not local.is_dir():
        raise ValueError(
            f"--config.data.hf_path={dataset_id}: no such directory; give a local copy of a hub"
            f" dataset (hf download {task.hf_path} --repo-type dataset --local-dir DIR) or a hub id"
        )
    if local.is_dir():
        _check_local_copy(datasets, task, local, hub_split)
        dataset_id = str(local)
    where = dataset_id + (f"/{task.hf_name}" if task.hf_name else "")
    # A local copy gets a cache of its own, keyed by its path and files: `datasets` identifies
    # local files by name and time, and served one copy's rows for another of the same name.
    local_read = {"cache_dir": _local_cache_dir(datasets, local)} if local.is_dir() else {}
    try:
        ds = datasets.load_dataset(dataset_id, task.hf_name, split=hub_split, **local_read)
    except Exception as err:  # Offline, not cached, unknown or blocked: all look alike.
        if local.is_dir():
            raise ValueError(
                f"could not read {where} split {hub_split!r}: {_one_line(err)} (the files of a"
                " split must share one schema; see the log above for the file)"
            ) from err
        raise RuntimeError(
            f"could not load {where} split {hub_split!r} from the Hugging Face hub (offline and"
            f" not in the cache?): {_one_line(err)}. Read a local copy instead:"
            f" --config.data.hf_path=DIR (hf download {dataset_id} --repo-type dataset"
            f" --local-dir DIR), or {local_help(task)}"
        ) from err
    _check_columns(task, ds.column_names, f"{where} split {hub_split!r}")
    feature = ds.features.get(task.hf_label_column)
    return ds, getattr(feature, "names", None), f"hf:{where}:{hub_split}"


def _check_local_copy(datasets, task: TaskSpec, root: Path, hub_split: str) -> None:
    """Fails in one line when a local hub copy lacks the task's config or split."""
    download = f"hf download {task.hf_path} --repo-type dataset --local-dir {root}"
    try:
        configs = datasets.get_dataset_config_names(str(root))
    except Exception as err:
        raise ValueError(
            f"{root} is not a Hugging Face dataset folder ({_one_line(err)}); write one with"
            f" {download}"
        ) from None
    config = task.hf_name
    if config is not None and config not in configs:
        raise ValueError(
            f"{root} holds the dataset configs {configs}, not {config!r} that task {task.name!r}"
            f" reads; add it: {download} --include '{config}/*' --include README.md"
        )
    splits = datasets.get_dataset_split_names(str(root), config)
    if hub_split not in splits:
        raise ValueError(
            f"{root} config {config!r} has the splits {splits}, not {hub_split!r} that task"
            f" {task.name!r} reads; its README.md must name that split's data_files: {download}"
        )


def _check_columns(task: TaskSpec, columns: Sequence[str], where: str) -> None:
    missing = [c for c in needed_columns(task) if c not in columns]
    if missing:
        raise ValueError(
            f"{where} has the columns {list(columns)}, not {missing}, which task {task.name!r}"
            f" reads (template fields and label); point --config.data.hf_path at a copy of"
            f" {task.hf_path}, or rename the columns"
        )


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _local_cache_dir(datasets, local: Path) -> str:
    """A `datasets` cache folder for one local copy as it is now: its resolved path and each
    file's name, size and modification time pick the folder, so a changed copy is read anew."""
    fingerprint = hashlib.sha256(str(local.resolve()).encode())
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        stat = path.stat()
        fingerprint.update(f"{path.relative_to(local)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache_root = Path(datasets.config.HF_DATASETS_CACHE) / "local_copies"
    return str(cache_root / fingerprint.hexdigest()[:16])
