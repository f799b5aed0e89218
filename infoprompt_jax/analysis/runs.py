"""A training run's workdir for the analyses: its examples and its trained parameters.

A workdir (train/loop.py) holds `config.json` and `metrics.jsonl` (read by `workdir_files`) and
`checkpoints/` (the trainable state, never the frozen encoder, which is rebuilt from the
pretrained checkpoint named in the config).
"""

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from infoprompt_jax.model import trainable as trainable_lib
from infoprompt_jax.train import components as components_lib
from infoprompt_jax.train import run_state
from infoprompt_jax.workdir import checkpointing, workdir_files

Params = dict[str, Any]


def default_label(config: ml_collections.ConfigDict) -> str:
    """A run's name in plots: its method, with beta and gamma for InfoPrompt.

    Runs that differ only in seed share this label, so the curves average them.
    """
    label = config.method
    if config.method == "infoprompt":
        # Other methods train with beta = gamma = 0 whatever the config says (methods.resolve).
        label += f" beta={config.loss.beta:g} gamma={config.loss.gamma:g}"
    if config.get("variant", "paper") != "paper":
        label += f" ({config.variant})"
    return label


def encode_examples(
    components: components_lib.Components, split: str, max_examples: int = 0
) -> dict[str, np.ndarray]:
    """Tokenized arrays of the run's `split` (train: its few-shot subset; dev: capped)."""
    examples = components_lib.load_examples(components.config, components.task, split)
    if max_examples:
        examples = examples[:max_examples]
    if not examples:
        raise ValueError(f"The {split} split of {components.config.task} has no examples.")
    return components.encode(examples)


def encode_split_sample(
    components: components_lib.Components, split: str, count: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Tokenized arrays of `count` examples of the whole split, drawn by `seed` without
    replacement (the run's few-shot subset aside); the whole split when it is smaller."""
    examples = components_lib.load_whole_split(components.config, components.task, split)
    if count < len(examples):
        rows = np.random.default_rng(seed).choice(len(examples), count, replace=False)
        examples = [examples[i] for i in sorted(rows)]
    return components.encode(examples)


def restore_run(
    workdir: str | epath.Path, sample_arrays: dict[str, np.ndarray] | None = None
) -> tuple[components_lib.Components, Params]:
    """The run's components and its full parameter tree at the latest checkpoint.

    Args:
        workdir: the run's workdir.
        sample_arrays: tokenized arrays with the run's shapes, to trace the model's init; the
            first dev example when None.

    Returns:
        (components, params): the frozen pretrained tree with the checkpoint's trainable tree
        merged in, on the first local device.
    """
    config = workdir_files.load_config(workdir)
    components = components_lib.build_components(config)
    if sample_arrays is None:
        sample_arrays = encode_examples(components, "dev", max_examples=1)
    sample = {name: value[:1] for name, value in sample_arrays.items()}
    abstract_state, frozen = restore_target(components, sample)
    # Read-only: the analyses may read a run that still trains.
    state, record, _ = checkpointing.read(workdir, abstract_state)
    logging.info("Restored %s at step %d.", workdir, record["step"])
    return components, trainable_lib.merge_params(state.trainable, frozen)


def restore_target(
    components: components_lib.Components, sample: dict[str, np.ndarray]
) -> tuple[Any, Params]:
    """(abstract train state, frozen params) of a run: what `checkpointing.read` needs.

    The state is `run_state.abstract_state` (the checkpoint's structure, nothing computed); the
    frozen leaves are the pretrained ones, as training had them.
    """
    # Analysis runs in one process on one device, whatever mesh the run trained on.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state = run_state.abstract_state(components, sample, device)
    frozen = run_state.pretrained_frozen(components)
    run_state.check_params(
        components,
        trainable_lib.merge_params(abstract_state.trainable, frozen),
        "The restored tree",
    )
    return abstract_state, jax.device_put(frozen, device)


def word_embedding_table(params: Params) -> np.ndarray:
    """The pretrained word-embedding matrix `[V, D]`, float32 on the host."""
    table = params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    return np.asarray(table, np.float32)


def split_list(value: str | None, separator: str = ",") -> list[str]:
    """A flag's comma- (or `separator`-) separated items, blanks dropped."""
    return [item.strip() for item in (value or "").split(separator) if item.strip()]


def unique_labels(labels: Sequence[str], workdirs: Sequence[str]) -> list[str]:
    """`labels`, each one that repeats suffixed with its workdir's name so none collide."""
    counts = {label: labels.count(label) for label in labels}
    out = [
        label if counts[label] == 1 else f"{label} [{epath.Path(w).name}]"
        for label, w in zip(labels, workdirs)
    ]
    # Two workdirs with the same final component: fall back to their position.
    return [label if out.count(label) == 1 else f"{label} #{i}" for i, label in enumerate(out)]
