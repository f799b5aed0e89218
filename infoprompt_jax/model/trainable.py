"""Trainable vs frozen parameters, split by parameter path.

One function decides what trains; the optimizer, the checkpoint and the export all use it.
Rules are regular expressions over '/'-joined parameter paths (big_vision style); the first
rule that matches a leaf decides, and a leaf no rule matches is an error rather than a silent
default.
"""

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from flax import traverse_util

Params = Mapping[str, Any]

# (pattern, trainable?) rules per method. The encoder is frozen unless the method says otherwise.
# The pretrained MLM transform inside the task head stays frozen, as in WARP: only the class
# vectors (verbalizer-initialised) and the bias of the head train.
_FROZEN_MLM_TRANSFORM = (r"^task_head/mlm_transform/", False)
_HEAD_AND_CRITICS = (r"^(task_head|head_critic|representation_critic)/", True)
_FROZEN_ENCODER = (r"^encoder/", False)
METHOD_RULES: dict[str, tuple[tuple[str, bool], ...]] = {
    "infoprompt": (
        _FROZEN_MLM_TRANSFORM,
        (r"^prompt_generator/", True),
        _HEAD_AND_CRITICS,
        _FROZEN_ENCODER,
    ),
    "idpg": (
        _FROZEN_MLM_TRANSFORM,
        (r"^prompt_generator/", True),
        _HEAD_AND_CRITICS,
        _FROZEN_ENCODER,
    ),
    "warp": (_FROZEN_MLM_TRANSFORM, (r"^prompt$", True), _HEAD_AND_CRITICS, _FROZEN_ENCODER),
    "adapter": (
        _FROZEN_MLM_TRANSFORM,
        (r"^encoder/.*/adapter/", True),
        _HEAD_AND_CRITICS,
        _FROZEN_ENCODER,
    ),
    "finetune": ((r".*", True),),
}


def flatten(params: Params) -> dict[str, Any]:
    """Nested params -> {'a/b/c': leaf}."""
    return traverse_util.flatten_dict(params, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested params."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def is_trainable(path: str, rules: Sequence[tuple[str, bool]]) -> bool:
    """Whether the leaf at `path` trains under `rules` (first match wins)."""
    for pattern, trainable in rules:
        if re.search(pattern, path):
            return trainable
    raise ValueError(
        f"Parameter {path!r} matches none of the trainable/frozen rules "
        f"{[p for p, _ in rules]}; add a rule for it in trainable.METHOD_RULES."
    )


def rules_for(method: str) -> tuple[tuple[str, bool], ...]:
    """The trainable/frozen rules of a method."""
    if method not in METHOD_RULES:
        raise ValueError(f"Unknown method {method!r}; known methods: {sorted(METHOD_RULES)}.")
    return METHOD_RULES[method]


def split_params(params: Params, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits params into (trainable, frozen) nested dicts by the method's rules."""
    rules = rules_for(method)
    trainable, frozen = {}, {}
    for path, leaf in flatten(params).items():
        (trainable if is_trainable(path, rules) else frozen)[path] = leaf
    return unflatten(trainable), unflatten(frozen)


def merge_params(trainable: Params, frozen: Params) -> dict[str, Any]:
    """Inverse of `split_params`."""
    flat = flatten(frozen)
    for path, leaf in flatten(trainable).items():
        if path in flat:
            raise ValueError(f"Parameter {path!r} is both trainable and frozen.")
        flat[path] = leaf
    return unflatten(flat)


# Groups of `trainable_param_counts`, by parameter path (first match wins).
PARAM_GROUPS = (
    ("generator", r"^(prompt_generator/|prompt$)"),
    ("head", r"^task_head/"),
    ("critics", r"^(head_critic|representation_critic)/"),
    ("adapters", r"^encoder/.*/adapter/"),
    ("encoder", r"^encoder/"),
)


def _size(leaf: Any) -> int:
    """Entries of an array or a ShapeDtypeStruct."""
    return int(math.prod(leaf.shape))


def trainable_param_counts(trainable: Params, frozen: Params) -> dict[str, int]:
    """Trainable parameters per group, and the trainable and total counts.

    Works on arrays and on `jax.eval_shape` trees alike (only shapes are read).

    Args:
        trainable: the trainable tree (`split_params`' first part); for a stacked run, one run's.
        frozen: the frozen tree.

    Returns:
        `{"generator", "head", "critics", "adapters", "encoder": trainable count of the group,
        "trainable": their sum, "total": trainable + frozen}`.
    """
    counts = dict.fromkeys((name for name, _ in PARAM_GROUPS), 0)
    for path, leaf in flatten(trainable).items():
        group = next((name for name, pattern in PARAM_GROUPS if re.search(pattern, path)), None)
        if group is None:
            raise ValueError(f"Trainable parameter {path!r} is in no group of PARAM_GROUPS.")
        counts[group] += _size(leaf)
    counts["trainable"] = sum(counts[name] for name, _ in PARAM_GROUPS)
    counts["total"] = counts["trainable"] + sum(_size(x) for x in flatten(frozen).values())
    return counts


def describe_trainable(counts: Mapping[str, int]) -> str:
    """One log line, PEFT's `print_trainable_parameters` style, from `trainable_param_counts`."""
    groups = ", ".join(f"{name} {counts[name]:,}" for name, _ in PARAM_GROUPS if counts[name])
    share = 100.0 * counts["trainable"] / counts["total"] if counts["total"] else 0.0
    return (
        f"trainable params: {counts['trainable']:,} || all params: {counts['total']:,} || "
        f"trainable%: {share:.4f} ({groups or 'none'})"
    )
