"""Reading a task split from a prepared TensorFlow Datasets (TFDS) copy, without TensorFlow.

TFDS keeps a prepared dataset under `DATA_DIR/NAME/CONFIG/VERSION/` (`glue/sst2/2.0.0/`):
`dataset_info.json`, `features.json` and one file set per split. Prepared in the array_record
format, a split is read as a TFDS data source (random access through the `array_record`
package), which needs no TensorFlow; a copy prepared as tfrecord (TFDS's default) is read with
TensorFlow when it is installed. Nothing is downloaded: a missing dataset, config, version or
split is a one-line error that says how to prepare it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from infoprompt_jax.data import hf_source
from infoprompt_jax.data.tasks import TaskSpec

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def default_data_dir() -> Path:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def prepare_help(task: TaskSpec, data_dir: Path | str = "DIR") -> str:
    """How to prepare the task's TFDS dataset, without TensorFlow, for messages and docs."""
    name, config = task.tfds_name.split("/")
    return (
        f'python -c "import tensorflow_datasets as tfds; from tensorflow_datasets.text import'
        f" {name}; tfds.builder('{task.tfds_name}', data_dir='{data_dir}',"
        f" file_format='array_record').download_and_prepare()\" on a machine with network, then"
        f" copy {data_dir}/{name}/{config} over"
    )


def read_split(task: TaskSpec, split: str, data_dir) -> tuple[Any, list | None, str]:
    """The rows of one split, the label column's ClassLabel names and a uid prefix.

    Args:
        task: the task (`tfds_name` "NAME/CONFIG", `tfds_version` the expected version).
        split: "train" or "dev" (TFDS GLUE calls dev "validation").
        data_dir: the TFDS data_dir; None or "" for TFDS's default.

    Raises:
        ImportError: tensorflow_datasets is not installed.
        ValueError: the data_dir lacks the dataset, a version of the expected major version,
            the split or a needed feature; or a tfrecord copy without TensorFlow.
    """
    try:
        import tensorflow_datasets as tfds  # Lazy: an optional dependency.
    except ImportError as err:
        raise ImportError(
            "source 'tfds' needs tensorflow_datasets: pip install"
            f' "infoprompt_jax[tfds]"; or read local files: {hf_source.local_help(task)}'
        ) from err
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    version = _prepared_version(task, root)
    builder = tfds.builder(f"{task.tfds_name}:{version}", data_dir=str(root))
    tfds_split = task.hf_split(split)  # TFDS GLUE splits are named like the hub's.
    where = f"{root}/{task.tfds_name}/{version}"
    if tfds_split not in builder.info.splits:
        raise ValueError(
            f"{where} has the splits {sorted(builder.info.splits)}, not {tfds_split!r} that task"
            f" {task.name!r} reads; prepare the whole dataset: {prepare_help(task, root)}"
        )
    features = builder.info.features
    missing = [c for c in hf_source.needed_columns(task) if c not in features]
    if missing:
        raise ValueError(
            f"{where} has the features {sorted(features)}, not {missing}, which task"
            f" {task.name!r} reads; it is not TFDS's {task.tfds_name}: {prepare_help(task, root)}"
        )
    names = getattr(features[task.hf_label_column], "names", None)
    return _rows(tfds, builder, tfds_split, where), names, f"tfds:{task.tfds_name}:{tfds_split}"


def _prepared_version(task: TaskSpec, root: Path) -> str:
    """The newest prepared version of the task's dataset with the expected major version."""
    name, config = task.tfds_name.split("/")
    folder = root / name / config
    if not folder.is_dir():
        held = sorted(
            f"{d.parent.name}/{d.name}"
            for d in root.glob("*/*")
            if d.is_dir() and any(_VERSION.match(v.name) for v in d.iterdir())
        )
        raise ValueError(
            f"TFDS data_dir {root} has no prepared {task.tfds_name} (it holds {held or 'none'});"
            f" set --config.data.dir to the data_dir that has it, or prepare it: "
            f"{prepare_help(task, root)}"
        )
    versions = sorted(
        (v.name for v in folder.iterdir() if v.is_dir() and _VERSION.match(v.name)),
        key=lambda v: tuple(map(int, v.split("."))),
    )
    major = task.tfds_version.split(".")[0]
    usable = [v for v in versions if v.split(".")[0] == major]
    if not usable:
        raise ValueError(
            f"{folder} holds the versions {versions or 'none (no complete preparation)'}, not"
            f" {major}.x.x ({task.tfds_version}) that this reader expects; prepare it with"
            f" tensorflow-datasets>=4.9: {prepare_help(task, root)}"
        )
    return usable[-1]


def _rows(tfds, builder, split: str, where: str):
    """A split's rows: a data source (array_record), else TensorFlow's reader if installed."""
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format == "array_record":
        source = builder.as_data_source(split=split)
        return (source[i] for i in range(len(source)))
    try:
        import tensorflow  # noqa: F401  # Only to tell whether TFDS's TensorFlow reader works.
    except ImportError:
        raise ValueError(
            f"{where} was prepared as {file_format}, which only TensorFlow reads; prepare it"
            f" as array_record (file_format='array_record'), or pip install tensorflow"
        ) from None
    return tfds.as_numpy(builder.as_dataset(split=split))
