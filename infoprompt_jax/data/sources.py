"""Reading task splits (local files, Hugging Face datasets, TFDS) and few-shot subsets.

Every reader returns a list of `Example`: the text fields the task's template
reads, an integer label (index into `TaskSpec.label_names`) and a uid that points
back to the source (`file:line` for local files, `source:split:index` otherwise).

Local files, one directory per task (`--config.data.dir=DIR`), are read by `readers.py`,
which documents their formats; `hf_source.py` reads the hub or a local copy of a hub dataset,
`tfds_source.py` prepared TFDS datasets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infoprompt_jax.data import hf_source, readers, tfds_source
from infoprompt_jax.data.tasks import TaskSpec

SPLITS = ("train", "dev")
SOURCES = ("local", "hf", "tfds")


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled input.

    Attributes:
        fields: Text fields by name (the template's `{field}` items); treat as
            read-only.
        label: Integer label, an index into `TaskSpec.label_names`.
        uid: Where it came from: `file:line` or `source:split:index`.
    """

    fields: Mapping[str, str]
    label: int
    uid: str


def load_split(
    task: TaskSpec,
    split: str,
    source: str = "local",
    data_dir: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    hf_path: str | None = None,
) -> list[Example]:
    """Reads one split of a task.

    Args:
        task: The task.
        split: "train" or "dev" (GLUE dev = the hub's "validation"; SemEval dev =
            the labelled test file).
        source: "local" (files in `data_dir`), "hf" (Hugging Face `datasets`) or
            "tfds" (TensorFlow Datasets).
        data_dir: The task's directory for source "local"; for "tfds" the TFDS
            data_dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets); unused for "hf".
        label_names: Label set overriding `task.label_names`. Tasks registered
            with no labels (ACE) otherwise discover them from the train file in
            `data_dir` (`discover_labels`), so train and dev share one id mapping.
        hf_path: For source "hf": a hub id or a local directory in the hub repo's
            layout (`hf_source.py`) replacing the task's dataset id; None keeps it.

    Returns:
        The examples in source order.

    Raises:
        ValueError: Bad arguments or a malformed file (the message names the file,
            the line and what was expected).
        FileNotFoundError: A missing local file.
        RuntimeError: The hub could not be reached or has no such dataset.
        ImportError: source "tfds" without tensorflow_datasets installed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    names = tuple(label_names) if label_names is not None else task.label_names
    if source == "local":
        if data_dir is None:
            raise ValueError(
                f"task {task.name!r}: source 'local' needs a data directory; set"
                f" --config.data.dir=DIR with {_expected_files(task)}"
            )
        if not names:
            names = discover_labels(task, data_dir)
        return _load_local(task, split, Path(data_dir), names)
    if source == "hf":
        return _load_hf(task, split, names, hf_path)
    return _load_tfds(task, split, names, data_dir)


def discover_labels(task: TaskSpec, data_dir: str | Path) -> tuple[str, ...]:
    """The label set found in a task's local train file.

    Sorted, with `task.negative_label` (e.g. "no_relation") first when present so
    that id 0 means "no relation" as in most RE code. Use it with
    `TaskSpec.with_labels` for tasks registered with `label_names=()`.

    Args:
        task: The task (its local train file is read).
        data_dir: The task's data directory.

    Returns:
        The label strings; index = label id.
    """
    path = _local_path(task, "train", Path(data_dir))
    labels = {rec.label for rec in readers.read_task_file(task, path)}
    if not labels:
        raise ValueError(f"{path}: no examples, so no labels to discover")
    neg = task.negative_label
    rest = sorted(labels - {neg})
    return ((neg,) if neg in labels else ()) + tuple(rest)


def few_shot_subset(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """Draws the few-shot training set.

    A plain (not class-balanced) uniform draw of `n` distinct examples with
    `numpy.random.default_rng(seed)`. It depends only on the examples, `n` and
    `seed`, so every method sees the same subset at a given seed. The subset keeps
    the source order (the training loop shuffles).

    Args:
        examples: The full split.
        n: Subset size; 0 means all examples.
        seed: Seed of the draw (the run's seed).

    Returns:
        The subset (a new list).
    """
    if n < 0:
        raise ValueError(f"few-shot size must be >= 0 (0 = all), got {n}")
    if n == 0:
        return list(examples)
    if n > len(examples):
        raise ValueError(
            f"few-shot size {n} exceeds the {len(examples)} available examples;"
            " lower it or use 0 for all"
        )
    idx = np.random.default_rng(seed).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in np.sort(idx)]


# ----------------------------------------------------------------------------
# Local files.


def _load_local(task: TaskSpec, split: str, data_dir: Path, names: Sequence[str]) -> list[Example]:
    path = _local_path(task, split, data_dir)
    ids = {name: i for i, name in enumerate(names)}
    examples = []
    records = readers.read_task_file(task, path)
    if not records:
        raise ValueError(
            f"{path} holds no examples (a header or blank lines only); the split {split} of "
            f"task {task.name!r} needs at least one."
        )
    for rec in records:
        if rec.label not in ids:
            raise ValueError(
                f"{path} line {rec.line}: unknown label {rec.label!r}; allowed: {list(names)}"
            )
        examples.append(Example(rec.fields, ids[rec.label], f"{path.name}:{rec.line}"))
    return examples


def _expected_files(task: TaskSpec) -> str:
    files = " and ".join(f for _, f in task.local_files)
    return f"the files {files} directly inside DIR"


def _local_path(task: TaskSpec, split: str, data_dir: Path) -> Path:
    path = data_dir / task.local_file(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"task {task.name!r} split {split!r}: {path} not found; the data"
            f" directory (--config.data.dir) must hold {_expected_files(task)}"
        )
    return path


# ----------------------------------------------------------------------------
# Hugging Face datasets and TFDS: rows of named columns, labels by ClassLabel name.


def _hub_fields(task: TaskSpec, row: Mapping[str, Any]) -> dict[str, str]:
    """The task's text fields from one hub/TFDS row (bytes decoded)."""

    def text(key):
        value = row[key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    if task.file_format == "semeval":
        sentence, e1, e2 = readers.semeval_markers(text("sentence"))
        return {"sentence": sentence, "e1": e1, "e2": e2}
    return {f: text(f).strip() for f in task.text_fields}


def _require_labels(task: TaskSpec, names: Sequence[str]) -> None:
    if not names:
        raise ValueError(f"task {task.name!r} takes its labels from the data; pass label_names")


def _label_ids(
    task: TaskSpec, source_names: Sequence[str] | None, names: Sequence[str]
) -> dict[int, int]:
    """Maps the source's integer labels to ours by label name.

    Hub and TFDS GLUE labels use the same order as ours, but mapping by name
    guards against a dataset revision that reorders its ClassLabel. Without a
    ClassLabel (plain integers) the task's order is assumed.
    """
    if source_names is None:
        return {i: i for i in range(len(names))}
    ours = {n: i for i, n in enumerate(names)}
    missing = [n for n in source_names if n not in ours]
    if missing:
        raise ValueError(
            f"task {task.name!r}: the dataset's labels {missing} are not among the"
            f" task's labels {list(names)}"
        )
    return {i: ours[n] for i, n in enumerate(source_names)}


def _label_of(raw: Any, ids: Mapping[int, int], names: Sequence[str], where: str) -> int:
    """Our label id of a row's label: an integer (through `ids`) or a label name."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(raw, str):  # A string column holds the names themselves.
        if raw not in names:
            raise ValueError(f"{where}: label {raw!r} is not one of the task's {list(names)}")
        return list(names).index(raw)
    if int(raw) not in ids:
        raise ValueError(
            f"{where}: label {int(raw)} outside the task's {len(names)} labels"
            " (unlabelled test split?)"
        )
    return ids[int(raw)]


def _rows_to_examples(task, rows, label_names, names, uid_prefix):
    ids = _label_ids(task, label_names, names)
    examples = []
    for i, row in enumerate(rows):
        where = f"{uid_prefix}:{i}"
        label = _label_of(row[task.hf_label_column], ids, names, where)
        examples.append(Example(_hub_fields(task, row), label, where))
    return examples


def _load_hf(task: TaskSpec, split: str, names: Sequence[str], hf_path) -> list[Example]:
    if task.hf_path is None and not hf_path:
        raise ValueError(
            f"task {task.name!r} has no Hugging Face dataset; read local files:"
            f" {hf_source.local_help(task)}"
        )
    _require_labels(task, names)
    rows, source_names, uid_prefix = hf_source.read_split(task, split, hf_path)
    return _rows_to_examples(task, rows, source_names, names, uid_prefix)


def _load_tfds(task: TaskSpec, split: str, names: Sequence[str], data_dir) -> list[Example]:
    if task.tfds_name is None:
        raise ValueError(
            f"task {task.name!r} has no TFDS dataset; read local files:"
            f" {hf_source.local_help(task)}"
        )
    _require_labels(task, names)
    rows, source_names, uid_prefix = tfds_source.read_split(task, split, data_dir)
    return _rows_to_examples(task, rows, source_names, names, uid_prefix)
